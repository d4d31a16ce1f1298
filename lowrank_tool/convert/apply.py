"""Swap the planned convolutions for low-rank layers, in place, by fully qualified name.

The swap is torch.fx's ``replace_node_module`` idiom (set the new module on its parent under the same
name), done on the user's own module rather than on a ``GraphModule``: the converted model keeps its
class, its methods and its state-dict layout, which is what lets :func:`lowrank_tool.load` replay a plan
on a freshly built model, and lets detection models (which fx cannot trace whole) convert too.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..choices import FORMAT_CHOICES
from ..conversion_plan import ConversionPlan, LayerPlan
from ..errors import LowRankError
from ..layers import get_format
from ..layers.base import ConvGeometry, Init
from .options import RankSpec
from .rank import ranks_for
from .support import conv_support

__all__ = ["apply_plan", "set_submodule", "get_submodule"]


def get_submodule(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise LowRankError(
            f"the model has no layer {name!r} that the plan names; pass the model class the plan was made from"
        ) from None


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _check_matches(module: nn.Module, entry: LayerPlan) -> ConvGeometry:
    """The geometry to build ``entry``'s layer with, after checking that ``module`` is what the plan says."""
    expected = (entry.in_channels, entry.out_channels, tuple(entry.kernel_size), tuple(entry.stride), entry.groups)
    got = None
    if isinstance(module, (nn.Conv2d, nn.Conv3d)):
        got = (module.in_channels, module.out_channels, tuple(module.kernel_size), tuple(module.stride), module.groups)
    if got != expected or not isinstance(module, (nn.Conv2d, nn.Conv3d)):
        what = type(module).__name__ if got is None else f"{type(module).__name__}{got}"
        raise LowRankError(
            f"the plan does not match the model at {entry.name!r}: found {what}, expected {entry.kind}"
            f"(in={entry.in_channels}, out={entry.out_channels}, kernel={entry.kernel_size}, stride={entry.stride}, groups={entry.groups}); "
            "build the model with the same name and arguments the plan was made from"
        )
    # The plan may come from a file: convert a layer only if this toolkit knows its forward, the way the
    # plan says (a plan cannot make a weight-standardised conv plain, nor drop a "same" padding).
    support = conv_support(module)
    if isinstance(support, str):
        raise LowRankError(
            f"the plan converts {entry.name!r}, but that layer stays dense here ({support}); re-create the plan with this model"
        )
    if support.dynamic_same != entry.dynamic_same:
        raise LowRankError(
            f"the plan does not match the model at {entry.name!r}: dynamic 'same' padding is {entry.dynamic_same} in the plan "
            f"and {support.dynamic_same} in the model; re-create the plan with this model"
        )
    return support


def _check_ranks(entry: LayerPlan, geometry: ConvGeometry) -> None:
    """A plan's ranks must fit the layer (a file could ask for rank 100000 and 360 GB of factors)."""
    if entry.format not in FORMAT_CHOICES:  # a registered format knows its own ranks
        return
    full = ranks_for(entry.format, geometry, RankSpec("ratio", 1.0), 1)
    ranks = tuple(entry.ranks or ())
    if len(ranks) != len(full) or any(r > f for r, f in zip(ranks, full, strict=False)):
        raise LowRankError(
            f"the plan gives {entry.name!r} ({entry.format}) ranks {list(ranks)}, but that layer takes "
            f"{len(full)} rank(s) of at most {list(full)}; re-create the plan with this model"
        )


@torch.no_grad()
def apply_plan(
    model: nn.Module,
    plan: ConversionPlan,
    init: Init = "random",
    source: nn.Module | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> nn.Module:
    """Replace every converted layer of ``plan`` in ``model`` (modified in place and returned).

    ``source`` is the model whose dense convs are read (default: ``model`` itself); ``convert`` passes
    the user's model here and a copy that skipped those convs as ``model``. With ``init="decompose"``
    each plan entry gets the relative Frobenius error of its approximation. ``progress(done, total,
    name)`` is called after each layer.
    """
    source = model if source is None else source
    todo = plan.converted_layers
    for done, entry in enumerate(todo, 1):
        module = get_submodule(source, entry.name)
        geometry = _check_matches(module, entry)
        assert isinstance(module, (nn.Conv2d, nn.Conv3d))  # _check_matches raised otherwise
        cls = get_format(entry.format, len(entry.kernel_size))
        _check_ranks(entry, geometry)
        layer = cls.from_dense(module, tuple(entry.ranks or ()), init=init, geometry=geometry)
        if init == "decompose":
            ref = module.weight.detach().double()
            err = torch.linalg.vector_norm(layer.dense_weight().double() - ref) / torch.linalg.vector_norm(
                ref
            ).clamp_min(1e-30)
            entry.error = float(err)
        layer.train(module.training)
        set_submodule(model, entry.name, layer)
        if progress is not None:
            progress(done, len(todo), entry.name)
    return model
