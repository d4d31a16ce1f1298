"""Inference latency of dense vs low-rank models, measured in one run: ONNX Runtime, OpenVINO, PyTorch eager.

Usage:
    python benchmarks/inference_latency.py                                  # the issue's grid, ONNX Runtime
    python benchmarks/inference_latency.py --models resnet50 --ranks 0.3 --batches 1 --threads 2
    python benchmarks/inference_latency.py --round-to 1 --out benchmarks/results/inference_latency_r1   # naive ranks
    python benchmarks/inference_latency.py --policy latency --ranks 0.3 --models resnet18 resnet50
    python benchmarks/inference_latency.py --policy latency --latency-engine openvino --engines openvino --models resnet50 --ranks 0.3
    python benchmarks/inference_latency.py --engines onnxruntime torch --models resnet18
    python benchmarks/inference_latency.py --engines onnxruntime openvino --models resnet50 --ranks 0.3 \
        --batches 1 --threads 2 --runs 120 --repeats 40       # the issue-15 target, on both CPU engines

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
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
from pathlib import Path

import torch
from _arguments import at_least, run_main
from _results import run_meta, write_result, write_text

import lowrank_tool as lr
from lowrank_tool.analysis.bench import bench


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
    args = parser.parse_args()

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
        "efficiency |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for data in results:
        for c in data["comparisons"]:
            lines.append(
                f"| {c['model']} | {c['rank']:g} | {c['engine']} ({c['provider']}) | {c['batch']} | {c['threads']} | "
                f"{c['lowrank_ms']:.2f} | {c['dense_ms']:.2f} | {c['speedup']:.2f}×{'' if c['stable'] else ' ~'} | "
                f"{c['speedup_min']:.2f}–{c['speedup_max']:.2f} | {_interval(c, '–')} | {c['mac_reduction']:.2f}× | "
                f"{c['efficiency']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def _interval(c: dict, dash: str) -> str:
    ci = c.get("speedup_ci")
    return f"{ci[0]:.2f}{dash}{ci[1]:.2f}" if ci else "—"


if __name__ == "__main__":
    run_main(main)
