"""ONNX Runtime sessions: the execution provider chosen for the machine, quietly.

``onnxruntime-gpu`` lists ``CUDAExecutionProvider`` as available even on a machine without a GPU; asking
for it there prints a screen of library-loading errors before falling back to the CPU. So the CUDA
provider is requested only when a CUDA device is actually present (``torch.cuda.is_available()``), and
ONNX Runtime's own log is limited to errors. ``tensorrt`` asks for the TensorRT provider (CUDA and the
CPU behind it for the nodes TensorRT does not take); a session that did not get it is refused, not
silently run elsewhere. With ``auto``, a CUDA provider that fails to start (a driver or library mismatch)
gives one :class:`~lowrank_tool.errors.LowRankWarning` naming why, and the session runs on the CPU (ONNX
Runtime's own fallback, which prints an "EP Error" banner to stdout, is never used).

``shared_pool=True`` gives every such session of the process one thread pool: ONNX Runtime's global pools,
made at the first shared session with its ``threads``. By default each session has its own pool, whose
workers spin for 40-80 ms after a run; a second session run in that window shares the cores with them
(ResNet-50 then ResNet-18 per request, 2 threads, ``benchmarks/two_sessions.py``: 73.6 ms with a pool per
session and 28.6 ms with one shared pool on a 2-core AVX2 VM, 51.1 and 21.7 ms on an AVX-512 one).
"""

from __future__ import annotations

import os
import threading
import warnings
from typing import Any

import torch

from ..choices import DEVICES, RUNTIME_DEVICES
from ..errors import LowRankError, LowRankWarning, first_line
from ..threads import check_threads

__all__ = ["DEVICES", "RUNTIME_DEVICES", "providers_for", "make_session", "provider_name"]


_TENSORRT = "TensorrtExecutionProvider"
_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"
_ERROR = 3  # ONNX Runtime severity: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal


def _ort() -> Any:
    import onnxruntime as ort

    ort.set_default_logger_severity(_ERROR)
    return ort


def _gpu_present() -> bool:
    return bool(torch.cuda.is_available())


def providers_for(device: str = "auto") -> list[str]:
    """The ONNX Runtime providers for ``device``: ``auto`` takes CUDA when a GPU is present, else the CPU."""
    if device not in RUNTIME_DEVICES:
        raise LowRankError(f"device {device!r} is not known; use one of: {', '.join(RUNTIME_DEVICES)}")
    available = _ort().get_available_providers()
    cuda_ok = _CUDA in available and _gpu_present()
    if device in ("cuda", "tensorrt") and not cuda_ok:
        why = (
            "no CUDA GPU is visible"
            if _CUDA in available
            else "this onnxruntime build has no CUDA provider (install onnxruntime-gpu)"
        )
        raise LowRankError(f"device {device!r} is not usable here: {why}; use --device cpu (or auto)")
    if device == "tensorrt":
        if _TENSORRT not in available:
            raise LowRankError(
                "device 'tensorrt' is not usable here: this onnxruntime build has no TensorRT provider "
                "(onnxruntime-gpu with the TensorRT libraries); use --device cuda"
            )
        return [_TENSORRT, _CUDA, _CPU]
    if device == "cuda" or (device == "auto" and cuda_ok):
        return [_CUDA, _CPU]
    return [_CPU]


#: The intra-op size of the process-wide pool the toolkit made (0: ONNX Runtime's default), or ``"external"``
#: when the process already had global pools made elsewhere; ``None`` until the first shared session.
_shared_pool_threads: int | str | None = None
_shared_pool_lock = threading.Lock()
#: What ONNX Runtime says when a process with global pools asks for a session with a pool of its own.
_GLOBAL_POOL_ONLY = "use_per_session_threads must be false"


def _use_shared_pool(ort: Any, threads: int | None) -> None:
    """Make ONNX Runtime's global thread pools at the first shared session; later ones must not ask for another size."""
    global _shared_pool_threads
    with _shared_pool_lock:
        if _shared_pool_threads is None:
            try:
                ort.set_global_thread_pool_sizes(threads or 0, 1)
                _shared_pool_threads = threads or 0
            except Exception:  # this process made them before (outside the toolkit): they are the pool to share
                _shared_pool_threads = "external"
            return
        made = _shared_pool_threads
    if threads is not None and made != threads:
        size = "a size set outside the toolkit" if made == "external" else f"{made or 'the default number of'} threads"
        fix = f"threads={made} or threads=None" if isinstance(made, int) and made else "threads=None"
        raise LowRankError(
            f"this process's shared ONNX Runtime thread pool has {size} and cannot be resized to {threads}; "
            f"pass {fix}, or shared_pool=False for a pool of its own"
        )


def make_session(
    model: str | os.PathLike[str] | bytes,
    *,
    device: str = "auto",
    threads: int | None = None,
    shared_pool: bool = False,
) -> Any:
    """An ``InferenceSession`` with full graph optimisation on the chosen provider.

    Args:
        model: path of an ``.onnx`` file, or its bytes.
        device: ``auto`` (CUDA when a GPU is present, else CPU; a CUDA provider that cannot start: a warning,
            and the CPU), ``cpu``, ``cuda`` or ``tensorrt``. A device asked for by name that ONNX Runtime could
            not start is an error, not a quiet fallback.
        threads: intra-op threads (``None``: ONNX Runtime's default, one per physical core).
        shared_pool: run on the process's one shared thread pool, made by the first such session with its
            ``threads`` (a later one asking for another size is refused), instead of a pool of its own: for a
            process that runs several sessions one after another, e.g. two models per request. Once a process
            has that pool, ONNX Runtime runs no new session on a pool of its own, so every later session joins
            it, ``shared_pool`` or not (also when the process made the pool itself, with
            ``onnxruntime.set_global_thread_pool_sizes``).

    Example:
        >>> detector = make_session("a.onnx", threads=2, shared_pool=True)  # doctest: +SKIP
        >>> classifier = make_session("b.onnx", threads=2, shared_pool=True)  # doctest: +SKIP
    """
    ort = _ort()
    opts = ort.SessionOptions()
    opts.log_severity_level = _ERROR
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        check_threads(threads)
    providers = providers_for(device)  # checked before the process's pool is made: a refusal changes nothing
    if shared_pool or _shared_pool_threads is not None:
        _use_shared_pool(ort, threads)
        opts.use_per_session_threads = False
    elif threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    source = model if isinstance(model, bytes) else os.fspath(model)
    where = "the ONNX model" if isinstance(model, bytes) else str(model)
    try:
        # ONNX Runtime's own fallback (retry on the CPU) prints an "EP Error" banner to stdout: the toolkit
        # falls back itself, below, and says why in one line
        session = ort.InferenceSession(source, sess_options=opts, providers=providers, enable_fallback=0)
    except Exception as exc:
        if opts.use_per_session_threads and _GLOBAL_POOL_ONLY in str(exc):  # the process made global pools itself
            _use_shared_pool(ort, None)
            return make_session(model, device=device, threads=threads, shared_pool=True)
        first = first_line(exc, with_type=False, limit=300)
        if providers == [_CPU]:
            raise LowRankError(
                f"ONNX Runtime cannot load {where} ({first}); re-export it with `lowrank export`"
            ) from None
        session = _on_the_cpu(ort, source, opts, where)  # a broken file fails here too, with its own message
        label = provider_label(providers[0])
        if device != "auto":
            raise LowRankError(
                f"ONNX Runtime could not start its {label} provider for {where} ({first}); check the {label} "
                "installation or use --device cpu"
            ) from None
        warnings.warn(
            f"ONNX Runtime could not start its {label} provider for {where} ({first}); running on the CPU",
            LowRankWarning,
            stacklevel=2,
        )
        return session
    if (
        device != "auto" and session.get_providers()[0] != providers[0]
    ):  # e.g. TensorRT libraries missing: ORT falls back quietly
        raise LowRankError(
            f"ONNX Runtime could not start its {provider_label(providers[0])} provider for {where} "
            f"(it fell back to {provider_name(session)}); check the {provider_label(providers[0])} installation or use --device cpu"
        )
    return session


def _on_the_cpu(ort: Any, source: str | bytes, opts: Any, where: str) -> Any:
    """The session on the CPU provider alone, after a GPU provider failed to start."""
    try:
        return ort.InferenceSession(source, sess_options=opts, providers=[_CPU], enable_fallback=0)
    except Exception as exc:
        first = first_line(exc, with_type=False, limit=300)
        raise LowRankError(f"ONNX Runtime cannot load {where} ({first}); re-export it with `lowrank export`") from None


def provider_label(provider: str) -> str:
    """``TensorrtExecutionProvider`` → ``TensorRT``, ``CUDAExecutionProvider`` → ``CUDA``."""
    return {"Tensorrt": "TensorRT"}.get(name := provider.replace("ExecutionProvider", ""), name)


def provider_name(session: Any) -> str:
    """``"TensorRT"``, ``"CUDA"`` or ``"CPU"``: the provider a session actually runs on first."""
    return provider_label(session.get_providers()[0])
