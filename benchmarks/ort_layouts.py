"""Which convolutions ONNX Runtime runs on its blocked NCHWc CPU kernels, with exact vs rounded ranks.

Usage:
    python benchmarks/ort_layouts.py                           # resnet50, rank 0.3, round_to 1 and 8
    python benchmarks/ort_layouts.py --model resnet18 --round-to 1 8 16

Converts the model at ``--rank`` for each ``--round-to``, exports it, lets ONNX Runtime optimise the
graph (``ORT_ENABLE_ALL``, CPU provider) and counts the convolution nodes of the optimised graph by
operator: ``com.microsoft.nchwc.Conv`` is the fast blocked-layout kernel; ``FusedConv`` / ``Conv`` are
the plain NCHW path (with layout reorders around them). Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import collections
import tempfile

import onnx
import onnxruntime as ort

ort.set_default_logger_severity(3)  # the "hardware specific optimizations" warning is the point here

from _arguments import at_least, run_main  # noqa: E402
from _results import run_meta, write_result  # noqa: E402

import lowrank_tool as lr  # noqa: E402 - after silencing ONNX Runtime's logger


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--rank", type=float, default=0.3)
    parser.add_argument("--round-to", type=at_least(1), nargs="+", default=[1, 8])
    parser.add_argument("--json", default="benchmarks/results/ort_layouts.json")
    args = parser.parse_args()

    rows = []
    for round_to in args.round_to:
        model = lr.convert(args.model, rank=args.rank, round_to=round_to)
        with tempfile.TemporaryDirectory() as tmp:
            lr.export_onnx(model, f"{tmp}/m.onnx", verify=False)
            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            opts.optimized_model_filepath = f"{tmp}/optimised.onnx"
            ort.InferenceSession(f"{tmp}/m.onnx", opts, providers=["CPUExecutionProvider"])
            graph = onnx.load(f"{tmp}/optimised.onnx").graph
        counts = collections.Counter(f"{n.domain or 'ai.onnx'}.{n.op_type}" for n in graph.node if "Conv" in n.op_type)
        nchwc = counts.get("com.microsoft.nchwc.Conv", 0)
        rows.append(
            {
                "model": args.model,
                "rank": args.rank,
                "round_to": round_to,
                "nchwc_convs": nchwc,
                "other_convs": sum(counts.values()) - nchwc,
                "by_op": dict(counts),
            }
        )
        print(
            f"{args.model} rank {args.rank} round_to {round_to:2d}: {nchwc:4d} convs on NCHWc kernels, "
            f"{sum(counts.values()) - nchwc:4d} on the NCHW path  {dict(counts)}",
            flush=True,
        )
    print(f"wrote {write_result(args.json, {'meta': run_meta('ort_layouts.py'), 'rows': rows})}")


if __name__ == "__main__":
    run_main(main)
