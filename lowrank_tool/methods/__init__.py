"""Training methods, by name: ``dense`` (baseline) and ``elrt`` (low-rank from scratch + orthogonality).

A registry, so that other schemes (LRPET, DeepTwist) plug into the same trainer with one call.
"""

from __future__ import annotations

import difflib
from typing import Any

from ..errors import LowRankError
from .base import Method
from .elrt import DEFAULT_ORTH_WEIGHT, ELRT, ORTH_KINDS, orthogonality_penalty

__all__ = ["Method", "ELRT", "Dense", "register_method", "get_method", "list_methods", "orthogonality_penalty",
           "ORTH_KINDS", "DEFAULT_ORTH_WEIGHT"]


class Dense(Method):
    """The baseline: plain training, no regulariser, no structure change."""

    name = "dense"


_METHODS: dict[str, type[Method]] = {}


def register_method(name: str, cls: type[Method]) -> None:
    """Make ``cls`` available as ``--method name`` (a duplicate name raises)."""
    if name in _METHODS:
        raise ValueError(f"method {name!r} is already registered ({_METHODS[name].__name__})")
    _METHODS[name] = cls


def list_methods() -> list[str]:
    return sorted(_METHODS)


def get_method(name: str, **options: Any) -> Method:
    """Instantiate a registered method with its options."""
    if name not in _METHODS:
        close = difflib.get_close_matches(name, list(_METHODS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise LowRankError(f"unknown method {name!r}{hint}; expected one of {', '.join(list_methods())}")
    return _METHODS[name](**options)


register_method("dense", Dense)
register_method("elrt", ELRT)
