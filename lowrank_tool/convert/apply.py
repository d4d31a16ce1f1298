"""Swap the planned convolutions for low-rank layers, in place, by fully qualified name.

The swap is torch.fx's ``replace_node_module`` idiom (set the new module on its parent under the same
name), done on the user's own module rather than on a ``GraphModule``: the converted model keeps its
class, its methods and its state-dict layout, which is what lets :func:`lowrank_tool.load` replay a plan
on a freshly built model, and lets detection models (which fx cannot trace whole) convert too.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from ..choices import FORMAT_CHOICES
from ..conversion_plan import ConversionPlan, LayerPlan
from ..errors import LowRankError, first_line
from ..layers import get_format
from ..layers.base import ConvGeometry, Init, LowRankConv
from .options import RankSpec
from .rank import ranks_for
from .sharing import module_names
from .support import conv_support

__all__ = [
    "apply_plan",
    "build_layers",
    "set_submodule",
    "replace_module",
    "replace_in_containers",
    "get_submodule",
    "check_finite_weight",
]


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


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` in place of the module at ``name``, under every name that module has (sharing is kept),
    and in the plain lists, tuples and dicts of the model's modules that hold it."""
    old = model.get_submodule(name)
    for alias in module_names(model)[id(old)]:
        set_submodule(model, alias, new)
    replace_in_containers(model, {id(old): new})


#: A module's own bookkeeping in its ``__dict__``: never a user's container of modules.
_MODULE_STATE = frozenset({"_parameters", "_buffers", "_modules", "_non_persistent_buffers_set", "_state_dict_hooks"})


def replace_in_containers(model: nn.Module, swaps: Mapping[int, nn.Module]) -> list[Callable[[], None]]:
    """Point every plain list, tuple or dict attribute of ``model``'s modules (nested up to 4 deep) that holds a
    module ``id`` in ``swaps`` at its replacement: ``self.stages = [self.c1, self.c2]`` keeps calling what
    ``self.c1`` is. Returns the callbacks that undo each change, in the order made."""
    undo: list[Callable[[], None]] = []

    def fix(value: Any, depth: int) -> Any:
        """``value`` with the swaps made (lists and dicts in place; a new tuple when one of its items changed)."""
        if depth > 4:
            return value
        if isinstance(value, nn.Module):
            return swaps.get(id(value), value)
        if isinstance(value, list):
            for i, item in enumerate(value):
                new = fix(item, depth + 1)
                if new is not item:
                    value[i] = new
                    undo.append(functools.partial(value.__setitem__, i, item))
        elif isinstance(value, dict):
            for key, item in list(value.items()):
                new = fix(item, depth + 1)
                if new is not item:
                    value[key] = new
                    undo.append(functools.partial(value.__setitem__, key, item))
        elif type(value) is tuple:
            items = tuple(fix(item, depth + 1) for item in value)
            if any(a is not b for a, b in zip(items, value, strict=True)):
                return items
        return value

    for module in model.modules():
        for key, value in list(vars(module).items()):
            if key in _MODULE_STATE or key.endswith("_hooks") or not isinstance(value, (list, dict, tuple)):
                continue
            new = fix(value, 1)
            if new is not value:  # a tuple rebuilt
                module.__dict__[key] = new
                undo.append(functools.partial(module.__dict__.__setitem__, key, value))
    return undo


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


def apply_plan(
    model: nn.Module,
    plan: ConversionPlan,
    init: Init = "random",
    source: nn.Module | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> nn.Module:
    """Replace every converted layer of ``plan`` in ``model`` (modified in place and returned).

    ``source`` is the model whose dense convs are read (default: ``model`` itself); ``convert`` passes
    the user's model here and a copy that skipped those convs as ``model``. A conv reachable under several
    names becomes one low-rank layer set under every name; a frozen conv's factors are frozen. With
    ``init="decompose"`` each plan entry gets the relative Frobenius error of its approximation.
    ``progress(done, total, name)`` is called after each layer is built.

    Every layer is built before the first one is swapped in: a layer that cannot be built raises a
    :class:`LowRankError` and leaves ``model`` as it was.
    """
    source = model if source is None else source
    built = build_layers(source, plan, init, progress)
    swaps = {id(source.get_submodule(every[0])): layer for every, layer in built}  # before the swap changes source
    for every, layer in built:
        for name in every:
            set_submodule(model, name, layer)
    replace_in_containers(model, swaps)
    return model


@torch.no_grad()
def build_layers(
    source: nn.Module,
    plan: ConversionPlan,
    init: Init = "random",
    progress: Callable[[int, int, str], None] | None = None,
) -> list[tuple[list[str], LowRankConv]]:
    """Build the low-rank layer of each converted entry of ``plan`` from ``source``'s conv, changing nothing:
    (every name the conv has in ``source``, its layer), in plan order. Raises :class:`LowRankError` naming
    the layer when one cannot be built."""
    names = module_names(source)
    todo = plan.converted_layers
    built: list[tuple[list[str], LowRankConv]] = []
    for done, entry in enumerate(todo, 1):
        module = get_submodule(source, entry.name)
        geometry = _check_matches(module, entry)
        assert isinstance(module, (nn.Conv2d, nn.Conv3d))  # _check_matches raised otherwise
        every = names[id(module)]
        _check_aliases(entry, every)
        cls = get_format(entry.format, len(entry.kernel_size))
        _check_ranks(entry, geometry)
        if init != "none":
            check_finite_weight(module, entry.name)
        try:
            layer = cls.from_dense(module, tuple(entry.ranks or ()), init=init, geometry=geometry)
        except (RuntimeError, ValueError, ArithmeticError) as exc:  # torch.linalg / tensorly failing on this kernel
            if isinstance(exc, LowRankError):
                raise
            raise LowRankError(
                f"cannot build the {entry.format} layer for {entry.name!r} with init={init!r} "
                f"({first_line(exc, with_type=False)}); use another format or init='random', or keep it dense with exclude=[...]"
            ) from None
        if (
            init != "none"
            and not module.weight.is_meta
            and not all(bool(torch.isfinite(p).all()) for p in layer.parameters())
        ):
            raise LowRankError(
                f"the low-rank layer for {entry.name!r} is not finite: its weights (largest |w| "
                f"{float(module.weight.detach().abs().max()):.3g}) are beyond what {module.weight.dtype} factors can hold; "
                "rescale the model's weights or keep the layer dense with exclude=[...]"
            )
        if init == "decompose":
            ref = module.weight.detach().double()
            err = torch.linalg.vector_norm(layer.dense_weight().double() - ref) / torch.linalg.vector_norm(
                ref
            ).clamp_min(1e-30)
            entry.error = float(err)
        layer.train(module.training)
        _keep_frozen(layer, module)
        built.append((every, layer))
        if progress is not None:
            progress(done, len(todo), entry.name)
    return built


def check_finite_weight(module: _ConvNd, name: str) -> None:
    """A conv whose weights hold NaN or inf has nothing to factorise: one line naming it."""
    weight = module.weight
    if weight.is_meta or bool(torch.isfinite(weight).all()):
        return
    bad = int((~torch.isfinite(weight)).sum())
    raise LowRankError(
        f"the weights of {name!r} hold {bad} NaN/inf value(s); a low-rank layer cannot be made from them — "
        "fix or re-initialise the model's weights, or keep the layer dense with exclude=[...]"
    )


def _check_aliases(entry: LayerPlan, names: list[str]) -> None:
    """A plan made on a model that shares a conv must be replayed on a model that shares it the same way."""
    if entry.aliases is None:  # plans made before aliases were recorded, and unshared layers
        if len(names) > 1:
            raise LowRankError(
                f"the plan converts {entry.name!r} alone, but in this model the same conv is also {', '.join(names[1:])}; "
                "re-create the plan with this model"
            )
        return
    if list(entry.aliases) != names[1:]:
        raise LowRankError(
            f"the plan does not match the model at {entry.name!r}: the plan shares it as {entry.aliases}, the model as "
            f"{names[1:]}; build the model with the same name and arguments the plan was made from"
        )


def _keep_frozen(layer: nn.Module, dense: _ConvNd) -> None:
    """A frozen conv's low-rank layer is frozen too (its bias follows the dense bias)."""
    weight, bias = dense.weight, dense.bias
    for pname, param in layer.named_parameters():
        if bias is not None and pname.endswith("bias"):
            param.requires_grad_(bias.requires_grad)
        else:
            param.requires_grad_(weight.requires_grad)
