"""Cost of ELRT's orthogonality penalty: the library's closed-form node vs plain autograd formulations.

Usage:
    python benchmarks/orth_penalty_speed.py                          # resnet18 at 32x32 and resnet50 at 224
    python benchmarks/orth_penalty_speed.py --models resnet50 --rank 0.3 --repeat 20

Times forward + backward of the SO penalty on a converted model, three ways, alternating in one run:

* ``closed-form``: :func:`lowrank_tool.orthogonality_penalty` (one autograd node, gradient 4·U(UᵀU − I));
* ``batched autograd``: factors stacked by shape, UᵀU − I by ``bmm``, autograd differentiates (the
  toolkit's previous implementation);
* ``loop autograd``: one ``(UᵀU − I)²`` per factor, autograd differentiates.

Checks that all three agree (value and gradients), prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _arguments import at_least, run_main
from _results import run_meta, write_result

import lowrank_tool as lr
from lowrank_tool.methods import orthogonality_penalty


def factors(model: torch.nn.Module) -> list[torch.Tensor]:
    return [u for m in model.modules() if isinstance(m, lr.LowRankConv) for u in m.factors()]


def looped(model: torch.nn.Module) -> torch.Tensor:
    total = torch.zeros(())
    for u in factors(model):
        total = total + (u.T @ u - torch.eye(u.shape[1])).pow(2).sum()
    return total


def batched(model: torch.nn.Module) -> torch.Tensor:
    by_shape: dict[tuple[int, ...], list[torch.Tensor]] = {}
    for u in factors(model):
        by_shape.setdefault(tuple(u.shape), []).append(u)
    total = torch.zeros(())
    for us in by_shape.values():
        u = torch.stack(us)
        g = u.transpose(1, 2) @ u - torch.eye(u.shape[-1])
        total = total + g.pow(2).sum()
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet18:32", "resnet50:224"], help="NAME[:INPUT_SIZE]")
    parser.add_argument("--rank", type=float, default=0.3)
    parser.add_argument("--repeat", type=at_least(1), default=20)
    parser.add_argument("--json", default="benchmarks/results/orth_penalty_speed.json")
    args = parser.parse_args()
    rows = []
    for spec in args.models:
        name, _, size = spec.partition(":")
        size = int(size or 224)
        model = lr.convert(name, rank=args.rank, input_size=(3, size, size))
        us = factors(model)
        fns = {
            "closed-form": lambda m=model: orthogonality_penalty(m, "so"),
            "batched autograd": lambda m=model: batched(m),
            "loop autograd": lambda m=model: looped(m),
        }
        grads = {}
        for key, fn in fns.items():
            model.zero_grad(set_to_none=True)
            fn().backward()
            grads[key] = [p.grad.clone() if p.grad is not None else None for p in model.parameters()]
        for key in fns:  # the three agree (float32 round-off)
            for a, b in zip(grads[key], grads["loop autograd"], strict=True):
                assert (a is None) == (b is None)
                if a is not None:
                    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        times: dict[str, list[float]] = {k: [] for k in fns}
        for i in range(args.repeat + 2):
            for key, fn in fns.items():
                model.zero_grad(set_to_none=True)
                t0 = time.perf_counter()
                fn().backward()
                if i >= 2:
                    times[key].append(time.perf_counter() - t0)
        ms = {k: statistics.median(v) * 1000 for k, v in times.items()}
        macs = sum(u.shape[0] * u.shape[1] ** 2 for u in us)
        rows.append(
            {
                "model": name,
                "input_size": size,
                "rank": args.rank,
                "factors": len(us),
                "sum_n_r2_macs": macs,
                "median_ms": ms,
            }
        )
        print(
            f"{name} rank {args.rank}: {len(us)} factors, sum n*r^2 = {macs / 1e6:.0f}M MACs | "
            + " | ".join(f"{k} {v:.2f} ms" for k, v in ms.items()),
            flush=True,
        )
    print()
    print("| model | factors | closed-form | batched autograd | loop autograd |")
    print("|---|---|---|---|---|")
    for r in rows:
        m = r["median_ms"]
        print(
            f"| {r['model']} | {r['factors']} | {m['closed-form']:.1f} ms | {m['batched autograd']:.1f} ms | {m['loop autograd']:.1f} ms |"
        )
    meta = run_meta("orth_penalty_speed.py", threads=torch.get_num_threads())
    print(f"wrote {write_result(args.json, {'meta': meta, 'rows': rows})}")


if __name__ == "__main__":
    run_main(main)
