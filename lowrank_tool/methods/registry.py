"""The registry of training methods: name → class, the built-in ones imported only when first asked for.

Light (no torch), so that a training configuration can check its ``method`` before the trainer is loaded.
"""

from __future__ import annotations

import difflib
import importlib
from typing import TYPE_CHECKING, Any

from ..errors import LowRankError

if TYPE_CHECKING:
    from .base import Method

__all__ = ["register_method", "get_method", "get_method_class", "list_methods"]

#: name → the class, or ``"module:Class"`` (under this package) for a built-in one not imported yet.
_METHODS: dict[str, type[Method] | str] = {
    "dense": ".base:Dense",
    "elrt": ".elrt:ELRT",
    "lrpet": ".lrpet:LRPET",
    "deeptwist": ".deeptwist:DeepTwist",
}


def register_method(name: str, cls: type[Method]) -> None:
    """Make ``cls`` available as ``--method name`` (a duplicate name raises)."""
    if name in _METHODS:
        raise ValueError(f"method {name!r} is already registered ({_class_name(_METHODS[name])})")
    _METHODS[name] = cls


def list_methods() -> list[str]:
    return sorted(_METHODS)


def get_method_class(name: str) -> type[Method]:
    """The class registered as ``name`` (a clear error for unknown names)."""
    if name not in _METHODS:
        close = difflib.get_close_matches(name, list(_METHODS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise LowRankError(f"unknown method {name!r}{hint}; expected one of {', '.join(list_methods())}")
    entry = _METHODS[name]
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        entry = _METHODS[name] = getattr(importlib.import_module(module, __package__), attr)
    return entry


def get_method(name: str, **options: Any) -> Method:
    """Instantiate a registered method with its options."""
    return get_method_class(name)(**options)


def _class_name(entry: type[Method] | str) -> str:
    return entry.rpartition(":")[2] if isinstance(entry, str) else entry.__name__
