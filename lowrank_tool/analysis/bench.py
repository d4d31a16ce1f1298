"""`lowrank bench`: latency of a low-rank model, and of its dense counterpart, measured in one run.

For an artifact directory the low-rank model is loaded with its weights and the dense counterpart is
rebuilt from the plan's base model (random weights: latency does not depend on the values). Both are
exported to ONNX in a temporary directory and timed in each ONNX engine asked for (ONNX Runtime,
OpenVINO) and in PyTorch eager, for every batch size and thread count asked for.

**Interleaved, with the spread.** On a shared machine two timings of the same model minutes apart differ
by up to 25 %, so a speedup from two separate measurements is noise-prone. Each configuration's
``runs`` are split into ``repeats`` rounds; every round times the low-rank and the dense model back to back
(alternating which goes first; before each model's turn the previous one's ONNX Runtime worker threads are
given time to stop spinning, see :func:`~lowrank_tool.runtime.timing.interleave`), and each round gives one
speedup. The report's speedup is the median of
those paired ratios, with their minimum, maximum and relative spread ((max − min) / median); above
:data:`~lowrank_tool.runtime.timing.STABLE_SPREAD` the comparison is marked unstable and a note says so. With 6 or more rounds it
also carries a 95 % confidence interval of the median ratio (``speedup_ci``, order statistics: no
assumption about the noise), the number to hold a speedup target against: one disturbed round widens the
range but not the interval.

speedup = dense latency / low-rank latency; efficiency = speedup / MAC reduction (1.0: the runtime turns
every saved MAC into saved time; DESIGN.md measured about 0.6 for a plain Tucker-2 ResNet-50 at rank 0.3
on 2 CPU cores).
"""

from __future__ import annotations

import functools
import os
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..choices import DEFAULT_BENCH_ENGINES, ENGINES, RUNTIME_ENGINES
from ..conversion_plan import ConversionPlan
from ..convert.api import summary
from ..errors import LowRankError
from ..export.onnx import export_onnx, plan_from_onnx, read_metadata
from ..io import load, rebuild
from ..models import build_from_spec, parse_input_size
from ..runtime import STABLE_SPREAD, get_engine, interleave, paired_speedup, torch_threads
from ..runtime.machine import CPU, cpu_description
from .settings import bench_settings

__all__ = ["BenchRow", "BenchReport", "bench", "ENGINES", "STABLE_SPREAD"]

#: Interleaved rounds per configuration unless asked otherwise.


@dataclass
class BenchRow:
    """One model × engine × batch × threads measurement."""

    model: str  # "low-rank", "dense" or the file name
    engine: str
    provider: str
    batch: int
    threads: int
    params: int | None
    macs: int | None
    median_ms: float
    p90_ms: float
    runs: int
    round_medians: list[float] = field(default_factory=list)  # median latency of each interleaved round


@dataclass
class BenchReport:
    target: str
    input_size: list[int]
    rows: list[BenchRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: the CPU the timings ran on: its ISA decides the kernels
    cpu: CPU | None = None
    #: the versions of the packages that ran the models (``torch``, ``onnxruntime``, ``openvino``)
    versions: dict[str, str] = field(default_factory=dict)

    def comparisons(self) -> list[dict[str, Any]]:
        """Speedup and efficiency of the low-rank model over the dense one, per engine/batch/threads."""
        out = []
        dense = {(r.engine, r.batch, r.threads): r for r in self.rows if r.model == "dense"}
        for r in self.rows:
            d = dense.get((r.engine, r.batch, r.threads))
            if r.model == "dense" or d is None:
                continue
            rounds = min(len(d.round_medians), len(r.round_medians))
            paired = paired_speedup(d.round_medians[:rounds], r.round_medians[:rounds])
            ci: list[float] | None = None
            if paired.rounds:
                speedup, low, high, spread = paired.speedup, paired.low, paired.high, paired.spread
                if paired.ci_low is not None and paired.ci_high is not None:
                    ci = [paired.ci_low, paired.ci_high]
            else:  # no rounds recorded (a report read back from an older file): the medians' ratio
                speedup = low = high = d.median_ms / r.median_ms
                spread = 0.0
            mac_reduction = (d.macs / r.macs) if d.macs and r.macs else None
            out.append(
                {
                    "engine": r.engine,
                    "batch": r.batch,
                    "threads": r.threads,
                    "speedup": speedup,
                    "speedup_min": low,
                    "speedup_max": high,
                    "speedup_ci": ci,
                    "rounds": paired.rounds,
                    "spread": spread,
                    "stable": paired.stable,
                    "mac_reduction": mac_reduction,
                    "efficiency": speedup / mac_reduction if mac_reduction else None,
                }
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "input_size": self.input_size,
            "rows": [asdict(r) for r in self.rows],
            "comparisons": self.comparisons(),
            "notes": self.notes,
            "cpu": self.cpu.to_dict() if self.cpu else None,
            "versions": self.versions,
        }


def _onnx_params(path: Path) -> int:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return int(sum(int(np.prod(t.dims)) for t in proto.graph.initializer))


def _dense_of(plan: Any, where: str, trust_code: bool) -> nn.Module:
    spec = plan.base_model
    if spec.get("source") == "custom" or not spec.get("name"):
        raise LowRankError(
            f"--vs-dense needs a model given by name; this one is a custom {spec.get('class', 'model')} "
            "(benchmark your dense model's own ONNX file beside it instead)"
        )
    return build_from_spec(spec, where=where, trust_code=trust_code)


def _lowrank_from_plan(plan: Any, where: str, trust_code: bool) -> nn.Module:
    return rebuild(plan, _dense_of(plan, where, trust_code), init="random")


@dataclass
class _Timed:
    """One model of one configuration, loaded: what to call, and how."""

    name: str
    call: Callable[[], Any]
    sync: Callable[[], None] | None
    provider: str
    params: int | None
    macs: int | None
    idle_spin_s: float = 0.0  # the runner's (see Runner.idle_spin_s); PyTorch eager: 0


def _versions(engines: Sequence[str]) -> dict[str, str]:
    """The version of each package that ran a model in this report (each was imported to run it)."""
    return {
        engine: str(getattr(sys.modules[engine], "__version__", "unknown"))
        for engine in engines
        if engine in sys.modules
    }


def _input_batch(size: Sequence[int], batch: int) -> torch.Tensor:
    return torch.randn(batch, *size, generator=torch.Generator().manual_seed(0))


@dataclass(frozen=True)
class _Rounds:
    """How each configuration is timed: ``repeats`` interleaved rounds of ``per_round`` calls per model."""

    repeats: int
    per_round: int
    warmup: int


def _time_configuration(
    models: Sequence[tuple[str, nn.Module | None, Path, int | None, int | None]],
    engine: str,
    batch: int,
    n_threads: int,
    x: torch.Tensor,
    rounds: _Rounds,
    device: str,
    torch_device: torch.device,
) -> list[BenchRow]:
    """Load every model for one engine × batch × thread count, time them interleaved, and return their rows.

    Each ONNX engine gets one runner per model, compiled for this batch and thread count (OpenVINO runs a
    static shape faster; see Engine.load): what a deployment serving this batch size runs. The runners live
    only in this call, so one configuration's sessions (about 100 MB each for a ResNet-50) are freed, and
    their worker threads stopped, before the next configuration's are loaded.
    """
    timed: list[_Timed] = []
    for name, module, path, n_params, macs in models:
        if engine in RUNTIME_ENGINES:
            runner = get_engine(engine).load(
                path, device=device if engine == "onnxruntime" else "cpu", threads=n_threads, batch=batch
            )
            spec = runner.inputs[0]
            if spec.shape and spec.shape[0] is not None and spec.shape[0] != batch:
                raise LowRankError(
                    f"{path.name} was exported with a fixed batch of {spec.shape[0]}; bench it with "
                    f"--batch {spec.shape[0]} or re-export with --batch dynamic"
                )
            feed = {spec.name: x.numpy().astype(spec.dtype)}
            call: Callable[[], Any] = functools.partial(runner.run, feed)
            timed.append(_Timed(name, call, None, runner.backend, n_params, macs, runner.idle_spin_s))
        elif module is not None:
            module.to(torch_device)
            sync = torch.cuda.synchronize if torch_device.type == "cuda" else None
            call = functools.partial(module, x.to(torch_device))
            timed.append(_Timed(name, call, sync, torch_device.type.upper(), n_params, macs))
    with torch_threads(n_threads if engine == "torch" else None), torch.inference_mode():
        measured = interleave(
            {i: t.call for i, t in enumerate(timed)},
            rounds=rounds.repeats,
            runs=rounds.per_round,
            warmup=rounds.warmup,
            round_warmup=min(rounds.warmup, 2),
            idle_spin_s={i: t.idle_spin_s for i, t in enumerate(timed)},
            sync={i: t.sync for i, t in enumerate(timed)},
        )
    rows = []
    for i, t in enumerate(timed):
        samples = [v for lat in measured[i] for v in lat.samples]
        rows.append(
            BenchRow(
                t.name,
                engine,
                t.provider,
                batch,
                n_threads,
                t.params,
                t.macs,
                statistics.median(samples),
                float(np.percentile(samples, 90)),
                len(samples),
                [lat.median_ms for lat in measured[i]],
            )
        )
    return rows


def bench(
    target: str | os.PathLike[str],
    *,
    vs_dense: bool = False,
    batches: str | Sequence[int] = (1,),
    threads: str | Sequence[int] | None = None,
    engines: Sequence[str] = DEFAULT_BENCH_ENGINES,
    runs: int = 50,
    warmup: int = 10,
    repeats: int | None = None,
    input_size: str | Sequence[int] | None = None,
    device: str = "cpu",
    merge: str = "none",
    precision: str = "fp32",
    progress: Callable[[str], None] | None = None,
    trust_code: bool = False,
) -> BenchReport:
    """Measure latency of an artifact directory or an ONNX file (and of its dense counterpart).

    Args:
        target: a directory from ``lowrank convert -o`` or an ``.onnx`` file from ``lowrank export``.
        vs_dense: measure the dense base model too (needs a model given by name).
        batches: batch sizes, e.g. ``"1,8"``.
        threads: intra-op thread counts, e.g. ``"1,2"`` (default: every core).
        engines: any of ``onnxruntime``, ``openvino`` (CPU, f32) and ``torch`` (eager). An ONNX file whose
            plan names its base model is rebuilt for PyTorch with random weights.
        runs, warmup: timed calls per model and configuration, and untimed calls before them.
        repeats: interleaved rounds the runs are split into (each gives one paired speedup; see the module
            docstring); default ``min(10, runs)``. 1 times each model in one block.
        input_size: per-sample input (default: the plan's).
        device: ONNX Runtime device (``cpu``, ``cuda``, ``tensorrt`` or ``auto``); PyTorch runs on the CPU
            unless ``cuda``; OpenVINO runs on the CPU.
        merge: ``none``, ``all`` or ``auto``: how the low-rank model is exported for ONNX Runtime.
        precision: ``fp32`` or ``fp16``: how an artifact's low-rank model and the dense model are exported
            (fp16 is the GPU setting; an ``.onnx`` file is timed in its own precision).
        progress: called with a short message per measurement.
        trust_code: rebuild a ``package.module:factory`` base model the artifact names (files you trust only).

    Returns:
        A :class:`BenchReport`; ``.comparisons()`` gives speedup and efficiency.
    """
    note = progress or (lambda message: None)
    settings = bench_settings(
        target,
        batches=batches,
        threads=threads,
        engines=engines,
        runs=runs,
        warmup=warmup,
        repeats=repeats,
        precision=precision,
        input_size=input_size,
    )
    target, batch_list, thread_list, repeats = settings.target, settings.batches, settings.threads, settings.repeats
    torch_device = torch.device("cuda" if device in ("cuda", "tensorrt") else "cpu")

    report_notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="lowrank-bench-") as tmp:
        tmpdir = Path(tmp)
        plan: ConversionPlan | None
        lowrank: nn.Module | None
        if target.is_dir():
            lowrank = load(target, trust_code=trust_code).eval()
            plan = summary(lowrank)
            onnx_file = None
        else:
            onnx_file = target
            plan = plan_from_onnx(target)
            lowrank = None
            meta = read_metadata(target)
            if "torch" in engines:
                if plan is None or plan.base_model.get("source") == "custom":
                    report_notes.append(
                        "PyTorch eager not measured: the ONNX file does not name a torchvision/toolkit base model"
                    )
                else:
                    lowrank = _lowrank_from_plan(plan, str(target), trust_code).eval()
            file_precision = meta.get("precision", "fp32")
            if file_precision == "fp16":
                precision = "fp16"  # the dense model is exported in the file's precision
                report_notes.append(f"{target.name} is fp16; so is the dense model; PyTorch eager runs in fp32")
            elif file_precision != "fp32":
                report_notes.append(f"{target.name} is {file_precision}; the dense model and PyTorch eager run in fp32")
            if input_size is None and meta.get("input_size"):
                input_size = meta["input_size"]
                try:
                    parse_input_size(input_size)
                except LowRankError:
                    raise LowRankError(
                        f"{target.name}'s metadata gives the input size {str(input_size)[:40]!r}, which is malformed; "
                        "pass --input-size CxHxW or re-export the file with `lowrank export`"
                    ) from None
        size = parse_input_size(input_size) or (tuple(plan.input_size) if plan is not None else None)
        if size is None:
            raise LowRankError(f"no input size known for {target}; pass --input-size CxHxW")
        task = plan.base_model.get("task", "classification") if plan is not None else "classification"
        if task not in ("classification", "segmentation", "video"):
            raise LowRankError(f"bench measures models with one image-batch input; {target} is a {task} model")
        totals = plan.totals() if plan is not None else None

        models: list[tuple[str, nn.Module | None, Path, int | None, int | None]] = []
        if onnx_file is None:
            note("exporting the low-rank model")
            onnx_file = tmpdir / "lowrank.onnx"
            assert lowrank is not None  # an artifact directory was loaded
            export_onnx(
                lowrank, onnx_file, input_size=size, verify=False, merge=merge, device=device, precision=precision
            )
        params = int(totals["params_after"]) if totals else _onnx_params(onnx_file)
        models.append(
            (
                "low-rank" if target.is_dir() or plan is not None else target.name,
                lowrank,
                onnx_file,
                params,
                int(totals["macs_after"]) if totals else None,
            )
        )
        if vs_dense:
            if plan is None:
                raise LowRankError(
                    f"--vs-dense needs the conversion plan; {target} carries none (export it with `lowrank export`)"
                )
            dense = _dense_of(plan, str(target), trust_code).eval()
            note("exporting the dense model")
            dense_file = tmpdir / "dense.onnx"
            export_onnx(dense, dense_file, input_size=size, verify=False, precision=precision)
            assert totals is not None  # plan is not None here
            models.append(("dense", dense, dense_file, int(totals["params_before"]), int(totals["macs_before"])))

        report = BenchReport(str(target), list(size), notes=report_notes, cpu=cpu_description())
        per_round = max(1, runs // repeats)
        rounds = _Rounds(repeats, per_round, warmup)
        for engine in engines:
            for batch in batch_list:
                x = _input_batch(size, batch)
                for n_threads in thread_list:
                    note(f"{engine}, batch {batch}, {n_threads} threads: {' and '.join(m[0] for m in models)}")
                    report.rows.extend(
                        _time_configuration(models, engine, batch, n_threads, x, rounds, device, torch_device)
                    )
        report.versions = _versions(engines)  # after the runs: an engine's package is imported when it loads a model
        unstable = [c for c in report.comparisons() if c["rounds"] > 1 and not c["stable"]]
        for c in unstable:
            report.notes.append(
                f"{c['engine']}, batch {c['batch']}, {c['threads']} threads: the speedup varied from "
                f"{c['speedup_min']:.2f}x to {c['speedup_max']:.2f}x over {c['rounds']} rounds (spread "
                f"{100 * c['spread']:.0f}% > {100 * STABLE_SPREAD:.0f}%)"
                + (
                    f"; 95% interval of the median {c['speedup_ci'][0]:.2f}x-{c['speedup_ci'][1]:.2f}x: hold targets against that"
                    if c["speedup_ci"]
                    else ": too noisy to claim a target from; use --repeats 6 or more for an interval of the median"
                )
            )
    return report
