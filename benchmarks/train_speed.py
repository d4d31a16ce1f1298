"""Training step time and memory: dense vs low-rank, measured in one run.

Usage:
    python benchmarks/train_speed.py                                  # resnet18 and resnet20, 32x32, batch 128
    python benchmarks/train_speed.py --models resnet18 --rank 0.3 --batch 128 --steps 10

For each model the dense network and its rank-R conversion (ELRT random init, orthogonality penalty
included in the step) are timed alternately, step by step, so both see the same machine load; the
table reports the median step time and the ratio low-rank / dense. Memory is measured as the bytes of
parameters + gradients + SGD momentum + the activations autograd saves for the backward pass (counted
with saved-tensor hooks: exact and device-independent); on CUDA the allocator's peak is added.
Writes JSON to benchmarks/results/train_speed.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

import lowrank_tool as lr
from lowrank_tool.methods import orthogonality_penalty


def saved_activation_bytes(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    model.zero_grad(set_to_none=True)
    params = {p.data_ptr() for p in model.parameters()}
    return sum(v for k, v in seen.items() if k not in params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet20"])
    parser.add_argument("--rank", type=float, default=0.3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default="benchmarks/results/train_speed.json")
    args = parser.parse_args()
    device = torch.device(args.device)

    rows = []
    for name in args.models:
        torch.manual_seed(0)
        dense = lr.build_model(name, num_classes=10).to(device)
        low = lr.convert(dense, rank=args.rank, input_size=(3, args.size, args.size)).to(device)
        x = torch.randn(args.batch, 3, args.size, args.size, device=device)
        y = torch.randint(0, 10, (args.batch,), device=device)
        nets = {"dense": dense, "lowrank": low}
        opts = {k: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for k, m in nets.items()}
        times: dict[str, list[float]] = {k: [] for k in nets}
        for step in range(args.steps + 2):  # 2 warm-up steps, then alternate dense / low-rank
            for key, model in nets.items():
                model.train()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                loss = nn.functional.cross_entropy(model(x), y)
                if key == "lowrank":
                    loss = loss + orthogonality_penalty(model, weight=1e-4)
                opts[key].zero_grad(set_to_none=True)
                loss.backward()
                opts[key].step()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if step >= 2:
                    times[key].append(time.perf_counter() - t0)
        result = {"model": name, "rank": args.rank, "batch": args.batch, "size": args.size, "device": str(device)}
        for key, model in nets.items():
            n_params = sum(p.numel() for p in model.parameters())
            state_bytes = 3 * 4 * n_params  # fp32 weights + grads + momentum
            act = saved_activation_bytes(model, x, y)
            result[key] = {"step_s": statistics.median(times[key]), "params": n_params, "memory_mb": (state_bytes + act) / 2**20,
                           "activation_mb": act / 2**20}
        result["time_ratio"] = result["lowrank"]["step_s"] / result["dense"]["step_s"]
        result["memory_ratio"] = result["lowrank"]["memory_mb"] / result["dense"]["memory_mb"]
        rows.append(result)
        print(f"{name:10s} dense {result['dense']['step_s'] * 1000:7.1f} ms {result['dense']['memory_mb']:7.1f} MB | "
              f"rank {args.rank} {result['lowrank']['step_s'] * 1000:7.1f} ms {result['lowrank']['memory_mb']:7.1f} MB | "
              f"time x{result['time_ratio']:.2f}  memory x{result['memory_ratio']:.2f}", flush=True)
    meta = {"machine": platform.platform(), "threads": torch.get_num_threads(), "torch": torch.__version__, "steps": args.steps}
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
