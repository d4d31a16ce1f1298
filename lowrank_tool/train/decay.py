"""How weight decay reaches the weights: per parameter, or on the low-rank layers' reconstructed kernels.

Plain weight decay pulls every factor of a low-rank layer towards zero on its own. What the layer computes
is the product of its factors, and the decay of a product is not the product of the decays: for
W = U·V, decaying U and V separately penalises ‖U‖² + ‖V‖², which is minimised (for a fixed W) by
balancing the factors' scales, not by keeping W small. **Frobenius decay** (Khodak et al. 2021,
*Initialization and Regularization of Factorized Neural Layers*) decays the kernel the layer computes
instead: the loss gains ``weight_decay / 2 · ‖W(U, V)‖²_F`` for every low-rank layer, and its factors
leave the optimizer's decay group. Dense layers, the classifier and the dense convs a plan keeps are
decayed as before; biases and normalisation weights never are.

With SGD the added term has exactly the gradient plain decay would give a dense W. With AdamW the term is
coupled (it goes through Adam's scaling) while the dense layers keep decoupled decay.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..layers import LowRankConv

__all__ = ["param_groups", "frobenius_penalty"]


def _factor_ids(model: nn.Module) -> set[int]:
    """ids of the weights inside low-rank layers (the factors)."""
    return {id(p) for m in model.modules() if isinstance(m, LowRankConv) for p in m.parameters() if p.dim() >= 2}


def param_groups(model: nn.Module, weight_decay: float, frobenius: bool = False) -> list[dict[str, Any]]:
    """The optimizer's parameter groups: decay on weights with ≥2 dims, none on biases and norm scales.

    With ``frobenius`` the low-rank layers' factors are not decayed either: :func:`frobenius_penalty`
    decays their product.
    """
    skip = _factor_ids(model) if frobenius else set()
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 and id(p) not in skip else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def frobenius_penalty(model: nn.Module, weight_decay: float) -> torch.Tensor | None:
    """``weight_decay / 2 · Σ ‖W‖²_F`` over the reconstructed kernels of every low-rank layer (float32).

    ``None`` when the model has no low-rank layer or the decay is 0. Differentiable w.r.t. the factors.

    Example:
        >>> model = lowrank_tool.convert("resnet18", rank=0.3)
        >>> opt = torch.optim.SGD(param_groups(model, 5e-4, frobenius=True), lr=0.1, momentum=0.9)
        >>> loss = criterion(model(x), y) + frobenius_penalty(model, 5e-4)  # doctest: +SKIP
    """
    if weight_decay == 0:
        return None
    total: torch.Tensor | None = None
    for m in model.modules():
        if isinstance(m, LowRankConv):
            sq = m.kernel_norm_sq()
            total = sq if total is None else total + sq
    return None if total is None else total * (0.5 * weight_decay)
