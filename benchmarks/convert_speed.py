"""Time `lowrank_tool.convert()` on already-built models, and report what the conversion keeps.

Usage:
    python benchmarks/convert_speed.py                       # resnet18, resnet50, mobilenet_v2, vgg16
    python benchmarks/convert_speed.py --models resnet50 --rank 0.3 --repeat 5 --json out.json
    python benchmarks/convert_speed.py --task classification --repeat 1 --json benchmarks/results/convert_all_classification.json
    python benchmarks/convert_speed.py --task all --repeat 1 --json benchmarks/results/convert_all.json   # all 121

Each model is traced at the input size ``lowrank convert NAME`` uses (the crop size of its default
weights: 384 px for regnet_y_128gf, 600 for EfficientNet-B7, 800x800 for detection, 3x16x112x112 for
video). Building the dense model is not timed (its random init is torchvision's cost, not ours); each timing is
one full ``convert()`` call: tracing, shape capture (on meta tensors where the fx graph allows it,
otherwise a real forward; the table says which), planning, copying the kept modules and initialising
the low-rank layers. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _arguments import at_least, run_main
from _results import run_meta, write_result

import lowrank_tool as lr
from lowrank_tool.models import build_model, default_input_size, get_entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet50", "mobilenet_v2", "vgg16"])
    parser.add_argument(
        "--task", default=None, help="every registered torchvision model of this task (or 'all') instead of --models"
    )
    parser.add_argument("--rank", type=float, default=0.3)
    parser.add_argument("--repeat", type=at_least(1), default=3)
    parser.add_argument("--json", default="benchmarks/results/convert_speed.json")
    args = parser.parse_args()

    if args.task:
        task = None if args.task == "all" else args.task
        args.models = [m.name for m in lr.list_models(task) if m.source == "torchvision"]
        lr.convert(build_model("resnet18"), rank=args.rank)  # one warm-up for the whole sweep
    rows = []
    for name in args.models:
        model = build_model(name)
        size = default_input_size(
            name, {}
        )  # what `lowrank convert NAME` traces at (384 px for regnet_y_128gf, 800 for detection)
        if not args.task:
            lr.convert(model, rank=args.rank, input_size=size)  # warm-up (first fx trace imports and caches)
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            converted = lr.convert(model, rank=args.rank, input_size=size)
            times.append(time.perf_counter() - t0)
        plan = lr.summary(converted)
        t = plan.totals()
        on_meta = bool(plan.trace.get("shapes_on_meta"))
        rows.append(
            {
                "model": name,
                "task": get_entry(name).task,
                "input_size": list(size),
                "rank": args.rank,
                "convert_s_median": statistics.median(times),
                "convert_s_max": max(times),
                "params_ratio": t["params_ratio"],
                "macs_ratio": t["macs_ratio"],
                "converted": t["converted"],
                "layers": t["layers"],
                "trace": plan.trace["path"],
                "shapes_on_meta": on_meta,
            }
        )
        print(
            f"{name:14s} convert {statistics.median(times):6.3f}s (max {max(times):.3f}s)  "
            f"params kept {100 * t['params_ratio']:5.1f}%  MACs kept {100 * t['macs_ratio']:5.1f}%  "
            f"{t['converted']}/{t['layers']} convs  shapes {'meta' if on_meta else 'real forward'}",
            flush=True,
        )
    total = sum(r["convert_s_median"] for r in rows)
    by_task: dict[str, float] = {}
    for r in rows:
        by_task[r["task"]] = by_task.get(r["task"], 0.0) + r["convert_s_median"]
    if len(by_task) > 1:
        print("per task: " + ", ".join(f"{t} {v:.1f} s" for t, v in by_task.items()))
    print(f"total convert() time over {len(rows)} models: {total:.1f} s (building the dense models not counted)")
    meta = run_meta(
        "convert_speed.py",
        threads=torch.get_num_threads(),
        lowrank_tool=lr.__version__,
        total_convert_s=total,
        total_by_task_s=by_task,
        models=len(rows),
    )
    print(f"wrote {write_result(args.json, {'meta': meta, 'rows': rows})}")


if __name__ == "__main__":
    run_main(main)
