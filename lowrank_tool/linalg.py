"""Linear algebra of conv kernels: unfoldings, singular values, effective and stable rank, energy, orthogonality.

A conv kernel ``W (C_out, C_in, *k)`` is a matrix once unfolded along one channel mode:

* mode ``"out"``: ``C_out × C_in·k`` — the lowering SVD/LRPET factorise (an ``SVDConv2d`` is ``U·V`` of
  this matrix) and the output-channel mode of Tucker-2;
* mode ``"in"``: ``C_in × C_out·k`` — the input-channel mode unfolding of Tucker-2.

From the singular values ``σ₁ ≥ σ₂ ≥ …`` of an unfolding:

* the **effective rank** (Roy & Vetterli 2007) ``erank = exp(−Σ pᵢ log pᵢ)``, ``pᵢ = σᵢ/‖σ‖₁``;
* the **stable rank** ``‖σ‖²/σ₁² = ‖W‖²_F/‖W‖²₂``, a robust lower bound of the rank;
* the **energy kept** at rank ``r``: ``Σ_{i≤r} σᵢ² / Σ σᵢ²`` (Eckart–Young), and the smallest rank
  keeping a given energy;
* the **orthogonality error** ``‖UᵀU − I‖_F`` of a factor matrix.

The rank policies (``energy:F``, ``erank``) and the rank analysis both stand on these functions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .errors import LowRankError

__all__ = [
    "MODES",
    "unfold",
    "singular_values",
    "effective_rank",
    "stable_rank",
    "energy_kept",
    "rank_for_energy",
    "orthogonality_error",
]

#: The channel modes a kernel can be unfolded along.
MODES = ("out", "in")

SpectrumLike = Tensor | Sequence[float]


def unfold(weight: Tensor, mode: str) -> Tensor:
    """A conv kernel ``(C_out, C_in, *k)`` as a matrix along one channel mode.

    Args:
        weight: the kernel (any number of spatial dims, including none).
        mode: ``"out"`` for ``C_out × (C_in·∏k)`` (the SVD/LRPET lowering), ``"in"`` for
            ``C_in × (C_out·∏k)`` (Tucker-2's input-channel unfolding).

    Example:
        >>> unfold(torch.zeros(64, 32, 3, 3), "out").shape
        torch.Size([64, 288])
        >>> unfold(torch.zeros(64, 32, 3, 3), "in").shape
        torch.Size([32, 576])
    """
    if weight.dim() < 2:
        raise LowRankError(f"a conv kernel has at least 2 dims (C_out, C_in, *k), got shape {tuple(weight.shape)}")
    if mode == "out":
        return weight.reshape(weight.shape[0], -1)
    if mode == "in":
        return weight.transpose(0, 1).reshape(weight.shape[1], -1)
    raise LowRankError(f"unfolding mode {mode!r} is not known; allowed: {', '.join(MODES)}")


def singular_values(weight: Tensor, mode: str = "out") -> Tensor:
    """Singular values (descending, float64) of a kernel's unfolding along ``mode``.

    Args:
        weight: the kernel ``(C_out, C_in, *k)``; it is detached and copied to float64.
        mode: ``"out"`` or ``"in"`` (see :func:`unfold`).

    Example:
        >>> singular_values(torch.eye(3).reshape(3, 3, 1, 1)).tolist()
        [1.0, 1.0, 1.0]
    """
    matrix = unfold(weight.detach().to(torch.float64), mode)
    # Same values either way; LAPACK is much faster on the tall orientation (measured: 64×576 took 16×
    # longer than 576×64 with 2 threads on a busy 2-core machine).
    return torch.linalg.svdvals(matrix.T if matrix.shape[0] < matrix.shape[1] else matrix)


def _spectrum(s: SpectrumLike) -> Tensor:
    return torch.as_tensor(s, dtype=torch.float64).detach().flatten().cpu()


def effective_rank(s: SpectrumLike) -> float:
    """Effective rank ``exp(−Σ pᵢ log pᵢ)`` with ``pᵢ = σᵢ/‖σ‖₁``; zeros are ignored, all-zero gives 0.

    Args:
        s: singular values.

    Example:
        >>> effective_rank([2.0, 2.0, 0.0])
        2.0
    """
    s = _spectrum(s)
    s = s[s > 0]
    if s.numel() == 0:
        return 0.0
    p = s / s.sum()
    return float(torch.exp(-(p * p.log()).sum()))


def stable_rank(s: SpectrumLike) -> float:
    """Stable rank ``Σσᵢ² / σ_max²`` (all-zero gives 0).

    Args:
        s: singular values.

    Example:
        >>> stable_rank([2.0, 1.0])
        1.25
    """
    s = _spectrum(s)
    top = float(s.abs().max()) if s.numel() else 0.0
    if top == 0.0:
        return 0.0
    return float((s**2).sum()) / top**2


def energy_kept(s: SpectrumLike, r: int) -> float:
    """Fraction of the squared Frobenius norm the best rank-``r`` approximation keeps: ``Σ_{i<r} σᵢ² / Σ σᵢ²``.

    Args:
        s: singular values in descending order.
        r: the rank (``r ≥`` the number of values keeps everything); all-zero values give 1.

    Example:
        >>> energy_kept([3.0, 1.0], 1)
        0.9
    """
    if isinstance(r, bool) or not isinstance(r, int) or r < 0:
        raise LowRankError(
            f"rank {r!r} is not a non-negative integer; pass the number of singular values kept, e.g. 16"
        )
    sq = _spectrum(s) ** 2
    total = float(sq.sum())
    if total == 0.0:
        return 1.0
    return min(1.0, float(sq[:r].sum()) / total)


def rank_for_energy(s: SpectrumLike, energy: float) -> int:
    """The smallest rank ``r ≥ 1`` whose best approximation keeps at least ``energy`` of ``Σσᵢ²``.

    Args:
        s: singular values in descending order.
        energy: the fraction to keep, in (0, 1].

    Example:
        >>> rank_for_energy([3.0, 1.0, 0.0], 0.95)
        2
    """
    if isinstance(energy, bool) or not isinstance(energy, (int, float)) or not 0 < energy <= 1:
        raise LowRankError(
            f"energy {energy!r} is not a fraction in (0, 1]; pass e.g. 0.9 to keep 90% of the squared norm"
        )
    sq = _spectrum(s) ** 2
    total = float(sq.sum())
    if total == 0.0 or sq.numel() == 0:
        return 1
    kept = torch.cumsum(sq, 0) / total
    r = int(torch.searchsorted(kept, torch.tensor([float(energy)], dtype=torch.float64))[0]) + 1
    return max(1, min(r, sq.numel()))


def orthogonality_error(factor: Tensor) -> float:
    """``‖UᵀU − I‖_F`` of a factor matrix ``U`` (rows = channels, columns = rank); 0 for orthonormal columns.

    Args:
        factor: a matrix as returned by :meth:`LowRankConv.factors`.

    Example:
        >>> orthogonality_error(torch.eye(4)[:, :2])
        0.0
    """
    if factor.dim() != 2:
        raise LowRankError(f"a factor matrix is 2-D (channels × rank), got shape {tuple(factor.shape)}")
    u = factor.detach().to(torch.float64)
    gram = u.T @ u
    return float(torch.linalg.matrix_norm(gram - torch.eye(gram.shape[0], dtype=torch.float64)))
