"""Loading trained dense weights into a model, for decomposing them (``convert(..., weights=PATH)``).

Accepted sources, none of which unpickles code:

* a ``.safetensors`` file;
* a PyTorch checkpoint (``.pt``, ``.pth``, ``.bin``, ...) read with ``torch.load(weights_only=True)``:
  a state dict, or a dict holding one under ``state_dict``, ``model`` or ``model_state_dict`` (the usual
  training-script layouts); a ``module.`` prefix left by DataParallel/DDP is removed;
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

_NESTED_KEYS = ("state_dict", "model", "model_state_dict")


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
                return load_file(name)
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
    if isinstance(data, dict):
        for key in _NESTED_KEYS:
            if isinstance(data.get(key), dict):
                data = data[key]
                break
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise LowRankError(
            f"{path} holds no state dict (name → tensor); save one with torch.save(model.state_dict(), path)"
        )
    if data and all(k.startswith("module.") for k in data):
        data = {k[len("module.") :]: v for k, v in data.items()}
    return data


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
