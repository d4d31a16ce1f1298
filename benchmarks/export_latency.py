"""Low-rank vs dense latency over several models: `lowrank bench --vs-dense` in one process, one JSON.

Usage:
    python benchmarks/export_latency.py                          # resnet18/50, mobilenet_v2, efficientnet_b0
    python benchmarks/export_latency.py --models resnet50 --rank 0.3 --threads 2 --batch 1 --runs 50

Each model is converted at ``--rank`` (random init), saved to a temporary artifact, and measured with
:func:`lowrank_tool.analysis.bench.bench` (ONNX Runtime and PyTorch eager; low-rank then dense for each
configuration). Prints a table and writes JSON. Read the speedups and efficiencies: on a shared machine
absolute milliseconds drift between runs, ratios taken seconds apart much less.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import torch

import lowrank_tool as lr
from lowrank_tool.analysis.bench import bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet50", "mobilenet_v2", "efficientnet_b0"])
    parser.add_argument("--rank", type=float, default=0.3)
    parser.add_argument("--batch", default="1")
    parser.add_argument("--threads", default="2")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--merge", default="none", choices=["none", "all", "auto"])
    parser.add_argument("--engines", nargs="+", default=["onnxruntime", "torch"])
    parser.add_argument("--json", default="benchmarks/results/export_latency.json")
    args = parser.parse_args()

    results = []
    print(f"{'model':18s} {'engine':12s} {'batch':>5s} {'thr':>3s} {'low-rank ms':>11s} {'dense ms':>9s} {'speedup':>8s} "
          f"{'MAC red.':>8s} {'effic.':>6s}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            torch.manual_seed(0)
            directory = Path(tmp) / name
            lr.save(lr.convert(name, rank=args.rank), directory)
            report = bench(directory, vs_dense=True, batches=args.batch, threads=args.threads, engines=args.engines,
                           runs=args.runs, warmup=args.warmup, merge=args.merge)
            data = report.to_dict() | {"model": name}
            results.append(data)
            rows = {(r["model"], r["engine"], r["batch"], r["threads"]): r for r in data["rows"]}
            for c in data["comparisons"]:
                key = (c["engine"], c["batch"], c["threads"])
                low, dense = rows[("low-rank", *key)], rows[("dense", *key)]
                print(f"{name:18s} {c['engine']:12s} {c['batch']:5d} {c['threads']:3d} {low['median_ms']:11.2f} {dense['median_ms']:9.2f} "
                      f"{c['speedup']:7.2f}x {c['mac_reduction']:7.2f}x {c['efficiency']:6.2f}", flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({
        "machine": platform.platform(), "processor": platform.processor(), "torch": torch.__version__,
        "rank": args.rank, "merge": args.merge, "runs": args.runs, "warmup": args.warmup, "results": results,
    }, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
