"""Saving and loading converted models as a directory: ``plan.json`` + ``model.safetensors``.

Loading rebuilds the architecture from the plan's base-model spec (or a module the caller passes),
replays the plan, then loads the weights. Nothing is unpickled: weights are safetensors, the plan is
JSON. A directory is written under a temporary name and renamed into place, so an interrupted or failed
save never leaves a half-written artifact.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model
from torch import nn

from ._version import __version__
from .artifact import PLAN_FILE, WEIGHTS_FILE, atomic_directory, check_artifact, follow_umask, native_path
from .conversion_plan import ConversionPlan, attach_plan, plan_of
from .convert.api import summary
from .convert.apply import apply_plan
from .errors import LowRankError, first_line
from .layers.base import Init
from .layers.memory_format import MEMORY_FORMAT_NAMES, apply_memory_format
from .models import build_from_spec

__all__ = ["save", "load", "rebuild"]


def save(model: nn.Module, directory: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Save a converted model as ``DIR/plan.json`` and ``DIR/model.safetensors``.

    Args:
        model: a model returned by :func:`lowrank_tool.convert` or :func:`lowrank_tool.load`.
        directory: the output directory (must not exist unless ``overwrite``).
        overwrite: replace an existing directory (only once the new one is fully written).

    Example:
        >>> model = lowrank_tool.convert("resnet18", rank=0.3)
        >>> lowrank_tool.save(model, "runs/r18")  # doctest: +SKIP
    """

    plan = summary(model)
    with atomic_directory(directory, overwrite=overwrite) as tmp:
        plan.save(tmp / PLAN_FILE)
        save_model(model, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "lowrank_tool": __version__})
        follow_umask(tmp / WEIGHTS_FILE)
    return Path(directory)


def rebuild(
    plan: ConversionPlan,
    model: nn.Module | None = None,
    *,
    where: str = "the plan",
    trust_code: bool = False,
    init: Init = "none",
) -> nn.Module:
    """The low-rank model a plan describes: its base model (``model``, or rebuilt from the plan's spec) with the
    plan's layers swapped in (``init="none"``: to receive saved weights; ``"random"``: fresh factors), its 4-D
    weights in the memory format the plan records.

    The base model is built only from a registered name with plain arguments (see :func:`load`); ``where``
    names the file the plan came from in error messages.
    """
    if model is None:
        model = build_from_spec(plan.base_model, where=where, trust_code=trust_code)
    elif not isinstance(model, nn.Module):
        raise LowRankError(f"load(DIR, model=...) takes a dense nn.Module, got {type(model).__name__}")
    elif plan_of(model) is not None:
        raise LowRankError("load(DIR, model=...) needs the dense model, not an already converted one")
    layout = plan.policy.get("memory_format", "contiguous")  # plans before the option: PyTorch's default
    if not isinstance(layout, str) or layout not in MEMORY_FORMAT_NAMES:
        raise LowRankError(
            f"{where}: policy.memory_format {layout!r} is not a layout; it must be one of: "
            f"{', '.join(MEMORY_FORMAT_NAMES)} (re-create the artifact with `lowrank convert -o DIR`)"
        )
    return apply_memory_format(apply_plan(model, plan, init=init), MEMORY_FORMAT_NAMES[layout])


def _check_header(weights: Path, model: nn.Module) -> None:
    """The file must hold every tensor of the model, and a float tensor must get float values.

    Checked from the header before loading, because loading forgives both: PyTorch's batch norm fills a
    missing ``num_batches_tracked`` with 0, and a copy casts integers to float silently.
    """
    try:
        with native_path(weights) as name, safe_open(name, framework="pt") as fh:
            stored = {name: fh.get_slice(name).get_dtype() for name in fh.keys()}
    except SafetensorError:
        return  # load_model below reports the file as corrupt
    expected = model.state_dict()
    missing = [name for name in expected if name not in stored]
    if missing:
        raise LowRankError(
            f"{weights} does not match the model rebuilt from the plan: it lacks {len(missing)} of its tensors (e.g. "
            f"{missing[0]}); it was written for another plan, or not by lowrank_tool.save — save and load with the "
            "same model, or re-create it with `lowrank convert -o DIR`"
        )
    for name, tensor in expected.items():
        kind = stored[name]
        if tensor.is_floating_point() and not kind.startswith(("F", "BF")):
            raise LowRankError(
                f"{weights} stores {name} as {kind}, but it is a floating-point tensor of the model; the file was not "
                "written by lowrank_tool.save — re-create it with `lowrank convert -o DIR`"
            )


def load(
    directory: str | os.PathLike[str],
    model: nn.Module | None = None,
    *,
    map_location: str | torch.device = "cpu",
    trust_code: bool = False,
) -> nn.Module:
    """Rebuild a converted model from a directory written by :func:`save` / ``lowrank convert -o``.

    The directory is data, never code: the base model is rebuilt only from a registered name
    (torchvision, the zoo, :func:`~lowrank_tool.register_model`, ``timm/NAME``) with the plan's plain
    arguments, nothing is downloaded, and the weights are safetensors. A plan naming
    ``package.module:factory`` needs ``model=`` or ``trust_code=True``.

    Args:
        directory: the artifact directory.
        model: a freshly built dense instance of the same class and arguments (required for a custom
            model; for a model given by name it is rebuilt from the plan).
        map_location: device for the weights.
        trust_code: import the ``package.module:factory`` the plan names (only for files you trust;
            the CLI's ``--trust-code``).

    Example:
        >>> model = lowrank_tool.load("runs/r18")  # doctest: +SKIP
        >>> model(torch.randn(2, 3, 224, 224)).shape  # doctest: +SKIP
        torch.Size([2, 1000])
    """

    directory = check_artifact(directory)
    plan = ConversionPlan.load(directory / PLAN_FILE)
    weights = directory / WEIGHTS_FILE
    model = rebuild(plan, model, where=str(directory / PLAN_FILE), trust_code=trust_code, init="none")
    _check_header(weights, model)
    try:
        with native_path(weights) as name:
            missing, unexpected = load_model(model, name, strict=False, device=str(map_location))
    except SafetensorError as exc:
        raise LowRankError(
            f"{weights} is corrupt or not a safetensors file ({exc}); re-create it with `lowrank convert -o DIR`"
        ) from None
    except (RuntimeError, ValueError) as exc:
        first = first_line(exc, with_type=False)
        raise LowRankError(
            f"{weights} does not match the model rebuilt from the plan ({first}); save and load with the same model"
        ) from None
    if missing or unexpected:
        sample = ", ".join(list(missing)[:3] + list(unexpected)[:3])
        raise LowRankError(
            f"{weights} does not match the model rebuilt from the plan ({len(missing)} missing, {len(unexpected)} unexpected tensors: {sample}); "
            "save and load with the same model"
        )
    bad = [
        name for name, t in model.state_dict().items() if t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]
    if bad:
        raise LowRankError(
            f"{weights} holds NaN/inf values ({len(bad)} tensors, e.g. {bad[0]}); it is corrupt or from a diverged run — "
            "re-create it, or train again from the last good checkpoint"
        )
    model.to(map_location)
    return attach_plan(model, plan)
