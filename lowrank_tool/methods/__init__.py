"""Training methods, by name, all in the same trainer:

* ``elrt`` — the low-rank model trained from scratch with the orthogonality regulariser (default);
* ``dense`` — the baseline, plain training;
* ``lrpet`` — dense training projected onto low rank (energy transfer, BN rectification), SVD convs at the end;
* ``deeptwist`` — dense training with a periodic low-rank distortion, decomposed at the end.

A registry, so that other schemes plug in with one call (``register_method``).
"""

from __future__ import annotations

import difflib
from typing import Any

from ..errors import LowRankError
from .base import Method
from .deeptwist import DEEPTWIST_LOWERINGS, DeepTwist
from .dense_training import DenseTraining
from .elrt import DEFAULT_ORTH_WEIGHT, ELRT, ORTH_KINDS, orthogonality_penalty
from .lrpet import LRPET

__all__ = [
    "Method",
    "ELRT",
    "Dense",
    "LRPET",
    "DeepTwist",
    "DenseTraining",
    "register_method",
    "get_method",
    "get_method_class",
    "list_methods",
    "orthogonality_penalty",
    "ORTH_KINDS",
    "DEFAULT_ORTH_WEIGHT",
    "DEEPTWIST_LOWERINGS",
]


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


def get_method_class(name: str) -> type[Method]:
    """The class registered as ``name`` (a clear error for unknown names)."""
    if name not in _METHODS:
        close = difflib.get_close_matches(name, list(_METHODS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise LowRankError(f"unknown method {name!r}{hint}; expected one of {', '.join(list_methods())}")
    return _METHODS[name]


def get_method(name: str, **options: Any) -> Method:
    """Instantiate a registered method with its options."""
    return get_method_class(name)(**options)


register_method("dense", Dense)
register_method("elrt", ELRT)
register_method("lrpet", LRPET)
register_method("deeptwist", DeepTwist)
