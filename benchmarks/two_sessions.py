"""Two ONNX Runtime sessions in one process, run one after the other: what their thread pools cost.

Usage:
    python benchmarks/two_sessions.py                  # ResNet-50 and ResNet-18 at rank 0.3, 224, batch 1, 2 threads
    python benchmarks/two_sessions.py --repeats 5 --calls 100

A pipeline that runs two models per request (a detector and a classifier, an ensemble) keeps two sessions.
By default each session has its own intra-op thread pool, whose workers spin for tens of milliseconds
after every run (``benchmarks/spin_window.py``), so each model runs beside the other's spinning threads.
Three set-ups, each in a fresh process (a global pool is per process), ``--repeats`` times in rotation:

* ``per-session``: ONNX Runtime's default, one pool per session, spinning;
* ``shared``: one process-wide pool (``onnxruntime.set_global_thread_pool_sizes`` before the first session,
  ``SessionOptions.use_per_session_threads = False``);
* ``no-spin``: one pool per session, ``session.intra_op.allow_spinning = 0``.

Each process times ``--calls`` requests (model A then model B) after 5 untimed ones, then model A alone,
back to back. Prints a table of medians and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _arguments import at_least, run_main
from _results import run_meta, write_result

SETUPS = ("per-session", "shared", "no-spin")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs=2, default=["resnet50", "resnet18"], metavar=("A", "B"))
    parser.add_argument("--rank", type=float, default=0.3)
    parser.add_argument("--input-size", default="3x224x224")
    parser.add_argument("--threads", type=at_least(1), default=2)
    parser.add_argument("--calls", type=at_least(1), default=60, help="timed requests per process")
    parser.add_argument("--repeats", type=at_least(1), default=3, help="processes per set-up, in rotation")
    parser.add_argument("--out", default="benchmarks/results/two_sessions")
    parser.add_argument("--child", nargs=3, metavar=("SETUP", "FILE_A", "FILE_B"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(*args.child, threads=args.threads, calls=args.calls)))
        return

    runs: dict[str, list[dict[str, float]]] = {s: [] for s in SETUPS}
    with tempfile.TemporaryDirectory(prefix="two-sessions-") as tmp:
        files = _export(args, Path(tmp))
        for r in range(args.repeats):
            for setup in SETUPS[r % 3 :] + SETUPS[: r % 3]:
                cmd = [sys.executable, __file__, "--child", setup, *map(str, files)]
                cmd += ["--threads", str(args.threads), "--calls", str(args.calls)]
                res = subprocess.run(cmd, capture_output=True, text=True, check=True)
                runs[setup].append(json.loads(res.stdout.strip().splitlines()[-1]))
    rows = [
        {
            "setup": setup,
            "pipeline_ms": statistics.median(x["pipeline_ms"] for x in results),
            "a_in_pipeline_ms": statistics.median(x["a_in_pipeline_ms"] for x in results),
            "a_alone_ms": statistics.median(x["a_alone_ms"] for x in results),
            "processes": results,
        }
        for setup, results in runs.items()
    ]
    print(f"{'set-up':12s} {'A then B ms':>12s} {'A inside ms':>12s} {'A alone ms':>11s}")
    for row in rows:
        print(
            f"{row['setup']:12s} {row['pipeline_ms']:12.2f} {row['a_in_pipeline_ms']:12.2f} {row['a_alone_ms']:11.2f}"
        )
    meta = run_meta(
        "two_sessions.py",
        models=args.models,
        rank=args.rank,
        threads=args.threads,
        calls=args.calls,
        repeats=args.repeats,
    )
    print(f"wrote {write_result(Path(args.out).with_suffix('.json'), {'meta': meta, 'rows': rows})}")


def _export(args: argparse.Namespace, root: Path) -> list[Path]:
    import torch

    import lowrank_tool as lr
    from lowrank_tool.export import export_onnx

    torch.manual_seed(0)
    files = []
    for name in args.models:
        path = root / f"{len(files)}-{name}.onnx"
        export_onnx(lr.convert(name, rank=args.rank, input_size=args.input_size), path, verify=False)
        files.append(path)
    return files


def _child(setup: str, file_a: str, file_b: str, *, threads: int, calls: int) -> dict[str, float]:
    """One process: the two sessions as ``setup`` configures them; ONNX Runtime only, no torch."""
    import numpy as np
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    if setup == "shared":
        ort.set_global_thread_pool_sizes(threads, 1)

    def session(path: str) -> Callable[[], Any]:
        opts = ort.SessionOptions()
        if setup == "shared":
            opts.use_per_session_threads = False
        else:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        if setup == "no-spin":
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        shape = [d if isinstance(d, int) else 1 for d in sess.get_inputs()[0].shape]
        feed = {sess.get_inputs()[0].name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
        return lambda: sess.run(None, feed)

    a, b = session(file_a), session(file_b)
    for _ in range(5):
        a()
        b()
    pipeline, a_inside, a_alone = [], [], []
    for _ in range(calls):
        start = time.perf_counter()
        a()
        middle = time.perf_counter()
        b()
        pipeline.append((time.perf_counter() - start) * 1e3)
        a_inside.append((middle - start) * 1e3)
    for _ in range(calls):
        start = time.perf_counter()
        a()
        a_alone.append((time.perf_counter() - start) * 1e3)
    return {
        "pipeline_ms": statistics.median(pipeline),
        "a_in_pipeline_ms": statistics.median(a_inside),
        "a_alone_ms": statistics.median(a_alone),
    }


if __name__ == "__main__":
    run_main(main)
