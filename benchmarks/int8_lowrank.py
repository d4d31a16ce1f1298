"""Do int8 and low rank multiply? Dense fp32, dense int8, low-rank fp32 and low-rank int8 on every CPU engine.

Usage:
    python benchmarks/int8_lowrank.py                                  # ResNet-18 and -50 at 224, batch 1 and 8
    python benchmarks/int8_lowrank.py --models resnet50 --batches 1 --threads 2 --runs 40 --repeats 10
    python benchmarks/int8_lowrank.py --engines onnxruntime --accuracy-epochs 0      # latency only
    python benchmarks/int8_lowrank.py --models resnet50 --no-latency                 # the digits accuracy only
    python benchmarks/int8_lowrank.py --round-to 16 --out /tmp/int8_r16              # ranks in multiples of 16
    python benchmarks/int8_lowrank.py --policy latency --latency-precision int8      # forms chosen on int8 timings

Latency: each model (random weights: latency does not depend on the values) is converted at ``--rank``,
exported in fp32 and in int8 (static QDQ, calibrated on digits images resized to the input size), and the
four files are timed interleaved in each engine: ``--runs`` per file split into ``--repeats`` rounds, every
round all four back to back (rotating the order), so each round gives one ratio per pair. Reported: median
latency per file and the median ratio of the rounds with its range, for low-rank int8 vs dense int8 (the
issue's target: ≥ 2× at ResNet-50 rank 0.3), low-rank fp32 vs dense fp32, and dense fp32 vs low-rank int8
(the two savings together). ``--policy latency`` converts the low-rank model with the latency policy (each
layer's form timed alone in ONNX Runtime at batch 1 and ``--threads``, in ``--latency-precision``; the
accuracy arm's forms are timed at its own input size).

Accuracy (the int8 rows' cost): the same architectures trained on the real handwritten digits
(``--accuracy-epochs`` epochs at ``--accuracy-size``; dense and low-rank from scratch, default settings),
exported in fp32 and int8, both scored on the held-out digits split — ``lowrank export --int8`` reports it.
Both arms train with the gradient norm clipped at ``--accuracy-grad-clip``: the ImageNet ResNet-50 at
32×32 otherwise diverges on digits within two epochs. The int8 file's logits are checked against PyTorch
with a loose tolerance (``INT8_LOGIT_TOLERANCE``; the relative error and the top-1 agreement are recorded):
the held-out top-1 is the measurement. An arm that fails anyway costs its cells, which say why.

Writes JSON and a markdown table to ``--out``.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _arguments import at_least, run_main
from _results import run_meta, write_result, write_text

import lowrank_tool as lr
from lowrank_tool.export import export_onnx
from lowrank_tool.runtime import get_engine, interleave, paired_speedup
from lowrank_tool.train.config import TrainConfig
from lowrank_tool.train.run import train_artifact

GRAD_CLIP = 5.0  # global gradient-norm clip of the accuracy runs
# The accuracy rows score int8 by held-out top-1; the export's logit check (default 0.1 relative for int8)
# only has to catch a broken file here: a ResNet-50 trained 4 epochs on digits differs by 0.10-0.17.
INT8_LOGIT_TOLERANCE = 0.5

FILES = ("dense-fp32", "dense-int8", "lowrank-fp32", "lowrank-int8")
PAIRS = {  # name: (numerator file, denominator file): speedup = numerator latency / denominator latency
    "lowrank int8 vs dense int8": ("dense-int8", "lowrank-int8"),
    "lowrank fp32 vs dense fp32": ("dense-fp32", "lowrank-fp32"),
    "dense int8 vs dense fp32": ("dense-fp32", "dense-int8"),
    "lowrank int8 vs dense fp32": ("dense-fp32", "lowrank-int8"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--rank", type=float, default=0.3)
    parser.add_argument("--round-to", type=at_least(1), default=None, help="rank rounding (default: the converter's)")
    parser.add_argument("--policy", choices=["rank", "latency"], default="rank", help="the low-rank model's policy")
    parser.add_argument(
        "--latency-precision", choices=["fp32", "int8"], default="int8", help="with --policy latency: what is timed"
    )
    parser.add_argument("--input-size", default="3x224x224")
    parser.add_argument("--batches", nargs="+", type=at_least(1), default=[1, 8])
    parser.add_argument("--engines", nargs="+", default=["onnxruntime", "openvino"])
    parser.add_argument("--threads", type=at_least(1), default=os.cpu_count() or 1)
    parser.add_argument("--runs", type=at_least(1), default=40)
    parser.add_argument("--repeats", type=at_least(1), default=10)
    parser.add_argument("--warmup", type=at_least(0), default=5)
    parser.add_argument("--calib-samples", type=at_least(1), default=128)
    parser.add_argument("--accuracy-epochs", type=at_least(0), default=16, help="0: latency only")
    parser.add_argument("--accuracy-size", type=at_least(1), default=32)
    parser.add_argument("--accuracy-grad-clip", type=float, default=GRAD_CLIP, help="0: no clipping")
    parser.add_argument("--no-latency", action="store_true", help="skip the latency table (accuracy only)")
    parser.add_argument("--out", default="benchmarks/results/int8_lowrank")
    args = parser.parse_args()
    results: dict[str, Any] = {"latency": [], "accuracy": []}
    with tempfile.TemporaryDirectory(prefix="int8-lowrank-") as tmp:
        root = Path(tmp)
        for name in args.models:
            files = {} if args.no_latency else _export_four(name, args, root / name)
            for engine in args.engines if files else []:
                for batch in args.batches:
                    row = _time_four(files, engine, batch, args) | {
                        "model": name,
                        "rank": args.rank,
                        "policy": _policy(args),
                    }
                    results["latency"].append(row)
                    print(_latency_line(row), flush=True)
            if args.accuracy_epochs > 0:
                row = _accuracy(name, args, root / f"{name}-acc")
                print(_accuracy_line(row), flush=True)
                results["accuracy"].append(row)
    meta = run_meta("int8_lowrank.py", processor=platform.processor())
    out = Path(args.out)
    write_result(out.with_suffix(".json"), {"meta": meta, **results})
    write_text(out.with_suffix(".md"), _markdown(meta, results, args))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


def _export_four(name: str, args: argparse.Namespace, root: Path) -> dict[str, Path]:
    root.mkdir(parents=True)
    torch.manual_seed(0)
    models = {
        "dense": lr.convert(name, dense=True, input_size=args.input_size),
        "lowrank": lr.convert(name, rank=args.rank, input_size=args.input_size, **_conversion(args)),
    }
    files = {}
    for kind, model in models.items():
        for precision in ("fp32", "int8"):
            path = root / f"{kind}-{precision}.onnx"
            extra = {"calib_data": "digits", "calib_samples": args.calib_samples} if precision == "int8" else {}
            export_onnx(model, path, precision=precision, verify_with="onnxruntime", **extra)
            files[f"{kind}-{precision}"] = path
    return files


def _time_four(files: dict[str, Path], engine: str, batch: int, args: argparse.Namespace) -> dict[str, Any]:
    size = [int(v) for v in args.input_size.split("x")]
    x = np.random.default_rng(0).standard_normal((batch, *size)).astype(np.float32)
    calls = {}
    spin = {}
    backend = ""
    skipped = {}
    for key in FILES:
        try:
            runner = get_engine(engine).load(files[key], device="cpu", threads=args.threads, batch=batch)
        except Exception as exc:  # e.g. an engine that cannot load an int8 graph: say so in the table
            skipped[key] = str(exc).splitlines()[0][:200]
            continue
        backend = runner.backend
        calls[key] = functools.partial(runner.run, {runner.inputs[0].name: x})
        spin[key] = runner.idle_spin_s
    per_round = max(1, args.runs // args.repeats)
    measured = (
        interleave(calls, rounds=args.repeats, runs=per_round, warmup=args.warmup, idle_spin_s=spin) if calls else {}
    )
    rounds = {key: [lat.median_ms for lat in lats] for key, lats in measured.items()}
    ratios = {}
    for pair, (num, den) in PAIRS.items():
        if num in rounds and den in rounds:
            paired = paired_speedup(rounds[num], rounds[den])
            ratios[pair] = {
                "speedup": paired.speedup,
                "min": paired.low,
                "max": paired.high,
                "stable": paired.stable,
                "ci": None if paired.ci_low is None else [paired.ci_low, paired.ci_high],
            }
    return {
        "engine": engine,
        "backend": backend,
        "batch": batch,
        "threads": args.threads,
        "median_ms": {k: statistics.median(v) for k, v in rounds.items()},
        "ratios": ratios,
        "skipped": skipped,
    }


def _conversion(args: argparse.Namespace) -> dict[str, Any]:
    """The low-rank model's conversion options beyond the rank."""
    out: dict[str, Any] = {} if args.round_to is None else {"round_to": args.round_to}
    if getattr(args, "policy", "rank") == "latency":  # (openvino_profile.py reuses this without the option)
        out |= {"policy": "latency", "latency_precision": args.latency_precision, "latency_threads": args.threads}
    return out


def _policy(args: argparse.Namespace) -> str:
    return "rank" if getattr(args, "policy", "rank") == "rank" else f"latency ({args.latency_precision})"


def _accuracy(name: str, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Dense and low-rank trained on digits, each exported fp32 and int8 and scored; an arm that fails says why."""
    size = f"3x{args.accuracy_size}x{args.accuracy_size}"
    row: dict[str, Any] = {
        "model": name,
        "rank": args.rank,
        "epochs": args.accuracy_epochs,
        "input_size": size,
        "grad_clip": args.accuracy_grad_clip or None,
        "round_to": args.round_to,
        "policy": args.policy,
    }
    arms: dict[str, dict[str, Any]] = {"dense": {"dense": True}, "lowrank": {"rank": args.rank, **_conversion(args)}}
    for kind, kwargs in arms.items():
        torch.manual_seed(0)
        directory = root / kind
        try:
            model = lr.convert(name, num_classes=10, input_size=size, **kwargs)
            params = sum(p.numel() for p in model.parameters())
            lr.save(model, directory)
            config = TrainConfig(
                data="digits",
                epochs=args.accuracy_epochs,
                method="dense" if kind == "dense" else "elrt",
                image_size=args.accuracy_size,
                lr=0.05,  # the demo's digits setting: ImageNet ResNets at 32x32 diverge at 0.1
                warmup_epochs=1,
                grad_clip=args.accuracy_grad_clip or None,
                seed=0,
            )
            train_artifact(directory, config, progress=False)
            result = export_onnx(
                lr.load(directory),
                root / f"{kind}-int8.onnx",
                precision="int8",
                calib_data="digits",
                calib_samples=args.calib_samples,
                verify_with="onnxruntime",
                tolerance=INT8_LOGIT_TOLERANCE,
            )
        except Exception as exc:  # a run that diverges costs its cells, not the table
            row[kind] = {"error": str(exc).splitlines()[0][:300]}
            continue
        q = result.quantization
        v = result.verification
        row[kind] = {
            "params": params,
            "fp32_top1": q.fp32_top1,
            "int8_top1": q.int8_top1,
            "eval_samples": q.eval_samples,
            "logits_max_rel": v.max_rel,  # int8 logits vs PyTorch fp32 on real images
            "top1_agreement": v.top1_agreement,
        }
    return row


def _accuracy_cells(arm: dict[str, Any]) -> list[str]:
    if "error" in arm:
        return [f"not measured: {arm['error']}", ""]
    return [f"{arm['fp32_top1']:.2f}", f"{arm['int8_top1']:.2f}"]


def _latency_line(row: dict[str, Any]) -> str:
    ms = " ".join(f"{k} {v:.2f}" for k, v in row["median_ms"].items())
    ratios = " | ".join(f"{k}: {v['speedup']:.2f}x ({_bracket(v, '-')})" for k, v in row["ratios"].items())
    skipped = f" | skipped {', '.join(row['skipped'])}" if row["skipped"] else ""
    return f"{row['model']} {row['engine']} ({row['backend']}) b{row['batch']}: {ms} ms | {ratios}{skipped}"


def _bracket(ratio: dict[str, Any], dash: str) -> str:
    text = f"{ratio['min']:.2f}{dash}{ratio['max']:.2f}"
    if ratio.get("ci"):
        text += f"; CI {ratio['ci'][0]:.2f}{dash}{ratio['ci'][1]:.2f}"
    return text


def _accuracy_line(row: dict[str, Any]) -> str:
    parts = [
        f"{k} fp32 / int8 top-1 %: {' / '.join(c for c in _accuracy_cells(row[k]) if c)}" for k in ("dense", "lowrank")
    ]
    return f"{row['model']} digits accuracy ({row['epochs']} epochs at {row['input_size']}): " + "; ".join(parts)


def _policy_cell(row: dict[str, Any]) -> str:
    policy = row.get("policy", "rank")
    return "" if policy == "rank" else f", {policy}"


def _markdown(meta: dict[str, Any], results: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        f"`{meta['command']}` ({meta['cpus']} CPUs, {args.threads} threads, {args.runs} runs per file in "
        f"{args.repeats} interleaved rounds; speedup = median of the rounds' ratios; in brackets their range and, "
        "from 6 rounds, the 95 % confidence interval of the median (CI), the number a target is held against; "
        "~ = range above 10 % of the speedup)",
        "",
        "| model | engine | batch | dense fp32 ms | dense int8 ms | low-rank fp32 ms | low-rank int8 ms | "
        + " | ".join(PAIRS)
        + " |",
        "|---|---|---|---|---|---|---|" + "---|" * len(PAIRS),
    ]
    for row in results["latency"]:
        ms = [f"{row['median_ms'][k]:.2f}" if k in row["median_ms"] else "n/a" for k in FILES]
        ratios = [
            f"{v['speedup']:.2f}×{'' if v['stable'] else ' ~'} ({_bracket(v, '–')})"
            if (v := row["ratios"].get(p))
            else "n/a"
            for p in PAIRS
        ]
        lines.append(
            f"| {row['model']} r{row['rank']:g}{_policy_cell(row)} | {row['engine']} ({row['backend']}) | {row['batch']} | "
            + " | ".join(ms + ratios)
            + " |"
        )
    for row in results["latency"]:
        for key, why in row["skipped"].items():
            lines.append(f"\nn/a: {row['model']} {key} on {row['engine']}: {why}")
    if results["accuracy"]:
        lines += [
            "",
            "| model | trained | dense fp32 | dense int8 | low-rank fp32 | low-rank int8 |",
            "|---|---|---|---|---|---|",
        ]
        for row in results["accuracy"]:
            clip = f", gradient norm clipped at {row['grad_clip']:g}" if row.get("grad_clip") else ""
            cells = _accuracy_cells(row["dense"]) + _accuracy_cells(row["lowrank"])
            lines.append(
                f"| {row['model']} r{row['rank']:g} | digits, {row['epochs']} epochs at {row['input_size']}{clip} | "
                + " | ".join(cells)
                + " |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    run_main(main)
