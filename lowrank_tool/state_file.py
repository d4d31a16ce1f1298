"""A model's state in a safetensors file, with shared tensors written once and restored under every name.

A module reachable under several names (``nn.ModuleList([conv] * 3)``) or a parameter held by several
modules (tied weights) appears in ``state_dict()`` once per name. safetensors stores a tensor once, so
the repeats are dropped on writing (their names go into the file's metadata, as ``safetensors.torch.save_model``
does) and, on reading, every name of a shared tensor is filled from the one stored. Shared tensors are
found by their storage view, which works for channels-last tensors too (safetensors' own helpers cannot
take their measure).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

__all__ = ["shared_names", "names_in_file", "save_state", "load_state"]


def shared_names(state: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """``name`` → the first name of the same tensor, for every entry that repeats an earlier one."""
    first: dict[tuple[object, ...], str] = {}
    repeats: dict[str, str] = {}
    for name, tensor in state.items():
        if tensor.numel() == 0 or tensor.is_meta:  # no storage to share
            continue
        key = (
            tensor.device,
            tensor.untyped_storage().data_ptr(),
            tensor.storage_offset(),
            tuple(tensor.shape),
            tensor.stride(),
            tensor.dtype,
        )
        if key in first:
            repeats[name] = first[key]
        else:
            first[key] = name
    return repeats


def save_state(model: nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write ``model.state_dict()`` to ``path``, each shared tensor once (contiguous, as safetensors requires)."""
    state = model.state_dict()
    repeats = shared_names(state)
    tensors = {name: t.contiguous() for name, t in state.items() if name not in repeats}
    meta = dict(metadata or {"format": "pt"})
    for name, kept in repeats.items():
        meta.setdefault(name, kept)
    save_file(tensors, str(path), metadata=meta)


def load_state(model: nn.Module, path: str | Path, device: str = "cpu") -> tuple[list[str], list[str]]:
    """Load ``path`` into ``model``; (missing, unexpected) names, a shared tensor's repeats not counted missing.

    Raises what safetensors and ``load_state_dict`` raise for a corrupt file or a shape mismatch.
    """
    stored = load_file(str(path), device=device)
    found = names_in_file(model.state_dict(), stored)
    missing, unexpected = model.load_state_dict(stored, strict=False)
    return [name for name in missing if found[name] is None], list(unexpected)


def names_in_file(state: Mapping[str, torch.Tensor], stored: Collection[str]) -> dict[str, str | None]:
    """Each name of ``state`` → the name its values are stored under in a file holding ``stored`` (itself, or
    another name of the same shared tensor), or None when the file lacks it."""
    repeats = shared_names(state)
    groups: dict[str, list[str]] = {}
    for name in state:
        groups.setdefault(repeats.get(name, name), []).append(name)
    out: dict[str, str | None] = {}
    for names in groups.values():
        held = next((n for n in names if n in stored), None)
        for name in names:
            out[name] = name if name in stored else held
    return out
