"""How long an engine's worker threads stay busy after a run: the wait `interleave` needs between two models.

Usage:
    python benchmarks/spin_window.py                         # ResNet-50 rank 0.3 at 224, batch 1, 2 threads
    python benchmarks/spin_window.py --precision int8 --engines onnxruntime --gaps-ms 0 20 40 60 80 200

Two runners of the same exported model are loaded in one process. Each probe runs runner A once, sleeps
``gap`` milliseconds, and times one call of runner B; then it gives both runners ``--rest-ms`` to go idle
and times B again, twice: the first call after idle (B's own threads were asleep) and one back to back (B
warm, nothing else busy). A gap after which B runs as fast as back to back is the engine's spin window:
every timing loop that switches between models must wait at least that long
(:data:`lowrank_tool.runtime.onnxruntime_engine.ORT_IDLE_SPIN_S`). The probes cycle through the gaps
``--rounds`` times; the table gives the median per gap. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _arguments import at_least, run_main
from _results import run_meta, write_result

import lowrank_tool as lr
from lowrank_tool.export import export_onnx
from lowrank_tool.runtime import Runner, get_engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--rank", type=float, default=0.3)
    parser.add_argument("--input-size", default="3x224x224")
    parser.add_argument("--precision", choices=["fp32", "int8"], default="fp32")
    parser.add_argument("--engines", nargs="+", default=["onnxruntime", "openvino"])
    parser.add_argument("--threads", type=at_least(1), default=2)
    parser.add_argument("--gaps-ms", type=at_least(0, float), nargs="+", default=[0, 10, 20, 40, 60, 80, 120, 200])
    parser.add_argument("--rest-ms", type=at_least(0, float), default=250, help="idle time before the reference calls")
    parser.add_argument("--rounds", type=at_least(1), default=8)
    parser.add_argument("--out", default="benchmarks/results/spin_window")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = lr.convert(args.model, rank=args.rank, input_size=args.input_size).eval()
    size = [int(v) for v in args.input_size.split("x")]
    x = np.random.default_rng(0).standard_normal((1, *size)).astype(np.float32)
    rows = []
    with tempfile.TemporaryDirectory(prefix="spin-window-") as tmp:
        path = Path(tmp) / "model.onnx"
        extra = {"calib_data": "digits", "calib_samples": 32} if args.precision == "int8" else {}
        export_onnx(model, path, precision=args.precision, verify=False, **extra)
        for engine in args.engines:
            a, b = (get_engine(engine).load(path, device="cpu", threads=args.threads, batch=1) for _ in range(2))
            rows.append({"engine": engine, "backend": b.backend, "idle_spin_s": b.idle_spin_s, **_probe(a, b, x, args)})
            print(_line(rows[-1]), flush=True)
            del a, b  # release the engine's threads before the next engine is timed
    meta = run_meta(
        "spin_window.py",
        model=args.model,
        rank=args.rank,
        precision=args.precision,
        threads=args.threads,
        rounds=args.rounds,
    )
    print(f"wrote {write_result(Path(args.out).with_suffix('.json'), {'meta': meta, 'rows': rows})}")


def _probe(a: Runner, b: Runner, x: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    run_a = functools.partial(a.run, {a.inputs[0].name: x})
    run_b = functools.partial(b.run, {b.inputs[0].name: x})
    for _ in range(3):
        run_a()
        run_b()
    after: dict[float, list[float]] = {gap: [] for gap in args.gaps_ms}
    after_idle, warm = [], []
    for _ in range(args.rounds):
        for gap in args.gaps_ms:
            run_a()
            time.sleep(gap / 1e3)
            after[gap].append(_ms(run_b))
            time.sleep(args.rest_ms / 1e3)
            after_idle.append(_ms(run_b))
            warm.append(_ms(run_b))
    return {
        "after_other_ms": {str(gap): statistics.median(v) for gap, v in after.items()},
        "after_idle_ms": statistics.median(after_idle),
        "back_to_back_ms": statistics.median(warm),
    }


def _ms(call: Callable[[], Any]) -> float:
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1e3


def _line(row: dict[str, Any]) -> str:
    gaps = ", ".join(f"{gap} ms: {ms:.1f}" for gap, ms in row["after_other_ms"].items())
    return (
        f"{row['engine']} ({row['backend']}), ms per call right after the other runner's, by gap: {gaps} | back to "
        f"back {row['back_to_back_ms']:.1f}, first call after idle {row['after_idle_ms']:.1f} | the runner waits "
        f"{row['idle_spin_s']:.2f} s (idle_spin_s)"
    )


if __name__ == "__main__":
    run_main(main)
