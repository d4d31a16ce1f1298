"""Latency-aware conversion (``--policy latency``): choose each layer's form by measuring it.

Fewer MACs do not make a faster layer by themselves: three small convs cost three kernel launches and
two extra activations, and channel counts that are not a multiple of the CPU's vector block miss the
fast (NCHWc) convolution kernels of ONNX Runtime. So for every layer the plan would factorise, this
policy exports candidate forms *alone* — the dense conv, the format at the requested ranks, and those
ranks rounded up to hardware-friendly multiples — runs each in the engine the model will be deployed
with (``latency_engine``: ONNX Runtime by default, or OpenVINO) in the precision it will run in
(``latency_precision``: fp32, or int8 quantized as ``lowrank export --int8`` quantizes) with the layer's real
input shape and thread count, and keeps the fastest that meets the request:

* ``rank=R``: among forms with at least R's ranks (dense counts: full rank), the fastest. A layer stays
  dense when factorising it does not pay.
* ``target_speedup=S``: from a grid of rank fractions (rounded to multiples of ``ROUND``), layers are
  lowered greedily — always the move that saves the most time per unit of rank given up — until the
  predicted latency (the measured layers plus the rest of the dense model, measured once) reaches
  1/S of the dense model's; then the whole low-rank model is exported and timed, and if it falls
  short the goal is tightened by the shortfall and the greedy continues (at most ``MAX_ROUNDS``); it
  aims ``SAFETY`` (5%) above S, since two timings of one model differ by a few percent. If
  the candidates cannot reach S, the plan says so and what was measured.

Measurements are cached per machine (CPU model, core count, ONNX Runtime and torch versions) in
``~/.cache/lowrank_tool/latency-<key>.json`` (``LOWRANK_CACHE_DIR`` overrides the directory), keyed by
the engine (and its version), the precision, the layer's geometry, ranks, input shape, batch and threads. The plan records the measured times
(``latency_ms``, ``dense_latency_ms``) and the policy's prediction.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from torch import nn

from ..artifact import atomic_write_text
from ..choices import POLICIES
from ..conversion_plan import ConversionPlan, LayerPlan
from ..errors import LowRankError
from ..layers import get_format
from ..layers.base import ConvGeometry, conv_class
from ..model_names import cache_dir
from ..runtime import get_engine, time_module
from ..runtime.machine import cpu_description
from .apply import replace_module
from .options import ConvertOptions, RankSpec
from .rank import SpatialSizes, choose_format, layer_cost, ranks_for
from .select import FqnMatcher

__all__ = ["POLICIES", "ROUND", "LatencyCache", "apply_latency_policy", "measure_form"]

#: Ranks are rounded up to multiples of this for the hardware-friendly candidates (AVX-512 NCHWc block).
ROUND = 16
#: Rank fractions tried by ``target_speedup``.
GRID = (0.75, 0.5, 0.4, 0.3, 0.25, 0.2, 0.15, 0.1)
#: Whole-model checks of ``target_speedup`` (each lowers the per-layer goal by the measured shortfall).
MAX_ROUNDS = 3
#: Aim this much above the target: two timings of the same model on a shared machine differ by a few percent.
SAFETY = 1.05


def _machine_key() -> str:
    """The cache file's name: timings hold for one CPU (by its ISA, not only its often-masked model name),
    core count and runtime versions."""
    import onnxruntime as ort

    cpu = cpu_description()
    text = f"{cpu.name}|{cpu.isa}|{','.join(cpu.flags)}|{cpu.cpus}|{ort.__version__}|{torch.__version__}"
    return hashlib.sha1(text.encode()).hexdigest()[:12]


class LatencyCache:
    """Measured layer latencies of this machine, on disk (JSON, written atomically)."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        if path is None:
            path = cache_dir() / f"latency-{_machine_key()}.json"
        self.path = Path(path)
        self.data: dict[str, float] = _read_timings(self.path)
        self.hits = self.misses = 0

    def get(self, key: str) -> float | None:
        value = self.data.get(key)
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
        return value

    def put(self, key: str, value: float) -> None:
        self.data[key] = value

    def save(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, json.dumps(self.data, indent=0, sort_keys=True))
        except OSError:
            pass  # read-only home: the measurements are simply not kept


def _read_timings(path: Path) -> dict[str, float]:
    """The cache's timings; a corrupt cache is only a cache: whatever is not a positive finite time is measured again."""
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError, RecursionError):  # unreadable, not UTF-8 or JSON, nested past the recursion limit
        return {}
    if not isinstance(data, dict):
        return {}
    return {
        key: float(value)
        for key, value in data.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    }


def _module(g: ConvGeometry, fmt: str, ranks: tuple[int, ...] | None) -> nn.Module:
    if fmt == "dense":
        return conv_class(g.ndim)(g.in_channels, g.out_channels, g.kernel_size, bias=g.bias, **g.spatial_kwargs())
    return get_format(fmt, g.ndim).from_geometry(g, ranks or ())


def measure_form(
    g: ConvGeometry,
    fmt: str,
    ranks: tuple[int, ...] | None,
    input_shape: tuple[int, ...],
    *,
    threads: int | None,
    runs: int = 20,
    warmup: int = 5,
    engine: str = "onnxruntime",
    precision: str = "fp32",
) -> float:
    """Median latency (ms) in ``engine`` of one layer form on ``input_shape`` (batch, C, *spatial), in ``precision``."""
    return time_module(
        _module(g, fmt, ranks).eval(),
        input_shape,
        device="cpu",
        threads=threads,
        runs=runs,
        warmup=warmup,
        engine=engine,
        precision=precision,
    )


@dataclass
class _Option:
    format: str
    ranks: tuple[int, ...] | None
    ms: float
    keep: float  # rank fraction kept (1.0 = dense): what a lower option gives up


def _sizes(entry: LayerPlan) -> SpatialSizes:
    inp = math.prod(entry.input_size or [0]) * max(entry.calls, 1)
    out = math.prod(entry.output_size or [0]) * max(entry.calls, 1)
    return SpatialSizes(inp, out, 0)


def _round_up(ranks: tuple[int, ...], fmt: str, g: ConvGeometry, multiple: int) -> tuple[int, ...]:
    return tuple(min(math.ceil(r / multiple) * multiple, full) for r, full in zip(ranks, _full(fmt, g), strict=True))


def _requested(
    entry: LayerPlan, fmt: str, g: ConvGeometry, plan: ConversionPlan, options: ConvertOptions
) -> tuple[str, tuple[int, ...]]:
    """The format and ranks the rank/budget request gives this layer (also for layers it left dense)."""
    if entry.converted:
        return entry.format, tuple(entry.ranks or ())
    pinned, spec = FqnMatcher(options.layer_specs, "--layer-rank").lookup(entry.name)
    if not pinned or spec is None:
        solved = plan.policy.get("solved_ratio")
        spec = RankSpec("ratio", float(solved)) if options.budget is not None and solved else options.rank_spec
    return fmt, ranks_for(fmt, g, spec)


def _full(fmt: str, g: ConvGeometry) -> tuple[int, ...]:
    return ranks_for(fmt, g, RankSpec("ratio", 1.0), 1)


def _keep(fmt: str, g: ConvGeometry, ranks: tuple[int, ...]) -> float:
    return min(r / f for r, f in zip(ranks, _full(fmt, g), strict=True))


def apply_latency_policy(
    model: nn.Module,
    plan: ConversionPlan,
    options: ConvertOptions,
    *,
    cache: LatencyCache | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> ConversionPlan:
    """Re-decide the plan's layers by measured latency (see the module docstring); returns the plan, changed in place.

    ``options`` gives the request (rank, budget or ``target_speedup``), the format and the measurements'
    threads and batch.
    """
    target_speedup, batch = options.target_speedup, options.latency_batch
    threads = options.latency_threads or (os.cpu_count() or 1)
    engine, precision = options.latency_engine, options.latency_precision
    get_engine(engine)  # not installed: one line naming the extra, before anything is measured
    engine_key = engine if engine == "onnxruntime" else f"{engine}-{_engine_version(engine)}"
    cache = cache or LatencyCache()
    eligible = [e for e in plan.layers if e.input_size and (e.converted or (e.reason or "").startswith("no saving"))]
    if not eligible:
        raise LowRankError(
            "no layer can be factorised under this plan (all excluded, stems or grouped); nothing to measure"
        )

    def timed(entry: LayerPlan, g: ConvGeometry, fmt: str, ranks: tuple[int, ...] | None) -> float:
        assert entry.input_size  # only layers the forward pass reached are eligible
        shape = (batch, g.in_channels, *entry.input_size)
        key = json.dumps(
            ([] if engine == "onnxruntime" else [engine_key])  # ONNX Runtime's keys predate the engine choice
            + ([] if precision == "fp32" else [precision])  # and fp32 keys predate the precision choice
            + [
                fmt,
                list(ranks or []),
                g.in_channels,
                g.out_channels,
                list(g.kernel_size),
                list(g.stride),
                str(g.padding),
                list(g.dilation),
                g.padding_mode,
                g.bias,
                list(shape),
                threads,
            ]
        )
        value = cache.get(key)
        if value is None:
            value = measure_form(g, fmt, ranks, shape, threads=threads, engine=engine, precision=precision)
            cache.put(key, value)
        return value

    candidates: dict[str, list[_Option]] = {}
    for done, entry in enumerate(eligible, 1):
        g = entry.geometry()
        fmt, _ = choose_format(options.format, g)
        dense_ms = timed(entry, g, "dense", None)
        opts = [_Option("dense", None, dense_ms, 1.0)]
        if target_speedup is None:
            fmt, requested = _requested(entry, fmt, g, plan, options)
            forms = {requested, _round_up(requested, fmt, g, 8), _round_up(requested, fmt, g, ROUND)}
        else:
            forms = {_round_up(ranks_for(fmt, g, RankSpec("ratio", rho)), fmt, g, ROUND) for rho in GRID}
        for ranks in sorted(forms):
            if ranks == _full(fmt, g) and fmt != "cp":
                continue  # full rank is never faster than dense
            opts.append(_Option(fmt, ranks, timed(entry, g, fmt, ranks), _keep(fmt, g, ranks)))
        candidates[entry.name] = opts
        if progress is not None:
            progress(done, len(eligible), entry.name)
    cache.save()

    chosen: dict[str, _Option] = {}
    note = ""
    if target_speedup is None:
        for name, opts in candidates.items():
            chosen[name] = min(opts, key=lambda o: o.ms)
    else:
        dense_total = _model_ms(model, plan, batch, threads, engine, precision)
        layers_dense = sum(opts[0].ms for opts in candidates.values())
        rest = max(dense_total - layers_dense, 0.0)
        chosen = {name: opts[0] for name, opts in candidates.items()}
        current = rest + layers_dense
        aim = target_speedup * SAFETY
        goal = dense_total / aim
        measured = dense_total
        for _ in range(MAX_ROUNDS):
            current = _lower_until(candidates, chosen, current, goal)
            # Layers timed alone do not add up exactly to the model (fusion, caches): check the whole model.
            measured = _model_ms(_with_forms(model, plan, chosen), plan, batch, threads, engine, precision)
            if dense_total / measured >= aim:
                break
            goal *= dense_total / (measured * aim)  # ask the per-layer model for the missing fraction
        predicted = dense_total / current if current > 0 else float("inf")
        achieved = dense_total / measured
        reached = achieved >= target_speedup
        note = (
            f"target speedup {target_speedup:g}: measured {achieved:.2f}x on the whole model (predicted {predicted:.2f}x from "
            f"per-layer timings; dense model {dense_total:.2f} ms, low-rank {measured:.2f} ms)"
            + ("" if reached else f"; cannot reach {target_speedup:g}x with the candidate ranks on this machine")
        )
        plan.policy["latency_prediction"] = {
            "dense_ms": dense_total,
            "predicted_ms": current,
            "predicted_speedup": predicted,
            "measured_ms": measured,
            "measured_speedup": achieved,
            "reached": reached,
        }
    for entry in eligible:
        g = entry.geometry()
        pick = chosen[entry.name]
        dense_ms = candidates[entry.name][0].ms
        entry.dense_latency_ms, entry.latency_ms = dense_ms, pick.ms
        if pick.format == "dense":
            entry.format, entry.ranks = "dense", None
            entry.params_after, entry.macs_after = entry.params_before, entry.macs_before
            entry.reason = f"latency: dense {dense_ms:.3f} ms is the fastest form measured"
        else:
            entry.format, entry.ranks = pick.format, list(pick.ranks or [])
            entry.params_after, entry.macs_after = layer_cost(pick.format, g, pick.ranks or (), _sizes(entry))
            entry.reason = f"latency: {pick.ms:.3f} ms vs dense {dense_ms:.3f} ms"
        entry.rank_spec = "latency" if target_speedup is None else f"latency:{target_speedup:g}x"
    plan.policy.update(
        {
            "policy": "latency",
            "target_speedup": target_speedup,
            "latency_threads": threads,
            "latency_engine": engine,
            "latency_precision": precision,
            "latency_batch": batch,
            "latency_cache": str(cache.path),
            "latency_cache_hits": cache.hits,
            "latency_measured": cache.misses,
        }
    )
    if note:
        plan.notes.append(note)
    return plan


def _lower_until(options: dict[str, list[_Option]], chosen: dict[str, _Option], current: float, goal: float) -> float:
    """Greedy: take the move that saves the most time per unit of rank given up, until ``current <= goal``."""
    while current > goal:
        best, best_score = None, 0.0
        for name, opts in options.items():
            now = chosen[name]
            for o in opts:
                saved, lost = now.ms - o.ms, now.keep - o.keep
                if saved > 0 and lost > 0 and saved / lost > best_score:
                    best, best_score = (name, o), saved / lost
        if best is None:
            break
        current -= chosen[best[0]].ms - best[1].ms
        chosen[best[0]] = best[1]
    return current


def _with_forms(model: nn.Module, plan: ConversionPlan, chosen: dict[str, _Option]) -> nn.Module:
    """A copy of the dense ``model`` with the chosen forms (random factors: only its speed matters)."""
    out = copy.deepcopy(model)
    for name, option in chosen.items():
        if option.format != "dense":
            g = plan.layer(name).geometry()
            replace_module(out, name, get_format(option.format, g.ndim).from_geometry(g, option.ranks or ()))
    return out


def _model_ms(model: nn.Module, plan: ConversionPlan, batch: int, threads: int, engine: str, precision: str) -> float:
    """Latency of a whole model in ``engine`` and ``precision`` (the dense baseline, or a candidate low-rank model)."""
    return time_module(
        model,
        (batch, *plan.input_size),
        device="cpu",
        threads=threads,
        runs=30,
        warmup=5,
        engine=engine,
        precision=precision,
    )


def _engine_version(engine: str) -> str:
    try:
        return version(engine)
    except PackageNotFoundError:
        return "?"
