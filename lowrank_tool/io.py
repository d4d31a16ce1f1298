"""Saving and loading converted models as a directory: ``plan.json`` + ``model.safetensors``.

Loading rebuilds the architecture from the plan's base-model spec (or a module the caller passes),
replays the plan, then loads the weights. Nothing is unpickled: weights are safetensors, the plan is
JSON. A directory is written under a temporary name and renamed into place, so an interrupted or failed
save never leaves a half-written artifact.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
import torchvision
from safetensors import SafetensorError, safe_open
from torch import nn

from ._version import __version__
from .artifact import PLAN_FILE, WEIGHTS_FILE, atomic_directory, check_artifact, follow_umask, native_path
from .conversion_plan import ConversionPlan, attach_plan, plan_of, unwrap_model
from .convert.api import summary
from .convert.apply import apply_plan
from .convert.options import RankSpec
from .convert.rank import ranks_for
from .errors import LowRankError, LowRankWarning, first_line
from .layers import get_format
from .layers.base import Init
from .layers.memory_format import MEMORY_FORMAT_NAMES, apply_memory_format
from .model_names import is_factory
from .models import build_from_spec
from .state_file import load_state, names_in_file, save_state

__all__ = ["save", "load", "rebuild"]


def save(model: nn.Module, directory: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Save a converted model as ``DIR/plan.json`` and ``DIR/model.safetensors``.

    Args:
        model: a model returned by :func:`lowrank_tool.convert` or :func:`lowrank_tool.load` (also wrapped
            in ``nn.DataParallel``, ``DistributedDataParallel`` or ``torch.compile``: the model inside is saved).
        directory: the output directory (must not exist unless ``overwrite``).
        overwrite: replace an existing directory (only once the new one is fully written).

    Example:
        >>> model = lowrank_tool.convert("resnet18", rank=0.3)
        >>> lowrank_tool.save(model, "runs/r18")  # doctest: +SKIP
    """

    model = unwrap_model(model)  # nn.DataParallel / DDP / torch.compile: the weights of the model inside
    plan = summary(model)
    _check_savable(model)
    with atomic_directory(directory, overwrite=overwrite) as tmp:
        plan.save(tmp / PLAN_FILE)
        save_state(model, tmp / WEIGHTS_FILE, metadata={"format": "pt", "lowrank_tool": __version__})
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
    layout = plan.policy.get("memory_format", "contiguous")  # plans before the option: PyTorch's default
    if not isinstance(layout, str) or layout not in MEMORY_FORMAT_NAMES:  # checked before building anything
        raise LowRankError(
            f"{where}: policy.memory_format {layout!r} is not a layout; it must be one of: "
            f"{', '.join(MEMORY_FORMAT_NAMES)} (re-create the artifact with `lowrank convert -o DIR`)"
        )
    if model is None:
        model = build_from_spec(plan.base_model, where=where, trust_code=trust_code)
    elif not isinstance(model, nn.Module):
        raise LowRankError(f"load(DIR, model=...) takes a dense nn.Module, got {type(model).__name__}")
    elif plan_of(model) is not None:
        raise LowRankError("load(DIR, model=...) needs the dense model, not an already converted one")
    return apply_memory_format(apply_plan(model, plan, init=init), MEMORY_FORMAT_NAMES[layout])


def _read_header(weights: Path) -> dict[str, tuple[str, list[int]]]:
    """Each tensor's safetensors dtype (``"F32"``) and shape, from the file's header (no tensor is read)."""
    try:
        with native_path(weights) as name, safe_open(name, framework="pt") as fh:
            return {key: (fh.get_slice(key).get_dtype(), list(fh.get_slice(key).get_shape())) for key in fh.keys()}
    except SafetensorError as exc:
        raise LowRankError(
            f"{weights} is corrupt or not a safetensors file ({first_line(exc, with_type=False)}); "
            "re-create it with `lowrank convert -o DIR`"
        ) from None


def _layer_shapes(entry: Any) -> dict[str, list[int]] | None:
    """The tensors one plan layer puts in the file (names relative to the layer → shapes), or ``None`` when
    the record cannot say (a malformed entry: replaying the plan reports it)."""
    try:
        if entry.converted:
            geometry = entry.geometry()
            full = ranks_for(entry.format, geometry, RankSpec("ratio", 1.0), 1)
            if len(entry.ranks) != len(full) or any(r > f for r, f in zip(entry.ranks, full, strict=False)):
                return None  # ranks the layer cannot take: the plan is wrong, and replaying it says so
            layer = get_format(entry.format, len(entry.kernel_size)).from_geometry(
                geometry, tuple(entry.ranks), device="meta"
            )
            return {key: list(t.shape) for key, t in layer.state_dict().items()}
        weight = [entry.out_channels, entry.in_channels // entry.groups, *entry.kernel_size]
        if entry.kind.startswith("ConvTranspose"):  # (C_in, C_out / groups, *k)
            weight = [entry.in_channels, entry.out_channels // entry.groups, *entry.kernel_size]
        return {"weight": weight} | ({"bias": [entry.out_channels]} if entry.bias else {})
    except Exception:
        return None


def _check_against_plan(weights: Path, stored: dict[str, tuple[str, list[int]]], plan: ConversionPlan) -> None:
    """What the file must hold for the plan's layers, checked before the model is built (a large model takes
    seconds and gigabytes to build): a tensor of a planned layer with another shape, or none of the plan's
    layers in the file at all, means the weights of another model. (A tensor missing here may be stored under
    another name of a shared module; the check after building knows.)"""
    if not plan.layers:
        return
    found = 0
    for entry in plan.layers:
        shapes = _layer_shapes(entry)
        if shapes is None:
            continue
        for key, shape in shapes.items():
            full = f"{entry.name}.{key}"
            if full in stored and stored[full][1] != shape:
                raise LowRankError(
                    f"{weights} does not match the model rebuilt from the plan: {full} is stored with shape "
                    f"{stored[full][1]}, the plan's layer takes {shape}; save and load with the same model"
                )
        found += any(f"{entry.name}.{key}" in stored for key in shapes)
    if not found:
        raise LowRankError(
            f"{weights} does not match the model rebuilt from the plan: it holds none of the plan's {len(plan.layers)} "
            f"layers (e.g. {plan.layers[0].name}); it was written for another model — save and load with the same model"
        )


def _dry_run(plan: ConversionPlan, weights: Path, stored: dict[str, tuple[str, list[int]]]) -> None:
    """Replay the plan on its base model built on the meta device (no memory, no time) and check the file's
    names and shapes against it, so that a plan or file that does not fit is refused before a real build (a
    large model takes seconds and gigabytes). A model that cannot be built on the meta device, or a factory
    (the user's code, called once), is checked after the real build instead."""
    if is_factory(str(plan.base_model.get("name"))):
        return
    _check_size(plan, weights.parent / PLAN_FILE)
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            meta = build_from_spec(plan.base_model, where="plan", trust_code=False)
    except Exception:  # the real build reports what is wrong with the spec
        return
    try:
        apply_plan(meta, plan, init="none")
    except LowRankError as exc:
        raise LowRankError(f"{weights.parent / PLAN_FILE}: {exc}") from None
    except Exception:
        return
    groups: dict[int, list[str]] = {}  # a shared module or tied parameter: one tensor object, several names
    shapes: dict[int, list[int]] = {}
    for name, tensor in meta.state_dict(keep_vars=True).items():
        groups.setdefault(id(tensor), []).append(name)
        shapes[id(tensor)] = list(tensor.shape)
    known = {name for names in groups.values() for name in names}
    extra = [name for name in stored if name not in known]
    if extra:
        raise LowRankError(
            f"{weights} does not match the model rebuilt from the plan ({len(extra)} unexpected tensors, e.g. "
            f"{', '.join(extra[:3])}); save and load with the same model"
        )
    missing = [name for names in groups.values() if not any(n in stored for n in names) for name in names]
    if missing:
        raise LowRankError(
            f"{weights} does not match the model rebuilt from the plan: it lacks {len(missing)} of its tensors (e.g. "
            f"{missing[0]}); it was written for another plan, or not by lowrank_tool.save — save and load with the "
            "same model, or re-create it with `lowrank convert -o DIR`"
        )
    for key, names in groups.items():
        held = [name for name in names if name in stored]
        wrong = next((name for name in held if stored[name][1] != shapes[key]), None)
        if wrong is not None:
            raise LowRankError(
                f"{weights} does not match the model rebuilt from the plan: {wrong} is stored with shape "
                f"{stored[wrong][1]}, the model takes {shapes[key]}; save and load with the same model"
            )


def _check_size(plan: ConversionPlan, where: Path) -> None:
    """A torchvision model that is far larger than the plan's layers and totals say is not the model the plan was
    made from (its name was changed): refused from torchvision's published parameter count, before building it."""
    name = plan.base_model.get("name")
    if not isinstance(name, str):
        return
    try:
        known = int(torchvision.models.get_model_weights(name).DEFAULT.meta["num_params"])
    except Exception:  # no published weights, or no such name (the build reports it)
        return
    planned = int(plan.totals()["params_before"])
    if known > 4 * planned and known > 20_000_000:
        raise LowRankError(
            f"{where} names {name} ({known / 1e6:,.1f}M parameters), but its layers and totals describe a dense model of "
            f"{planned / 1e6:,.2f}M; the plan was made for another model — re-create it with `lowrank convert -o DIR`"
        )


#: safetensors' name of each floating-point dtype a model may hold.
_FLOAT_CODES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64"}


def _check_header(weights: Path, stored: dict[str, tuple[str, list[int]]], model: nn.Module) -> None:
    """The file must hold every tensor of the model, and a float tensor must get float values of a precision
    that loads faithfully.

    Checked from the header before loading, because loading forgives all three: PyTorch's batch norm fills a
    missing ``num_batches_tracked`` with 0, and a copy casts integers to float, and float8 to float32 (without
    the scales that float8 weights need), silently. A file in another float precision (a model saved after
    ``.half()``) loads into the float32 model with a warning.
    """
    expected = model.state_dict()
    found = names_in_file(expected, stored)  # a shared module's or tied parameter's repeats are stored once
    missing = [name for name, held in found.items() if held is None]
    if missing:
        raise LowRankError(
            f"{weights} does not match the model rebuilt from the plan: it lacks {len(missing)} of its tensors (e.g. "
            f"{missing[0]}); it was written for another plan, or not by lowrank_tool.save — save and load with the "
            "same model, or re-create it with `lowrank convert -o DIR`"
        )
    cast: list[tuple[str, str, str]] = []
    for name, tensor in expected.items():
        kind = stored[found[name] or name][0]
        if not tensor.is_floating_point():
            continue
        if not kind.startswith(("F", "BF")):
            raise LowRankError(
                f"{weights} stores {name} as {kind}, but it is a floating-point tensor of the model; the file was not "
                "written by lowrank_tool.save — re-create it with `lowrank convert -o DIR`"
            )
        want = _FLOAT_CODES.get(tensor.dtype, str(tensor.dtype))
        if kind.startswith("F8"):
            raise LowRankError(
                f"{weights} stores {name} as {kind} (float8), but the model holds {want}; float8 weights need scales "
                "the file does not carry, so they would load as other numbers — save the model in float32 "
                "(lowrank_tool.save) and quantize at export (precision='int8')"
            )
        if kind != want:
            cast.append((name, kind, want))
    if cast:
        name, kind, want = cast[0]
        warnings.warn(
            f"{weights} stores {len(cast)} tensor(s) in another precision than the model (e.g. {name} as {kind}); "
            f"they were converted to {want}, the precision the model is rebuilt in",
            LowRankWarning,
            stacklevel=3,
        )


def _check_device(map_location: Any) -> torch.device:
    """``map_location`` as a device this machine has (else one line that says what to pass)."""
    try:
        device = torch.device(map_location)
    except (RuntimeError, TypeError):
        raise LowRankError(
            f"map_location {map_location!r} is not a device; pass 'cpu', 'cuda' or 'cuda:N' (or a torch.device)"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise LowRankError(
                f"map_location={str(map_location)!r}, but this machine has no CUDA GPU (or this PyTorch was built "
                "without CUDA); load with map_location='cpu'"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise LowRankError(
                f"map_location={str(map_location)!r}, but this machine has {count} CUDA GPU(s) "
                f"(cuda:0 to cuda:{count - 1}); pass one of those, or 'cpu'"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise LowRankError(
            f"map_location={str(map_location)!r}, but MPS is not available on this machine; load with map_location='cpu'"
        )
    return device


def _non_finite(model: nn.Module) -> list[str]:
    """Names of the model's floating-point tensors that hold NaN or inf."""
    return [n for n, t in model.state_dict().items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def _negative_variance(model: nn.Module) -> tuple[str, float] | None:
    """(name, min) of the first batch norm whose running variance is negative (it would output NaN), or None."""
    for name, module in model.named_modules():
        var = getattr(module, "running_var", None)
        if (
            isinstance(module, nn.modules.batchnorm._NormBase)
            and isinstance(var, torch.Tensor)
            and bool((var < 0).any())
        ):
            return name, float(var.min())
    return None


def _check_savable(model: nn.Module) -> None:
    """What :func:`load` refuses is not written: NaN/inf values, a negative batch-norm variance."""
    bad = _non_finite(model)
    if bad:
        raise LowRankError(
            f"the model holds NaN/inf values ({len(bad)} tensors, e.g. {bad[0]}), and load refuses such an artifact; "
            "save a good checkpoint (a diverged run keeps its last good one)"
        )
    negative = _negative_variance(model)
    if negative is not None:
        raise LowRankError(
            f"the model holds a negative batch-norm variance in {negative[0]}.running_var, and load refuses such an "
            "artifact; fix the statistics (e.g. recompute them on training data) before saving"
        )


def _check_batch_norm(weights: Path, model: nn.Module) -> None:
    """A batch norm's running variance is never negative: a file that says so is corrupt (outputs NaN)."""
    negative = _negative_variance(model)
    if negative is not None:
        raise LowRankError(
            f"{weights} holds a negative batch-norm variance in {negative[0]}.running_var (min {negative[1]:.3g}); "
            "the file is corrupt — re-create it, or train again from the last good checkpoint"
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
        map_location: device for the weights (``"cpu"``, ``"cuda"``, ``"cuda:1"``, a ``torch.device``); a
            device this machine lacks is refused before anything is read.
        trust_code: import the ``package.module:factory`` the plan names (only for files you trust;
            the CLI's ``--trust-code``).

    Example:
        >>> model = lowrank_tool.load("runs/r18")  # doctest: +SKIP
        >>> model(torch.randn(2, 3, 224, 224)).shape  # doctest: +SKIP
        torch.Size([2, 1000])
    """

    device = _check_device(map_location)
    directory = check_artifact(directory)
    plan = ConversionPlan.load(directory / PLAN_FILE)
    weights = directory / WEIGHTS_FILE
    stored = _read_header(weights)
    _check_against_plan(weights, stored, plan)  # before building the model
    if model is None:
        _dry_run(plan, weights, stored)
    model = rebuild(plan, model, where=str(directory / PLAN_FILE), trust_code=trust_code, init="none")
    _check_header(weights, stored, model)
    try:
        with native_path(weights) as name:
            missing, unexpected = load_state(model, name, device=str(device))
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
    bad = _non_finite(model)
    if bad:
        raise LowRankError(
            f"{weights} holds NaN/inf values ({len(bad)} tensors, e.g. {bad[0]}); it is corrupt or from a diverged run — "
            "re-create it, or train again from the last good checkpoint"
        )
    _check_batch_norm(weights, model)
    model.to(device)
    return attach_plan(model, plan)
