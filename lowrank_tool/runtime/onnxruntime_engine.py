"""ONNX Runtime as an :class:`~.engines.Engine`: the CPU provider, CUDA and TensorRT where present."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import LowRankError
from .engines import Engine, ModelSource, Runner, TensorSpec, check_load_options
from .session import make_session, provider_name

__all__ = ["OnnxRuntimeEngine", "OnnxRuntimeRunner", "ORT_IDLE_SPIN_S"]

#: How long a session's intra-op workers keep spinning after a run: ONNX Runtime's pool spins 2**20 rounds of its
#: queue check and a pause instruction before it blocks (``allow_spinning``, on by default). Measured with
#: ``benchmarks/spin_window.py`` (ResNet-50 rank 0.3, 2 threads, a call timed a gap after another session's
#: run): 40-60 ms on a 2-core AVX2 AMD EPYC (int8: 31-51 ms up to 40 ms, 19 ms from 60 ms, back to back 18 ms),
#: about 80 ms on a 2-core AVX-512 one (fp32: 41-48 ms up to 20 ms, 24 ms at 80 ms, back to back 22 ms); pause
#: instructions take longer on other x86 CPUs, hence the margin.
ORT_IDLE_SPIN_S = 0.2

_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def _numpy_dtype(name: str, onnx_type: str) -> np.dtype[Any]:
    try:
        return np.dtype(_DTYPES[onnx_type])
    except KeyError:
        raise LowRankError(
            f"model input {name!r} has type {onnx_type}, which the toolkit cannot feed; "
            f"supported input types: {', '.join(_DTYPES)}"
        ) from None


class OnnxRuntimeRunner(Runner):
    engine = "onnxruntime"

    def __init__(self, session: Any) -> None:
        self.session = session
        self.backend = provider_name(session)
        self.inputs = [
            TensorSpec(
                i.name,
                _numpy_dtype(i.name, i.type),
                tuple(d if isinstance(d, int) else None for d in i.shape),
            )
            for i in session.get_inputs()
        ]
        self.output_names = [o.name for o in session.get_outputs()]
        self.idle_spin_s = ORT_IDLE_SPIN_S if _spinning_workers(session) else 0.0

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [np.asarray(o) for o in self.session.run(None, feed)]


def _spinning_workers(session: Any) -> bool:
    """Whether the session has intra-op worker threads that spin after a run (1 thread: none, the caller works).
    Sessions on the shared pool do not clash: their spinning workers are the next session's workers."""
    options = session.get_session_options()
    if not options.use_per_session_threads:
        return False
    try:
        spinning = options.get_session_config_entry("session.intra_op.allow_spinning") != "0"
    except RuntimeError:  # not set: ONNX Runtime's default, spinning on
        spinning = True
    return spinning and options.intra_op_num_threads != 1


class OnnxRuntimeEngine(Engine):
    """ONNX Runtime; ``shared_pool=True`` runs every runner it loads on the process's one thread pool
    (:func:`~.session.make_session`), for a process that serves several models."""

    name = "onnxruntime"

    def __init__(self, shared_pool: bool = False) -> None:
        self.shared_pool = shared_pool

    def load(
        self, model: ModelSource, *, device: str = "auto", threads: int | None = None, batch: int | None = None
    ) -> Runner:
        # batch: a static batch (SessionOptions.add_free_dimension_override_by_name) measured no faster on the CPU
        # provider (ResNet-50 rank 0.3, batch 1: 0.99x low-rank, 1.00x dense), so the session keeps the file's shape.
        check_load_options(threads, batch)
        return OnnxRuntimeRunner(make_session(model, device=device, threads=threads, shared_pool=self.shared_pool))
