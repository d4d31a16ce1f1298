"""SVD convolution: k×k conv C_in→r followed by a 1×1 conv r→C_out.

The natural form of a 1×1 conv (Tucker-2 of a 1×1 kernel would add a pointless middle layer) and
LRPET's final structure. The lowered kernel matrix ``W (C_out × C_in·k)`` is ``U · V`` with ``U`` the
1×1 factor (orthonormal columns after decomposition or random init) and ``V`` the k×k conv.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd

from . import _tensorly
from .base import ConvGeometry, LowRankConv, conv_class, orthonormal_
from .tucker2 import _fit

__all__ = ["SVDConv2d", "SVDConv3d"]


class SVDConv2d(LowRankConv):
    """Rank-``r`` SVD factorised convolution: ``core`` (k×k, C_in→r) then ``out_proj`` (1×1, r→C_out).

    Example:
        >>> layer = SVDConv2d.from_dense(torch.nn.Conv2d(256, 64, 1), ranks=(32,), init="decompose")
        >>> layer(torch.randn(1, 256, 7, 7)).shape
        torch.Size([1, 64, 7, 7])
    """

    format_name = "svd"
    num_ranks = 1
    spatial_dims = 2

    def _build(self, g: ConvGeometry, ranks: tuple[int, ...], factory: dict[str, Any]) -> None:
        if g.ndim != self.spatial_dims:
            raise ValueError(f"{type(self).__name__} expects a {self.spatial_dims}-D kernel, got {g.kernel_size}")
        (r,) = ranks
        conv = conv_class(g.ndim)
        self.core = conv(g.in_channels, r, g.kernel_size, bias=False, **g.spatial_kwargs(), **factory)
        self.out_proj = conv(r, g.out_channels, 1, bias=g.bias, **factory)

    def forward(self, x: Tensor) -> Tensor:
        return self.out_proj(self.core(self._pad(x)))

    def _bias_holder(self) -> _ConvNd:
        return self.out_proj

    def _init_random(self, dense_weight_var: float) -> None:
        (r,) = self.ranks
        orthonormal_(self.out_proj.weight)
        # ‖U V‖ = ‖V‖ for orthonormal U: give V the dense kernel's total energy.
        nn.init.normal_(
            self.core.weight,
            std=math.sqrt(dense_weight_var * self.geometry.out_channels / min(r, self.geometry.out_channels)),
        )
        if self.out_proj.bias is not None:
            nn.init.zeros_(self.out_proj.bias)

    def _init_decompose(self, weight: Tensor) -> None:
        (r,) = self.ranks
        g = self.geometry
        u, v = _tensorly.truncated_svd(
            weight.reshape(g.out_channels, -1), rank=min(r, g.out_channels, g.in_channels * g.kernel_numel)
        )
        self.out_proj.weight.copy_(_fit(u, (g.out_channels, r)).reshape(self.out_proj.weight.shape))
        v = _fit(v.T, (v.shape[1], r)).T  # (r, C_in·k), zero rows past the matrix rank
        self.core.weight.copy_(v.reshape(self.core.weight.shape))

    def dense_weight(self) -> Tensor:
        (r,) = self.ranks
        g = self.geometry
        u = self.out_proj.weight.reshape(g.out_channels, r)
        v = self.core.weight.reshape(r, -1)
        return (u @ v).reshape(g.out_channels, g.in_channels, *g.kernel_size)

    def kernel_norm_sq(self) -> Tensor:
        """‖UV‖²_F = Σ (UᵀU ∘ VVᵀ): two r×r products instead of the C_out×C_in·k² kernel."""
        (r,) = self.ranks
        with torch.autocast(self.core.weight.device.type, enabled=False):
            u = self.out_proj.weight.reshape(self.geometry.out_channels, r).float()
            v = self.core.weight.reshape(r, -1).float()
            return ((u.T @ u) * (v @ v.T)).sum()

    def factors(self) -> list[Tensor]:
        (r,) = self.ranks
        return [self.out_proj.weight.reshape(self.geometry.out_channels, r)]


class SVDConv3d(SVDConv2d):
    """SVD factorised ``Conv3d`` (video models), same layout as :class:`SVDConv2d`."""

    spatial_dims = 3
