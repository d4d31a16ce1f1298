"""Would merging factor chains back into dense convs make the int8 low-rank model faster? Per layer, measured.

Usage:
    python benchmarks/int8_merge.py                                   # ResNet-50 rank 0.3 at 224, batch 1, both CPU engines
    python benchmarks/int8_merge.py --model resnet18 --threads 2 --engines openvino

``--merge auto`` and ``--policy latency`` decide per layer by fp32 timings. int8 changes the costs (the
OpenVINO profile, ``benchmarks/openvino_profile.py``, puts 74 % of the low-rank int8 model's time in its thin
1×1 convolutions), so this asks the int8 question directly: for every distinct low-rank layer of the
converted model (same geometry, ranks and input shape: timed once), the factorised layer and the dense conv
it merges to (``LowRankConv.to_dense``) are each exported alone, quantised to int8 exactly as ``lowrank
export --int8`` does (U8S8, static; calibrated here on random inputs: latency does not depend on the
values), and timed in each engine in ``--rounds`` interleaved rounds of ``--runs`` calls. A layer would
be merged where its merged conv is faster. Both forms pay the same quantise / dequantise at their input and
output, so the difference between them is the convolutions'.

Prints one line per layer and writes JSON and a markdown table to ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import functools
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _arguments import at_least, run_main
from _results import run_meta, write_result, write_text

import lowrank_tool as lr
from lowrank_tool.conversion_plan import plan_of
from lowrank_tool.export.quantize import quantize_file
from lowrank_tool.layers.base import LowRankConv
from lowrank_tool.runtime import get_engine, interleave, onnx_bytes

FORMS = ("factorised", "merged")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--rank", type=float, default=0.3)
    parser.add_argument("--input-size", default="3x224x224")
    parser.add_argument("--batch", type=at_least(1), default=1)
    parser.add_argument("--engines", nargs="+", default=["onnxruntime", "openvino"])
    parser.add_argument("--threads", type=at_least(1), default=os.cpu_count() or 1)
    parser.add_argument("--runs", type=at_least(1), default=20, help="timed calls per form and round")
    parser.add_argument("--rounds", type=at_least(1), default=5)
    parser.add_argument("--out", default="benchmarks/results/int8_merge")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = lr.convert(args.model, rank=args.rank, input_size=args.input_size).eval()
    plan = plan_of(model)
    timed: dict[tuple[str, ...], dict[str, Any]] = {}
    layers = []
    with tempfile.TemporaryDirectory(prefix="int8-merge-") as tmp:
        for name, layer in model.named_modules():
            if not isinstance(layer, LowRankConv):
                continue
            shape = (args.batch, layer.geometry.in_channels, *plan.layer(name).input_size)
            key = (type(layer).__name__, repr(layer), str(shape))
            if key not in timed:
                files = _int8_files(layer, shape, Path(tmp) / str(len(timed)))
                timed[key] = {
                    "layer": _describe(name, layer),
                    "shape": list(shape),
                    "times": {e: _time(files, e, shape, args) for e in args.engines},
                }
                print(_line(name, layer, timed[key]), flush=True)
            layers.append({**timed[key], "name": name, "layer": _describe(name, layer)})
    meta = run_meta("int8_merge.py", distinct_layers=len(timed))
    out = Path(args.out)
    write_result(out.with_suffix(".json"), {"meta": meta, "layers": layers})
    write_text(out.with_suffix(".md"), _markdown(meta, list(timed.values()), args))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


def _int8_files(layer: LowRankConv, shape: tuple[int, ...], stem: Path) -> dict[str, Path]:
    stem.mkdir(parents=True)
    factorised = copy.deepcopy(layer).float().eval()
    forms = {"factorised": factorised, "merged": factorised.to_dense().eval()}
    rng = np.random.default_rng(0)
    calib = [rng.standard_normal(shape).astype(np.float32) for _ in range(4)]
    files = {}
    for form, module in forms.items():
        fp32 = stem / f"{form}.onnx"
        fp32.write_bytes(onnx_bytes(module, shape))
        files[form] = stem / f"{form}-int8.onnx"
        quantize_file(fp32, files[form], calib, samples=len(calib) * shape[0], evaluate=False)
    return files


def _time(files: dict[str, Path], engine: str, shape: tuple[int, ...], args: argparse.Namespace) -> dict[str, float]:
    runners = {form: get_engine(engine).load(files[form], device="cpu", threads=args.threads) for form in FORMS}
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    measured = interleave(
        {form: functools.partial(run.run, {run.inputs[0].name: x}) for form, run in runners.items()},
        rounds=args.rounds,
        runs=args.runs,
        warmup=5,
        round_warmup=1,
        idle_spin_s={form: run.idle_spin_s for form, run in runners.items()},
    )
    return {form: statistics.median(lat.median_ms for lat in lats) for form, lats in measured.items()}


def _describe(name: str, layer: LowRankConv) -> str:
    g = layer.geometry
    k = "x".join(map(str, g.kernel_size))
    return f"{name}: {type(layer).__name__} {g.in_channels}->{g.out_channels} {k}, ranks {tuple(layer.ranks)}"


def _line(name: str, layer: LowRankConv, entry: dict[str, Any]) -> str:
    times = " | ".join(
        f"{e}: factorised {t['factorised']:.3f} ms, merged {t['merged']:.3f} ms" for e, t in entry["times"].items()
    )
    return f"{entry['layer']} at {entry['shape']}: {times}"


def _markdown(meta: dict[str, Any], entries: list[dict[str, Any]], args: argparse.Namespace) -> str:
    engines = list(entries[0]["times"]) if entries else []
    lines = [
        f"`{meta['command']}` ({meta['cpus']} CPUs, {args.threads} threads, batch {args.batch}; each distinct "
        f"layer alone, int8 U8S8; median of {args.rounds} interleaved rounds of {args.runs} calls; "
        "merged faster = a merge would pay)",
        "",
        "| layer | input | " + " | ".join(f"{e} factorised ms | {e} merged ms" for e in engines) + " |",
        "|---|---|" + "---|---|" * len(engines),
    ]
    for entry in entries:
        cells = []
        for e in engines:
            t = entry["times"][e]
            faster = t["merged"] < t["factorised"]
            cells += [f"{t['factorised']:.3f}", f"**{t['merged']:.3f}**" if faster else f"{t['merged']:.3f}"]
        lines.append(f"| {entry['layer']} | {'x'.join(map(str, entry['shape']))} | " + " | ".join(cells) + " |")
    for e in engines:
        wins = sum(entry["times"][e]["merged"] < entry["times"][e]["factorised"] for entry in entries)
        lines.append(f"\n{e}: the merged conv is faster for {wins} of {len(entries)} distinct layers.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    run_main(main)
