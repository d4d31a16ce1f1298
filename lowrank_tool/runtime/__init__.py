"""Inference runtimes and timing: engines behind one interface, sessions on the right provider, latency
statistics, and the export-and-time probe.

Used by the converter (latency policy), the exporter (verification, ``merge="auto"``, int8) and the
benchmarks; it depends on nothing of the toolkit but its errors and choices.
"""

from .engines import Engine, Runner, TensorSpec, get_engine, installed_engines, parse_engines
from .probe import onnx_bytes, time_module
from .session import DEVICES, RUNTIME_DEVICES, make_session, provider_name, providers_for
from .timing import (
    CONFIDENCE,
    STABLE_SPREAD,
    Latency,
    PairedSpeedup,
    measure,
    median_interval,
    paired_speedup,
    time_onnx,
    time_torch,
    torch_threads,
)

__all__ = [
    "Engine",
    "Runner",
    "TensorSpec",
    "get_engine",
    "installed_engines",
    "parse_engines",
    "RUNTIME_DEVICES",
    "DEVICES",
    "make_session",
    "providers_for",
    "provider_name",
    "Latency",
    "measure",
    "time_onnx",
    "time_torch",
    "torch_threads",
    "PairedSpeedup",
    "paired_speedup",
    "STABLE_SPREAD",
    "CONFIDENCE",
    "median_interval",
    "onnx_bytes",
    "time_module",
]
