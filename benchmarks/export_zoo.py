"""Export converted models with both torch ONNX exporters and verify each file against PyTorch.

Usage:
    python benchmarks/export_zoo.py                    # the issue's list at each model's default input size
    python benchmarks/export_zoo.py --models resnet18 vgg16 --input-size 3x64x64 --json out.json

For every model: convert at rank 0.3 (random init), then export with the TorchScript exporter and with
the torch.export-based ("dynamo") exporter, each verified with ONNX Runtime (CPU) at batch 3 (detection:
one image). Records success, export seconds, max relative error and the first line of any failure.
This is the evidence behind ``exporter="auto"`` (TorchScript first, dynamo where it fails). Prints a
table and writes JSON.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch
from _arguments import run_main
from _results import run_meta, write_result

import lowrank_tool as lr
from lowrank_tool.export import export_onnx

DEFAULT = [
    "resnet18",
    "resnet50",
    "mobilenet_v2",
    "vgg16",
    "efficientnet_b0",
    "fcn_resnet50",
    "lraspp_mobilenet_v3_large",
    "ssdlite320_mobilenet_v3_large",
    "fasterrcnn_mobilenet_v3_large_320_fpn",
    "retinanet_resnet50_fpn",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=DEFAULT)
    parser.add_argument("--rank", type=float, default=0.3)
    parser.add_argument("--input-size", default=None, help="override every model's default input size")
    parser.add_argument("--exporters", nargs="+", default=["torchscript", "dynamo"])
    parser.add_argument("--json", default="benchmarks/results/export_zoo.json")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            torch.manual_seed(0)
            model = lr.convert(name, rank=args.rank, input_size=args.input_size)
            size = "x".join(map(str, lr.summary(model).input_size))
            for exporter in args.exporters:
                row = {"model": name, "input_size": size, "exporter": exporter}
                t0 = time.perf_counter()
                try:
                    result = export_onnx(model, Path(tmp) / f"{name}.onnx", exporter=exporter)
                    v = result.verification
                    row |= {
                        "ok": True,
                        "seconds": time.perf_counter() - t0,
                        "max_rel": v.max_rel,
                        "max_abs": v.max_abs,
                        "verify_input": v.input_shapes,
                        "notes": v.notes,
                        "size_mb": result.size_bytes / 1e6,
                        "opset": result.opset,
                    }
                except Exception as exc:
                    row |= {"ok": False, "seconds": time.perf_counter() - t0, "error": str(exc).splitlines()[0][:300]}
                rows.append(row)
                status = f"ok   rel err {row['max_rel']:.2e}" if row["ok"] else f"FAIL {row['error'][:120]}"
                print(f"{name:40s} {size:12s} {exporter:12s} {row['seconds']:6.1f}s  {status}", flush=True)
    meta = run_meta("export_zoo.py", processor=platform.processor(), rank=args.rank)
    print(f"wrote {write_result(args.json, {'meta': meta, 'rows': rows})}")


if __name__ == "__main__":
    run_main(main)
