"""ONNX Runtime sessions: the execution provider chosen for the machine, quietly.

``onnxruntime-gpu`` lists ``CUDAExecutionProvider`` as available even on a machine without a GPU; asking
for it there prints a screen of library-loading errors before falling back to the CPU. So the CUDA
provider is requested only when a CUDA device is actually present (``torch.cuda.is_available()``), and
ONNX Runtime's own log is limited to errors. ``tensorrt`` asks for the TensorRT provider (CUDA and the
CPU behind it for the nodes TensorRT does not take); a session that did not get it is refused, not
silently run elsewhere.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ..choices import DEVICES, RUNTIME_DEVICES
from ..errors import LowRankError, first_line

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


def make_session(model: str | os.PathLike[str] | bytes, *, device: str = "auto", threads: int | None = None) -> Any:
    """An ``InferenceSession`` with full graph optimisation on the chosen provider.

    Args:
        model: path of an ``.onnx`` file, or its bytes.
        device: ``auto`` (CUDA when a GPU is present, else CPU), ``cpu``, ``cuda`` or ``tensorrt``. A device
            asked for by name that ONNX Runtime could not start is an error, not a quiet fallback.
        threads: intra-op threads (``None``: ONNX Runtime's default, one per physical core).
    """
    ort = _ort()
    opts = ort.SessionOptions()
    opts.log_severity_level = _ERROR
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        if threads < 1:
            raise LowRankError(f"threads must be >= 1, got {threads}")
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    source = model if isinstance(model, bytes) else os.fspath(model)
    providers = providers_for(device)
    where = "the ONNX model" if isinstance(model, bytes) else str(model)
    try:
        session = ort.InferenceSession(source, sess_options=opts, providers=providers)
    except LowRankError:
        raise
    except Exception as exc:
        first = first_line(exc, with_type=False, limit=300)
        raise LowRankError(f"ONNX Runtime cannot load {where} ({first}); re-export it with `lowrank export`") from None
    if (
        device != "auto" and session.get_providers()[0] != providers[0]
    ):  # e.g. TensorRT libraries missing: ORT falls back quietly
        raise LowRankError(
            f"ONNX Runtime could not start its {provider_label(providers[0])} provider for {where} "
            f"(it fell back to {provider_name(session)}); check the {provider_label(providers[0])} installation or use --device cpu"
        )
    return session


def provider_label(provider: str) -> str:
    """``TensorrtExecutionProvider`` → ``TensorRT``, ``CUDAExecutionProvider`` → ``CUDA``."""
    return {"Tensorrt": "TensorRT"}.get(name := provider.replace("ExecutionProvider", ""), name)


def provider_name(session: Any) -> str:
    """``"TensorRT"``, ``"CUDA"`` or ``"CPU"``: the provider a session actually runs on first."""
    return provider_label(session.get_providers()[0])
