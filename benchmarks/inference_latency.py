"""Inference latency of dense vs low-rank models, measured in one run: ONNX Runtime, OpenVINO, PyTorch eager.

Usage:
    python benchmarks/inference_latency.py                                  # the issue's grid, ONNX Runtime
    python benchmarks/inference_latency.py --models resnet50 --ranks 0.3 --batches 1 --threads 2
    python benchmarks/inference_latency.py --round-to 1 --out benchmarks/results/inference_latency_r1   # naive ranks
    python benchmarks/inference_latency.py --policy latency --ranks 0.3 --models resnet18 resnet50
    python benchmarks/inference_latency.py --policy latency --latency-engine openvino --engines openvino --models resnet50 --ranks 0.3
    python benchmarks/inference_latency.py --engines onnxruntime torch --models resnet18
    python benchmarks/inference_latency.py --engines onnxruntime openvino --models resnet50 --ranks 0.3 \
        --batches 1 --threads 2 --runs 480 --repeats 160 \
        --target onnxruntime=2.4 --target openvino=2.5 --processes 3    # the issue-15 targets, three runs

For each model and rank the converted model (random init: latency does not depend on the values) is
saved to a temporary artifact and measured with :func:`lowrank_tool.analysis.bench.bench`, which exports
it and its dense counterpart to ONNX and times both interleaved: ``--runs`` per model split into
``--repeats`` rounds, each round low-rank and dense back to back; the speedup is the median of the rounds'
ratios, reported with its range, marked unstable (``~``) when the range exceeds 10 % of it, and with a
95 % confidence interval of the median (order statistics, from 6 rounds): a target is met when the
interval's lower end reaches it, missed when its upper end stays below. ONNX
Runtime uses CUDA when a GPU is present (``--device auto``). Prints a table and writes JSON and markdown to
``--out``. Compare the speedups: absolute milliseconds drift on a shared machine, ratios taken seconds
apart much less.

The interval covers the noise within a run, not the machine's state, which on a shared VM moves a run's
ratio by more than its interval for minutes at a time. ``--processes K`` therefore measures K times, each
in a fresh process, one after another (``--gap-s`` apart), and ``--target ENGINE=X`` holds every run against
X: a target is **met** only when every run meets it, **missed** when every run misses it, and otherwise
**at its edge** (the count of each verdict is given). The JSON keeps every run's results.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _arguments import at_least, run_main
from _results import run_meta, write_result, write_text

import lowrank_tool as lr
from lowrank_tool.analysis.bench import bench
from lowrank_tool.runtime import PairedSpeedup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet50", "vgg16", "mobilenet_v2"])
    parser.add_argument("--ranks", nargs="+", type=float, default=[0.5, 0.3, 0.15])
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--threads", default=str(os.cpu_count() or 1))
    parser.add_argument("--runs", type=at_least(1), default=20)
    parser.add_argument("--warmup", type=at_least(0), default=5)
    parser.add_argument("--repeats", type=at_least(1), default=5, help="interleaved rounds per configuration")
    parser.add_argument(
        "--round-to", type=at_least(1), default=None, help="rank rounding (default: the converter's default)"
    )
    parser.add_argument("--policy", default="rank", choices=["rank", "latency"])
    parser.add_argument(
        "--latency-engine",
        default="onnxruntime",
        choices=["onnxruntime", "openvino"],
        help="with --policy latency: the engine the layer forms are chosen on (the one you deploy to)",
    )
    parser.add_argument("--merge", default="none", choices=["none", "all", "auto"])
    parser.add_argument("--engines", nargs="+", default=["onnxruntime"])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "tensorrt"])
    parser.add_argument("--out", default="benchmarks/results/inference_latency")
    parser.add_argument(
        "--target",
        action="append",
        type=_target,
        default=[],
        metavar="ENGINE=X",
        help="hold ENGINE's speedups against X (repeatable), e.g. onnxruntime=2.4",
    )
    parser.add_argument(
        "--processes", type=at_least(1), default=1, help="measure this many times, each in a fresh process"
    )
    parser.add_argument("--gap-s", type=at_least(0.0, float), default=30.0, help="pause between two processes")
    args = parser.parse_args()
    targets = dict(args.target)
    unknown = sorted(set(targets) - set(args.engines))
    if unknown:
        parser.error(f"--target names {unknown[0]!r}, which is not among --engines ({' '.join(args.engines)})")
    if args.processes > 1:
        _several_processes(args, targets)
        return

    results = []
    header = (
        f"{'model':14s} {'rank':>5s} {'engine':12s} {'batch':>5s} {'thr.':>4s} {'low-rank ms':>11s} {'dense ms':>9s} "
        f"{'speedup':>8s} {'range':>11s} {'95% CI':>11s} {'MAC red.':>8s} {'effic.':>6s}"
    )
    print(header)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            for rank in args.ranks:
                torch.manual_seed(0)
                kwargs = {"rank": rank, "policy": args.policy}
                if args.round_to is not None:
                    kwargs["round_to"] = args.round_to
                if args.policy == "latency":
                    kwargs["latency_threads"] = int(args.threads.split(",")[0])
                    kwargs["latency_engine"] = args.latency_engine
                directory = Path(tmp) / f"{name}-{rank}"
                lr.save(lr.convert(name, **kwargs), directory)
                report = bench(
                    directory,
                    vs_dense=True,
                    batches=args.batches,
                    threads=args.threads,
                    engines=args.engines,
                    runs=args.runs,
                    warmup=args.warmup,
                    repeats=args.repeats,
                    merge=args.merge,
                    device=args.device,
                )
                data = report.to_dict() | {"model": name, "rank": rank}
                results.append(data)
                rows = {(r["model"], r["engine"], r["batch"], r["threads"]): r for r in data["rows"]}
                for c in data["comparisons"]:
                    key = (c["engine"], c["batch"], c["threads"])
                    low, dense = rows[("low-rank", *key)], rows[("dense", *key)]
                    c.update(
                        model=name,
                        rank=rank,
                        lowrank_ms=low["median_ms"],
                        dense_ms=dense["median_ms"],
                        provider=low["provider"],
                    )
                    print(
                        f"{name:14s} {rank:5.2f} {c['engine']:12s} {c['batch']:5d} {c['threads']:4d} {low['median_ms']:11.2f} {dense['median_ms']:9.2f} "
                        f"{c['speedup']:7.2f}x{'' if c['stable'] else '~'} {c['speedup_min']:5.2f}-{c['speedup_max']:<5.2f} "
                        f"{_interval(c, '-'):>11s} {c['mac_reduction']:7.2f}x {c['efficiency']:6.2f}",
                        flush=True,
                    )
    out = Path(args.out)
    _hold(results, targets)
    meta = run_meta(
        "inference_latency.py",
        processor=platform.processor(),
        threads=args.threads,
        runs=args.runs,
        warmup=args.warmup,
        repeats=args.repeats,
        round_to=args.round_to,
        policy=args.policy,
        latency_engine=args.latency_engine if args.policy == "latency" else None,
        merge=args.merge,
        targets=targets,
    )
    write_result(out.with_suffix(".json"), {"meta": meta, "results": results})
    write_text(out.with_suffix(".md"), markdown(meta, results))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


def markdown(meta: dict, results: list[dict]) -> str:
    """The markdown table of a run, from what its JSON holds (``meta``, ``results``)."""
    lines = [
        f"`{meta['command']}` ({meta['cpus']} CPUs, threads {meta['threads']}, {meta['runs']} runs per model in "
        f"{meta['repeats']} interleaved rounds; speedup = median of the rounds' ratios, range = min–max over the rounds, "
        "~ = range above 10 % of the speedup; 95 % CI = distribution-free confidence interval of the median ratio, "
        "the number a target is held against)",
        "",
        "| model | rank | engine | batch | threads | low-rank ms | dense ms | speedup | range | 95 % CI | MAC reduction | "
        "efficiency | target |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for data in results:
        for c in data["comparisons"]:
            held = f"≥ {c['target']:g}×: {c['verdict']}" if "target" in c else "—"
            lines.append(
                f"| {c['model']} | {c['rank']:g} | {c['engine']} ({c['provider']}) | {c['batch']} | {c['threads']} | "
                f"{c['lowrank_ms']:.2f} | {c['dense_ms']:.2f} | {c['speedup']:.2f}×{'' if c['stable'] else ' ~'} | "
                f"{c['speedup_min']:.2f}–{c['speedup_max']:.2f} | {_interval(c, '–')} | {c['mac_reduction']:.2f}× | "
                f"{c['efficiency']:.2f} | {held} |"
            )
    return "\n".join(lines) + "\n"


def _target(text: str) -> tuple[str, float]:
    """``onnxruntime=2.4`` → ``("onnxruntime", 2.4)``, for argparse."""
    engine, sep, value = text.partition("=")
    try:
        target = float(value)
    except ValueError:
        target = 0.0
    if not sep or not engine.strip() or not math.isfinite(target) or target <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not ENGINE=SPEEDUP, e.g. onnxruntime=2.4")
    return engine.strip(), target


def _hold(results: list[dict[str, Any]], targets: dict[str, float]) -> None:
    """Give every comparison of an engine with a target its ``target`` and ``verdict`` (met / missed / undecided)."""
    for data in results:
        for c in data["comparisons"]:
            if c["engine"] in targets:
                ci = c.get("speedup_ci") or (None, None)
                paired = PairedSpeedup(c["speedup"], c["speedup_min"], c["speedup_max"], c["rounds"], *ci)
                c.update(target=targets[c["engine"]], verdict=paired.verdict(targets[c["engine"]]))


def _several_processes(args: argparse.Namespace, targets: dict[str, float]) -> None:
    """Run this script ``--processes`` times in fresh processes, then hold every run against the targets."""
    argv = _without(sys.argv[1:], {"--processes": 1, "--out": 1, "--gap-s": 1})
    out = Path(args.out)
    runs = []
    with tempfile.TemporaryDirectory(prefix="inference-latency-") as tmp:
        for i in range(args.processes):
            if i:
                time.sleep(args.gap_s)
            print(f"process {i + 1} of {args.processes}", flush=True)
            child_out = Path(tmp) / f"run{i}"
            child = subprocess.run([sys.executable, __file__, *argv, "--out", str(child_out)])
            if child.returncode:  # it said why on stderr
                sys.exit(child.returncode)
            runs.append(json.loads(child_out.with_suffix(".json").read_text()))
    summary = _across_runs(runs)
    meta = run_meta("inference_latency.py", processes=args.processes, gap_s=args.gap_s, targets=targets)
    write_result(out.with_suffix(".json"), {"meta": meta, "summary": summary, "runs": runs})
    table = _summary_markdown(meta, summary)
    write_text(out.with_suffix(".md"), table)
    print(table)
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


def _without(argv: list[str], options: dict[str, int]) -> list[str]:
    """``argv`` without the named options and their values (``--out X`` and ``--out=X`` alike)."""
    kept, skip = [], 0
    for arg in argv:
        if skip:
            skip -= 1
        elif arg in options:
            skip = options[arg]
        elif not any(arg.startswith(f"{name}=") for name in options):
            kept.append(arg)
    return kept


def _across_runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per configuration: every run's speedup, interval and verdict, and the verdict across the runs."""
    rows: dict[tuple[Any, ...], dict[str, Any]] = {}
    for run in runs:
        for data in run["results"]:
            for c in data["comparisons"]:
                key = (c["model"], c["rank"], c["engine"], c["batch"], c["threads"])
                row = rows.setdefault(
                    key, dict(zip(("model", "rank", "engine", "batch", "threads"), key, strict=True)) | {"runs": []}
                )
                row["runs"].append(
                    {k: c.get(k) for k in ("speedup", "speedup_ci", "lowrank_ms", "dense_ms", "verdict")}
                )
                if "target" in c:
                    row["target"] = c["target"]
    for row in rows.values():
        if "target" in row:
            verdicts = [r["verdict"] for r in row["runs"]]
            if all(v == "met" for v in verdicts):
                row["verdict"] = "met in every run"
            elif all(v == "missed" for v in verdicts):
                row["verdict"] = "missed in every run"
            else:
                counts = ", ".join(f"{v} {verdicts.count(v)}" for v in ("met", "undecided", "missed") if v in verdicts)
                row["verdict"] = f"at its edge ({counts} of {len(verdicts)})"
    return list(rows.values())


def _summary_markdown(meta: dict[str, Any], summary: list[dict[str, Any]]) -> str:
    lines = [
        f"`{meta['command']}` ({meta['cpus']} CPUs, {meta['cpu']['isa']}; {meta['processes']} runs, each in a fresh "
        f"process, {meta['gap_s']:g} s apart; per run the median speedup and its 95 % interval)",
        "",
        "| model | rank | engine | batch | threads | speedup per run (95 % interval) | target | across the runs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in summary:
        per_run = " · ".join(
            f"{r['speedup']:.2f}× ({r['speedup_ci'][0]:.2f}–{r['speedup_ci'][1]:.2f})"
            if r["speedup_ci"]
            else f"{r['speedup']:.2f}×"
            for r in row["runs"]
        )
        target = f"≥ {row['target']:g}×" if "target" in row else "—"
        lines.append(
            f"| {row['model']} | {row['rank']:g} | {row['engine']} | {row['batch']} | {row['threads']} | {per_run} | "
            f"{target} | {row.get('verdict', '—')} |"
        )
    return "\n".join(lines) + "\n"


def _interval(c: dict, dash: str) -> str:
    ci = c.get("speedup_ci")
    return f"{ci[0]:.2f}{dash}{ci[1]:.2f}" if ci else "—"


if __name__ == "__main__":
    run_main(main)
