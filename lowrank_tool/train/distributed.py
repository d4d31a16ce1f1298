"""DDP on torch.distributed, launched by torchrun: process-group setup, reductions, and `--nproc`.

Nothing here re-implements distribution: gradients are averaged by ``DistributedDataParallel``, data is
split by ``DistributedSampler`` (see :mod:`.data`), processes are started by torchrun. Backend: nccl on
CUDA, gloo on CPU. Multi-node runs use torchrun's own rendezvous flags (see the README).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ..errors import LowRankError

__all__ = ["DistInfo", "setup", "teardown", "all_reduce_sum", "launch"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str = "auto") -> DistInfo:
    """Join the process group torchrun describes in the environment (a no-op for a single process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if device == "cuda" and not torch.cuda.is_available():
        raise LowRankError("device 'cuda' requested but no CUDA device is available; use --device cpu (or auto)")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if world <= 1:
        return DistInfo(device=torch.device("cuda" if use_cuda else "cpu"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local, torch.device(f"cuda:{local}" if use_cuda else "cpu"))


def teardown(info: DistInfo, completed: bool = True) -> None:
    """Destroy the process group; after a completed run, only once every rank got here.

    Without the barrier a fast rank 0 could destroy the group while rank 1 is still inside gloo, which
    aborts rank 1 at exit ("terminate called without an active exception"; seen in about 1 of 5
    two-process CPU runs, 0 of 10 with it). After an error there is no barrier: the other ranks may be
    stuck in a collective, and torchrun stops them when this one exits.
    """
    if info.enabled and dist.is_initialized():
        try:
            if completed:
                dist.barrier()
        finally:
            dist.destroy_process_group()


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    """Sum a few scalars over all ranks (float64 on the run's device)."""
    if not info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return t.tolist()


def launch(nproc: int, argv: list[str]) -> int:
    """Re-run this command under torchrun with ``nproc`` processes on this machine; returns its exit code."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "lowrank_tool",
        *argv,
    ]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, errors="replace")
    assert proc.stderr is not None
    return _relay(proc.stderr, proc.wait, sys.stderr)


#: torchrun's own output: its banner, its logger (``E1124 16:08:41.61 ...``), and the failure report it prints
#: after the ranks' own one-line errors (a ChildFailedError traceback).
_TORCHRUN_NOISE = re.compile(r"^(\*{5,}|Setting OMP_NUM_THREADS|[EWI]\d{4} \d\d:\d\d:\d\d)")


def _relay(lines: Any, wait: Any, out: Any) -> int:
    """Copy the ranks' stderr to ``out``, each distinct ``error:`` line once and without torchrun's own report;
    returns the ranks' exit code (2 for a usage error) rather than torchrun's generic 1."""
    seen: set[str] = set()
    user_error = quiet = False
    for line in lines:
        if quiet or not line.strip() or _TORCHRUN_NOISE.match(line):
            continue
        if line.startswith("Traceback (most recent call last):") and user_error:
            quiet = True  # torchrun's ChildFailedError report about the ranks that already said why
            continue
        if line.startswith("error: "):
            user_error = True
            if line in seen:
                continue
            seen.add(line)
        out.write(line)
        out.flush()
    code = int(wait())
    return 2 if code and user_error else code
