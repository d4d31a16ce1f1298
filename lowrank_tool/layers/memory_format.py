"""The memory format a model's 4-D weights live in, and the one a low-rank model runs fastest in.

A Tucker-2 layer is three convolutions, two of them 1×1: on the CPU those run markedly faster on NHWC
("channels-last") tensors, which oneDNN's kernels prefer. Measured (``benchmarks/train_speed.py --models
resnet18 --user-loop``; docs/performance.md): a ResNet-18 rank-0.3 training step at 32×32, batch 128,
takes 82 ms channels-last against 110 ms in PyTorch's default layout, while the dense network barely moves
(173 against 181 ms). Hence ``auto``: channels-last for a model with 2-D low-rank layers on the CPU,
PyTorch's default otherwise (a dense model, a video model, and CUDA until ``benchmarks/gpu_check.py`` has
measured it there).

Only 4-D tensors change layout: ``Module.to(memory_format=torch.channels_last)`` raises on the 5-D weights
of a video model, so :func:`apply_memory_format` leaves every other tensor as it is.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import LowRankError
from .base import LowRankConv

__all__ = [
    "MEMORY_FORMAT_NAMES",
    "resolve_memory_format",
    "apply_memory_format",
    "layout_name",
    "memory_format_name",
]

#: layout name → torch memory format (``auto`` is resolved by :func:`resolve_memory_format`).
MEMORY_FORMAT_NAMES: dict[str, torch.memory_format] = {
    "channels_last": torch.channels_last,
    "contiguous": torch.contiguous_format,
}


def resolve_memory_format(name: str, model: nn.Module, device: torch.device | str = "cpu") -> torch.memory_format:
    """The layout ``name`` stands for: ``channels_last``, ``contiguous``, or ``auto`` (see the module's doc)."""
    if name in MEMORY_FORMAT_NAMES:
        return MEMORY_FORMAT_NAMES[name]
    if name != "auto":
        raise LowRankError(f"memory format {name!r} is not known; use auto, channels_last or contiguous")
    low_rank_2d = any(isinstance(m, LowRankConv) and any(p.dim() == 4 for p in m.parameters()) for m in model.modules())
    return torch.channels_last if low_rank_2d and torch.device(device).type == "cpu" else torch.contiguous_format


def layout_name(memory_format: torch.memory_format) -> str:
    """The name :data:`MEMORY_FORMAT_NAMES` gives ``memory_format`` (``contiguous`` for any other format)."""
    return "channels_last" if memory_format == torch.channels_last else "contiguous"


def apply_memory_format(model: nn.Module, memory_format: torch.memory_format) -> nn.Module:
    """Lay out the model's 4-D parameters and buffers (and their gradients) in ``memory_format``, in place.

    Other tensors (biases, 5-D video kernels, linear weights) are left as they are, so any model accepts
    any layout. Returns ``model``.
    """
    return model._apply(lambda t: t.contiguous(memory_format=memory_format) if t.dim() == 4 else t)


def memory_format_name(model: nn.Module) -> str:
    """``channels_last`` when the model's 4-D weights are laid out channels-last, else ``contiguous``."""
    # a 1×1 kernel or a one-channel (depthwise) kernel has the same strides in both layouts: it cannot tell
    weights = [p for p in model.parameters() if p.dim() == 4 and p.shape[1] > 1 and p.shape[2] * p.shape[3] > 1]
    if weights and all(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous() for p in weights):
        return "channels_last"
    return "contiguous"
