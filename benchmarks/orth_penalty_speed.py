"""Cost of ELRT's orthogonality penalty: the batched implementation vs a per-factor Python loop.

Usage:
    python benchmarks/orth_penalty_speed.py [--model resnet50] [--rank 0.3] [--repeat 20]

Times forward + backward of the penalty on a converted model (both computed in the same run,
alternating), prints a table and writes benchmarks/results/orth_penalty_speed.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import lowrank_tool as lr
from lowrank_tool.methods import orthogonality_penalty


def looped(model: torch.nn.Module) -> torch.Tensor:
    total = torch.zeros(())
    for m in model.modules():
        if isinstance(m, lr.LowRankConv):
            for u in m.factors():
                total = total + (u.T @ u - torch.eye(u.shape[1])).pow(2).sum()
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--rank", type=float, default=0.3)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--json", default="benchmarks/results/orth_penalty_speed.json")
    args = parser.parse_args()
    model = lr.convert(args.model, rank=args.rank)
    n_factors = sum(len(m.factors()) for m in model.modules() if isinstance(m, lr.LowRankConv))
    fns = {"batched": lambda: orthogonality_penalty(model, "so"), "loop": lambda: looped(model)}
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(args.repeat + 2):
        for key, fn in fns.items():
            model.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            fn().backward()
            if i >= 2:
                times[key].append(time.perf_counter() - t0)
    rows = {k: statistics.median(v) * 1000 for k, v in times.items()}
    torch.testing.assert_close(orthogonality_penalty(model, "so"), looped(model), rtol=1e-4, atol=1e-6)
    print(f"{args.model} rank {args.rank}: {n_factors} factors | batched {rows['batched']:.2f} ms | loop {rows['loop']:.2f} ms | "
          f"speed-up x{rows['loop'] / rows['batched']:.1f}")
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"model": args.model, "rank": args.rank, "factors": n_factors, "median_ms": rows,
                                "threads": torch.get_num_threads()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
