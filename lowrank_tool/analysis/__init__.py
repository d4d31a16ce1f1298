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

# The same names for type checkers and IDEs (`as`: re-exported); a test keeps them equal to _EXPORTS.
if TYPE_CHECKING:
    from ..runtime import Latency as Latency, measure as measure, time_onnx as time_onnx, time_torch as time_torch

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
