"""What a rank means, what a factorised layer costs, and the solver for parameter/MAC budgets.

Definitions (also in the README):

* a **ratio** ``0 < ρ ≤ 1`` keeps that fraction of the channels in each factorised mode:
  Tucker-2 ``r_in = ⌈ρ·C_in⌉, r_out = ⌈ρ·C_out⌉``; SVD ``r = ⌈ρ·min(C_out, C_in·k)⌉`` (k = kernel
  elements, so for a 1×1 conv ``min(C_in, C_out)``); CP ``R = ⌈ρ·min(C_in, C_out)⌉``;
* an **integer** ``R ≥ 1`` is an absolute rank, capped at the mode's size;
* ``energy:E`` (0 < E ≤ 1, needs the layer's weights) keeps, per mode, the smallest rank whose
  truncation keeps the fraction E of the kernel's Frobenius energy (Σ_{i<r} σ_i² ≥ E·Σ σ_i²);
* ``erank`` (needs the weights) takes, per mode, ⌈effective rank⌉, erank = exp(−Σ p_i log p_i),
  p_i = σ_i/‖σ‖₁ (the survey's measure). Tucker-2 uses the output- and input-channel unfoldings
  (C_out × C_in·k, C_in × C_out·k); SVD and CP the C_out × C_in·k matrix;
* ``round_to N`` rounds every rank up to a multiple of N (capped at the mode's size).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..choices import DEFAULT_ROUND_TO, FORMAT_CHOICES
from ..errors import LowRankError
from ..layers import supports
from ..layers.base import ConvGeometry
from ..linalg import effective_rank, rank_for_energy, singular_values
from .options import RankSpec

__all__ = [
    "DEFAULT_ROUND_TO",
    "RankSpec",
    "choose_format",
    "ranks_for",
    "layer_cost",
    "dense_cost",
    "solve_ratio",
    "FORMAT_CHOICES",
]


def choose_format(requested: str, g: ConvGeometry) -> tuple[str, str | None]:
    """The format a layer gets for a requested one, and a note when it differs."""
    if requested not in FORMAT_CHOICES:
        raise LowRankError(f"unknown format {requested!r}; expected one of {', '.join(FORMAT_CHOICES)}")
    if g.is_pointwise:
        # Tucker-2 of a 1×1 kernel would add a pointless middle 1×1 layer; SVD is the same factorisation.
        return "svd", (None if requested in ("auto", "svd") else f"1x1 conv uses svd instead of {requested}")
    if requested == "auto":
        return "tucker2", None
    if not supports(requested, g.ndim):
        return "tucker2", f"{requested} supports 2-D kernels only; used tucker2"
    return requested, None


def _round(r: int, full: int, round_to: int) -> int:
    if round_to > 1:
        r = math.ceil(r / round_to) * round_to
    return max(1, min(r, full))


def ranks_for(fmt: str, g: ConvGeometry, spec: RankSpec, round_to: int = 1, weight: Any = None) -> tuple[int, ...]:
    """The concrete ranks of one layer for a rank request (see the module docstring).

    ``weight`` (the dense kernel) is needed for ``energy`` and ``erank`` requests.
    """
    dims: tuple[int, ...]
    if fmt == "tucker2":
        dims = (g.in_channels, g.out_channels)
    elif fmt == "svd":
        dims = (min(g.out_channels, g.in_channels * g.kernel_numel),)
    elif fmt == "cp":
        dims = (min(g.in_channels, g.out_channels),)
    else:  # pragma: no cover - choose_format returns only the above
        raise LowRankError(f"unknown format {fmt!r}")
    if spec.needs_weights:
        if weight is None:
            raise LowRankError(
                f"rank {spec} is computed from the layer's weights; pass the model with its trained weights"
            )
        raw = _spectral_ranks(fmt, weight, spec)
    elif spec.kind == "ratio":
        raw = [math.ceil(spec.value * d - 1e-9) for d in dims]
    else:
        raw = [int(spec.value)] * len(dims)
    return tuple(_round(r, d, round_to) for r, d in zip(raw, dims, strict=True))


def _spectral_ranks(fmt: str, weight: Any, spec: RankSpec) -> list[int]:
    def one(mode: str) -> int:
        s = singular_values(weight, mode)
        s = s[s > s[0] * 1e-6] if s.numel() and s[0] > 0 else s  # float32 round-off is not rank
        if spec.kind == "energy":
            return rank_for_energy(s, spec.value)
        return max(1, math.ceil(effective_rank(s) - 1e-9))

    return [one("in"), one("out")] if fmt == "tucker2" else [one("out")]


@dataclass(frozen=True)
class SpatialSizes:
    """Per-sample spatial sizes summed over calls: input, output, and CP's intermediate (H_out·W_in)."""

    inp: int
    out: int
    mid: int


def dense_cost(g: ConvGeometry, sizes: SpatialSizes, groups: int = 1) -> tuple[int, int]:
    params = g.out_channels * (g.in_channels // groups) * g.kernel_numel + (g.out_channels if g.bias else 0)
    macs = sizes.out * g.out_channels * (g.in_channels // groups) * g.kernel_numel
    return params, macs


def layer_cost(fmt: str, g: ConvGeometry, ranks: Sequence[int], sizes: SpatialSizes) -> tuple[int, int]:
    """(parameters, MACs per sample) of a factorised layer."""
    k, cin, cout = g.kernel_numel, g.in_channels, g.out_channels
    bias = cout if g.bias else 0
    if fmt == "tucker2":
        r_in, r_out = ranks
        params = cin * r_in + r_in * r_out * k + r_out * cout + bias
        macs = sizes.inp * cin * r_in + sizes.out * (r_in * r_out * k + r_out * cout)
    elif fmt == "svd":
        (r,) = ranks
        params = cin * k * r + r * cout + bias
        macs = sizes.out * (cin * k * r + r * cout)
    elif fmt == "cp":
        (r,) = ranks
        kh, kw = g.kernel_size
        params = cin * r + r * kh + r * kw + r * cout + bias
        macs = sizes.inp * cin * r + sizes.mid * r * kh + sizes.out * r * (kw + cout)
    else:  # pragma: no cover
        raise LowRankError(f"unknown format {fmt!r}")
    return params, macs


def solve_ratio(
    total: Callable[[float], int], target: int, lo: float = 1e-4, hi: float = 1.0, iters: int = 40
) -> float:
    """Largest ratio ρ with ``total(ρ) ≤ target`` by bisection (``total`` non-decreasing in ρ)."""
    for _ in range(iters):
        mid = (lo + hi) / 2
        if total(mid) <= target:
            lo = mid
        else:
            hi = mid
    return lo
