"""Static int8 quantization of an ONNX file with the toolkit's one set of settings.

QDQ format, unsigned 8-bit activations and per-channel signed weights ("U8S8"), min/max calibration,
weights in 7 bits unless asked for 8 — :mod:`lowrank_tool.export.quantize` says why each. Two callers use it:
the exporter (``lowrank export --int8``, calibrated on real images) and the probe that times one layer form
in int8 for the latency policy (``latency_precision="int8"``, calibrated on random inputs: the ranges do
not change which kernels run, so they do not change the time).
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["quantize_qdq", "int8_bytes"]


def quantize_qdq(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], feeds: Iterator[dict[str, Any]], *, weight_bits: int
) -> None:
    """Quantize the fp32 file ``src`` into ``dst``, calibrated on the input ``feeds`` (``{input name: batch}``).

    The graph is pre-processed first (shape inference, graph optimisation) where ONNX Runtime can; its
    quantizer's own messages are swallowed. Errors propagate (the caller says what to do instead).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader:  # ONNX Runtime's CalibrationDataReader protocol
        def get_next(self) -> dict[str, Any] | None:
            return next(feeds, None)

    sink = io.StringIO()
    with tempfile.TemporaryDirectory(dir=Path(dst).parent, prefix=".qdq-") as work:
        pre = Path(work) / "pre.onnx"
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            try:
                quant_pre_process(os.fspath(src), str(pre), skip_symbolic_shape=True)
            except Exception:
                pre = Path(src)
            quantize_static(
                str(pre),
                os.fspath(dst),
                Reader(),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,  # U8S8: see lowrank_tool.export.quantize
                weight_type=QuantType.QInt8,
                per_channel=True,
                reduce_range=weight_bits == 7,  # no saturation on x86 without VNNI (lowrank_tool.export.quantize)
                calibrate_method=CalibrationMethod.MinMax,
            )


def int8_bytes(model: bytes, input_shape: Sequence[int], *, weight_bits: int = 7, batches: int = 4) -> bytes:
    """The int8 form of the fp32 ONNX ``model`` (one input ``x``), calibrated on ``batches`` random inputs."""
    rng = np.random.default_rng(0)
    feeds = iter([{"x": rng.standard_normal(tuple(input_shape)).astype(np.float32)} for _ in range(batches)])
    with tempfile.TemporaryDirectory(prefix="lowrank-int8-") as work:
        src, dst = Path(work) / "fp32.onnx", Path(work) / "int8.onnx"
        src.write_bytes(model)
        quantize_qdq(src, dst, feeds, weight_bits=weight_bits)
        return dst.read_bytes()
