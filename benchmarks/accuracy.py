"""Real-data accuracy of every training method: dense vs low-rank from scratch, mean ± spread over seeds.

Usage:
    # Fashion-MNIST from Debian (apt-get install dataset-fashion-mnist), ResNet-20, 2 epochs, 3 seeds:
    python benchmarks/accuracy.py --seeds 0 1 2
    # the arms to compare, a rank sweep, a longer budget, CIFAR-10 for those who have it:
    python benchmarks/accuracy.py --arms dense elrt elrt:orth=none lrpet deeptwist decompose --ranks 0.5 0.3
    python benchmarks/accuracy.py --epochs 15 --models resnet20 resnet56 --data cifar10:~/data
    # low-rank trained as long (wall time) as dense, not as many epochs:
    python benchmarks/accuracy.py --arms dense elrt --equal-time

An *arm* is a method with options, ``NAME[:KEY=VALUE,...]``: ``dense``; ``elrt`` (defaults) or e.g.
``elrt:orth=none``, ``elrt:orth=dso,orth_weight=0.01``, ``elrt:round_to=1``; ``lrpet`` (SVD plan, its
final form); ``deeptwist``; ``decompose`` (train the dense network for half the epochs, decompose its
weights at the rank, fine-tune the other half). Keys that are convert options (``round_to``, ``format``,
``init``, ``rank``...) go to ``lr.convert``; the others to the training configuration (``lr``,
``weight_decay``, ``orth``, ``orth_weight``, ``warmup_epochs``...). Every low-rank arm is converted at
each ``--ranks`` value (a number is a ratio; ``params:F`` solves the ranks for a parameter budget).
The same seed gives every arm the same data order and augmentation.

Results are appended to ``--out``.json after every run, and a run already there (same model, data,
epochs, arm, rank, seed) is not repeated: a long sweep can be stopped and started again. The markdown
table (``--out``.md) gives per group the mean and sample standard deviation of the final validation
top-1 (the test split), its difference from the dense arm's mean (the dense arm trained with the same training options when
one was run: ``elrt:warmup_epochs=0`` is compared with ``dense:warmup_epochs=0``), parameters, and training time. A run
whose loss becomes inf/NaN is recorded as diverged (with the trainer's message) and counted in the table,
not averaged.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _arguments import at_least, run_main

import lowrank_tool as lr
from lowrank_tool.artifact import atomic_write_text
from lowrank_tool.convert.options import ConvertOptions
from lowrank_tool.runtime.machine import machine_label
from lowrank_tool.train.config import TrainConfig
from lowrank_tool.train.run import train_artifact
from lowrank_tool.train.trainer import TrainingDiverged

DEBIAN_FASHION = "/usr/share/datasets/fashion-mnist"
CONVERT_KEYS = {f.name for f in dataclasses.fields(ConvertOptions)}
TRAIN_KEYS = {f.name for f in dataclasses.fields(TrainConfig)}


def parse_arm(text: str) -> tuple[str, dict[str, Any]]:
    """``elrt:orth=dso,orth_weight=0.01`` → ``("elrt", {"orth": "dso", "orth_weight": 0.01})``."""
    name, _, rest = text.partition(":")
    options: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep or (key not in CONVERT_KEYS and key not in TRAIN_KEYS):
            raise SystemExit(f"arm {text!r}: {item!r} is not KEY=VALUE with KEY a convert or training option")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    if name not in ("dense", "elrt", "lrpet", "deeptwist", "decompose"):
        raise SystemExit(f"arm {text!r}: unknown method {name!r}")
    return name, options


def rank_options(rank: str) -> dict[str, Any]:
    if rank.startswith(("params:", "macs:")):
        key, value = rank.split(":")
        return {f"target_{key}": float(value)}
    return {"rank": float(rank)}


def train_one(
    model_name: str, arm: str, rank: str | None, seed: int, epochs: int, args: argparse.Namespace, tmp: Path
) -> dict[str, Any]:
    method, options = parse_arm(arm)
    convert_kw = {k: v for k, v in options.items() if k in CONVERT_KEYS}
    train_kw = {k: v for k, v in options.items() if k not in CONVERT_KEYS}
    base = {
        "data": args.data,
        "epochs": epochs,
        "seed": seed,
        "batch_size": args.batch_size,
        "workers": 0,
        "image_size": args.image_size,
    }
    name = f"{model_name}-{arm}-{rank}-{seed}-{epochs}".replace(":", "_").replace(",", "_").replace(" ", "_")
    directory = Path(tempfile.mkdtemp(prefix=name + "-", dir=tmp)) / "run"  # unique: an equal-time rerun too
    torch.manual_seed(seed)  # the initialisation
    started = time.perf_counter()
    if method == "dense":
        model = lr.convert(model_name, num_classes=args.num_classes, dense=True, **convert_kw)
        lr.save(model, directory)
        cfg = TrainConfig(**(base | {"method": "dense"} | train_kw))
    elif method == "decompose":
        dense_epochs = max(1, epochs // 2)
        model = lr.convert(model_name, num_classes=args.num_classes, dense=True)
        lr.save(model, directory.with_name("dense"))
        train_artifact(
            directory.with_name("dense"),
            TrainConfig(**(base | {"method": "dense", "epochs": dense_epochs})),
            progress=False,
        )
        model = lr.convert(  # what `lowrank convert MODEL --weights DENSE_DIR --init decompose` does
            model_name,
            num_classes=args.num_classes,
            weights=str(directory.with_name("dense")),
            init="decompose",
            **(rank_options(rank or "0.5") | convert_kw),
        )
        lr.save(model, directory)
        cfg = TrainConfig(**(base | {"epochs": max(1, epochs - dense_epochs), "lr": 0.01} | train_kw))
    else:
        fmt = {"format": "svd"} if method == "lrpet" else {}
        model = lr.convert(model_name, num_classes=args.num_classes, **(fmt | rank_options(rank or "0.5") | convert_kw))
        lr.save(model, directory)
        cfg = TrainConfig(**(base | {"method": method} | train_kw))
    run: dict[str, Any] = {
        "model": model_name,
        "data": args.data,
        "epochs": epochs,
        "arm": arm,
        "rank": None if method == "dense" else rank,
        "seed": seed,
        # the same seed gives other losses on another CPU (AVX2 vs AVX-512 kernels): keep runs comparable
        "machine": machine_label(),
    }
    try:
        _, summary = train_artifact(directory, cfg, progress=False)
    except TrainingDiverged as exc:  # a result of the arm, not a crash of the sweep: recorded, not averaged
        totals = lr.summary(model).totals()
        return run | {
            "diverged": str(exc).splitlines()[0],
            "last_top1": None,
            "best_top1": None,
            "params": totals["params_after"],
            "dense_params": totals["params_before"],
            "macs": totals["macs_after"],
            "train_seconds": time.perf_counter() - started,
            "curve": [],
        }
    seconds = time.perf_counter() - started
    metrics = [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]
    return run | {
        "last_top1": summary["last_top1"],
        "best_top1": summary["best_top1"],
        "params": summary["params"],
        "dense_params": summary["dense_params"],
        "macs": summary["macs"],
        "train_seconds": seconds,
        "curve": [
            {
                k: m.get(k)
                for k in ("epoch", "train_loss", "train_top1", "val_loss", "val_top1", "orth_penalty", "epoch_seconds")
            }
            for m in metrics
        ],
    }


def key(run: dict[str, Any]) -> tuple[Any, ...]:
    return (run["model"], run["data"], run["epochs"], run["arm"], run["rank"], run["seed"])


def dense_reference(arm: str, arms: set[str]) -> str:
    """The dense arm ``arm`` is compared with: among ``arms``, the dense one trained with the most of
    ``arm``'s training options and none it lacks (``elrt:warmup_epochs=0.1`` → ``dense:warmup_epochs=0.1``
    when that was run), else plain ``dense``."""
    method, own = parse_arm(arm.removesuffix(" @dense-time"))
    if method == "dense":
        return "dense"  # a dense arm with options is compared with the plain one
    options = {k: v for k, v in own.items() if k in TRAIN_KEYS}
    dense_options = {
        a: parse_arm(a)[1] for a in arms if not a.endswith("@dense-time") and a.partition(":")[0] == "dense"
    }
    candidates = [a for a, opts in dense_options.items() if opts.items() <= options.items()]
    return max(candidates, key=lambda a: (len(dense_options[a]), a == "dense"), default="dense")


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault(key(run)[:5], []).append(run)
    rows = []
    for (model, data, epochs, arm, rank), mine in groups.items():
        last = [r["last_top1"] for r in mine if r["last_top1"] is not None]  # diverged runs have none
        # the last epoch's training loss: the measure of an under-fit (and of the constant-lr diagnostic)
        losses = [
            r["curve"][-1]["train_loss"]
            for r in mine
            if r.get("curve") and r["curve"][-1].get("train_loss") is not None
        ]
        budget = mine[0].get("equal_time_of", epochs)  # an equal-time arm is compared with dense at its epochs
        reference = dense_reference(
            arm, {r["arm"] for r in runs if (r["model"], r["data"], r["epochs"]) == (model, data, budget)}
        )
        dense = [
            r["last_top1"]
            for r in runs
            if (r["model"], r["data"], r["epochs"], r["arm"]) == (model, data, budget, reference)
            and r["last_top1"] is not None
        ]
        rows.append(
            {
                "model": model,
                "data": data,
                "epochs": epochs,
                "arm": arm,
                "rank": rank,
                "n": len(mine),
                "seeds": sorted(r["seed"] for r in mine),
                "machines": sorted({r.get("machine", "unrecorded") for r in mine}),
                "diverged": len(mine) - len(last),
                "top1_mean": statistics.mean(last) if last else None,
                "top1_std": statistics.stdev(last) if len(last) > 1 else 0.0,
                "train_loss_mean": statistics.mean(losses) if losses else None,
                "vs_dense": statistics.mean(last) - statistics.mean(dense)
                if last and dense and arm != reference
                else None,
                "dense_arm": reference,
                "params": mine[0]["params"],
                "dense_params": mine[0]["dense_params"],
                "train_seconds_mean": statistics.mean(r["train_seconds"] for r in mine),
            }
        )
    return rows


def markdown(rows: list[dict[str, Any]], command: str) -> str:
    lines = [
        f"`{command}`",
        "",
        "| model | data | epochs | arm | rank | seeds | val top-1 (mean ± std) | vs dense | final train loss | params "
        "| train time |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(
        rows, key=lambda r: (r["model"], r["data"], r["epochs"], r["arm"] != "dense", str(r["rank"]), r["arm"])
    ):
        vs = "—" if r["vs_dense"] is None else f"{r['vs_dense']:+.2f}"
        if r["vs_dense"] is not None and r.get("dense_arm", "dense") != "dense":
            vs += f" (vs {r['dense_arm']})"
        top1 = "—" if r["top1_mean"] is None else f"{r['top1_mean']:.2f} ± {r['top1_std']:.2f}"
        loss = "—" if r.get("train_loss_mean") is None else f"{r['train_loss_mean']:.4f}"
        if r.get("diverged"):
            top1 += f" ({r['diverged']} of {r['n']} diverged)"
        seeds = str(r["n"]) + (f" ({len(r['machines'])} machines)" if len(r.get("machines", ())) > 1 else "")
        lines.append(
            f"| {r['model']} | {r['data'].split(':')[0]} | {r['epochs']} | {r['arm']} | {r['rank'] or '—'} | {seeds} | "
            f"{top1} | {vs} | {loss} | {r['params'] / 1e3:.1f}k | {r['train_seconds_mean']:.0f} s |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=f"fashion-mnist:{DEBIAN_FASHION}")
    parser.add_argument("--num-classes", type=at_least(2), default=10)
    parser.add_argument("--models", nargs="+", default=["resnet20"])
    parser.add_argument("--arms", nargs="+", default=["dense", "elrt", "elrt:orth=none"])
    parser.add_argument("--ranks", nargs="+", default=["0.5"], help="ratios (0.5) or budgets (params:0.4)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=at_least(1), nargs="+", default=[2])
    parser.add_argument("--batch-size", type=at_least(1), default=128)
    parser.add_argument(
        "--image-size", type=at_least(1), default=None, help="input resolution (default: the data set's)"
    )
    parser.add_argument(
        "--equal-time",
        action="store_true",
        help="also train each low-rank arm for the whole number of epochs nearest to the dense arm's mean training time",
    )
    parser.add_argument("--out", default="benchmarks/results/accuracy")
    parser.add_argument(
        "--keep", default=None, help="keep every trained artifact under this folder (for `lowrank analyze DIR`)"
    )
    args = parser.parse_args()
    for arm in args.arms:
        parse_arm(arm)  # fail before the first hour of training, not after

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    path = out.with_suffix(".json")
    runs: list[dict[str, Any]] = json.loads(path.read_text())["runs"] if path.exists() else []
    done = {key(r) for r in runs}
    command = "python benchmarks/accuracy.py " + shlex.join(sys.argv[1:])

    def write() -> None:
        document = {
            "machine": f"{platform.platform()}, {machine_label()}",
            "torch": torch.__version__,
            "lowrank_tool": lr.__version__,
            "command": command,
            "summary": summarise(runs),
            "runs": runs,
        }
        atomic_write_text(path, json.dumps(document, indent=2) + "\n")
        atomic_write_text(out.with_suffix(".md"), markdown(document["summary"], command))

    def record(run: dict[str, Any]) -> None:
        runs.append(run)
        done.add(key(run))
        write()
        outcome = f"top-1 {run['last_top1']:6.2f}%" if run["last_top1"] is not None else f"DIVERGED ({run['diverged']})"
        print(
            f"{run['model']} {run['arm']:28s} rank {run['rank'] or '-':5s} seed {run['seed']} {run['epochs']:3d} ep: "
            f"{outcome}  {run['params'] / 1e3:6.1f}k params  {run['train_seconds']:6.0f}s",
            flush=True,
        )

    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.keep or scratch
        for model_name in args.models:
            for epochs in args.epochs:
                for seed in args.seeds:
                    for arm in args.arms:
                        for rank in [None] if parse_arm(arm)[0] == "dense" else args.ranks:
                            run_key = (model_name, args.data, epochs, arm, rank, seed)
                            if run_key not in done:
                                record(train_one(model_name, arm, rank, seed, epochs, args, Path(tmp)))
                if args.equal_time:
                    arms_run = {r["arm"] for r in runs if key(r)[:3] == (model_name, args.data, epochs)}
                    for arm in args.arms:
                        if parse_arm(arm)[0] in ("dense", "decompose"):
                            continue
                        reference = dense_reference(arm, arms_run)
                        dense = [
                            r["train_seconds"] for r in runs if key(r)[:4] == (model_name, args.data, epochs, reference)
                        ]
                        for rank in args.ranks:
                            own = [r for r in runs if key(r)[:5] == (model_name, args.data, epochs, arm, rank)]
                            if not dense or not own:
                                continue
                            per_epoch = statistics.mean(r["train_seconds"] for r in own) / epochs
                            # the whole epoch count nearest to the dense arm's time (the table shows both times)
                            longer = max(epochs, round(statistics.mean(dense) / per_epoch))
                            label = f"{arm} @dense-time"
                            for seed in args.seeds:
                                if (model_name, args.data, longer, label, rank, seed) not in done:
                                    run = train_one(model_name, arm, rank, seed, longer, args, Path(tmp))
                                    record(run | {"arm": label, "equal_time_of": epochs})
    if runs:
        write()  # the summary again, also when every run was already there
    print(markdown(summarise(runs), command))
    print(f"wrote {path} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    run_main(main)
