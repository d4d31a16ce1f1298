"""Intel OpenVINO as an :class:`~.engines.Engine`: reads the ONNX file directly, runs on the CPU.

OpenVINO's CPU plugin picks its inference precision itself: on a CPU with bf16 support it computes in
bf16 unless told otherwise, which moves a ResNet-50's outputs by about 1e-2 relative. The engine
therefore asks for float32 (``INFERENCE_PRECISION_HINT=f32``) unless another precision is given, and
the runner's ``backend`` names the precision the compiled model actually uses (``CPU f32``), so a
verification or a timing always says what it measured. ``PERFORMANCE_HINT=LATENCY`` (one stream:
batch-1 latency, like ONNX Runtime's default) and ``INFERENCE_NUM_THREADS`` follow ``threads``. Given a
``batch``, a dynamic batch dimension is fixed before compiling, as OpenVINO's own ``benchmark_app`` does:
the plugin then runs shape-specialised kernels, which pays most on the low-rank model's many small nodes.
"""

from __future__ import annotations

import functools
import os
import re
from typing import Any

import numpy as np

from ..errors import LowRankError
from .engines import Engine, ModelSource, Runner, TensorSpec, check_load_options

__all__ = ["OpenVINOEngine", "OpenVINORunner", "PRECISION_HINTS", "fix_batch"]

#: ``INFERENCE_PRECISION_HINT`` values; ``default`` leaves the plugin's choice (bf16 on CPUs that have it).
PRECISION_HINTS = ("f32", "bf16", "f16", "default")


def _reason(exc: Exception) -> str:
    """OpenVINO's exceptions start with lines of source locations; the reason is the last line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip() and not line.startswith("Exception from")]
    if not lines:
        return type(exc).__name__
    node = re.search(r"friendly_name '([^']+)'", str(exc))
    reason = lines[-1].rstrip(".") + (f" at node {node.group(1)}" if node else "")
    return reason if len(reason) <= 300 else reason[:299] + "…"


def fix_batch(model: Any, batch: int) -> None:
    """Give every input whose first dimension is dynamic a static ``batch``: the CPU plugin then compiles
    shape-specialised kernels instead of re-inferring shapes per call. Measured on ResNet-50 rank 0.3,
    batch 1, 2 threads: the low-rank model 1.06x faster (95 % interval 1.03–1.08, 40 interleaved rounds),
    dense 1.00x — the low-rank model has 2.3x as many nodes to re-infer."""
    shapes = {}
    for port in model.inputs:
        shape = port.get_partial_shape()
        if shape.rank.is_static and len(shape) > 0 and shape[0].is_dynamic:
            shape[0] = batch
            shapes[port.get_any_name()] = shape
    if shapes:
        model.reshape(shapes)


@functools.cache
def _core() -> Any:
    import openvino as ov

    return ov.Core()


class OpenVINORunner(Runner):
    engine = "openvino"

    def __init__(self, compiled: Any, device: str) -> None:
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        try:
            value = compiled.get_property("INFERENCE_PRECISION_HINT")
            hint = value.get_type_name() if hasattr(value, "get_type_name") else str(value)
        except Exception:  # a plugin without the property
            hint = "?"
        self.backend = f"{device} {hint}"
        self.inputs = []
        for port in compiled.inputs:
            shape = tuple(d.get_length() if d.is_static else None for d in port.get_partial_shape())
            self.inputs.append(TensorSpec(port.get_any_name(), np.dtype(port.get_element_type().to_dtype()), shape))
        self.output_names = [port.get_any_name() for port in compiled.outputs]

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.request.infer(feed)
        return [self.request.get_output_tensor(i).data.copy() for i in range(len(self.output_names))]


class OpenVINOEngine(Engine):
    name = "openvino"

    def __init__(self, precision: str = "f32") -> None:
        if precision not in PRECISION_HINTS:
            raise LowRankError(
                f"OpenVINO precision {precision!r} is not known; use one of: {', '.join(PRECISION_HINTS)}"
            )
        self.precision = precision

    def load(
        self, model: ModelSource, *, device: str = "auto", threads: int | None = None, batch: int | None = None
    ) -> Runner:
        if device not in ("auto", "cpu"):
            raise LowRankError(
                f"the openvino engine runs on the CPU here, not on {device!r}; use --device cpu, "
                "or the onnxruntime engine for CUDA and TensorRT"
            )
        check_load_options(threads, batch)
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if self.precision != "default":
            config["INFERENCE_PRECISION_HINT"] = self.precision
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
        source = model if isinstance(model, bytes) else os.fspath(model)
        where = "the ONNX model" if isinstance(model, bytes) else str(model)
        try:
            read = _core().read_model(source)
            if batch is not None:
                fix_batch(read, batch)
            compiled = _core().compile_model(read, "CPU", config)
        except Exception as exc:
            raise LowRankError(
                f"OpenVINO cannot run {where} ({_reason(exc)}); "
                "check the file with `lowrank export --verify-with onnxruntime`, or deploy it with ONNX Runtime"
            ) from None
        return OpenVINORunner(compiled, "CPU")
