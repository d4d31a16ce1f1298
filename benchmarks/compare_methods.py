"""ELRT, LRPET, DeepTwist and the dense baseline on one recipe and one budget, in one table.

Usage:
    python benchmarks/compare_methods.py                                   # quickstart_digits, params budget 0.4
    python benchmarks/compare_methods.py --recipe recipes/resnet20_cifar10_elrt.yaml --data cifar10:~/data \\
        --budget params:0.4 --epochs 200 --seeds 0 1 2

Every method starts from an artifact converted from the recipe's model with the same budget (the
ranks are solved so that each low-rank model keeps ``--budget`` of the dense parameters or MACs):
ELRT and DeepTwist on the Tucker-2 plan (``format auto``), LRPET on an SVD plan (its final form), and
the dense baseline on ``--dense``. Each is trained with the recipe's hyper-parameters (``--epochs``
overrides), one after the other in this process, then exported to ONNX and verified. The table gives
final and best validation top-1, parameters, MACs, training wall time and images/s; JSON and
markdown are written to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _arguments import at_least, run_main
from _results import run_meta, write_result, write_text

import lowrank_tool as lr
from lowrank_tool.models import check_file_model
from lowrank_tool.train.recipes import load_recipe
from lowrank_tool.train.run import train_artifact

METHODS = ("elrt", "lrpet", "deeptwist", "dense")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/quickstart_digits.yaml")
    parser.add_argument("--data", default=None, help="override the recipe's data spec")
    parser.add_argument(
        "--budget", default="params:0.4", help="params:F or macs:F, the fraction every low-rank model keeps"
    )
    parser.add_argument("--epochs", type=at_least(1), default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument(
        "--distort-every", type=at_least(1), default=None, help="DeepTwist S_D (default: the recipe's or 200)"
    )
    parser.add_argument("--out", default="benchmarks/results/compare_methods")
    parser.add_argument("--trust-code", action="store_true", help="let the recipe name a package.module:factory")
    args = parser.parse_args()

    recipe = load_recipe(args.recipe)
    check_file_model(
        recipe.model,
        where=recipe.source,
        trust_code=args.trust_code,
        instead="pass --trust-code if you trust this recipe",
    )  # a recipe is a file: its factory is code
    key, fraction = args.budget.split(":")
    if key not in ("params", "macs"):
        parser.error("--budget must be params:F or macs:F")
    budget = {f"target_{key}": float(fraction)}
    convert_base = {
        k: v for k, v in recipe.convert.items() if k not in ("rank", "target_params", "target_macs", "format")
    }
    overrides = {
        k: v
        for k, v in {"data": args.data, "epochs": args.epochs, "distort_every": args.distort_every}.items()
        if v is not None
    }

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for method in args.methods:
                torch.manual_seed(seed)
                if method == "dense":
                    model = lr.convert(recipe.model, num_classes=recipe.num_classes, dense=True, **convert_base)
                else:
                    fmt = "svd" if method == "lrpet" else "auto"
                    model = lr.convert(
                        recipe.model, num_classes=recipe.num_classes, format=fmt, **budget, **convert_base
                    )
                directory = Path(tmp) / f"{method}-{seed}"
                lr.save(model, directory)
                cfg = recipe.config(overrides | {"method": method, "seed": seed})
                t0 = time.perf_counter()
                _, summary = train_artifact(directory, cfg, progress=False)
                wall = time.perf_counter() - t0
                metrics = [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]
                exported = lr.export_onnx(lr.load(directory), Path(tmp) / f"{method}-{seed}.onnx")
                run = {
                    "method": method,
                    "seed": seed,
                    "last_top1": summary["last_top1"],
                    "best_top1": summary["best_top1"],
                    "params": summary["params"],
                    "macs": summary["macs"],
                    "dense_params": summary["dense_params"],
                    "train_seconds": wall,
                    "images_per_s": statistics.median(m["images_per_s"] for m in metrics),
                    "onnx_max_rel_error": exported.verification.max_rel,
                }
                runs.append(run)
                print(
                    f"{method:10s} seed {seed}: last top-1 {run['last_top1']:6.2f}%  best {run['best_top1']:6.2f}%  "
                    f"params {run['params'] / 1e3:7.1f}k  MACs {run['macs'] / 1e6:6.2f}M  {wall:6.1f}s  "
                    f"{run['images_per_s']:7.0f} img/s  onnx err {run['onnx_max_rel_error']:.1e}",
                    flush=True,
                )

    rows = []
    for method in args.methods:
        mine = [r for r in runs if r["method"] == method]
        last = [r["last_top1"] for r in mine]
        rows.append(
            {
                "method": method,
                "last_top1_mean": statistics.mean(last),
                "last_top1_std": statistics.stdev(last) if len(last) > 1 else 0.0,
                "best_top1_mean": statistics.mean(r["best_top1"] for r in mine),
                "params": mine[0]["params"],
                "macs": mine[0]["macs"],
                "train_seconds_mean": statistics.mean(r["train_seconds"] for r in mine),
                "images_per_s_mean": statistics.mean(r["images_per_s"] for r in mine),
            }
        )
    setup = {
        "recipe": args.recipe,
        "model": recipe.model,
        "data": overrides.get("data", recipe.train.get("data")),
        "epochs": overrides.get("epochs", recipe.train.get("epochs")),
        "budget": args.budget,
        "seeds": args.seeds,
        "distort_every": overrides.get("distort_every", recipe.train.get("distort_every", 200)),
    }
    out = Path(args.out)
    meta = run_meta("compare_methods.py")
    write_result(out.with_suffix(".json"), {"meta": meta, "setup": setup, "summary": rows, "runs": runs})
    lines = [
        f"{recipe.model} on {setup['data']}, {setup['epochs']} epochs, budget {args.budget}, seeds {args.seeds} "
        f"(`{meta['command']}`)",
        "",
        "| method | val top-1 last (mean ± std) | best | params | MACs | train time | images/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['last_top1_mean']:.2f} ± {r['last_top1_std']:.2f} | {r['best_top1_mean']:.2f} | "
            f"{r['params'] / 1e3:.1f}k | {r['macs'] / 1e6:.2f}M | {r['train_seconds_mean']:.1f} s | {r['images_per_s_mean']:.0f} |"
        )
    write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    run_main(main)
