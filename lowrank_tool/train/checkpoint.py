"""Train state on disk: written atomically, read without unpickling code.

A training run keeps, inside its artifact directory:

* ``model.safetensors`` — the latest weights (what :func:`lowrank_tool.load` reads);
* ``best.safetensors`` — the weights with the best validation top-1;
* ``train_state.pt`` — everything needed to continue exactly: model, optimizer, scheduler and AMP scaler
  state, RNG states, epoch, step within the epoch, best accuracy and the run's config.

``train_state.pt`` holds the model weights too, so a resume never mixes weights and optimizer state
from different moments. Every file is written under a temporary name and renamed into place, and it is
read back with ``torch.load(weights_only=True)``: tensors and plain containers only.
"""

from __future__ import annotations

import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..artifact import atomic_file
from ..errors import LowRankError, first_line
from ..state_file import save_state

__all__ = ["save_train_state", "load_train_state", "rng_state", "set_rng_state", "atomic_save_weights"]

STATE_VERSION = 1


def atomic_save_weights(model: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:

    with atomic_file(path) as tmp:
        save_state(model, tmp, metadata=metadata or {"format": "pt"})


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]) + [random.getstate()[2] if random.getstate()[2] is not None else -1],
        "python_version": random.getstate()[0],
        "numpy": {
            k: (torch.from_numpy(v) if isinstance(v, np.ndarray) else v)
            for k, v in zip(("kind", "keys", "pos", "has_gauss", "cached_gaussian"), np.random.get_state(), strict=True)
            if k != "kind"
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = list(state["python"])
    gauss = py.pop()
    random.setstate((state["python_version"], tuple(int(v) for v in py), None if gauss == -1 else gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy(), int(n["pos"]), int(n["has_gauss"]), float(n["cached_gaussian"])))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_train_state(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (tensors, numbers, strings, lists, dicts) atomically."""
    state = {"version": STATE_VERSION, **state}
    with atomic_file(path) as tmp:
        torch.save(state, tmp)


def load_train_state(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a train state with ``weights_only=True``; clear one-line errors for missing or corrupt files."""
    if not path.is_file():
        raise LowRankError(
            f"{path} does not exist; --resume needs a run that saved a train state (train it once without --resume)"
        )
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of a file it is about to refuse
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        first = first_line(exc, with_type=False, limit=160)
        raise LowRankError(
            f"{path} is corrupt or not a lowrank_tool train state ({first}); delete it and train without --resume"
        ) from None
    if not isinstance(state, dict) or "version" not in state or "model" not in state:
        raise LowRankError(f"{path} is not a lowrank_tool train state; delete it and train without --resume")
    for key, kind, what in (
        ("version", int, "an integer"),
        ("epoch", int, "an integer"),
        ("step_in_epoch", int, "an integer"),
        ("config", dict, "a mapping"),
    ):
        value = state.get(key)
        if key in state and (isinstance(value, bool) or not isinstance(value, kind)):
            raise LowRankError(
                f"{path}: {key} {str(value)[:40]!r} is not {what}; the train state is corrupt, delete it and train without --resume"
            )
    if state["version"] > STATE_VERSION:
        raise LowRankError(
            f"{path} has train-state version {state['version']}, newer than this lowrank-tool reads; upgrade with `pip install -U lowrank-tool`"
        )
    return state
