"""CP convolution: 1×1 C_in→R, depthwise k×1, depthwise 1×k, 1×1 R→C_out (Lebedev et al.).

The kernel is a sum of ``R`` rank-one terms ``W[o,i,h,w] = Σ_r B[o,r]·A[r,i]·V[r,h]·H[r,w]``. Stride,
padding and dilation are split per axis between the two depthwise convs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd

from . import _tensorly
from .base import ConvGeometry, LowRankConv, orthonormal_

__all__ = ["CPConv2d"]


class CPConv2d(LowRankConv):
    """Rank-``R`` CP factorised ``Conv2d``.

    Submodules ``in_proj`` (1×1, C_in→R), ``vertical`` (depthwise kh×1), ``horizontal`` (depthwise 1×kw)
    and ``out_proj`` (1×1, R→C_out, carries the bias).

    Example:
        >>> layer = CPConv2d.from_dense(torch.nn.Conv2d(32, 32, 3, padding=1), ranks=(16,))
        >>> layer(torch.randn(1, 32, 8, 8)).shape
        torch.Size([1, 32, 8, 8])
    """

    format_name = "cp"
    num_ranks = 1
    spatial_dims = 2

    def _build(self, g: ConvGeometry, ranks: tuple[int, ...], factory: dict[str, Any]) -> None:
        if g.ndim != 2:
            raise ValueError(f"CPConv2d expects a 2-D kernel, got {g.kernel_size}")
        (r,) = ranks
        (kh, kw), (sh, sw), (dh, dw) = g.kernel_size, g.stride, g.dilation
        pad_v: str | tuple[int, int]
        pad_h: str | tuple[int, int]
        if isinstance(g.padding, str):
            pad_v = pad_h = g.padding
        else:
            pad_v, pad_h = (g.padding[0], 0), (0, g.padding[1])
        mode: Any = g.padding_mode  # one of nn.Conv2d's padding modes (the dense conv had it)
        self.in_proj = nn.Conv2d(g.in_channels, r, 1, bias=False, **factory)
        self.vertical = nn.Conv2d(
            r,
            r,
            (kh, 1),
            stride=(sh, 1),
            padding=pad_v,
            dilation=(dh, 1),
            groups=r,
            bias=False,
            padding_mode=mode,
            **factory,
        )
        self.horizontal = nn.Conv2d(
            r,
            r,
            (1, kw),
            stride=(1, sw),
            padding=pad_h,
            dilation=(1, dw),
            groups=r,
            bias=False,
            padding_mode=mode,
            **factory,
        )
        self.out_proj = nn.Conv2d(r, g.out_channels, 1, bias=g.bias, **factory)

    def forward(self, x: Tensor) -> Tensor:
        return self.out_proj(self.horizontal(self.vertical(self.in_proj(self._pad(x)))))

    def _bias_holder(self) -> _ConvNd:
        return self.out_proj

    def _init_random(self, dense_weight_var: float) -> None:
        g = self.geometry
        (r,) = self.ranks
        orthonormal_(self.in_proj.weight)
        orthonormal_(self.out_proj.weight)
        # ‖W‖² = Σ_r ‖V_r‖²‖H_r‖² with orthonormal 1×1 factors; match the dense kernel's energy.
        kh, kw = g.kernel_size
        eff = min(r, g.in_channels, g.out_channels)
        std = (dense_weight_var * g.out_channels * g.in_channels / eff) ** 0.25
        nn.init.normal_(self.vertical.weight, std=std)
        nn.init.normal_(self.horizontal.weight, std=std)
        if self.out_proj.bias is not None:
            nn.init.zeros_(self.out_proj.bias)

    def _init_decompose(self, weight: Tensor) -> None:
        (r,) = self.ranks
        if not bool(weight.any()):  # CP-ALS cannot start from a zero kernel; zero is its exact decomposition
            self._init_random(1.0)
            self.out_proj.weight.zero_()
            return
        weights, (b, a, v, h) = _tensorly.cp(weight, rank=r)
        self.in_proj.weight.copy_(a.T.reshape(self.in_proj.weight.shape))
        self.vertical.weight.copy_(v.T.reshape(self.vertical.weight.shape))
        self.horizontal.weight.copy_(h.T.reshape(self.horizontal.weight.shape))
        self.out_proj.weight.copy_((b * weights[None, :]).reshape(self.out_proj.weight.shape))

    def dense_weight(self) -> Tensor:
        g = self.geometry
        (r,) = self.ranks
        a = self.in_proj.weight.reshape(r, g.in_channels)
        v = self.vertical.weight.reshape(r, g.kernel_size[0])
        h = self.horizontal.weight.reshape(r, g.kernel_size[1])
        b = self.out_proj.weight.reshape(g.out_channels, r)
        return torch.einsum("or,ri,rh,rw->oihw", b, a, v, h)

    def factors(self) -> list[Tensor]:
        g = self.geometry
        (r,) = self.ranks
        return [self.in_proj.weight.reshape(r, g.in_channels).T, self.out_proj.weight.reshape(g.out_channels, r)]
