"""Decompositions of trained kernels, computed with tensorly on float64 NumPy arrays.

Kept apart from the layers so that the layers hold only structure and the numerics live in one place.
The global tensorly backend is never changed (that would leak into the user's code).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def _np(weight: Tensor) -> np.ndarray:
    return weight.detach().to("cpu", torch.float64).numpy()


def tucker2(weight: Tensor, r_out: int, r_in: int, n_iter_max: int = 10) -> tuple[Tensor, Tensor, Tensor]:
    """Truncated HOSVD (refined by a few HOOI sweeps) on the two channel modes of a conv kernel.

    Returns ``(u_out, core, u_in)`` with ``u_out`` (C_out, r_out), ``u_in`` (C_in, r_in) orthonormal
    columns and ``core`` (r_out, r_in, *k), so that ``W = core ×₀ u_out ×₁ u_in``.
    """
    from tensorly.decomposition import partial_tucker

    w = _np(weight)
    # A mode's rank cannot exceed its unfolding's rank; larger requested ranks keep zero channels.
    r_out = min(r_out, w.shape[0], w[0].size)
    r_in = min(r_in, w.shape[1], w.size // w.shape[1])
    if r_out >= min(w.shape[0], w[0].size) and r_in >= min(w.shape[1], w.size // w.shape[1]):
        n_iter_max = 0  # full rank: the HOSVD is exact, iterations only add round-off
    (core, (u_out, u_in)), _ = partial_tucker(w, rank=[r_out, r_in], modes=[0, 1], init="svd", n_iter_max=n_iter_max)
    return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in (u_out, core, u_in))  # type: ignore[return-value]


def truncated_svd(matrix: Tensor, rank: int) -> tuple[Tensor, Tensor, Tensor]:
    """``U (m, r), S (r,), Vt (r, n)`` of the best rank-``rank`` approximation."""
    import tensorly as tl

    u, s, vt = tl.svd_interface(_np(matrix), n_eigenvecs=rank, method="truncated_svd")
    return torch.from_numpy(u.copy()), torch.from_numpy(s.copy()), torch.from_numpy(vt.copy())


def cp(weight: Tensor, rank: int, n_iter_max: int = 500, seed: int = 0) -> tuple[Tensor, list[Tensor]]:
    """CP (PARAFAC, ALS) decomposition: ``weights (R,)`` and one factor per mode, each (dim, R)."""
    from tensorly.decomposition import parafac

    cp_tensor = parafac(_np(weight), rank=rank, n_iter_max=n_iter_max, init="random", random_state=seed, tol=1e-12)
    weights, factors = cp_tensor
    return torch.from_numpy(np.asarray(weights).copy()), [torch.from_numpy(f.copy()) for f in factors]
