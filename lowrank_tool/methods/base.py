"""The interface between the trainer and a training method (ELRT, dense, and later LRPET, DeepTwist).

The trainer owns the loop; a method only answers at fixed points: once before training (``setup``),
every step (``penalty`` — an extra loss term — and ``after_step``), every epoch (``after_epoch``, before
the evaluation), at every checkpoint (``deployable``: what to save) and at the end (``finalize``, which may
change the model's structure, e.g. decompose a dense model).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import LowRankError
from ..layers import LowRankConv

__all__ = ["Method", "Dense"]


class Method:
    """Base class of training methods: every hook is a no-op."""

    name: ClassVar[str] = ""
    #: TrainConfig fields passed to the constructor as keyword arguments of the same name.
    config_keys: ClassVar[tuple[str, ...]] = ()

    def setup(self, model: nn.Module) -> None:
        """Called once before training with the (unwrapped) model."""

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        """An extra loss term for this step (``None``: nothing to add)."""
        return None

    def after_step(self, model: nn.Module, step: int) -> None:
        """Called after each optimizer step with the global step index."""

    def after_epoch(self, model: nn.Module, epoch: int) -> None:
        """Called after each epoch (0-based) and its evaluation."""

    def finalize(self, model: nn.Module) -> nn.Module:
        """Called once when training has finished; may change the model's structure in place; returns it."""
        return model

    def deployable(self, model: nn.Module) -> nn.Module:
        """The model to save at a checkpoint (the artifact's structure); ``model`` itself by default."""
        return model

    def state(self) -> dict[str, Any]:
        """A JSON-able description of the method and its options."""
        return {"name": self.name}


class Dense(Method):
    """The baseline: plain training, no regulariser, no structure change (of a dense model only)."""

    name = "dense"

    def setup(self, model: nn.Module) -> None:
        names = [name for name, m in model.named_modules() if isinstance(m, LowRankConv)]
        if names:
            raise LowRankError(
                f"method='dense' trains the dense baseline, but this model has {len(names)} low-rank layers (e.g. "
                f"{names[0] or 'the model itself'}); build the baseline with convert(model, dense=True), or train these "
                "layers with method='elrt' (orth='none' for no regulariser)"
            )
