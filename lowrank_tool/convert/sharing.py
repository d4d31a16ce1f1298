"""Modules reachable under several names, and parameters held by several modules.

PyTorch lets one module sit at several places of a model (``nn.ModuleList([conv] * 3)``, ``self.b = self.a``)
and one parameter belong to several modules (``b.weight = a.weight``). ``named_modules()`` lists a shared
module once, under its first name. The converter keeps both kinds of sharing: a shared conv becomes one
low-rank layer placed under every one of its names, and a conv whose parameter another module also holds
stays dense (two factorisations could not keep the tie). Parameters are counted once, however many names
reach them.
"""

from __future__ import annotations

from torch import nn

__all__ = ["module_names", "tied_elsewhere", "unique_parameter_count"]


def module_names(model: nn.Module) -> dict[int, list[str]]:
    """``id(module)`` → every name the module is reachable under, in ``named_modules`` order (first = canonical).

    A module that holds one of its own ancestors (a cycle, which ``named_modules(remove_duplicate=False)``
    would follow forever) is not entered again.
    """
    names: dict[int, list[str]] = {}
    path: set[int] = set()

    def visit(module: nn.Module, name: str) -> None:
        names.setdefault(id(module), []).append(name)
        path.add(id(module))
        for child_name, child in module._modules.items():
            if child is not None and id(child) not in path:
                visit(child, f"{name}.{child_name}" if name else child_name)
        path.discard(id(module))

    visit(model, "")
    return names


def _parameter_holders(model: nn.Module) -> dict[int, list[tuple[int, str]]]:
    """``id(parameter)`` → (id of a module holding it directly, ``module.param`` name), one entry per module."""
    holders: dict[int, list[tuple[int, str]]] = {}
    for name, module in model.named_modules():  # a module reachable under several names is one holder
        for pname, param in module.named_parameters(recurse=False):
            holders.setdefault(id(param), []).append((id(module), f"{name}.{pname}" if name else pname))
    return holders


def tied_elsewhere(model: nn.Module) -> dict[int, list[str]]:
    """``id(module)`` → the names of the parameters it shares with *other* modules (tied weights), for every
    module that shares one; modules whose parameters are their own are absent."""
    tied: dict[int, list[str]] = {}
    for holders in _parameter_holders(model).values():
        if len({mid for mid, _ in holders}) < 2:
            continue
        for mid, _ in holders:
            others = [pname for other, pname in holders if other != mid]
            tied.setdefault(mid, []).extend(others)
    return tied


def unique_parameter_count(module: nn.Module, seen: set[int]) -> int:
    """Elements of ``module``'s own parameters not in ``seen`` (ids), which then joins ``seen``."""
    count = 0
    for param in module.parameters(recurse=False):
        if id(param) not in seen:
            seen.add(id(param))
            count += param.numel()
    return count
