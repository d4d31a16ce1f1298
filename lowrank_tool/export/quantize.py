"""int8: static post-training quantization with ONNX Runtime, calibrated on real data.

Low rank and quantization compose (Ou et al.'s survey): the factorised model has fewer MACs, and int8
makes each MAC cheaper and each weight a quarter of the size. The fp32 graph is pre-processed (shape
inference, graph optimisation), then ``onnxruntime.quantization.quantize_static`` inserts
QuantizeLinear/DequantizeLinear pairs (QDQ format, unsigned 8-bit activations and per-channel signed 8-bit
weights, "U8S8") with ranges from min/max calibration over ``samples`` training images. With a data spec,
the fp32 and int8 files are then both evaluated on the spec's validation split, so the cost of int8 is a
measured number.

Why unsigned activations: with signed ones (S8S8) ONNX Runtime's x86 CPU provider left the convolutions
that read a residual block's input (20 of ResNet-50's) as float ``Conv`` fed by run-time
``DequantizeLinear`` nodes, and the residual ``Add``s in float; with U8S8 every convolution becomes a
``QLinearConv`` and every ``Add`` a ``QLinearAdd`` (docs/performance.md measures the difference).

Why 7-bit weights (``reduce_range``): on x86 CPUs without VNNI (AVX2 only, and AVX-512 before Cascade
Lake) the U8S8 kernels multiply with VPMADDUBSW, which adds two u8·s8 products into a saturating 16-bit
integer: 255·127·2 overflows, 255·64·2 does not. The file does not know where it will run, so its weights
stay in [-64, 64] everywhere. Measured on an AVX2 machine (ResNet-20 trained on digits): the rank-0.5
model, 98.61 % in fp32, lost 2.2 points in int8 with full-range weights (0.41 relative logit error) and
0.55 with 7-bit ones (0.04); the dense one lost nothing either way. On VNNI and ARM CPUs the seventh bit
costs a little precision and no speed (the same kernels run); ``weight_bits=8`` (``lowrank export --int8
--int8-weight-bits 8``) writes full-range weights for such targets, and the export's verification on an AVX2
machine then shows the saturation as a large error.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from ..data import DataSpec, build_datasets
from ..errors import LowRankError, first_line
from ..runtime import make_session
from ..runtime.int8 import quantize_qdq
from .options import WEIGHT_BITS, check_weight_bits

__all__ = ["QuantizeReport", "quantize_file", "onnx_top1", "calibration_batches", "WEIGHT_BITS", "check_weight_bits"]


@dataclass
class QuantizeReport:
    """Calibration size, and fp32 vs int8 top-1 on the evaluation split when there was one."""

    calib_samples: int
    data: str | None = None
    eval_samples: int = 0
    fp32_top1: float | None = None
    int8_top1: float | None = None
    inputs: list[np.ndarray] = field(default_factory=list, repr=False)  # real batches for verification

    def to_dict(self) -> dict[str, Any]:
        return {
            "calib_samples": self.calib_samples,
            "data": self.data,
            "eval_samples": self.eval_samples,
            "fp32_top1": self.fp32_top1,
            "int8_top1": self.int8_top1,
        }


def _spec_datasets(spec: Any, size: Sequence[int] | None) -> tuple[Any, Any, str]:
    parsed = DataSpec.parse(spec)
    if size is None or len(size) != 3 or size[1] != size[2]:
        raise LowRankError(
            f"int8 calibration with a data spec needs a square image input CxHxW, got {size}; pass batches instead"
        )
    train, val, _ = build_datasets(parsed, image_size=int(size[-1]), augment=False, seed=0)
    return train, val, str(parsed)


def calibration_batches(dataset: Any, samples: int, batch_size: int = 32, seed: int = 0) -> list[np.ndarray]:
    """``samples`` images drawn at random (seeded) from a dataset of ``(image, label)``, as float32 batches."""
    if samples < 1:
        raise LowRankError(f"calibration samples must be >= 1, got {samples}")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[: min(samples, len(dataset))]
    images = [dataset[int(i)][0] for i in order]
    return [
        torch.stack(images[i : i + batch_size]).numpy().astype(np.float32) for i in range(0, len(images), batch_size)
    ]


def _as_batches(calib: Iterable[Any], samples: int) -> list[np.ndarray]:
    batches, seen = [], 0
    for item in calib:
        x = item[0] if isinstance(item, (tuple, list)) else item
        x = x.detach().cpu().float().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)
        batches.append(x)
        seen += len(x)
        if seen >= samples:
            break
    if not batches:
        raise LowRankError("the calibration data is empty; pass at least one input batch")
    return batches


def _fixed_batch(proto: Any) -> int | None:
    """The batch size a file's first input is fixed to, or ``None`` when it is dynamic."""
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    return int(dims[0].dim_value) if dims and dims[0].dim_value > 0 else None


def _rebatch(batches: list[np.ndarray], size: int) -> list[np.ndarray]:
    """The same images in batches of exactly ``size`` (a file exported with a fixed batch takes no other);
    the last batch is filled up with the first images rather than dropped."""
    images = np.concatenate(batches)
    if len(images) % size:
        fill = size - len(images) % size
        images = np.concatenate([images, np.resize(images, (fill, *images.shape[1:]))])
    return [images[i : i + size] for i in range(0, len(images), size)]


def onnx_top1(
    path: str | os.PathLike[str], dataset: Any, *, batch_size: int = 64, limit: int | None = None, device: str = "auto"
) -> tuple[float, int]:
    """Top-1 accuracy (percent) of a classifier file on ``(image, label)`` samples, and how many were used."""

    session = make_session(path, device=device)
    name, fixed = session.get_inputs()[0].name, session.get_inputs()[0].shape[0]
    if isinstance(fixed, int):  # a file exported with --batch N runs batches of exactly N
        batch_size = fixed
    if limit is not None and limit < len(dataset):
        dataset = Subset(dataset, range(limit))
    correct = total = 0
    for images, labels in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        x = images.numpy().astype(np.float32)
        n = len(x)
        if n < batch_size and isinstance(fixed, int):  # the last batch, filled up; only its real images count
            x = _rebatch([x], batch_size)[0]
        logits = session.run(None, {name: x})[0][:n]
        correct += int((logits.argmax(1) == labels.numpy()).sum())
        total += n
    return 100.0 * correct / max(total, 1), total


def quantize_file(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    calib: Any,
    *,
    size: Sequence[int] | None = None,
    samples: int = 256,
    metadata: dict[str, str] | None = None,
    evaluate: bool = True,
    eval_limit: int | None = None,
    device: str = "auto",
    weight_bits: int = 7,
) -> QuantizeReport:
    """Quantize the fp32 ONNX file ``src`` to int8 at ``dst`` (which may be ``src``).

    Args:
        src: fp32 ONNX file with one image input.
        dst: where the int8 file goes (written atomically).
        calib: a data spec string (``"digits"``, ``"cifar10:PATH"``): calibrate on its training split and
            evaluate on its validation split; or an iterable of input batches (tensors or arrays).
        size: per-sample input size (CxHxW) for a data spec.
        samples: calibration images.
        metadata: ``key → value`` metadata for the int8 file.
        evaluate: with a data spec, measure fp32 and int8 top-1 on the validation split.
        eval_limit: evaluate on at most this many validation images.
        device: ONNX Runtime device for the evaluation.
        weight_bits: 7 (the default: runs unsaturated on every CPU) or 8 (full range, for CPUs with VNNI,
            ARM and GPUs; see :data:`WEIGHT_BITS`).
    """
    check_weight_bits(weight_bits)
    import onnx

    src, dst = Path(src), Path(dst)
    val = None
    data_name = None
    if isinstance(calib, str):
        train, val, data_name = _spec_datasets(calib, size)
        batches = calibration_batches(train, samples)
        real = calibration_batches(val, 16, seed=1)[:1]
    else:
        batches = _as_batches(calib, samples)
        real = batches[:1]
    proto_in = onnx.load(str(src), load_external_data=False)
    input_name = proto_in.graph.input[0].name
    calibrated = sum(len(b) for b in batches)
    fixed = _fixed_batch(proto_in)
    if fixed is not None:
        batches = _rebatch(batches, fixed)
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".int8-") as work:
        out = Path(work) / "int8.onnx"
        try:
            quantize_qdq(src, out, iter([{input_name: b} for b in batches]), weight_bits=weight_bits)
        except Exception as exc:
            first = first_line(exc, with_type=False, limit=240)
            raise LowRankError(f"int8 quantization failed ({first}); export fp32 or fp16 instead") from None
        proto = onnx.load(str(out))
        del proto.metadata_props[:]
        for key, value in (metadata or {}).items():
            proto.metadata_props.add(key=key, value=value)
        report = QuantizeReport(calibrated, data_name, inputs=real)
        if evaluate and val is not None:
            onnx.save(proto, str(out))
            report.fp32_top1, report.eval_samples = onnx_top1(src, val, limit=eval_limit, device=device)
            report.int8_top1, _ = onnx_top1(out, val, limit=eval_limit, device=device)
        onnx.save(proto, str(out))
        os.replace(out, dst)
    return report
