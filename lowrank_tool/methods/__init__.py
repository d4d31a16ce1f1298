"""Training methods, by name, all in the same trainer:

* ``elrt`` — the low-rank model trained from scratch with the orthogonality regulariser (default);
* ``dense`` — the baseline, plain training;
* ``lrpet`` — dense training projected onto low rank (energy transfer, BN rectification), SVD convs at the end;
* ``deeptwist`` — dense training with a periodic low-rank distortion, decomposed at the end.

A registry, so that other schemes plug in with one call (``register_method``).
The classes are loaded on first use: :mod:`.registry` (names only) does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {
    "Method": ".base",
    "Dense": ".base",
    "ELRT": ".elrt",
    "orthogonality_penalty": ".elrt",
    "LRPET": ".lrpet",
    "DeepTwist": ".deeptwist",
    "DenseTraining": ".dense_training",
    "register_method": ".registry",
    "get_method": ".registry",
    "get_method_class": ".registry",
    "list_methods": ".registry",
    "ORTH_KINDS": "..choices",
    "DEFAULT_ORTH_WEIGHT": "..choices",
    "DEEPTWIST_LOWERINGS": "..choices",
}

# The same names for type checkers and IDEs (`as`: re-exported); a test keeps them equal to _EXPORTS.
if TYPE_CHECKING:
    from ..choices import (
        DEEPTWIST_LOWERINGS as DEEPTWIST_LOWERINGS,
        DEFAULT_ORTH_WEIGHT as DEFAULT_ORTH_WEIGHT,
        ORTH_KINDS as ORTH_KINDS,
    )
    from .base import Dense as Dense, Method as Method
    from .deeptwist import DeepTwist as DeepTwist
    from .dense_training import DenseTraining as DenseTraining
    from .elrt import ELRT as ELRT, orthogonality_penalty as orthogonality_penalty
    from .lrpet import LRPET as LRPET
    from .registry import (
        get_method as get_method,
        get_method_class as get_method_class,
        list_methods as list_methods,
        register_method as register_method,
    )

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
