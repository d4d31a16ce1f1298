"""Inference runtimes and timing: engines behind one interface, sessions on the right provider, latency
statistics, and the export-and-time probe.

Used by the converter (latency policy), the exporter (verification, ``merge="auto"``, int8) and the
benchmarks; it depends on nothing of the toolkit but its errors and choices.

The names below are loaded on first use, so that a command can check its engines (:mod:`.engines`) before
torch is imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {
    "Engine": ".engines",
    "Runner": ".engines",
    "TensorSpec": ".engines",
    "get_engine": ".engines",
    "check_engine": ".engines",
    "installed_engines": ".engines",
    "parse_engines": ".engines",
    "onnx_bytes": ".probe",
    "time_module": ".probe",
    "DEVICES": ".session",
    "RUNTIME_DEVICES": ".session",
    "make_session": ".session",
    "provider_name": ".session",
    "providers_for": ".session",
    "CONFIDENCE": ".timing",
    "STABLE_SPREAD": ".timing",
    "Latency": ".timing",
    "PairedSpeedup": ".timing",
    "interleave": ".timing",
    "measure": ".timing",
    "median_interval": ".timing",
    "paired_speedup": ".timing",
    "time_onnx": ".timing",
    "time_torch": ".timing",
    "torch_threads": ".timing",
}

# The same names for type checkers and IDEs (`as`: re-exported); a test keeps them equal to _EXPORTS.
if TYPE_CHECKING:
    from .engines import (
        Engine as Engine,
        Runner as Runner,
        TensorSpec as TensorSpec,
        check_engine as check_engine,
        get_engine as get_engine,
        installed_engines as installed_engines,
        parse_engines as parse_engines,
    )
    from .probe import onnx_bytes as onnx_bytes, time_module as time_module
    from .session import (
        DEVICES as DEVICES,
        RUNTIME_DEVICES as RUNTIME_DEVICES,
        make_session as make_session,
        provider_name as provider_name,
        providers_for as providers_for,
    )
    from .timing import (
        CONFIDENCE as CONFIDENCE,
        STABLE_SPREAD as STABLE_SPREAD,
        Latency as Latency,
        PairedSpeedup as PairedSpeedup,
        interleave as interleave,
        measure as measure,
        median_interval as median_interval,
        paired_speedup as paired_speedup,
        time_onnx as time_onnx,
        time_torch as time_torch,
        torch_threads as torch_threads,
    )

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
