"""Verification of an exported file: the ONNX checker, then an inference engine against PyTorch.

Any engine of :mod:`lowrank_tool.runtime.engines` runs the file (ONNX Runtime by default; OpenVINO with
its precision set to f32 and named in the report).

The error measure is, per output, ``max|onnx − torch| / max|torch|`` (the largest deviation relative to
the output's scale; an element-wise ratio would blow up on outputs near zero); the report gives the
largest over all outputs, with the largest absolute difference. Inputs are random (seeded) and, when the
batch is dynamic, of batch 3 — a size other than the one the graph was traced with — so a batch size
baked into the graph is caught. int8 is compared on real images (random noise is outside the calibrated
ranges). Tolerances, relative:

* fp32: 1e-4 — float32 re-association in other kernels, nothing more;
* fp16: 1e-2 — half precision keeps about 3 decimal digits; errors add up across ~50 layers;
* int8: 0.1 — 8-bit activations and weights (a digits ResNet-20 measured 0.019); the accuracy on a
  validation set is the real check
  (``lowrank export --int8`` reports it when given data).

Detection outputs (boxes, scores, labels) are compared after sorting by score. When the reference has
tied scores (typical of an untrained detector), which of the tied boxes survive NMS is not defined, so
only the count and the sorted scores are compared and the report says so.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..choices import TOLERANCES
from ..errors import LowRankError, VerificationError, first_line
from ..runtime import get_engine

__all__ = ["VerifyReport", "verify_onnx", "TOLERANCES", "VerificationError"]


@dataclass
class VerifyReport:
    """The outcome of :func:`verify_onnx`."""

    passed: bool
    max_abs: float
    max_rel: float
    tolerance: float
    precision: str
    provider: str  # the engine and where it ran: "onnxruntime CPU", "openvino CPU f32"
    input_shapes: list[list[int]]
    outputs: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    top1_agreement: float | None = None  # classifiers: share of samples whose argmax matches PyTorch

    def to_dict(self) -> dict[str, Any]:
        return {
            k: getattr(self, k)
            for k in (
                "passed",
                "max_abs",
                "max_rel",
                "tolerance",
                "precision",
                "provider",
                "input_shapes",
                "outputs",
                "notes",
                "top1_agreement",
            )
        }

    def line(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        shapes = ", ".join("x".join(map(str, s)) for s in self.input_shapes)
        agree = f", top-1 agreement {100 * self.top1_agreement:.1f}%" if self.top1_agreement is not None else ""
        return (
            f"verification {verdict} on {self.provider}: input {shapes}, max abs error {self.max_abs:.3g}, "
            f"max rel error {self.max_rel:.3g} (tolerance {self.tolerance:g}, {self.precision}){agree}"
        )


def _flatten(output: Any) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        return list(output.values())
    if isinstance(output, (list, tuple)) and output and isinstance(output[0], dict):
        return list(output[0].values())
    if isinstance(output, (list, tuple)):
        return [t for o in output for t in _flatten(o)]
    raise LowRankError(f"cannot compare a model output of type {type(output).__name__}")


def _random_like(example: torch.Tensor, batch: int | None, seed: int) -> torch.Tensor:
    shape = tuple(example.shape) if batch is None else (batch, *example.shape[1:])
    gen = torch.Generator().manual_seed(seed)
    if example.is_floating_point():
        # images in [0, 1] for detection-style inputs, standard normal for normalised tensors
        return torch.rand(shape, generator=gen) if example.min() >= 0 else torch.randn(shape, generator=gen)
    return example.clone()


def _errors(got: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    if got.shape != ref.shape:
        return float("inf"), float("inf")
    if ref.size == 0:
        return 0.0, 0.0
    diff = float(np.abs(got.astype(np.float64) - ref.astype(np.float64)).max())
    scale = float(np.abs(ref).max())
    return diff, diff / scale if scale > 0 else diff


def _compare_detection(
    names: Sequence[str], got: list[np.ndarray], ref: list[np.ndarray], tol: float, notes: list[str]
) -> dict[str, dict[str, float]]:
    by_name_got, by_name_ref = dict(zip(names, got, strict=True)), dict(zip(names, ref, strict=True))
    if "scores" not in by_name_ref:
        return {
            n: dict(zip(("max_abs", "max_rel"), _errors(g, r), strict=True))
            for n, g, r in zip(names, got, ref, strict=True)
        }
    s_ref, s_got = by_name_ref["scores"], by_name_got["scores"]
    if len(s_ref) != len(s_got):
        notes.append(f"detections differ in number: ONNX {len(s_got)} vs PyTorch {len(s_ref)}")
        return {"scores": {"max_abs": float("inf"), "max_rel": float("inf")}}
    o_ref, o_got = np.argsort(-s_ref, kind="stable"), np.argsort(-s_got, kind="stable")
    result = {"scores": dict(zip(("max_abs", "max_rel"), _errors(s_got[o_got], s_ref[o_ref]), strict=True))}
    sorted_ref = s_ref[o_ref]
    gaps = np.diff(sorted_ref) if len(sorted_ref) > 1 else np.array([-1.0])
    scale = float(np.abs(sorted_ref).max()) if len(sorted_ref) else 1.0
    ties = int((np.abs(gaps) <= tol * max(scale, 1e-12)).sum())
    if ties:
        notes.append(
            f"{ties} tied scores (an untrained detector?): NMS may keep different tied boxes, so only the number "
            "of detections and the sorted scores were compared"
        )
        return result
    for name in names:
        if name != "scores":
            result[name] = dict(
                zip(("max_abs", "max_rel"), _errors(by_name_got[name][o_got], by_name_ref[name][o_ref]), strict=True)
            )
    return result


def verify_onnx(
    path: str | os.PathLike[str],
    model: nn.Module,
    *,
    example_input: Any = None,
    task: str = "classification",
    batch: int | str = "dynamic",
    precision: str = "fp32",
    tolerance: float | None = None,
    device: str = "auto",
    engine: str = "onnxruntime",
    real_inputs: list[np.ndarray] | None = None,
    raise_on_failure: bool = False,
    label: str | None = None,
    seed: int = 1234,
    mismatch_hint: str | None = None,
) -> VerifyReport:
    """Check an exported file and compare an engine's outputs (ONNX Runtime's by default) with the PyTorch model's.

    Args:
        path: the ``.onnx`` file.
        model: the PyTorch model it was exported from (compared in float32, eval mode).
        example_input: the input the file was traced with (its shapes; values are redrawn).
        task: the model's task (``detection`` compares sorted detections).
        batch: the export batch: ``"dynamic"`` verifies at batch 3, an int at that batch.
        precision: ``fp32``, ``fp16`` or ``int8`` (sets the default tolerance, :data:`TOLERANCES`).
        tolerance: maximum relative error.
        device: the engine's device (``auto``: ONNX Runtime on CUDA when a GPU is present; OpenVINO: CPU).
        engine: ``onnxruntime`` or ``openvino`` (:data:`~lowrank_tool.choices.RUNTIME_ENGINES`).
        real_inputs: input batches to use instead of random ones (int8 compares on real images).
        raise_on_failure: raise :class:`VerificationError` instead of returning a failed report.
        label: how to name the file in messages.
        seed: seed of the random inputs.
        mismatch_hint: appended to the error when the outputs differ beyond tolerance (the likely cause, as the
            caller knows it), not to any other failure.

    Returns:
        A :class:`VerifyReport`.
    """
    import onnx

    label = label or str(path)
    tol = float(tolerance) if tolerance is not None else TOLERANCES[precision]
    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:
        raise VerificationError(
            f"{label} fails the ONNX checker ({first_line(exc, with_type=False, limit=240)})"
        ) from None
    try:
        runner = get_engine(engine).load(path, device=device)
    except LowRankError as exc:  # name the file as the caller knows it, not a temporary
        raise LowRankError(str(exc).replace(str(path), label)) from None
    specs = runner.inputs
    if example_input is None:
        raise LowRankError(
            "verify_onnx needs example_input (the input the file was exported with) for the input shapes"
        )
    examples = example_input if isinstance(example_input, tuple) else (example_input,)
    flat_examples = [t for e in examples for t in (e if isinstance(e, list) else [e])]
    detection = task == "detection"
    if real_inputs:
        inputs = [torch.from_numpy(real_inputs[0])]
        if batch != "dynamic":
            reps = -(-int(batch) // len(inputs[0]))
            inputs = [inputs[0].repeat(reps, *([1] * (inputs[0].dim() - 1)))[: int(batch)]]
    else:
        verify_batch = None if detection or batch != "dynamic" else 3
        inputs = [_random_like(t, verify_batch, seed + i) for i, t in enumerate(flat_examples)]
    torch_args: tuple[Any, ...] = ([inputs[0]],) if detection else tuple(inputs)
    with torch.no_grad():
        ref_out = model.float().eval()(*torch_args)
    ref = [t.detach().float().cpu().numpy() for t in _flatten(ref_out)]
    feed = {}
    for spec, tensor in zip(specs, inputs, strict=False):
        array = tensor.numpy()
        feed[spec.name] = array.astype(spec.dtype) if spec.dtype.kind == "f" else array
    try:
        outs = runner.run(feed)
    except LowRankError:
        raise
    except Exception as exc:  # the engine loaded the file but cannot compute it (an operator's attribute it refuses)
        raise VerificationError(
            f"{label} does not run in {engine} ({first_line(exc, limit=240)}); report the model, or try another "
            "opset or exporter"
        ) from None
    got = [o.astype(np.float32) if o.dtype == np.float16 else o for o in outs]
    names = runner.output_names
    notes: list[str] = []
    if len(got) != len(ref):
        raise VerificationError(
            f"{label} has {len(got)} outputs but the PyTorch model returns {len(ref)}; re-export it"
        )
    if detection:
        outputs = _compare_detection(names, got, ref, tol, notes)
    else:
        outputs = {
            n: dict(zip(("max_abs", "max_rel"), _errors(g, r), strict=True))
            for n, g, r in zip(names, got, ref, strict=True)
        }
    max_abs = max((o["max_abs"] for o in outputs.values()), default=0.0)
    max_rel = max((o["max_rel"] for o in outputs.values()), default=0.0)
    agreement = None
    if task == "classification" and len(ref) == 1 and ref[0].ndim == 2 and got[0].shape == ref[0].shape:
        agreement = float((got[0].argmax(1) == ref[0].argmax(1)).mean())
    report = VerifyReport(
        max_rel <= tol,
        max_abs,
        max_rel,
        tol,
        precision,
        runner.describe(),
        [list(t.shape) for t in inputs],
        outputs,
        notes,
        agreement,
    )
    if raise_on_failure and not report.passed:
        worst = max(outputs, key=lambda n: outputs[n]["max_rel"])
        extra = f"; {notes[0]}" if notes else ""
        raise VerificationError(
            f"{label}: {runner.describe()} differs from PyTorch by {max_rel:.3g} relative (output {worst!r}, max abs {max_abs:.3g}), "
            f"above the {precision} tolerance {tol:g}{extra}; the file was not written (--no-verify keeps it, --tolerance raises the limit)"
            + (f"; {mismatch_hint}" if mismatch_hint else "")
        )
    return report
