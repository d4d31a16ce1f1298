"""DeepTwist (Lee et al. 2019, "Learning Low-Rank Approximation for CNNs"): dense training, periodic distortion.

The network keeps its dense structure; every ``distort_every`` optimizer steps (S_D, 200 in the paper)
each planned conv's kernel is replaced by its low-rank reconstruction, and training goes on from the
distorted weights — SGD is pulled towards a flat minimum where the low-rank error costs little. The
distortion's form (``lowering``):

* ``format`` (default): the plan's own format — Tucker-2 (HOSVD at (r_in, r_out)), SVD or CP;
* ``out``: truncated SVD of the C_out × C_in·k·k matrix; ``spatial``: of the (C_out·k_h) × (C_in·k_w)
  matrix; ``tiled``: SVD per tile of the ``out`` matrix (``tiles`` × ``tiles`` blocks). These keep
  the rank fraction r/min(C_out, C_in·k·k) of the plan (for Tucker-2, r_out/C_out).

At the end of every epoch the kernels are distorted in the plan's form, so the model evaluated and
saved is exactly the low-rank one.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from ..choices import DEEPTWIST_LOWERINGS
from ..errors import LowRankError
from .dense_training import DenseTraining
from .projection import project_like, project_svd, project_tiled

__all__ = ["DeepTwist", "DEEPTWIST_LOWERINGS"]


class DeepTwist(DenseTraining):
    """DeepTwist as a training method (``--method deeptwist``).

    Args:
        distort_every: S_D, optimizer steps between distortions.
        lowering: ``format``, ``out``, ``spatial`` or ``tiled`` (see the module docstring).
        tiles: tiles per side for ``tiled``.
    """

    name = "deeptwist"
    config_keys = ("distort_every", "lowering", "tiles")

    def __init__(self, distort_every: int = 200, lowering: str = "format", tiles: int = 2) -> None:
        super().__init__()
        if distort_every < 1:
            raise LowRankError(f"distort_every must be >= 1 step, got {distort_every}")
        if lowering not in DEEPTWIST_LOWERINGS:
            raise LowRankError(f"lowering {lowering!r} is not known; use one of: {', '.join(DEEPTWIST_LOWERINGS)}")
        if tiles < 1:
            raise LowRankError(f"tiles must be >= 1, got {tiles}")
        self.distort_every = int(distort_every)
        self.lowering = lowering
        self.tiles = int(tiles)
        self.distortions = 0

    def _svd_rank(self, conv: _ConvNd, fmt: str, ranks: list[int]) -> int:
        c_out = conv.weight.shape[0]
        fraction = ranks[-1] / c_out if fmt == "tucker2" else ranks[0] / min(c_out, conv.weight[0].numel())
        if self.lowering == "spatial":
            kh, kw = conv.weight.shape[2:]
            full = min(c_out * kh, conv.weight.shape[1] * kw)
        else:
            full = min(c_out, conv.weight[0].numel())
        return max(1, math.ceil(fraction * full))

    def project(self, model: nn.Module) -> None:
        with torch.no_grad():
            for _, fmt, ranks, conv in self.convs(model):
                if self.lowering == "format":
                    new = project_like(conv, fmt, ranks)
                elif self.lowering == "tiled":
                    new = project_tiled(conv.weight, self._svd_rank(conv, fmt, ranks), self.tiles)
                else:
                    new = project_svd(conv.weight, self._svd_rank(conv, fmt, ranks), lowering=self.lowering)
                conv.weight.copy_(new)
        self.distortions += 1

    def after_step(self, model: nn.Module, step: int) -> None:
        if (step + 1) % self.distort_every == 0:
            self.project(model)

    def after_epoch(self, model: nn.Module, epoch: int) -> None:
        self.project_to_plan(model)

    def state(self) -> dict[str, Any]:
        return super().state() | {
            "distort_every": self.distort_every,
            "lowering": self.lowering,
            "tiles": self.tiles,
            "distortions": self.distortions,
        }
