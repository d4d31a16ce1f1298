"""Export a (converted) model to an ONNX file that is ready for inference.

The exported graph is the eval-mode model: batch norms are folded into the convs next to them by the
exporter's constant folding, dropout disappears, and the ``Identity`` nodes the TorchScript exporter leaves
behind are removed. Inputs and outputs have names (``input`` → ``logits`` for classifiers; ``out``/``aux``
for segmentation; ``image`` → ``boxes``/``scores``/``labels`` for detection), the batch axis is dynamic
unless a fixed batch is asked for, and the file carries metadata: toolkit version, task, input size,
precision, merged layers, a one-line plan summary, the ranks of every layer and the whole plan.

Exporter: the TorchScript exporter (``torch.onnx.export(dynamo=False)``) first, the torch.export-based
("dynamo") exporter when it fails. Measured on this toolkit's converted models (README, "Exporting to
ONNX"), TorchScript exports every classification and segmentation model and the detection models, in
well under a second each; the dynamo exporter is about ten times slower and fails on detection models and
LR-ASPP, but succeeds where TorchScript meets an adaptive pool it cannot express (VGG at small inputs).
``exporter="dynamo"`` or ``"torchscript"`` forces one.

The file is written to a temporary name in the target directory and renamed into place only when
complete, so a failed export never leaves a partial file.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._version import __version__
from ..artifact import atomic_file
from ..choices import (
    DEFAULT_OPSET,
    EXPORTERS,
    MAX_OPSET,
    MERGE_MODES,
    MIN_OPSET,
    PRECISIONS,
)
from ..conversion_plan import ConversionPlan, parse_json, plan_of, unwrap_model
from ..convert.api import parse_input_size
from ..errors import LowRankError, first_line
from ..models import example_input
from ..runtime import parse_engines
from ..runtime.machine import cpu_description
from .merge import MergeDecision, merge_factors
from .options import check_onnx_file, check_output_path, check_weight_bits, parse_batch
from .quantize import quantize_file
from .verify import VerifyReport, verify_onnx

__all__ = [
    "export_onnx",
    "ExportResult",
    "read_metadata",
    "plan_from_onnx",
    "load_onnx",
    "EXPORTERS",
    "PRECISIONS",
    "DEFAULT_OPSET",
    "MIN_OPSET",
    "MAX_OPSET",
    "META_PREFIX",
]

META_PREFIX = "lowrank_tool."


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote."""

    path: Path
    exporter: str
    opset: int
    precision: str
    batch: int | str
    input_names: list[str]
    output_names: list[str]
    input_shapes: list[list[int | str]]
    seconds: float
    size_bytes: int
    merged: list[str] = field(default_factory=list)
    merge_decisions: list[MergeDecision] = field(default_factory=list)
    example_input: Any = None  # the input the graph was traced with (reused by verification)
    verification: Any = None  # a VerifyReport when export_onnx(verify=True): the first engine's
    verifications: list[Any] = field(default_factory=list)  # one VerifyReport per engine verified on
    quantization: Any = None  # a QuantizeReport for int8

    def to_dict(self) -> dict[str, Any]:
        data = {
            k: v
            for k, v in asdict(self).items()
            if k not in ("example_input", "merge_decisions", "verification", "verifications", "quantization")
        }
        data["path"] = str(self.path)
        if self.verification is not None:
            data["verification"] = self.verification.to_dict()
            data["verifications"] = [v.to_dict() for v in self.verifications]
        if self.quantization is not None:
            data["quantization"] = self.quantization.to_dict()
        return data


# -- inputs and outputs ----------------------------------------------------------------------------------
def _task_of(model: nn.Module, plan: ConversionPlan | None) -> str:
    if plan is not None and plan.base_model.get("task"):
        return str(plan.base_model["task"])
    return "classification"


def _default_example(task: str, input_size: Sequence[int], batch: int) -> Any:
    return example_input(task, tuple(input_size), batch=1 if task == "detection" else batch, seed=0)


def _as_args(example: Any) -> tuple[Any, ...]:
    if isinstance(example, torch.Tensor):
        return (example,)
    if isinstance(example, list):  # detection: a list of images is one argument
        return (example,)
    if isinstance(example, tuple):
        return example
    raise LowRankError(
        f"example_input must be a tensor, a tuple of tensors or a list of images, got {type(example).__name__}"
    )


def _input_names(task: str, args: tuple[Any, ...]) -> list[str]:
    if task == "detection":
        return ["image"]
    if task == "optical_flow" and len(args) == 2:
        return ["image1", "image2"]
    return ["input"] if len(args) == 1 else [f"input_{i}" for i in range(len(args))]


def _flat_inputs(args: tuple[Any, ...]) -> list[torch.Tensor]:
    flat: list[torch.Tensor] = []
    for a in args:
        flat.extend(a if isinstance(a, list) else [a])
    return flat


def _output_names(output: Any, task: str) -> list[str]:
    if isinstance(output, torch.Tensor):
        return ["logits" if task == "classification" else "output"]
    if isinstance(output, dict):
        return [str(k) for k in output]
    if isinstance(output, (list, tuple)) and output and isinstance(output[0], dict):
        return [str(k) for k in output[0]]
    if isinstance(output, (list, tuple)):
        return [f"output_{i}" for i in range(len(output))]
    raise LowRankError(
        f"the model returns {type(output).__name__}; ONNX export needs tensors, or dicts / lists of tensors"
    )


def _cast(example: Any, dtype: torch.dtype) -> Any:
    if isinstance(example, torch.Tensor):
        return example.to(dtype) if example.is_floating_point() else example
    if isinstance(example, (list, tuple)):
        return type(example)(_cast(e, dtype) for e in example)
    return example


# -- exporters ----------------------------------------------------------------------------------------------
def _export_torchscript(model: nn.Module, args: tuple[Any, ...], path: str, opset: int, names: dict[str, Any]) -> None:
    sink = io.StringIO()  # on failure the exporter prints the whole TorchScript graph
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            args,
            path,
            dynamo=False,
            opset_version=opset,
            do_constant_folding=True,
            training=torch.onnx.TrainingMode.EVAL,
            **names,
        )


def _export_dynamo(model: nn.Module, args: tuple[Any, ...], path: str, opset: int, names: dict[str, Any]) -> None:
    try:
        import onnxscript  # noqa: F401
    except ImportError:
        raise LowRankError(
            "the dynamo exporter needs onnxscript; pip install onnxscript, or use exporter='torchscript'"
        ) from None
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            args,
            dynamo=True,
            opset_version=max(opset, 18),
            external_data=False,
            optimize=True,
            verbose=False,
            **names,
        )
        if program is None:  # only without a file argument does the exporter return nothing
            raise LowRankError("the dynamo exporter returned no program; use exporter='torchscript'")
        program.save(path)


def _run_exporters(
    model: nn.Module, args: tuple[Any, ...], path: str, opset: int, names: dict[str, Any], exporter: str
) -> str:
    order = {"auto": ("torchscript", "dynamo"), "torchscript": ("torchscript",), "dynamo": ("dynamo",)}[exporter]
    failures = []
    for which in order:
        try:
            (_export_torchscript if which == "torchscript" else _export_dynamo)(model, args, path, opset, names)
            return which
        except LowRankError as exc:
            failures.append(f"{which}: {exc}")
        except Exception as exc:
            failures.append(f"{which}: {first_line(exc, limit=260)}")
    raise LowRankError(
        f"ONNX export failed ({'; '.join(failures)}); try another --opset or --input-size, or report the model"
    )


# -- post-processing ------------------------------------------------------------------------------------
def _rename_inputs(graph: Any, old: str, new: str) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for attr in node.attribute:
            if attr.g is not None and attr.g.node:
                _rename_inputs(attr.g, old, new)
            for sub in attr.graphs:
                _rename_inputs(sub, old, new)


def _strip_identities(model_proto: Any) -> int:
    """Remove top-level Identity nodes (dropout in eval mode) whose output is not a graph output."""
    graph = model_proto.graph
    outputs = {o.name for o in graph.output}
    removed = 0
    for node in list(graph.node):
        if node.op_type == "Identity" and node.output[0] not in outputs and len(node.input) == 1:
            graph.node.remove(node)
            _rename_inputs(graph, node.output[0], node.input[0])
            removed += 1
    return removed


def _ranks(plan: ConversionPlan) -> dict[str, list[int]]:
    return {layer.name: list(layer.ranks or []) for layer in plan.converted_layers}


def _metadata(
    plan: ConversionPlan | None,
    task: str,
    input_size: Sequence[int] | None,
    precision: str,
    merged: list[str],
    exporter: str,
    extra: dict[str, str] | None,
) -> dict[str, str]:
    meta = {
        "version": __version__,
        "task": task,
        "precision": precision,
        "exporter": exporter,
        "input_size": "x".join(map(str, input_size)) if input_size else "",
        "merged": json.dumps(merged),
    }
    if plan is not None:
        meta["summary"] = plan.summary_line()
        meta["ranks"] = json.dumps(_ranks(plan), separators=(",", ":"))
        meta["plan"] = json.dumps(plan.to_dict(), separators=(",", ":"))
    meta.update(extra or {})
    return {META_PREFIX + k: v for k, v in meta.items()}


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``lowrank_tool.*`` metadata of an exported file, without the prefix."""
    model_proto = load_onnx(path, load_weights=False)
    return (
        {p.key[len(META_PREFIX) :]: p.value for p in model_proto.metadata_props if p.key.startswith(META_PREFIX)}
        if model_proto
        else {}
    )


def plan_from_onnx(path: str | os.PathLike[str]) -> ConversionPlan | None:
    """The conversion plan embedded in an exported file (``None`` for a model exported without one)."""
    text = read_metadata(path).get("plan")
    if not text:
        return None
    data = parse_json(
        text,
        f"{path}: the embedded plan (metadata {META_PREFIX}plan) is not JSON",
        "re-export the model with `lowrank export`",
    )
    return ConversionPlan.from_dict(data, source=f"{path} metadata")


def load_onnx(path: str | os.PathLike[str], load_weights: bool = True) -> Any:
    """An ONNX file as a ``ModelProto``; a missing or unreadable file is a one-line :class:`LowRankError`."""
    import onnx

    path = check_onnx_file(path)
    try:
        return onnx.load(str(path), load_external_data=load_weights)
    except Exception as exc:
        raise LowRankError(
            f"{path} is not a readable ONNX file ({first_line(exc, limit=260)}); re-export it with `lowrank export`"
        ) from None


# -- validation -----------------------------------------------------------------------------------------
def check_opset(opset: int) -> None:
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise LowRankError(
            f"opset {opset!r} is not supported; use an opset from {MIN_OPSET} to {MAX_OPSET} (default {DEFAULT_OPSET})"
        )


# -- the entry point --------------------------------------------------------------------------------------
def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    example_input: Any = None,
    *,
    input_size: str | Sequence[int] | None = None,
    batch: int | str = "dynamic",
    opset: int = DEFAULT_OPSET,
    precision: str = "fp32",
    merge: str = "none",
    exporter: str = "auto",
    calib_data: Any = None,
    calib_samples: int = 256,
    int8_weight_bits: int = 7,
    verify: bool = True,
    verify_with: str | Sequence[str] = "auto",
    tolerance: float | None = None,
    device: str = "auto",
    threads: int | None = None,
    metadata: dict[str, str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export a model (converted or not) to an inference-ready ONNX file, and check it against PyTorch.

    Args:
        model: the model; a converted one carries its plan into the file's metadata. A model wrapped in
            ``nn.DataParallel``, ``DistributedDataParallel`` or ``torch.compile`` exports the model inside.
        path: the ``.onnx`` file to write (replaced atomically if it exists).
        example_input: an input to trace with; default: random, from ``input_size`` (or the plan's).
        input_size: per-sample size ``"3x224x224"`` (default: the size the model was converted at).
        batch: ``"dynamic"`` (any batch; traced at 2) or a fixed batch size.
        opset: ONNX opset, :data:`MIN_OPSET`..:data:`MAX_OPSET`.
        precision: ``"fp32"``, ``"fp16"`` (half weights and activations, float16 inputs/outputs) or
            ``"int8"`` (static post-training quantization calibrated on ``calib_data``).
        merge: ``"none"``, ``"all"`` or ``"auto"`` (see :mod:`lowrank_tool.export.merge`).
        exporter: ``"auto"`` (TorchScript, then dynamo), ``"torchscript"`` or ``"dynamo"``.
        calib_data: for int8: a data spec (``"digits"``, ``"cifar10:PATH"``) or an iterable of input batches.
        calib_samples: images used to calibrate int8.
        int8_weight_bits: 7 (default: weights in [-64, 64], no saturation on x86 CPUs without VNNI) or 8
            (full range, for VNNI/ARM/GPU targets); see :mod:`lowrank_tool.export.quantize`.
        verify: run the ONNX checker and compare each engine of ``verify_with`` with PyTorch (raises
            :class:`~lowrank_tool.export.verify.VerificationError` above tolerance; no file is left then).
        verify_with: engines to verify on, ``"onnxruntime,openvino"`` or a list; ``"auto"``: every installed
            engine (ONNX Runtime, and OpenVINO when its extra is installed). With ``auto`` an engine other than
            ONNX Runtime that cannot load the file (an operator it lacks) is a note on the report, not an error;
            an engine named explicitly must run it.
        tolerance: maximum relative error (default per precision, :data:`~lowrank_tool.export.verify.TOLERANCES`).
        device: ONNX Runtime device for verification and ``merge="auto"`` timings (OpenVINO verifies on the CPU).
        threads: ONNX Runtime threads for ``merge="auto"`` timings.
        metadata: extra ``key → value`` strings for the file's metadata.
        progress: called with a short message at each stage.

    Returns:
        An :class:`ExportResult` (with ``.verification`` — the first engine's report — and ``.verifications``
        when verified).

    Example:
        >>> model = lowrank_tool.convert("resnet18", rank=0.3, input_size="3x64x64")
        >>> result = export_onnx(model, "r18.onnx")          # doctest: +SKIP
        >>> result.verification.max_rel < 1e-4               # doctest: +SKIP
        True
    """
    path, batch = _check_request(model, path, batch, opset, precision, merge, exporter, calib_data, tolerance)
    model = unwrap_model(model)  # nn.DataParallel / DDP / torch.compile: the model inside is exported
    check_weight_bits(int8_weight_bits)
    engines = parse_engines(verify_with) if verify else []
    note = progress or (lambda message: None)
    started = time.perf_counter()
    plan = plan_of(model)
    task = _task_of(model, plan)
    size, args = _trace_input(plan, task, input_size, example_input, batch)

    reference = copy.deepcopy(model).float().eval()  # what the file must compute (before merging)
    work = copy.deepcopy(reference)
    decisions: list[MergeDecision] = []
    if merge != "none":
        note(f"merging factor chains ({merge})")
        fixed = 1 if batch == "dynamic" else int(batch)
        timed_in = "int8" if precision == "int8" else "fp32"  # (fp16 is a GPU setting: timed as fp32 on the CPU)
        decisions = merge_factors(
            work, merge, plan=plan, batch=fixed, threads=threads, device=device, precision=timed_in
        )
    merged = [d.name for d in decisions if d.merged]
    _explicit_padding(work)
    work, args_typed, names = _typed_graph_io(work, args, task, precision, batch)

    with atomic_file(path) as tmp:
        note(f"exporting ({exporter} exporter, opset {opset}, {precision})")
        used = _run_exporters(work, args_typed, str(tmp), opset, names, exporter)
        meta = _metadata(plan, task, size, "fp32" if precision == "int8" else precision, merged, used, metadata)
        opset_written = _finish_graph(tmp, meta, default_opset=opset)
        quant_report = None
        if precision == "int8":
            note(f"quantizing to int8 (calibrating on {calib_samples} samples)")
            int8_meta = meta | {
                META_PREFIX + "precision": "int8",
                META_PREFIX + "int8_weight_bits": str(int8_weight_bits),
            }
            quant_report = quantize_file(
                tmp, tmp, calib_data, size=size, samples=calib_samples, metadata=int8_meta, weight_bits=int8_weight_bits
            )
        reports: list[VerifyReport] = []
        skipped: list[str] = []
        saturates = precision == "int8" and int8_weight_bits == 8 and cpu_description().saturates_int8
        hint = (
            "this CPU has no VNNI, where int8 kernels saturate on full-range weights: verify the 8-bit file on the "
            "machine it is for, or export with --int8-weight-bits 7 (runs everywhere)"
            if saturates
            else None
        )
        for engine in engines:
            note(f"verifying with {engine}")
            try:
                reports.append(
                    verify_onnx(
                        tmp,
                        reference,
                        task=task,
                        batch=batch,
                        precision=precision,
                        example_input=args,
                        tolerance=tolerance,
                        device=device if engine == "onnxruntime" or verify_with != "auto" else "auto",
                        engine=engine,
                        real_inputs=quant_report.inputs if quant_report else None,
                        raise_on_failure=True,
                        label=str(path),
                        mismatch_hint=hint,
                    )
                )
            except LowRankError as exc:
                if verify_with != "auto" or engine == "onnxruntime":
                    raise
                skipped.append(f"not verified on {engine}: {exc}")
        if reports:
            reports[0].notes.extend(skipped)
    shapes = [
        [("batch" if batch == "dynamic" and task != "detection" and i == 0 else d) for i, d in enumerate(t.shape)]
        for t in _flat_inputs(args)
    ]
    return ExportResult(
        path,
        used,
        opset_written,
        precision,
        batch,
        names["input_names"],
        names["output_names"],
        shapes,
        time.perf_counter() - started,
        path.stat().st_size,
        merged,
        decisions,
        args,
        reports[0] if reports else None,
        reports,
        quant_report,
    )


# -- the steps of export_onnx ------------------------------------------------------------------------------
def _check_request(
    model: Any,
    path: str | os.PathLike[str],
    batch: int | str,
    opset: int,
    precision: str,
    merge: str,
    exporter: str,
    calib_data: Any,
    tolerance: float | None = None,
) -> tuple[Path, int | str]:
    """Every argument checked before any work: the output path and the parsed batch."""
    if tolerance is not None and (
        isinstance(tolerance, bool)
        or not isinstance(tolerance, (int, float))
        or not math.isfinite(tolerance)
        or tolerance <= 0
    ):
        raise LowRankError(f"tolerance {tolerance!r} must be a positive number (a maximum relative error), e.g. 1e-3")
    if not isinstance(model, nn.Module):
        raise LowRankError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_opset(opset)
    for what, value, allowed in (
        ("precision", precision, PRECISIONS),
        ("merge", merge, MERGE_MODES),
        ("exporter", exporter, EXPORTERS),
    ):
        if value not in allowed:
            raise LowRankError(f"{what} {value!r} is not known; use one of: {', '.join(allowed)}")
    if precision == "int8" and calib_data is None:
        raise LowRankError("int8 needs calibration data; pass calib_data (CLI: --calib-data digits, or cifar10:PATH)")
    if precision != "int8" and calib_data is not None:
        raise LowRankError("calibration data is only used for int8; drop it or add precision='int8' (CLI: --int8)")
    return check_output_path(path), parse_batch(batch)


def _trace_input(
    plan: ConversionPlan | None, task: str, input_size: Any, example_input: Any, batch: int | str
) -> tuple[tuple[int, ...] | None, tuple[Any, ...]]:
    """The per-sample size recorded in the file, and the arguments the graph is traced with."""
    size = parse_input_size(input_size) or (tuple(plan.input_size) if plan is not None else None)
    if example_input is None:
        if size is None:
            raise LowRankError(
                "no input size known for this model; pass input_size='3x224x224' (CLI: --input-size) or example_input"
            )
        example_input = _default_example(task, size, 2 if batch == "dynamic" else int(batch))
    if task == "detection" and batch not in ("dynamic", 1):
        raise LowRankError(f"detection models export one image per call; use batch 'dynamic' or 1, not {batch}")
    return size, _as_args(example_input)


def _explicit_padding(model: nn.Module) -> None:
    """Give every zero-padded conv with ``padding='same'`` or ``'valid'`` its pads as numbers (in place, on the
    copy that is exported).

    The exporters write ``'same'`` as ONNX's ``auto_pad=SAME_UPPER``, which ONNX Runtime refuses with a dilation
    and other runtimes may read differently; explicit pads mean the same everywhere. An odd total (an even kernel
    extent) pads one more after than before, as PyTorch does: that becomes a zero ``Pad`` in front of the conv.
    (Other padding modes already pad explicitly, with ``F.pad``.)
    """
    for conv in model.modules():
        if not isinstance(conv, nn.modules.conv._ConvNd) or conv.transposed or not isinstance(conv.padding, str):
            continue
        if conv.padding_mode != "zeros":
            continue
        nd = len(conv.kernel_size)
        # PyTorch's own split of 'same' (before, after per dim, last dim first; zeros for 'valid')
        pads = list(conv._reversed_padding_repeated_twice)
        before, after = pads[0::2], pads[1::2]
        if before == after:
            conv.padding = tuple(reversed(before))
        else:  # the module pads with F.pad before the conv in any mode but "zeros": "constant" pads zeros
            conv.padding_mode = "constant"  # type: ignore[assignment]
            conv.padding = (0,) * nd


def _typed_graph_io(
    work: nn.Module, args: tuple[Any, ...], task: str, precision: str, batch: int | str
) -> tuple[nn.Module, tuple[Any, ...], dict[str, Any]]:
    """The model and inputs in the file's precision, and the graph's input/output names and dynamic axes
    (read from one forward pass, which also shows that the model runs on the input)."""
    dtype = torch.float16 if precision == "fp16" else torch.float32
    work = work.to(dtype)
    args_typed = _cast(args, dtype)
    with torch.no_grad():
        try:
            probe = work(*args_typed)
        except Exception as exc:
            raise LowRankError(
                f"the model does not run on the example input ({first_line(exc, limit=260)}); check --input-size"
            ) from None
    input_names = _input_names(task, args)
    output_names = _output_names(probe, task)
    axes: dict[str, dict[int, str]] | None = None
    if batch == "dynamic" and task == "detection":
        axes = {input_names[0]: {1: "height", 2: "width"}} | {o: {0: "detections"} for o in output_names}
    elif batch == "dynamic":
        axes = {n: {0: "batch"} for n in input_names} | {o: {0: "batch"} for o in output_names}
    return work, args_typed, {"input_names": input_names, "output_names": output_names, "dynamic_axes": axes}


def _finish_graph(path: Path, meta: dict[str, str], default_opset: int) -> int:
    """Remove leftover Identity nodes, write the metadata and doc string; returns the opset written."""
    import onnx

    proto = load_onnx(path)
    _strip_identities(proto)
    del proto.metadata_props[:]
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    proto.doc_string = meta.get(META_PREFIX + "summary", f"exported by lowrank-tool {__version__}")
    onnx.save(proto, str(path))
    return max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=default_opset)
