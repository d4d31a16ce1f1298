"""The base of methods that train the dense network and end in the plan's low-rank structure.

LRPET and DeepTwist train full kernels and push them towards low rank; the artifact they start from
is a converted one, whose plan says which layers become low-rank, in which format, at which ranks —
the same plan ELRT trains directly. So every method starts from the same kind of artifact and ends in
the same kind of artifact (plan + low-rank weights) that ``lowrank export`` takes:

* ``setup`` merges each planned low-rank layer back into its dense conv (exactly: ``to_dense``);
* training runs on the dense model; the subclass projects the planned convs (``project``) at its
  points (LRPET every epoch / N steps, DeepTwist every S_D steps), and always in the plan's own form at
  the end of every epoch, so the model that is evaluated and saved is exactly low-rank;
* ``deployable`` rebuilds the plan's structure from the projected kernels (decomposition of an exactly
  low-rank kernel is exact) — what the trainer saves as ``model.safetensors`` and ``best.safetensors``.
  ``train_state.pt`` keeps the dense weights, so ``--resume`` continues the dense training exactly.
"""

from __future__ import annotations

import copy
from typing import Any, cast

import torch
import torch.fx
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from ..conversion_plan import ConversionPlan, attach_plan, plan_of
from ..convert.apply import apply_plan, replace_module
from ..errors import LowRankError
from ..layers import LowRankConv
from .base import Method
from .projection import project_like

__all__ = ["DenseTraining", "following_batchnorms"]


def following_batchnorms(model: nn.Module) -> dict[str, _BatchNorm]:
    """``conv name → the batch norm that directly consumes its output`` (found with torch.fx; {} when untraceable)."""

    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:
        return {}
    modules = dict(model.named_modules())
    result: dict[str, _BatchNorm] = {}
    for node in graph.nodes:
        if node.op == "call_module" and isinstance(modules.get(str(node.target)), (nn.Conv2d, nn.Conv3d)):
            users = list(node.users)
            if (
                len(users) == 1
                and users[0].op == "call_module"
                and isinstance(modules.get(str(users[0].target)), nn.modules.batchnorm._BatchNorm)
            ):
                result[str(node.target)] = modules[str(users[0].target)]
    return result


class DenseTraining(Method):
    """Train dense, project onto the plan's low-rank structure, save that structure (see module docstring)."""

    def __init__(self) -> None:
        self.targets: list[tuple[str, str, list[int]]] = []
        self.plan: ConversionPlan | None = None

    def setup(self, model: nn.Module) -> None:
        plan = plan_of(model)
        targets = [(e.name, e.format, list(e.ranks or [])) for e in plan.converted_layers] if plan is not None else []
        if not targets:
            raise LowRankError(
                f"method {self.name!r} needs a converted model: its plan says which layers become low-rank and at which ranks; "
                "convert with `lowrank convert MODEL --rank R -o DIR` (not --dense) and train DIR"
            )
        self.check_targets(targets)
        self.targets, self.plan = targets, plan
        for name, _, _ in targets:
            module = model.get_submodule(name)
            if isinstance(module, LowRankConv):
                replace_module(model, name, module.to_dense())

    def check_targets(self, targets: list[tuple[str, str, list[int]]]) -> None:
        """Refuse plans the method cannot honour (override)."""

    def convs(self, model: nn.Module) -> list[tuple[str, str, list[int], _ConvNd]]:
        """(name, format, ranks, dense conv) of each planned layer; ``setup`` made every one of them dense."""
        return [(name, fmt, ranks, cast(_ConvNd, model.get_submodule(name))) for name, fmt, ranks in self.targets]

    def project(self, model: nn.Module) -> None:
        """Replace each planned conv's kernel by its low-rank version (in place, no gradient)."""
        raise NotImplementedError

    def project_to_plan(self, model: nn.Module) -> None:
        """Project each planned conv onto exactly what its planned layer can hold."""
        with torch.no_grad():
            for _, fmt, ranks, conv in self.convs(model):
                conv.weight.copy_(project_like(conv, fmt, ranks))

    def after_epoch(self, model: nn.Module, epoch: int) -> None:
        self.project(model)
        self.project_to_plan(model)

    def deployable(self, model: nn.Module) -> nn.Module:
        """A copy of ``model`` in the plan's low-rank structure (what is saved and exported)."""
        out = self._swap_in_plan_layers(copy.deepcopy(model))
        plan = plan_of(model)
        return attach_plan(out, plan) if plan is not None else out

    def finalize(self, model: nn.Module) -> nn.Module:
        """Swap the planned dense convs of ``model`` for their low-rank layers, in place (after a plan projection)."""
        self.project_to_plan(model)
        return self._swap_in_plan_layers(model)

    def _swap_in_plan_layers(self, model: nn.Module) -> nn.Module:
        """Replace each planned dense conv of ``model`` by its layer decomposed from it, in place."""
        assert self.plan is not None, "setup() first"
        return apply_plan(model, copy.deepcopy(self.plan), init="decompose")

    def state(self) -> dict[str, Any]:
        return {"name": self.name, "layers": len(self.targets)}
