"""Names a user can pass to ``lowrank convert``: torchvision's models plus the toolkit's own.

``build_model`` builds a model by name with random weights (ELRT trains from scratch; users with
internet can still pass ``weights=...`` through kwargs); ``example_input`` knows what each task's forward
takes (an image batch, a list of images for detection, a clip for video, two frames for optical flow);
``default_input_size`` follows the model family's standard evaluation resolution.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torchvision
from torch import nn

from .errors import LowRankError

__all__ = [
    "ModelEntry", "register_model", "list_models", "get_entry", "build_model", "default_input_size",
    "example_input", "TASKS",
]

#: Task name → the torchvision module whose ``list_models`` enumerates it.
TASKS: dict[str, Any] = {
    "classification": torchvision.models,
    "quantization": torchvision.models.quantization,
    "segmentation": torchvision.models.segmentation,
    "detection": torchvision.models.detection,
    "video": torchvision.models.video,
    "optical_flow": torchvision.models.optical_flow,
}


@dataclass(frozen=True)
class ModelEntry:
    name: str
    task: str
    source: str  # "torchvision" or "lowrank_tool"
    builder: Callable[..., nn.Module] | None = None
    input_size: tuple[int, ...] | None = None


_EXTRA: dict[str, ModelEntry] = {}


def register_model(name: str, builder: Callable[..., nn.Module], task: str = "classification", input_size: tuple[int, ...] = (3, 32, 32)) -> None:
    """Make ``name`` buildable by ``build_model`` / ``lowrank convert`` (a duplicate name raises)."""
    if name in _EXTRA or name in _torchvision_names():
        raise ValueError(f"model name {name!r} is already registered")
    _EXTRA[name] = ModelEntry(name, task, "lowrank_tool", builder, tuple(input_size))


_TV_CACHE: dict[str, str] = {}


def _torchvision_names() -> dict[str, str]:
    if not _TV_CACHE:
        for task, module in TASKS.items():
            for name in torchvision.models.list_models(module=module):
                _TV_CACHE.setdefault(name, task)
    return _TV_CACHE


def list_models(task: str | None = None) -> list[ModelEntry]:
    """Every model name ``lowrank convert`` accepts, optionally for one task."""
    entries = [ModelEntry(n, t, "torchvision") for n, t in _torchvision_names().items()] + list(_EXTRA.values())
    if task is not None:
        if task not in TASKS:
            raise LowRankError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
        entries = [e for e in entries if e.task == task]
    order = list(TASKS)
    return sorted(entries, key=lambda e: (order.index(e.task) if e.task in order else len(order), e.name))


def _import_factory(spec: str) -> ModelEntry:
    """``package.module:factory`` → an entry that calls ``factory(**kwargs)`` (the user's own code)."""
    import importlib

    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise LowRankError(f"cannot import {spec!r} ({exc}); write 'package.module:factory' with the package importable (on PYTHONPATH)") from None
    if not callable(factory):
        raise LowRankError(f"{spec!r} is not callable; point to a class or function that returns an nn.Module")
    return ModelEntry(spec, "classification", "import", factory)


def get_entry(name: str) -> ModelEntry:
    if ":" in name:
        return _import_factory(name)
    if name in _EXTRA:
        return _EXTRA[name]
    tv = _torchvision_names()
    if name in tv:
        return ModelEntry(name, tv[name], "torchvision")
    known = list(tv) + list(_EXTRA)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise LowRankError(f"unknown model {name!r}; {hint}run `lowrank models` for the list")


def build_model(name: str, num_classes: int | None = None, **kwargs: Any) -> nn.Module:
    """Build a model by name with random initial weights.

    Args:
        name: a torchvision model name (``torchvision.models.list_models()``) or a toolkit model.
        num_classes: output classes (``None`` keeps the architecture's default).
        **kwargs: forwarded to the builder (e.g. ``weights="DEFAULT"`` where you have internet).

    Example:
        >>> model = build_model("resnet18", num_classes=10)
    """
    entry = get_entry(name)
    if num_classes is not None:
        if num_classes < 1:
            raise LowRankError(f"num_classes must be a positive integer, got {num_classes}")
        kwargs["num_classes"] = num_classes
    if entry.source == "torchvision":
        kwargs.setdefault("weights", None)
        if entry.task == "quantization":
            kwargs.setdefault("quantize", False)
        if entry.task in ("segmentation", "detection"):
            kwargs.setdefault("weights_backbone", None)
        try:
            return torchvision.models.get_model(name, **kwargs)
        except TypeError as exc:
            raise LowRankError(f"cannot build {name!r} with arguments {kwargs}: {exc}") from None
    assert entry.builder is not None
    model = entry.builder(**kwargs)
    if not isinstance(model, nn.Module):
        raise LowRankError(f"{name!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def default_input_size(name: str, kwargs: dict[str, Any] | None = None) -> tuple[int, ...]:
    """The family's standard input, per sample: (C, H, W), or (C, T, H, W) for video models."""
    entry = get_entry(name)
    kwargs = kwargs or {}
    if entry.input_size is not None:
        return entry.input_size
    if entry.task == "detection":
        return (3, 800, 800)
    if entry.task == "optical_flow":
        return (3, 368, 496)
    if entry.task == "segmentation":
        return (3, 520, 520)
    if name.startswith("vit_"):  # fixed-size model; built without weights at image_size=224
        size = int(kwargs.get("image_size", 224))
        return (3, size, size)
    size = 224
    try:
        transforms = torchvision.models.get_model_weights(name).DEFAULT.transforms()
        crop = getattr(transforms, "crop_size", None)
        if crop:
            size = int(crop[0])
    except Exception:  # noqa: BLE001 - no weights registered: keep 224
        pass
    if entry.task == "video":
        return (3, 16, size, size)
    return (3, size, size)


def example_input(task: str, input_size: tuple[int, ...], batch: int = 1, seed: int = 0) -> Any:
    """A random input of the right structure for a task's forward."""
    gen = torch.Generator().manual_seed(seed)
    if task == "detection":
        return [torch.rand(input_size, generator=gen) for _ in range(batch)]
    if task == "optical_flow":
        return (torch.rand(batch, *input_size, generator=gen), torch.rand(batch, *input_size, generator=gen))
    return torch.randn(batch, *input_size, generator=gen)
