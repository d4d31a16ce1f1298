"""Inference engines behind one small interface: load an ONNX model, run a feed, say where it ran.

An engine is one module with a subclass of :class:`Engine`. :data:`ENGINE_MODULES` maps each name to that
module; it is imported only when the engine is asked for, so the toolkit never imports a runtime it does
not use, and a runtime that is not installed is one line naming the pip extra that brings it.

Adding an engine (TensorRT's own runtime, TVM, ...) is one module with an :class:`Engine` subclass and one
line in :data:`ENGINE_MODULES` (and its name in ``choices.RUNTIME_ENGINES``). If the engine's threads stay
busy after a call, its runner says for how long (:attr:`Runner.idle_spin_s`; ``benchmarks/spin_window.py``
measures it).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..choices import RUNTIME_ENGINES
from ..errors import LowRankError
from ..threads import check_threads

__all__ = [
    "TensorSpec",
    "Runner",
    "Engine",
    "ENGINE_MODULES",
    "EngineModule",
    "get_engine",
    "check_engine",
    "installed_engines",
    "RUNTIME_ENGINES",
]


@dataclass(frozen=True)
class EngineModule:
    """Where an engine lives and what it needs; its module is imported only when the engine is asked for."""

    module: str  # the module with the Engine subclass
    cls: str  # the class's name
    package: str  # the Python package the engine runs on
    extra: str  # the toolkit's pip extra that installs it


#: engine name → its :class:`EngineModule`. Whether an engine is installed is known without importing it.
ENGINE_MODULES: dict[str, EngineModule] = {
    # a core dependency: onnxruntime-gpu (Linux x86-64) or onnxruntime
    "onnxruntime": EngineModule(
        "lowrank_tool.runtime.onnxruntime_engine", "OnnxRuntimeEngine", "onnxruntime", "onnxruntime"
    ),
    "openvino": EngineModule("lowrank_tool.runtime.openvino_engine", "OpenVINOEngine", "openvino", "openvino"),
}


ModelSource = str | os.PathLike[str] | bytes


@dataclass(frozen=True)
class TensorSpec:
    """A model input as the engine sees it: name, numpy dtype, shape (``None`` for a dynamic dimension)."""

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int | None, ...]


class Runner(ABC):
    """A model loaded in an engine, ready to run."""

    #: the engine's name (``onnxruntime``, ``openvino``).
    engine: str
    #: where and how it runs: ``CPU``, ``CUDA``, ``TensorRT``, ``CPU f32``...
    backend: str
    inputs: list[TensorSpec]
    output_names: list[str]
    #: seconds this runner's worker threads stay busy after a call returns (spin-waiting for the next one). A
    #: second runner timed inside that window shares the cores with them and measures slow:
    #: :func:`~.timing.interleave` waits it out before switching models. 0: the engine leaves no busy thread.
    idle_spin_s: float = 0.0

    @abstractmethod
    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run one inference; outputs in the model's order, as numpy arrays the caller may keep."""

    def describe(self) -> str:
        return f"{self.engine} {self.backend}"


class Engine(ABC):
    """An inference runtime that reads ONNX."""

    name: ClassVar[str]

    @abstractmethod
    def load(
        self, model: ModelSource, *, device: str = "auto", threads: int | None = None, batch: int | None = None
    ) -> Runner:
        """Load an ``.onnx`` file (a path) or ONNX bytes on ``device`` with ``threads`` intra-op threads.

        ``batch`` fixes a dynamic batch dimension for the runner's lifetime, as a deployment serving one batch
        size would: an engine that compiles for a static shape (OpenVINO) runs faster so; one that gains
        nothing from it (ONNX Runtime) ignores it. ``None`` keeps the file's shapes.
        """


def check_load_options(threads: int | None, batch: int | None) -> None:
    """The one-line refusals every engine's ``load`` gives for a bad thread count or batch."""
    for what, value in (("threads", threads), ("batch", batch)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise LowRankError(f"{what} must be an integer >= 1, got {value!r}")
    if threads is not None:
        check_threads(threads)  # and not far above the CPUs, whichever engine asks


def _check_name(name: str) -> None:
    if name not in ENGINE_MODULES:
        raise LowRankError(f"engine {name!r} is not known; use one of: {', '.join(RUNTIME_ENGINES)}")


def _installed(name: str) -> bool:
    return importlib.util.find_spec(ENGINE_MODULES[name].package) is not None


def check_engine(name: str) -> None:
    """A one-line :class:`LowRankError` when engine ``name`` is unknown or not installed (imports nothing)."""
    _check_name(name)
    entry = ENGINE_MODULES[name]
    if not _installed(name):
        raise LowRankError(
            f"engine {name!r} needs the {entry.package!r} package, which is not installed; "
            f"pip install 'lowrank-tool[{entry.extra}]' (or pip install {entry.package})"
        )


def get_engine(name: str) -> Engine:
    """The engine called ``name``; a one-line :class:`LowRankError` when unknown or not installed."""
    check_engine(name)
    entry = ENGINE_MODULES[name]
    cls: type[Engine] = getattr(importlib.import_module(entry.module), entry.cls)
    return cls()


def installed_engines() -> list[str]:
    """The engines whose runtime package is installed, in :data:`RUNTIME_ENGINES` order."""
    return [name for name in RUNTIME_ENGINES if _installed(name)]


def parse_engines(text: str | Sequence[str], *, what: str = "--verify-with") -> list[str]:
    """``"auto"`` (every installed engine) or a comma-separated list of engine names, each known and installed."""
    names = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    if names == ["auto"]:
        return installed_engines()
    if not names:
        raise LowRankError(f"{what} is empty; give engines, e.g. onnxruntime,openvino, or auto")
    for name in names:
        check_engine(name)
    return list(dict.fromkeys(names))
