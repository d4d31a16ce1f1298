"""Where the time goes in OpenVINO: per-kernel times of dense and low-rank files, fp32 and int8.

Usage:
    python benchmarks/openvino_profile.py                                   # ResNet-50 rank 0.3 at 224, batch 1
    python benchmarks/openvino_profile.py --model resnet18 --threads 2 --out /tmp/ov_profile

The model (random weights: time does not depend on the values) is converted at ``--rank`` and exported
four times, dense and low-rank in fp32 and in int8 (static QDQ calibrated on digits, as ``lowrank export
--int8`` does). Each file is compiled for batch 1 by OpenVINO's CPU plugin with performance counters on (f32
inference precision, ``--threads`` threads) and run ``--runs`` times after ``--warmup`` runs; every
executed node's time is summed per (node type, kernel), e.g. ``Convolution / brgconv_avx512_1x1_I8``,
and averaged per inference. The table answers "which kind of operator keeps the low-rank model from its
MAC count" — the kernel names tell 1×1 convolutions from the others and int8 from f32 kernels.

Run it alone: the per-node times are wall times, and another job on the machine inflates them unevenly.
Writes JSON and a markdown table to ``--out``.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from _arguments import at_least, run_main
from _results import run_meta, write_result, write_text
from int8_lowrank import _export_four as export_four  # this script's folder is on sys.path

from lowrank_tool.runtime.openvino_engine import fix_batch

FILES = ("dense-fp32", "lowrank-fp32", "dense-int8", "lowrank-int8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--rank", type=float, default=0.3)
    parser.add_argument("--round-to", type=at_least(1), default=None, help="rank rounding (default: the converter's)")
    parser.add_argument("--input-size", default="3x224x224")
    parser.add_argument("--threads", type=at_least(1), default=os.cpu_count() or 1)
    parser.add_argument("--runs", type=at_least(1), default=20)
    parser.add_argument("--warmup", type=at_least(0), default=5)
    parser.add_argument("--calib-samples", type=at_least(1), default=64)
    parser.add_argument("--out", default="benchmarks/results/openvino_profile")
    args = parser.parse_args()
    try:
        import openvino  # noqa: F401
    except ImportError:
        print("openvino_profile.py needs OpenVINO: pip install 'lowrank-tool[openvino]'", file=sys.stderr)
        raise SystemExit(2) from None
    size = [int(v) for v in args.input_size.split("x")]
    profiles: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="ov-profile-") as tmp:
        files = export_four(args.model, args, Path(tmp) / args.model)  # the same four files int8_lowrank.py times
        for key in FILES:
            profiles[key] = profile(files[key], size, args.threads, args.runs, args.warmup)
            print(f"{key}: {profiles[key]['total_ms']:.2f} ms per inference (sum of node times)", flush=True)
    meta = run_meta("openvino_profile.py", openvino=_openvino_version())  # the build string, not only the release
    out = Path(args.out)
    write_result(out.with_suffix(".json"), {"meta": meta, "profiles": profiles})
    table = markdown(meta, profiles)
    write_text(out.with_suffix(".md"), table)
    print(table)
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


def _openvino_version() -> str:
    import openvino

    return str(openvino.__version__)


def profile(path: Path, size: list[int], threads: int, runs: int, warmup: int) -> dict[str, Any]:
    """Mean per-inference time of every (node type, kernel) of ``path`` on OpenVINO's CPU plugin."""
    import openvino as ov

    core = ov.Core()
    config = {"PERF_COUNT": True, "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"}
    model = core.read_model(str(path))
    fix_batch(model, 1)  # compiled for the batch it runs, as `lowrank bench` does (a static shape runs faster)
    request = core.compile_model(model, "CPU", config).create_infer_request()
    x = np.random.default_rng(0).standard_normal((1, *size)).astype(np.float32)
    for _ in range(warmup):
        request.infer({0: x})
    ms: collections.Counter[str] = collections.Counter()
    nodes: collections.Counter[str] = collections.Counter()
    for _ in range(runs):
        request.infer({0: x})
        for info in request.profiling_info:
            if info.status.name != "EXECUTED":
                continue
            key = f"{info.node_type} / {info.exec_type}"
            ms[key] += info.real_time.total_seconds() * 1e3 / runs
            nodes[key] += 1
    kernels = {k: {"ms": v, "nodes": nodes[k] // runs} for k, v in ms.most_common()}
    return {"total_ms": sum(ms.values()), "kernels": kernels}


def markdown(meta: dict[str, Any], profiles: dict[str, dict[str, Any]]) -> str:
    """One row per kernel that takes at least 1 % of some file's time; a column per file."""
    keys = [k for k in FILES if k in profiles]
    kernels: list[str] = []
    for key in keys:
        total = profiles[key]["total_ms"] or 1.0
        for kernel, entry in profiles[key]["kernels"].items():
            if entry["ms"] >= 0.01 * total and kernel not in kernels:
                kernels.append(kernel)
    lines = [
        f"`{meta['command']}` ({meta['cpus']} CPUs, OpenVINO {meta['openvino']}; mean ms per inference, "
        "batch 1, summed over the nodes of each kind; nodes per inference in brackets)",
        "",
        "| node / kernel | " + " | ".join(keys) + " |",
        "|---|" + "---|" * len(keys),
    ]
    for kernel in kernels:
        cells = []
        for key in keys:
            entry = profiles[key]["kernels"].get(kernel)
            cells.append(f"{entry['ms']:.2f} ({entry['nodes']})" if entry else "—")
        lines.append(f"| {kernel} | " + " | ".join(cells) + " |")
    lines.append("| **all nodes** | " + " | ".join(f"**{profiles[k]['total_ms']:.2f}**" for k in keys) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    run_main(main)
