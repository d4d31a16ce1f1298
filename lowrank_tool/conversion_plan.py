"""The conversion plan: the single record of what was (or will be) converted, and why.

For every candidate convolution the plan holds its fully qualified name, geometry, the spatial sizes it
sees, parameters and MACs before and after, the chosen format and ranks, or the reason it stayed dense.
It is printed as the summary table, saved as ``plan.json`` beside the weights, and replayed by
:func:`lowrank_tool.load` to rebuild the model. Nothing else keeps a separate copy of these facts.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeGuard

from torch import nn

from ._version import __version__
from .artifact import atomic_write_text
from .errors import LowRankError
from .layers.base import ConvGeometry

__all__ = [
    "LayerPlan",
    "ConversionPlan",
    "SCHEMA_VERSION",
    "PLAN_ATTR",
    "MAX_PLAN_BYTES",
    "plan_of",
    "unwrap_model",
    "attach_plan",
]

#: Bumped on any incompatible change of the JSON layout; older plans keep loading.
SCHEMA_VERSION = 1
_KIND = "lowrank_tool.plan"
#: Attribute under which a converted model carries its plan (read it with :func:`plan_of`).
PLAN_ATTR = "_lowrank_plan"
#: The largest plan.json read (a plan takes about 1 kB a layer: 64 MiB is some 60,000 layers).
MAX_PLAN_BYTES = 64 << 20


@dataclass
class LayerPlan:
    """One candidate convolution."""

    name: str
    kind: str  # "Conv2d" | "Conv3d" (converted or not); "Conv1d" | "ConvTranspose1d/2d/3d" (kept dense)
    in_channels: int
    out_channels: int
    kernel_size: list[int]
    stride: list[int]
    padding: list[int] | str
    dilation: list[int]
    groups: int
    padding_mode: str
    bias: bool
    input_size: list[int] | None  # spatial size of the first call, per sample
    output_size: list[int] | None
    calls: int
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    format: str  # "tucker2" | "svd" | "cp" | "dense"
    ranks: list[int] | None = None
    rank_spec: str | None = None  # the request that produced the ranks ("0.3", "16", "budget:0.42")
    reason: str | None = None  # why the layer stayed dense, or a note about the format
    error: float | None = None  # relative Frobenius error of a decomposition (init="decompose")
    latency_ms: float | None = None  # measured ONNX Runtime latency of the chosen form (policy "latency")
    dense_latency_ms: float | None = None  # ... and of the dense conv, same input, threads and batch
    conv_class: str | None = None  # qualified class name when it is not torch's own Conv2d/Conv3d
    dynamic_same: bool = False  # TF-style "same" padding from each input's size (timm's Conv2dSame)
    aliases: list[str] | None = None  # other names of the same module (a shared conv: one layer, every name)

    @property
    def converted(self) -> bool:
        return self.format != "dense"

    def geometry(self) -> ConvGeometry:
        return ConvGeometry(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            self.stride,
            self.padding if isinstance(self.padding, str) else tuple(self.padding),
            self.dilation,
            self.padding_mode,
            self.bias,
            dynamic_same=self.dynamic_same,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerPlan:
        """A layer record from JSON; wrong types are a ``ValueError`` naming the field (a plan file is data)."""
        names = {f.name for f in fields(cls)}
        entry = cls(**{k: v for k, v in data.items() if k in names})
        where = f"layer {entry.name!r}"
        _check_fields(entry, where)
        return entry


@dataclass
class ConversionPlan:
    """Everything about one conversion; see the module docstring."""

    base_model: dict[str, Any]
    input_size: list[int]
    trace: dict[str, Any]
    policy: dict[str, Any]
    layers: list[LayerPlan]
    #: Parameters and MACs outside the candidate convs (linear layers, BN, grouped convs...).
    other_params: int = 0
    other_macs: int = 0
    schema_version: int = SCHEMA_VERSION
    toolkit_version: str = __version__
    notes: list[str] = field(default_factory=list)

    # -- totals ----------------------------------------------------------------------------------------
    @property
    def converted_layers(self) -> list[LayerPlan]:
        return [layer for layer in self.layers if layer.converted]

    def totals(self) -> dict[str, float]:
        pb = self.other_params + sum(layer.params_before for layer in self.layers)
        pa = self.other_params + sum(layer.params_after for layer in self.layers)
        mb = self.other_macs + sum(layer.macs_before for layer in self.layers)
        ma = self.other_macs + sum(layer.macs_after for layer in self.layers)
        return {
            "params_before": pb,
            "params_after": pa,
            "macs_before": mb,
            "macs_after": ma,
            "params_ratio": pa / pb if pb else 1.0,
            "macs_ratio": ma / mb if mb else 1.0,
            "compression": pb / pa if pa else 1.0,
            "mac_reduction": mb / ma if ma else 1.0,
            "layers": len(self.layers),
            "converted": len(self.converted_layers),
        }

    def summary_line(self) -> str:
        """``"resnet18: 19/20 convs low-rank, params 31.2%, MACs 35.0% of dense"``: the plan in one line."""
        t = self.totals()
        name = self.base_model.get("name") or self.base_model.get("class") or "model"
        return (
            f"{name}: {t['converted']}/{t['layers']} convs low-rank, params {100 * t['params_ratio']:.1f}%, "
            f"MACs {100 * t['macs_ratio']:.1f}% of dense"
        )

    def layer(self, name: str) -> LayerPlan:
        for entry in self.layers:
            if entry.name == name:
                return entry
        raise KeyError(name)

    # -- (de)serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": _KIND,
            "schema_version": self.schema_version,
            "toolkit_version": self.toolkit_version,
            "base_model": self.base_model,
            "input_size": list(self.input_size),
            "trace": self.trace,
            "policy": self.policy,
            "totals": self.totals(),
            "other_params": self.other_params,
            "other_macs": self.other_macs,
            "notes": list(self.notes),
            "layers": [asdict(layer) for layer in self.layers],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: Any, source: str = "plan") -> ConversionPlan:
        if not isinstance(data, dict) or data.get("kind") != _KIND:
            raise LowRankError(
                f'{source} is not a lowrank_tool plan (no "kind": "{_KIND}"); point to a directory written by `lowrank convert -o DIR`'
            )
        version = data.get("schema_version")
        if not _is_int(version):
            raise LowRankError(
                f"{source} has no integer schema_version; it is corrupt, re-create it with `lowrank convert -o DIR`"
            )
        if version > SCHEMA_VERSION:
            raise LowRankError(
                f"{source} has schema version {version}, newer than the {SCHEMA_VERSION} this lowrank-tool {__version__} reads; "
                "upgrade with `pip install -U lowrank-tool`"
            )
        if version < 1:
            raise LowRankError(
                f"{source} has schema version {version}; versions start at 1, so the file is corrupt — re-create it with `lowrank convert -o DIR`"
            )
        size = data.get("input_size")
        if not isinstance(size, list) or len(size) not in (3, 4) or not all(_is_int(d) and d >= 1 for d in size):
            raise LowRankError(
                f"{source}: input_size {size!r} is not 3 or 4 positive integers (C, H, W or C, T, H, W); re-create it with `lowrank convert -o DIR`"
            )
        if not isinstance(data.get("notes", []), list) or not all(isinstance(n, str) for n in data.get("notes", [])):
            raise LowRankError(f"{source}: notes must be a list of strings; re-create it with `lowrank convert -o DIR`")
        for key in ("other_params", "other_macs"):
            if not _is_int(data.get(key, 0)) or data.get(key, 0) < 0:
                raise LowRankError(
                    f"{source}: {key} {data.get(key)!r} is not a non-negative integer; re-create it with `lowrank convert -o DIR`"
                )
        toolkit_version = data.get("toolkit_version", "?")
        if not isinstance(toolkit_version, str) or len(toolkit_version) > 64:
            raise LowRankError(
                f"{source}: toolkit_version is not a version string; re-create it with `lowrank convert -o DIR`"
            )
        try:
            return cls(
                base_model=dict(data["base_model"]),
                input_size=list(data["input_size"]),
                trace=dict(data.get("trace", {})),
                policy=dict(data.get("policy", {})),
                layers=[LayerPlan.from_dict(entry) for entry in data["layers"]],
                other_params=int(data.get("other_params", 0)),
                other_macs=int(data.get("other_macs", 0)),
                schema_version=version,
                toolkit_version=toolkit_version,
                notes=list(data.get("notes", [])),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise LowRankError(
                f"{source} is missing or has a malformed field ({exc}); re-create it with `lowrank convert -o DIR`"
            ) from None

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the plan as JSON atomically (temporary file, then rename)."""
        path = Path(path)
        atomic_write_text(path, self.to_json() + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ConversionPlan:
        path = Path(path)
        if not path.is_file():
            raise LowRankError(f"{path} does not exist; point to a directory written by `lowrank convert -o DIR`")
        with path.open("rb") as fh:  # at most the cap: a huge (or endless) file is refused unread
            raw = fh.read(MAX_PLAN_BYTES + 1)
        if len(raw) > MAX_PLAN_BYTES:
            raise LowRankError(
                f"{path} is larger than {MAX_PLAN_BYTES >> 20} MiB, far more than any plan takes; it is not a plan "
                "written by lowrank_tool — re-create it with `lowrank convert -o DIR`"
            )
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = "\x00"  # not UTF-8: reported as not JSON below
        return cls.from_dict(
            parse_json(text, f"{path} is not valid JSON", "it is corrupt, re-create it with `lowrank convert -o DIR`"),
            source=str(path),
        )


def unwrap_model(model: Any) -> Any:
    """The model inside the wrappers that training adds: ``nn.DataParallel`` / ``DistributedDataParallel``
    (``.module``) and ``torch.compile`` (``._orig_mod``), however deeply nested; any other object as it is.

    Example:
        >>> unwrap_model(torch.nn.DataParallel(net)) is net  # doctest: +SKIP
        True
    """
    for _ in range(16):  # wrappers of wrappers; a cycle cannot make this loop forever
        inner = _wrapped(model)
        if inner is None:
            return model
        model = inner
    return model


def _wrapped(model: Any) -> Any:
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        return model.module
    inner = getattr(model, "_orig_mod", None) if type(model).__name__ == "OptimizedModule" else None
    return inner if isinstance(inner, nn.Module) else None


def plan_of(model: Any) -> ConversionPlan | None:
    """The conversion plan a model carries (set by ``convert``, ``load`` or :func:`attach_plan`), or ``None``.

    A model wrapped for training (``nn.DataParallel``, ``DistributedDataParallel``, ``torch.compile``) answers
    with the plan of the model inside (:func:`unwrap_model`).

    Example:
        >>> plan_of(torch.nn.Linear(2, 2)) is None  # doctest: +SKIP
        True
    """
    plan = getattr(model, PLAN_ATTR, None)
    if not isinstance(plan, ConversionPlan) and unwrap_model(model) is not model:
        plan = getattr(unwrap_model(model), PLAN_ATTR, None)
    return plan if isinstance(plan, ConversionPlan) else None


def attach_plan(model: Any, plan: ConversionPlan) -> Any:
    """Make ``model`` carry ``plan`` (what ``save`` writes and ``export_onnx`` embeds); returns the model."""
    if not isinstance(plan, ConversionPlan):
        raise LowRankError(f"attach_plan needs a ConversionPlan, got {type(plan).__name__}")
    setattr(model, PLAN_ATTR, plan)
    return model


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_json(text: str, what: str, fix: str) -> Any:
    """``json.loads`` of a file's text; anything it cannot read is one :class:`LowRankError` "``what`` (why); ``fix``".

    Besides malformed JSON that is nesting deeper than Python's recursion limit and an integer longer than
    Python converts (4300 digits): both would otherwise escape as a ``RecursionError`` / ``ValueError``.
    """
    try:
        return json.loads(text)
    except RecursionError:
        why = "nested too deeply"
    except ValueError as exc:  # JSONDecodeError is one; so is an integer of too many digits
        why = exc.__class__.__name__ if isinstance(exc, json.JSONDecodeError) else "a number too long to read"
    raise LowRankError(f"{what} ({why}); {fix}")


#: What each optional or typed field of a layer record may hold (beyond the integer fields checked above).
_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


#: The layer kinds a plan lists: the converted ones (Conv2d, Conv3d) and those kept dense by their kind.
_KINDS = ("Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d")


def _check_fields(entry: LayerPlan, where: str) -> None:
    """Every field of a layer record, by type: a plan file is data, and each field is used as its type says."""

    def bad(key: str, allowed: str) -> ValueError:
        return ValueError(f"{where}: {key} {getattr(entry, key)!r} is not {allowed}")

    counts = ("in_channels", "out_channels", "groups", "calls")
    for key in (*counts, "params_before", "params_after", "macs_before", "macs_after"):
        if not _is_int(getattr(entry, key)) or getattr(entry, key) < 0:
            raise bad(key, "a non-negative integer")
    for key in ("kernel_size", "stride", "dilation"):
        value = getattr(entry, key)
        if not isinstance(value, list) or not value or not all(_is_int(v) and v >= 1 for v in value):
            raise bad(key, "a list of positive integers")
    ranks = entry.ranks
    if ranks is not None and (
        not isinstance(ranks, list) or not ranks or not all(_is_int(r) and r >= 1 for r in ranks)
    ):
        raise bad("ranks", "a list of positive integers")
    if entry.converted and ranks is None:
        raise ValueError(f"{where}: format {entry.format!r} without ranks")

    if not isinstance(entry.name, str):
        raise bad("name", "a string")
    if entry.kind not in _KINDS:
        raise bad("kind", ", ".join(_KINDS))
    if entry.converted and entry.kind not in ("Conv2d", "Conv3d"):
        raise ValueError(f"{where}: a {entry.kind} cannot be converted (format {entry.format!r})")
    padding = entry.padding
    if not (
        padding in ("same", "valid") or (isinstance(padding, list) and all(_is_int(v) and v >= 0 for v in padding))
    ):
        raise bad("padding", "'same', 'valid' or a list of non-negative integers")
    if entry.padding_mode not in _PADDING_MODES:
        raise bad("padding_mode", "one of " + ", ".join(_PADDING_MODES))
    for key in ("bias", "dynamic_same"):
        if not isinstance(getattr(entry, key), bool):
            raise bad(key, "true or false")
    for key in ("format", "rank_spec", "reason", "conv_class"):
        if getattr(entry, key) is not None and not isinstance(getattr(entry, key), str):
            raise bad(key, "a string")
    for key in ("error", "latency_ms", "dense_latency_ms"):
        value = getattr(entry, key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
        ):
            raise bad(key, "a finite number")
    for key in ("input_size", "output_size"):
        value = getattr(entry, key)
        if value is not None and (not isinstance(value, list) or not all(_is_int(v) and v >= 1 for v in value)):
            raise bad(key, "a list of positive integers")
    aliases = entry.aliases
    if aliases is not None and (not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases)):
        raise bad("aliases", "a list of layer names")
