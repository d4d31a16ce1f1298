"""ELRT's format: Tucker-2 convolution (1×1 C_in→r_in, k×k core r_in→r_out, 1×1 r_out→C_out).

The kernel is ``W = core ×₀ U_out ×₁ U_in``: only the two channel modes are factorised, the spatial
modes stay inside the core, which keeps the original stride, padding, dilation and padding mode. Zero,
reflect, replicate and circular padding act per channel, so they commute with the 1×1 projection and the
factorised layer computes exactly what the merged kernel computes.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd

from . import _tensorly
from .base import ConvGeometry, LowRankConv, conv_class, orthonormal_

__all__ = ["Tucker2Conv2d", "Tucker2Conv3d"]


class Tucker2Conv2d(LowRankConv):
    """Tucker-2 factorised convolution with ranks ``(r_in, r_out)``.

    Submodules ``in_proj`` (1×1, C_in→r_in), ``core`` (k×k, r_in→r_out) and ``out_proj``
    (1×1, r_out→C_out, carries the original bias). Works for 2-D kernels; :class:`Tucker2Conv3d` is the
    same layer for ``Conv3d``.

    Example:
        >>> layer = Tucker2Conv2d.from_dense(torch.nn.Conv2d(64, 64, 3, padding=1), ranks=(16, 16))
        >>> layer(torch.randn(2, 64, 8, 8)).shape
        torch.Size([2, 64, 8, 8])
    """

    format_name = "tucker2"
    num_ranks = 2
    spatial_dims = 2

    def _build(self, g: ConvGeometry, ranks: tuple[int, ...], factory: dict[str, Any]) -> None:
        if g.ndim != self.spatial_dims:
            raise ValueError(f"{type(self).__name__} expects a {self.spatial_dims}-D kernel, got {g.kernel_size}")
        r_in, r_out = ranks
        conv = conv_class(g.ndim)
        self.in_proj = conv(g.in_channels, r_in, 1, bias=False, **factory)
        self.core = conv(r_in, r_out, g.kernel_size, bias=False, **g.spatial_kwargs(), **factory)
        self.out_proj = conv(r_out, g.out_channels, 1, bias=g.bias, **factory)

    def forward(self, x: Tensor) -> Tensor:
        return self.out_proj(self.core(self.in_proj(self._pad(x))))

    def _bias_holder(self) -> _ConvNd:
        return self.out_proj

    def _init_random(self, dense_weight_var: float) -> None:
        g = self.geometry
        r_in, r_out = self.ranks
        orthonormal_(self.in_proj.weight)
        orthonormal_(self.out_proj.weight)
        # Orthonormal factors keep the Frobenius norm, so the merged kernel's energy is the core's:
        # scale the core so that E‖W‖² matches the dense kernel's (C_out·C_in·k·σ²).
        scale = math.sqrt(
            dense_weight_var * g.out_channels * g.in_channels / (min(r_out, g.out_channels) * min(r_in, g.in_channels))
        )
        nn.init.normal_(self.core.weight, std=scale)
        if self.out_proj.bias is not None:
            nn.init.zeros_(self.out_proj.bias)

    def _init_decompose(self, weight: Tensor) -> None:
        r_in, r_out = self.ranks
        u_out, core, u_in = _tensorly.tucker2(weight, r_out=r_out, r_in=r_in)
        pad = (1,) * self.geometry.ndim
        dst = self.in_proj.weight
        dst.copy_(_fit(u_in.T, dst.shape[:2]).reshape(*dst.shape[:2], *pad))
        self.core.weight.copy_(_fit_core(core, self.core.weight.shape))
        dst = self.out_proj.weight
        dst.copy_(_fit(u_out, dst.shape[:2]).reshape(*dst.shape[:2], *pad))

    def dense_weight(self) -> Tensor:
        r_in, r_out = self.ranks
        a = self.in_proj.weight.reshape(r_in, -1)  # (r_in, C_in)
        b = self.out_proj.weight.reshape(self.geometry.out_channels, r_out)  # (C_out, r_out)
        core = self.core.weight.reshape(r_out, r_in, -1)
        w = torch.einsum("oa,abk,bi->oik", b, core, a)
        return w.reshape(self.geometry.out_channels, self.geometry.in_channels, *self.geometry.kernel_size)

    def factors(self) -> list[Tensor]:
        r_in, r_out = self.ranks
        return [
            self.in_proj.weight.reshape(r_in, self.geometry.in_channels).T,
            self.out_proj.weight.reshape(self.geometry.out_channels, r_out),
        ]


class Tucker2Conv3d(Tucker2Conv2d):
    """Tucker-2 factorised ``Conv3d`` (video models): same layout as :class:`Tucker2Conv2d`."""

    spatial_dims = 3


def _fit(matrix: Tensor, shape: torch.Size | tuple[int, ...]) -> Tensor:
    """Copy a decomposition factor into a (possibly larger) rank slot, zero-padding missing columns.

    tensorly returns at most ``dim`` components per mode; a requested rank above the dimension keeps
    the extra channels at zero so the layer still computes the decomposed function.
    """
    out = torch.zeros(shape, dtype=matrix.dtype)
    rows, cols = min(shape[0], matrix.shape[0]), min(shape[1], matrix.shape[1])
    out[:rows, :cols] = matrix[:rows, :cols]
    return out


def _fit_core(core: Tensor, shape: torch.Size) -> Tensor:
    out = torch.zeros(shape, dtype=core.dtype)
    out[: core.shape[0], : core.shape[1]] = core[: shape[0], : shape[1]]
    return out
