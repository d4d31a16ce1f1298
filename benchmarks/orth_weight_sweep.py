"""Choose ELRT's orthogonality coefficient by measurement: accuracy vs --orth-weight on a real dataset.

Usage:
    python benchmarks/orth_weight_sweep.py                         # digits, resnet20 rank 0.5, 16x16
    python benchmarks/orth_weight_sweep.py --weights 0 1e-4 1e-3 1e-2 --seeds 0 1 2 --epochs 8

Trains the same converted network from the same initialisation for each weight and seed (kind "so";
weight 0 = no regulariser), plus the dense network, and reports the mean and spread of the final
validation top-1. Writes JSON and a markdown table under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from _arguments import at_least, run_main
from _results import run_meta, write_result, write_text

import lowrank_tool as lr
from lowrank_tool.data import build_loaders


def run(model_name: str, rank: float | None, weight: float, seed: int, args: argparse.Namespace) -> float:
    train, val, info = build_loaders(args.data, batch_size=64, image_size=args.size, seed=seed)
    torch.manual_seed(seed)
    model = lr.build_model(model_name, num_classes=info.num_classes)
    method = "dense"
    if rank is not None:
        model = lr.convert(model, rank=rank, input_size=(3, args.size, args.size))
        method = "elrt"
    result = lr.fit(
        model,
        train,
        val,
        epochs=args.epochs,
        method=method,
        lr=0.05,
        weight_decay=5e-4,
        warmup_epochs=1,
        orth="so" if weight > 0 else "none",
        orth_weight=weight,
        seed=seed,
        progress=False,
    )
    return result.last["val_top1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--rank", type=float, default=0.5)
    parser.add_argument("--data", default="digits")
    parser.add_argument("--size", type=at_least(1), default=16)
    parser.add_argument("--epochs", type=at_least(1), default=8)
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 1e-4, 1e-3, 1e-2, 1e-1])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="benchmarks/results/orth_weight_sweep")
    args = parser.parse_args()

    rows = []
    configs = [("dense", None, 0.0)] + [(f"rank {args.rank:g}", args.rank, w) for w in args.weights]
    for label, rank, weight in configs:
        t0 = time.perf_counter()
        accs = [run(args.model, rank, weight, s, args) for s in args.seeds]
        row = {
            "model": label,
            "orth_weight": weight if rank is not None else None,
            "top1": accs,
            "mean": statistics.mean(accs),
            "std": statistics.pstdev(accs),
            "seconds": time.perf_counter() - t0,
        }
        rows.append(row)
        print(f"{label:10s} orth_weight {weight:<8g} top1 {row['mean']:6.2f} ± {row['std']:.2f}  {accs}", flush=True)
    out = Path(args.out)
    meta = run_meta("orth_weight_sweep.py", **{k: v for k, v in vars(args).items() if k != "out"})
    write_result(out.with_suffix(".json"), {"meta": meta, "rows": rows})
    lines = ["| model | orth_weight | val top-1 (mean ± std over seeds) | per seed |", "|---|---|---|---|"]
    for r in rows:
        w = "-" if r["orth_weight"] is None else f"{r['orth_weight']:g}"
        lines.append(
            f"| {args.model} {r['model']} | {w} | {r['mean']:.2f} ± {r['std']:.2f} | {', '.join(f'{a:.1f}' for a in r['top1'])} |"
        )
    write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    run_main(main)
