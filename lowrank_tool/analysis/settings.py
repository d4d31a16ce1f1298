"""The arguments of :func:`~lowrank_tool.analysis.bench.bench`, of ``lowrank analyze``
(:func:`~lowrank_tool.analysis.sources.spectra_of`) and of the demo
(:func:`~lowrank_tool.analysis.compare.compare_dense_and_lowrank`), checked before anything heavy is imported.

Only the standard library, numpy and the toolkit's light modules (no torch), so that ``lowrank bench``,
``lowrank analyze`` and ``lowrank demo`` refuse a bad value or a mistyped path at once; the functions behind
them run the same checks before any work.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..artifact import check_artifact
from ..choices import ENGINES, RUNTIME_ENGINES
from ..convert.options import RankSpec
from ..errors import LowRankError
from ..export.options import check_onnx_file
from ..input_size import parse_input_size
from ..model_names import refuse_unknown
from ..runtime.engines import check_engine
from ..threads import check_threads
from ..train.config import TrainConfig

__all__ = ["BenchSettings", "bench_settings", "DEFAULT_REPEATS", "demo_configs", "AnalysisTarget", "analysis_target"]

DEFAULT_REPEATS = 10  # its 95 % interval is the 2nd to 9th ratio: one disturbed round does not widen it


@dataclass(frozen=True)
class BenchSettings:
    """Checked benchmark arguments: the target path, the batch and thread lists, the rounds."""

    target: Path
    batches: list[int]
    threads: list[int]
    engines: tuple[str, ...]
    runs: int
    warmup: int
    repeats: int


def bench_settings(
    target: str | os.PathLike[str],
    *,
    batches: str | Sequence[int] = (1,),
    threads: str | Sequence[int] | None = None,
    engines: Sequence[str] = ("onnxruntime",),
    runs: int = 50,
    warmup: int = 10,
    repeats: int | None = None,
    precision: str = "fp32",
    input_size: str | Sequence[int] | None = None,
) -> BenchSettings:
    """Check the arguments of a benchmark (one line naming the value and the fix for each mistake).

    Example:
        >>> s = bench_settings(".", batches="1,8", threads="2", runs=20)
        >>> s.batches, s.threads, s.repeats
        ([1, 8], [2], 10)
    """
    batch_list = _parse_list(batches, "batch")
    thread_list = _parse_list(threads, "threads") if threads is not None else [os.cpu_count() or 1]
    for n in thread_list:
        check_threads(n)
    unknown = [e for e in engines if e not in ENGINES]
    if unknown or not engines:
        raise LowRankError(
            f"engine {unknown[0] if unknown else '(none)'!r} is not known; use one or more of: {', '.join(ENGINES)}"
        )
    for engine in engines:
        if engine in RUNTIME_ENGINES:
            check_engine(engine)  # not installed: one line naming the extra, before anything is exported
    if precision not in ("fp32", "fp16"):
        raise LowRankError(f"bench precision {precision!r} is not known; use fp32 or fp16 (int8 files: bench the file)")
    if runs < 1 or warmup < 0:
        raise LowRankError(f"runs must be >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    if repeats is None:
        repeats = min(DEFAULT_REPEATS, runs)
    if isinstance(repeats, bool) or not isinstance(repeats, int) or not 1 <= repeats <= runs:
        raise LowRankError(f"repeats {repeats!r} must be an integer from 1 to runs ({runs}), e.g. 10")
    parse_input_size(input_size)
    path = Path(target).expanduser()
    if not path.exists():
        raise LowRankError(
            f"{path} does not exist; point to a directory from `lowrank convert -o DIR` or an .onnx file"
        )
    return BenchSettings(path, batch_list, thread_list, tuple(engines), runs, warmup, repeats)


def _parse_list(value: str | Sequence[int], what: str) -> list[int]:
    """``"1,8"`` → ``[1, 8]``; an empty item (``1,,8``, a trailing comma) or a value given twice is a typo, refused."""
    items = [str(v).strip() for v in (value.split(",") if isinstance(value, str) else list(value))]
    if not any(items):
        raise LowRankError(f"{what} {value!r} is empty; give at least one value, e.g. 1 or 1,8")
    if any(not item for item in items):
        raise LowRankError(
            f"{what} {value!r} has an empty item; write the values with one comma between them, e.g. 1,8"
        )
    try:
        numbers = [int(item) for item in items]
    except ValueError:
        raise LowRankError(f"{what} {value!r} is not a list of integers; write e.g. 1,8") from None
    if not numbers or any(n < 1 for n in numbers):
        raise LowRankError(f"{what} {value!r} must be positive integers such as 1,8")
    twice = sorted({n for n in numbers if numbers.count(n) > 1})
    if twice:
        raise LowRankError(f"{what} {value!r} lists {twice[0]} twice; give each value once, e.g. 1,8")
    return numbers


def demo_configs(
    rank: float, *, epochs: int, image_size: int, seed: int, output: Path | None = None
) -> dict[str, TrainConfig]:
    """The demo's two training runs (``dense``, ``elrt``), checked with its rank and output folder.

    Example:
        >>> sorted(demo_configs(0.5, epochs=2, image_size=16, seed=0))
        ['dense', 'elrt']
    """
    if output is not None and output.exists():
        raise LowRankError(f"{output} already exists; choose another --output directory")
    RankSpec.parse(rank, what="--rank")
    return {
        method: TrainConfig(
            data="digits",
            epochs=epochs,
            batch_size=64,
            lr=0.05,
            weight_decay=5e-4,
            warmup_epochs=1,
            method=method,
            image_size=image_size,
            seed=seed,
        )
        for method in ("dense", "elrt")
    }


@dataclass(frozen=True)
class AnalysisTarget:
    """What ``lowrank analyze`` reads: a model by ``name``, an ``artifact`` directory or an ``onnx`` file."""

    kind: Literal["name", "artifact", "onnx"]
    path: Path
    rank: RankSpec | None


def analysis_target(
    target: str, rank: str | None = None, *, input_size: str | None = None, model_kwargs: dict[str, Any] | None = None
) -> AnalysisTarget:
    """Resolve ``lowrank analyze TARGET``: a path (an ``.onnx`` name, an existing path, one with a separator or
    starting with ``.``) must be an artifact directory or an ONNX file that is there; anything else is a model
    name (checked when the model is built). The options that apply to one kind only are refused on the other.
    """
    spec = RankSpec.parse(rank, what="--rank") if rank is not None else None
    if spec is not None and spec.kind == "dense":
        raise LowRankError(
            "--rank dense gives no ranks to analyse; use a fraction in (0, 1] (e.g. 0.3) or an integer rank (e.g. 16)"
        )
    path = Path(target).expanduser()
    is_path = path.suffix.lower() == ".onnx" or path.exists() or os.sep in target or target.startswith(".")
    if is_path and input_size is not None:
        raise LowRankError(f"--input-size applies to a model name with --rank, not to {target}; drop --input-size")
    if is_path and model_kwargs:
        raise LowRankError(
            f"--model-arg applies to a model name, not to {target} (its plan records the model's arguments); drop --model-arg"
        )
    parse_input_size(input_size)
    if input_size is not None and spec is None:
        raise LowRankError(
            "--input-size only sets where the converter's plan is traced, which --rank asks for; add --rank 0.3 or drop --input-size"
        )
    if path.suffix.lower() == ".onnx":
        return AnalysisTarget("onnx", check_onnx_file(path), spec)
    if not is_path:
        try:
            refuse_unknown(target)
        except LowRankError as exc:  # the same words as once the model is looked up (analysis/sources.py)
            raise LowRankError(f"{exc}; no artifact directory or .onnx file named {target!r} exists either") from None
        return AnalysisTarget("name", path, spec)
    if path.exists() and not path.is_dir():
        raise LowRankError(
            f"{target} is neither an artifact directory nor an .onnx file; point to a directory from `lowrank convert -o DIR` or a file from `lowrank export`"
        )
    return AnalysisTarget("artifact", check_artifact(path), spec)
