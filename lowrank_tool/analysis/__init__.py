"""Measurements of models: latency in ONNX Runtime and PyTorch, and the benchmark behind `lowrank bench`.

The names below are loaded on first use, so that :mod:`.settings` (the CLI's checks of its arguments)
does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {
    "Latency": "..runtime",
    "measure": "..runtime",
    "time_onnx": "..runtime",
    "time_torch": "..runtime",
}

if TYPE_CHECKING:  # the same names, for type checkers and IDEs (tests/test_architecture.py keeps them equal)
    from ..runtime import Latency, measure, time_onnx, time_torch

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
