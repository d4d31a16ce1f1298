"""Loading trained dense weights into a model, for decomposing them (``convert(..., weights=PATH)``).

Accepted sources, none of which unpickles code:

* a ``.safetensors`` file;
* a PyTorch checkpoint (``.pt``, ``.pth``, ``.bin``, ...) read with ``torch.load(weights_only=True)``:
  a state dict, or a dict holding one under ``state_dict``, ``model_state_dict``, ``model``, ``net``, ... (the
  usual training-script layouts; else the only dict of tensors in it); a ``module.`` prefix left by
  DataParallel/DDP and an ``_orig_mod.`` left by ``torch.compile`` are removed;
* an artifact directory of a dense model (``lowrank convert MODEL --dense -o DIR`` then
  ``lowrank train DIR --method dense``): its ``model.safetensors``, checked against its plan.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ..artifact import PLAN_FILE, WEIGHTS_FILE, native_path
from ..conversion_plan import ConversionPlan
from ..errors import LowRankError, first_line

__all__ = ["read_state_dict", "load_weights"]

#: Where training scripts put the model's state dict in a checkpoint (``{"net": ..., "epoch": ...}``).
_NESTED_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "module", "ema")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def _from_directory(directory: Path) -> dict[str, torch.Tensor]:
    plan = ConversionPlan.load(directory / PLAN_FILE)
    if plan.converted_layers:
        raise LowRankError(
            f"{directory} holds a low-rank model ({len(plan.converted_layers)} converted layers); decomposing needs dense weights: "
            "train a dense baseline (`lowrank convert MODEL --dense -o DIR && lowrank train DIR --method dense`) or pass a weights file"
        )
    return read_state_dict(directory / WEIGHTS_FILE)


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A state dict from a safetensors file, a weights-only PyTorch checkpoint or a dense artifact directory."""
    path = Path(path).expanduser()
    if path.is_dir():
        return _from_directory(path)
    if not path.is_file():
        raise LowRankError(f"weights {path} do not exist; pass a .safetensors/.pt file or a dense artifact directory")
    if path.suffix == ".safetensors":
        try:
            with native_path(path) as name:
                return _strip_prefixes(load_file(name))
        except (SafetensorError, OSError) as exc:
            raise LowRankError(
                f"{path} is not a readable safetensors file ({exc}); re-save the weights with safetensors.torch.save_file"
            ) from None
    if not zipfile.is_zipfile(path):  # what torch.save has written since PyTorch 1.6
        raise LowRankError(
            f"{path} is neither a .safetensors file nor a PyTorch checkpoint (torch.save writes a zip archive); "
            "save the weights with torch.save(model.state_dict(), path) or safetensors"
        )
    try:
        data: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = first_line(exc, with_type=False)
        raise LowRankError(
            f"{path} cannot be read as a weights-only PyTorch checkpoint ({first}); save a state dict "
            "(torch.save(model.state_dict(), path)) or a .safetensors file"
        ) from None
    state = _find_state_dict(data)
    if state is None:
        keys = ", ".join(repr(k) for k in list(data)[:6]) if isinstance(data, dict) else ""
        holds = f"a dict without one (keys {keys})" if keys else type(data).__name__
        raise LowRankError(
            f"{path} holds no state dict (name → tensor), but {holds}; save one with "
            "torch.save(model.state_dict(), path), or a training checkpoint with it under 'state_dict' or 'model'"
        )
    return _strip_prefixes(state)


def _is_state_dict(data: Any) -> bool:
    return isinstance(data, dict) and bool(data) and all(isinstance(v, torch.Tensor) for v in data.values())


def _find_state_dict(data: Any) -> dict[str, torch.Tensor] | None:
    """The state dict in what a checkpoint file holds: the dict itself, or the one a training script nested
    under a usual key (``state_dict``, ``model``, ``net``, ...), or else the only dict of tensors in it."""
    if _is_state_dict(data):
        return dict(data)
    if not isinstance(data, dict):
        return None
    for key in _NESTED_KEYS:
        if _is_state_dict(data.get(key)):
            return dict(data[key])
    nested = [value for value in data.values() if _is_state_dict(value)]
    return dict(nested[0]) if len(nested) == 1 else None


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Names as the bare model has them: without the ``module.`` of DataParallel/DDP and the ``_orig_mod.`` of
    ``torch.compile``, when every name carries it."""
    for _ in range(4):  # a compiled DDP model: module._orig_mod.
        prefix = next((p for p in _WRAPPER_PREFIXES if all(k.startswith(p) for k in state)), None)
        if prefix is None:
            break
        state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def load_weights(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load dense weights from ``path`` into ``model`` (strictly: every tensor must match); returns the model."""
    state = read_state_dict(path)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        detail = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), str(exc).splitlines()[0])[
            :200
        ]
        raise LowRankError(
            f"weights {path} do not fit the model ({detail}); pass the weights of the same architecture (and --num-classes)"
        ) from None
    # num_batches_tracked is bookkeeping some checkpoints drop
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        sample = ", ".join([*missing[:3], *unexpected[:3]])
        raise LowRankError(
            f"weights {path} do not match the model ({len(missing)} missing, {len(unexpected)} unexpected tensors: {sample}); "
            "pass the weights of the same architecture (and --num-classes)"
        )
    return model
