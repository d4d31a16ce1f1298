"""LRPET (Guo et al., TNNLS 2024): train dense, project onto low rank with energy transfer and BN rectification.

After every epoch (or every ``project_every`` steps, ImageNet-style) each planned conv's matrix W
(C_out × C_in·k·k) is replaced by its rank-r truncated SVD. *Energy transfer* scales the kept singular
values by √α, α = ‖σ‖²/Σ_{i<r}σ_i², so the projection keeps the Frobenius energy (``energy_transfer``
is the exponent on α: 1 = the paper, 0 = plain truncation). *BN rectification* truncates diag(a)·W,
with a = γ/√(var+ε) of the batch norm after the conv (what the network actually computes), and maps
back with the regularised inverse a/(a²+1e-5). The final form is SVD convs (k×k C_in→r, 1×1 r→C_out):
the artifact's plan must use the ``svd`` format (``lowrank convert MODEL --format svd --rank R``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..errors import LowRankError
from .dense_training import DenseTraining, following_batchnorms
from .projection import project_svd

__all__ = ["LRPET"]


class LRPET(DenseTraining):
    """LRPET as a training method (``--method lrpet``).

    Args:
        project_every: also project every N optimizer steps (0: only at the end of each epoch).
        energy_transfer: exponent on the energy ratio α (1: keep the Frobenius energy; 0: plain truncation).
        bn_rectify: use the following batch norm's scale in the projection.
    """

    name = "lrpet"
    config_keys = ("project_every", "energy_transfer", "bn_rectify")

    def __init__(self, project_every: int = 0, energy_transfer: float = 1.0, bn_rectify: bool = True) -> None:
        super().__init__()
        if project_every < 0:
            raise LowRankError(f"project_every must be >= 0 (0 = once per epoch), got {project_every}")
        if energy_transfer < 0:
            raise LowRankError(
                f"energy_transfer must be >= 0 (1 = keep the Frobenius energy, 0 = plain truncation), got {energy_transfer}"
            )
        self.project_every = int(project_every)
        self.energy_transfer = float(energy_transfer)
        self.bn_rectify = bool(bn_rectify)
        self._bns: dict[str, _BatchNorm] = {}

    def check_targets(self, targets: list[tuple[str, str, list[int]]]) -> None:
        other = sorted({fmt for _, fmt, _ in targets if fmt != "svd"})
        if other:
            raise LowRankError(
                f"LRPET ends in SVD convs, but the plan has {', '.join(other)} layers; convert with "
                "`lowrank convert MODEL --format svd --rank R -o DIR` for LRPET"
            )

    def setup(self, model: nn.Module) -> None:
        super().setup(model)
        self._bns = following_batchnorms(model) if self.bn_rectify else {}

    def _bn_scale(self, name: str) -> torch.Tensor | None:
        bn = self._bns.get(name)
        if bn is None or bn.running_var is None:
            return None
        gamma = bn.weight if bn.weight is not None else torch.ones_like(bn.running_var)
        return gamma.detach() / torch.sqrt(bn.running_var + bn.eps)

    def project(self, model: nn.Module) -> None:
        with torch.no_grad():
            for name, _, ranks, conv in self.convs(model):
                conv.weight.copy_(
                    project_svd(
                        conv.weight, ranks[0], energy_transfer=self.energy_transfer, bn_scale=self._bn_scale(name)
                    )
                )

    def after_step(self, model: nn.Module, step: int) -> None:
        if self.project_every and (step + 1) % self.project_every == 0:
            self.project(model)

    def after_epoch(self, model: nn.Module, epoch: int) -> None:
        self.project(model)  # already exactly rank r in the SVD form: the plan projection is a no-op

    def state(self) -> dict[str, Any]:
        return super().state() | {
            "project_every": self.project_every,
            "energy_transfer": self.energy_transfer,
            "bn_rectify": self.bn_rectify,
            "bn_rectified_layers": len(self._bns),
        }
