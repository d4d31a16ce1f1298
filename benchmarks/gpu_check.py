"""The GPU checklist in one command: what the toolkit claims on an NVIDIA GPU, checked and written to one JSON.

Usage (on a machine with an NVIDIA GPU, onnxruntime-gpu and, for the TensorRT rows, TensorRT):
    python benchmarks/gpu_check.py                                   # ResNet-50 rank 0.3 at 224
    python benchmarks/gpu_check.py --model resnet18 --rank 0.3 --out benchmarks/results/gpu_check_r18
    python benchmarks/gpu_check.py --smoke-on-cpu                    # every step on the CPU stand-ins (CI)

Steps, each recorded as ``ok``, ``failed`` (with its one-line error) or ``skipped`` (with why); one failing
step does not stop the others:

1. ``environment``: GPU, driver-visible CUDA version, torch, ONNX Runtime and its providers.
2. ``export_cuda``: fp32 and fp16 exports of the converted model, verified on ONNX Runtime's CUDA provider.
3. ``verify_tensorrt``: the fp32 file verified on the TensorRT provider (skipped when ONNX Runtime has none).
4. ``inference_fp16``: ``lowrank bench --fp16 --vs-dense`` on CUDA at batch 1, 8 and 64 (interleaved rounds,
   median speedup with its range), and on TensorRT where present.
5. ``train_step_amp``: one training step (forward, backward, SGD) of the dense and the low-rank model with
   fp16 autocast + GradScaler in channels-last, timed interleaved; the ratio low-rank / dense.
6. ``ddp_nccl``: a one-process DistributedDataParallel run on the nccl backend: three steps, gradients synced.

Without a GPU it refuses in one line (exit 2) and writes nothing, unless ``--smoke-on-cpu``, which runs every
step with the CPU stand-ins (CPU provider, bf16 autocast, gloo, a small model) so that the script itself is
tested where CI runs; those numbers are not GPU results and the JSON says ``"smoke": true``.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _arguments import at_least, run_main
from _results import command_line, write_result
from torch import nn

import lowrank_tool as lr
from lowrank_tool.analysis.bench import bench
from lowrank_tool.errors import first_line
from lowrank_tool.export import export_onnx
from lowrank_tool.runtime import paired_speedup
from lowrank_tool.runtime.machine import cpu_description


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--rank", type=float, default=0.3)
    parser.add_argument("--input-size", default="3x224x224")
    parser.add_argument("--batches", default="1,8,64")
    parser.add_argument("--train-batch", type=at_least(1), default=64)
    parser.add_argument("--steps", type=at_least(1), default=20, help="timed training steps per model")
    parser.add_argument("--runs", type=at_least(1), default=50)
    parser.add_argument("--out", default="benchmarks/results/gpu_check")
    parser.add_argument("--smoke-on-cpu", action="store_true", help="run every step on CPU stand-ins (tests)")
    args = parser.parse_args()
    smoke = args.smoke_on_cpu
    if not smoke and not torch.cuda.is_available():
        print(
            "gpu_check needs an NVIDIA GPU with CUDA (torch.cuda.is_available() is False here); run it on a GPU "
            "machine, or pass --smoke-on-cpu to test the script on the CPU",
            file=sys.stderr,
        )
        return 2
    if smoke:  # small and quick: the point is that every step runs, not its numbers
        args.model, args.input_size, args.batches = "resnet20", "3x32x32", "1,2"
        args.train_batch, args.steps, args.runs = 8, 2, 4
    device = "cpu" if smoke else "cuda"
    out = Path(args.out)
    report: dict[str, Any] = {
        "command": command_line("gpu_check.py"),
        "smoke": smoke,
        "model": args.model,
        "rank": args.rank,
        "input_size": args.input_size,
        "steps": {},
    }
    torch.manual_seed(0)
    lowrank = lr.convert(args.model, rank=args.rank, input_size=args.input_size)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        root = Path(tmp)
        lr.save(lowrank, root / "lowrank")
        steps: list[tuple[str, Callable[[], dict[str, Any]]]] = [
            ("environment", lambda: _environment(smoke)),
            ("export_cuda", lambda: _export(lowrank, root, device)),
            ("verify_tensorrt", lambda: _tensorrt(lowrank, root, smoke)),
            ("inference_fp16", lambda: _inference(root / "lowrank", args, device, smoke)),
            ("train_step_amp", lambda: _train_step(lowrank, args, device, smoke)),
            ("ddp_nccl", lambda: _ddp(lowrank, args, device, smoke)),
        ]
        for name, step in steps:
            started = time.perf_counter()
            try:
                result = step()
                status = result.pop("status", "ok")
            except Exception as exc:  # one failing step does not hide the others
                result = {
                    "error": first_line(exc, limit=300),
                    "where": traceback.format_exc(limit=-2).splitlines()[-3:],
                }
                status = "failed"
            report["steps"][name] = {"status": status, "seconds": round(time.perf_counter() - started, 2)} | result
            print(f"{name:16s} {status:8s} {_summary(result)}", flush=True)
    print(f"wrote {write_result(out.with_suffix('.json'), report)}")
    return 1 if any(s["status"] == "failed" for s in report["steps"].values()) else 0


def _summary(result: dict[str, Any]) -> str:
    for key in ("error", "why", "line", "summary"):
        if key in result:
            return str(result[key])
    return ""


def _environment(smoke: bool) -> dict[str, Any]:
    import onnxruntime as ort

    info: dict[str, Any] = {
        "machine": platform.platform(),
        "cpu": cpu_description().to_dict(),  # the ISA decides the kernels, and so the timings
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "onnxruntime": ort.__version__,
        "providers": ort.get_available_providers(),
        "cpus": os.cpu_count(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["capability"] = list(torch.cuda.get_device_capability(0))
        info["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
    info["summary"] = info.get("gpu", "no GPU (smoke run)" if smoke else "no GPU")
    return info


def _export(model: nn.Module, root: Path, device: str) -> dict[str, Any]:
    lines = {}
    for precision in ("fp32", "fp16"):
        result = export_onnx(
            model, root / f"lowrank-{precision}.onnx", precision=precision, device=device, verify_with="onnxruntime"
        )
        report = result.verification
        lines[precision] = report.to_dict()
        if not report.passed:
            return {"status": "failed", "reports": lines, "error": report.line()}
    return {
        "reports": lines,
        "line": "; ".join(f"{p}: {r['provider']} rel {r['max_rel']:.2g}" for p, r in lines.items()),
    }


def _tensorrt(model: nn.Module, root: Path, smoke: bool) -> dict[str, Any]:
    import onnxruntime as ort

    if smoke or "TensorrtExecutionProvider" not in ort.get_available_providers():
        return {"status": "skipped", "why": "ONNX Runtime has no TensorRT provider here" if not smoke else "smoke run"}
    # exported again, verified on the TensorRT provider (CUDA behind it for what TensorRT does not take);
    # TensorRT may pick TF32 kernels, hence 1e-3 rather than fp32's 1e-4
    result = export_onnx(model, root / "lowrank-trt.onnx", device="tensorrt", verify_with="onnxruntime", tolerance=1e-3)
    report = result.verification
    return {"status": "ok" if report.passed else "failed", "report": report.to_dict(), "line": report.line()}


def _inference(artifact: Path, args: argparse.Namespace, device: str, smoke: bool) -> dict[str, Any]:
    import onnxruntime as ort

    results = {}
    devices = [device] + (
        ["tensorrt"] if not smoke and "TensorrtExecutionProvider" in ort.get_available_providers() else []
    )
    for dev in devices:
        data = bench(
            artifact,
            vs_dense=True,
            batches=args.batches,
            engines=["onnxruntime"],
            device=dev,
            precision="fp32" if smoke else "fp16",  # fp16 convs on the CPU provider are not the point of a smoke run
            runs=args.runs,
            warmup=2 if smoke else 10,
        ).to_dict()
        results[dev] = data
    lines = [
        f"{dev} b{c['batch']} {c['speedup']:.2f}x ({c['speedup_min']:.2f}-{c['speedup_max']:.2f})"
        for dev, data in results.items()
        for c in data["comparisons"]
    ]
    return {"benches": results, "line": ", ".join(lines)}


def _train_step(lowrank: nn.Module, args: argparse.Namespace, device: str, smoke: bool) -> dict[str, Any]:
    dense = lr.convert(args.model, dense=True, input_size=args.input_size)
    size = [int(v) for v in args.input_size.split("x")]
    dtype = torch.bfloat16 if smoke else torch.float16
    x = torch.randn(args.train_batch, *size, device=device).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        classes = dense.eval()(x[:1].cpu()).shape[1]
    y = torch.randint(0, classes, (args.train_batch,), device=device)
    steppers = {}
    for name, model in (("dense", dense), ("lowrank", lowrank)):
        model = model.to(device).to(memory_format=torch.channels_last).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        scaler = torch.amp.GradScaler(device, enabled=not smoke)

        def step(model: nn.Module = model, opt: torch.optim.Optimizer = opt, scaler: Any = scaler) -> None:
            with torch.autocast(device, dtype=dtype):
                loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

        steppers[name] = step
    times: dict[str, list[float]] = {"dense": [], "lowrank": []}
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for step in steppers.values():
        for _ in range(2):  # warm-up: cuDNN autotuning, allocator
            step()
    for i in range(args.steps):
        for name in ("dense", "lowrank") if i % 2 == 0 else ("lowrank", "dense"):
            sync()
            t0 = time.perf_counter()
            steppers[name]()
            sync()
            times[name].append((time.perf_counter() - t0) * 1e3)
    paired = paired_speedup(times["lowrank"], times["dense"])  # step-time ratio, step by step
    ratio = paired.speedup
    return {
        "dense_ms": statistics.median(times["dense"]),
        "lowrank_ms": statistics.median(times["lowrank"]),
        "lowrank_over_dense": ratio,
        "paired_range": [paired.low, paired.high],
        "amp": str(dtype).replace("torch.", ""),
        "memory_format": "channels_last",
        "line": f"low-rank step {ratio:.2f}x of dense ({statistics.median(times['lowrank']):.1f} vs "
        f"{statistics.median(times['dense']):.1f} ms, batch {args.train_batch}, {str(dtype).replace('torch.', '')})",
    }


def _ddp(lowrank: nn.Module, args: argparse.Namespace, device: str, smoke: bool) -> dict[str, Any]:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    backend = "gloo" if smoke else "nccl"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        model = lowrank.to(device).train()
        ddp = DistributedDataParallel(model, device_ids=[0] if device == "cuda" else None)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.01)
        size = [int(v) for v in args.input_size.split("x")]
        for _ in range(3):
            x = torch.randn(4, *size, device=device)
            loss = ddp(x).float().logsumexp(1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        synced = all(p.grad is not None for p in model.parameters() if p.requires_grad)
    finally:
        dist.destroy_process_group()
    return {"backend": backend, "grads_synced": synced, "line": f"{backend}: 3 steps, gradients synced: {synced}"}


def _free_port() -> int:
    """A free TCP port on localhost for the process group's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


if __name__ == "__main__":
    run_main(main)
