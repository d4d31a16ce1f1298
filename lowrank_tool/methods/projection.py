"""Low-rank projections of dense conv kernels, shared by LRPET and DeepTwist.

* :func:`lower` / :func:`raise_` reshape a kernel (C_out, C_in, k_h, k_w) to a matrix and back:
  ``out`` — C_out × C_in·k_h·k_w (what an SVD conv factorises, LRPET's matrix); ``spatial`` —
  (C_out·k_h) × (C_in·k_w) (a vertical × horizontal separation).
* :func:`project_svd` keeps the top ``r`` singular values of a matrix, optionally with LRPET's **energy
  transfer** (kept values scaled by √α, α = ‖σ‖² / Σ_{i<r} σ_i², so the Frobenius norm is preserved;
  ``energy_transfer`` is the exponent applied to α, 0 = plain truncation, 1 = full transfer) and its
  **BN rectification** (truncate diag(a)·W, a = γ/√(var+ε) of the following batch norm, then map back
  with the regularised inverse a/(a²+1e-5)).
* :func:`project_tiled` truncates each tile of the lowered matrix separately (DeepTwist's tiled SVD).
* :func:`project_like` projects a kernel onto exactly the structure of a low-rank format (Tucker-2 HOSVD,
  SVD, CP), by decomposing with that format and merging back: what the final low-rank layer can hold.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn.modules.conv import _ConvNd

from ..choices import LOWERINGS
from ..errors import LowRankError
from ..layers import get_format

__all__ = ["LOWERINGS", "lower", "raise_", "project_svd", "project_tiled", "project_like", "BN_EPS_INVERSE"]

#: The regulariser of LRPET's BN-rectification inverse a / (a² + 1e-5).
BN_EPS_INVERSE = 1e-5


def lower(weight: Tensor, lowering: str = "out") -> Tensor:
    """A kernel as a matrix: ``out`` (C_out × C_in·∏k) or ``spatial`` ((C_out·k_h) × (C_in·k_w), 2-D kernels)."""
    c_out, c_in = weight.shape[:2]
    if lowering in ("out", "tiled"):
        return weight.reshape(c_out, -1)
    if lowering == "spatial":
        if weight.dim() != 4:
            raise LowRankError(
                f"lowering 'spatial' needs a 2-D kernel, got shape {tuple(weight.shape)}; use lowering 'out'"
            )
        kh, kw = weight.shape[2:]
        return weight.permute(0, 2, 1, 3).reshape(c_out * kh, c_in * kw)
    raise LowRankError(f"lowering {lowering!r} is not known; use one of: {', '.join(LOWERINGS)}")


def raise_(matrix: Tensor, shape: torch.Size | tuple[int, ...], lowering: str = "out") -> Tensor:
    """The inverse of :func:`lower`."""
    if lowering in ("out", "tiled"):
        return matrix.reshape(shape)
    c_out, c_in, kh, kw = shape
    return matrix.reshape(c_out, kh, c_in, kw).permute(0, 2, 1, 3).reshape(shape)


def _truncate(matrix: Tensor, rank: int, energy_transfer: float) -> Tensor:
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    r = max(1, min(rank, s.numel()))
    kept = s[:r]
    if energy_transfer:
        total, head = float((s * s).sum()), float((kept * kept).sum())
        if head > 0:
            kept = kept * (total / head) ** (0.5 * energy_transfer)
    return (u[:, :r] * kept) @ vh[:r]


def project_svd(
    weight: Tensor, rank: int, *, lowering: str = "out", energy_transfer: float = 0.0, bn_scale: Tensor | None = None
) -> Tensor:
    """The kernel whose lowered matrix is the rank-``rank`` truncation of ``weight``'s.

    Args:
        weight: conv kernel (C_out, C_in, *k).
        rank: rank kept.
        lowering: ``out`` or ``spatial`` (see :func:`lower`).
        energy_transfer: exponent on α = ‖σ‖²/Σ_{i<r}σ_i² scaling the kept values by α^(e/2); 1 keeps
            the Frobenius norm of the (scaled) matrix.
        bn_scale: ``a = γ/√(var+ε)`` of the batch norm after the conv (length C_out, ``out`` lowering):
            truncate diag(a)·W and map back with the regularised inverse a/(a²+1e-5).

    Example:
        >>> w = torch.randn(16, 8, 3, 3)
        >>> torch.linalg.matrix_rank(project_svd(w, 4).reshape(16, -1)).item()
        4
    """
    if rank < 1:
        raise LowRankError(f"rank must be >= 1, got {rank}")
    w = weight.detach().double()
    matrix = lower(w, lowering)
    if bn_scale is not None:
        if lowering != "out":
            raise LowRankError("BN rectification works on the 'out' lowering (rows = output channels)")
        a = bn_scale.detach().double().reshape(-1, 1)
        projected = _truncate(a * matrix, rank, energy_transfer)
        projected = (a / (a * a + BN_EPS_INVERSE)) * projected
    else:
        projected = _truncate(matrix, rank, energy_transfer)
    return raise_(projected, w.shape, lowering).to(weight.dtype)


def project_tiled(weight: Tensor, rank: int, tiles: int = 2, energy_transfer: float = 0.0) -> Tensor:
    """Truncate each of ``tiles × tiles`` blocks of the ``out``-lowered matrix to a proportional rank.

    A tile of size m×n gets rank ⌈rank · min(m, n) / min(C_out, C_in·∏k)⌉, so the whole matrix keeps
    about ``rank`` per row/column band.
    """
    if tiles < 1:
        raise LowRankError(f"tiles must be >= 1, got {tiles}")
    w = weight.detach().double()
    matrix = lower(w, "out").clone()
    rows, cols = matrix.shape
    full = min(rows, cols)
    row_edges = [round(i * rows / tiles) for i in range(tiles + 1)]
    col_edges = [round(j * cols / tiles) for j in range(tiles + 1)]
    for i in range(tiles):
        for j in range(tiles):
            r0, r1, c0, c1 = row_edges[i], row_edges[i + 1], col_edges[j], col_edges[j + 1]
            if r1 <= r0 or c1 <= c0:
                continue
            block = matrix[r0:r1, c0:c1]
            tile_rank = max(1, math.ceil(rank * min(block.shape) / full))
            matrix[r0:r1, c0:c1] = _truncate(block, tile_rank, energy_transfer)
    return raise_(matrix, w.shape, "out").to(weight.dtype)


def project_like(conv: _ConvNd, format_name: str, ranks: list[int] | tuple[int, ...]) -> Tensor:
    """The kernel of the ``format_name`` layer fitted to ``conv`` (decompose, then merge back)."""
    layer = get_format(format_name, conv.weight.dim() - 2).from_dense(conv, tuple(ranks), init="decompose")
    return layer.dense_weight().detach().to(conv.weight.dtype)
