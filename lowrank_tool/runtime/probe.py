"""Export one module to ONNX in memory and time it in an engine: the probe behind every measured decision.

Both measured decisions of the toolkit stand on it: the latency policy of the converter (which form of a
layer is fastest, and how fast a whole candidate model is) and ``merge="auto"`` of the exporter (is a
factor chain faster merged back into one conv). The module is exported with the TorchScript exporter
in eval mode, with one random input of the given shape, and timed with :func:`~.timing.measure` in the
engine asked for (ONNX Runtime by default, or OpenVINO: the runtime the model will be deployed with), in
fp32 or, quantized as the exporter quantizes, in int8.
"""

from __future__ import annotations

import contextlib
import functools
import io
import warnings

import torch
from torch import nn

from .engines import get_engine
from .int8 import int8_bytes
from .timing import measure

__all__ = ["onnx_bytes", "time_module"]

PROBE_OPSET = 17


def onnx_bytes(module: nn.Module, input_shape: tuple[int, ...]) -> bytes:
    """``module`` (one tensor in, eval mode) as ONNX bytes, input ``x`` of ``input_shape``, output ``y``."""
    buf = io.BytesIO()
    sink = io.StringIO()
    with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(sink):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (torch.randn(input_shape),),
            buf,  # type: ignore[arg-type]  # any file-like object works
            dynamo=False,
            opset_version=PROBE_OPSET,
            training=torch.onnx.TrainingMode.EVAL,
            input_names=["x"],
            output_names=["y"],
        )
    return buf.getvalue()


def time_module(
    module: nn.Module,
    input_shape: tuple[int, ...],
    *,
    device: str = "cpu",
    threads: int | None = None,
    runs: int = 20,
    warmup: int = 5,
    engine: str = "onnxruntime",
    precision: str = "fp32",
) -> float:
    """Median latency (ms) of ``module`` in ``engine`` on a random input of ``input_shape`` (batch, C, *spatial).

    ``precision="int8"`` times the module's int8 form: quantized as ``lowrank export --int8`` quantizes
    (:func:`~.int8.int8_bytes`, calibrated on random inputs).
    """
    model = onnx_bytes(module, input_shape)
    if precision == "int8":
        model = int8_bytes(model, input_shape)
    elif precision != "fp32":
        raise ValueError(f"precision must be 'fp32' or 'int8', got {precision!r}")
    runner = get_engine(engine).load(model, device=device, threads=threads)
    feed = {"x": torch.randn(input_shape).numpy()}
    return measure(functools.partial(runner.run, feed), runs=runs, warmup=warmup).median_ms
