"""DDP on torch.distributed, launched by torchrun: process-group setup, reductions, and `--nproc`.

Nothing here re-implements distribution: gradients are averaged by ``DistributedDataParallel``, data is
split by ``DistributedSampler`` (see :mod:`.data`), processes are started by torchrun. Backend: nccl on
CUDA, gloo on CPU. Multi-node runs use torchrun's own rendezvous flags (see the README).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ..artifact import STATE_FILE
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


def launch(nproc: int, argv: list[str], directory: str | os.PathLike[str] | None = None, *, debug: bool = False) -> int:
    """Re-run this command under torchrun with ``nproc`` processes on this machine; returns its exit code.

    The ranks' one-line messages reach stderr, not torchrun's logs and tracebacks; how the run ended is said in
    one line (see :func:`_relay`). Ctrl-C, SIGTERM and SIGHUP are passed on to torchrun once (it runs in its own
    session, so a terminal's Ctrl-C does not reach it twice), which passes them on to the ranks: they save the
    state at the current step and stop; the exit code is then 130. ``directory`` is the run's artifact
    directory (for the ``--resume`` hint). ``debug`` (``lowrank --debug``, ``LOWRANK_DEBUG=1``) passes every
    line on as it is, tracebacks included.
    """
    cmd = _torchrun(nproc, argv)
    debug = debug or os.environ.get("LOWRANK_DEBUG", "").strip() not in ("", "0")
    env = {**os.environ, "LOWRANK_DEBUG": "1"} if debug else None
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True, env=env)
    assert proc.stderr is not None
    stops: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        stops.append(signum)
        try:  # SIGHUP (a closed terminal) as SIGTERM: the ranks save on SIGINT and SIGTERM only
            os.kill(proc.pid, signal.SIGTERM if signum == signal.SIGHUP else signum)
        except ProcessLookupError:
            pass

    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (int(signal.SIGINT), int(signal.SIGTERM), int(signal.SIGHUP)):
            previous[sig] = signal.signal(sig, forward)
    try:
        return _relay(
            proc.stderr,
            proc.wait,
            sys.stderr,
            directory=directory,
            stopped=lambda: stops[0] if stops else None,
            debug=debug,
        )
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _torchrun(nproc: int, argv: list[str]) -> list[str]:
    """The torchrun command line that runs ``lowrank ARGV`` in ``nproc`` processes on this machine."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "lowrank_tool",
        *argv,
    ]


#: torchrun's own output: its banner and its logger (``E1124 16:08:41.61 ...``).
_TORCHRUN_NOISE = re.compile(r"^(\*{5,}|Setting OMP_NUM_THREADS|[EWI]\d{4} \d\d:\d\d:\d\d)")
#: The start of a failure: a traceback, or PyTorch's record of a rank's uncaught error (``[rank0]: ...``).
_FAILING = re.compile(r"^(Traceback \(|\[rank\d+\]:)")
#: The ranks' one-line messages (the CLI's ``error:``/``note:`` lines and a stopped run's ``interrupted:``).
_MESSAGE = ("error: ", "interrupted: ", "note: ")


def _failed_rank(held: list[str]) -> tuple[int | None, int] | None:
    """(rank, exit code) of the first failure torchrun reports ("Root Cause"; a signal is a negative code)."""
    text = "".join(held)
    root = text[text.find("Root Cause") :] if "Root Cause" in text else ""
    code = re.search(r"exitcode\s*:\s*(-?\d+)", root)
    if code:
        rank = re.search(r"\brank\s*:\s*(\d+)", root)
        return (int(rank.group(1)) if rank else None), int(code.group(1))
    logged = re.search(r"failed \(exitcode: (-?\d+)\) local_rank: (\d+)", text)
    if logged:
        return int(logged.group(2)), int(logged.group(1))
    return None


def _resume_hint(directory: str | os.PathLike[str] | None) -> str:
    if directory is None:
        return "continue from the last checkpoint with `lowrank train DIR --resume`"
    if not (Path(directory) / STATE_FILE).is_file():
        return f"no checkpoint was saved yet, so {directory} is as it was: start the run again"
    return f"continue from the last checkpoint with `lowrank train {directory} --resume`"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _relay(
    lines: Any,
    wait: Any,
    out: Any,
    *,
    directory: str | os.PathLike[str] | None = None,
    stopped: Callable[[], int | None] = lambda: None,
    debug: bool = False,
) -> int:
    """Copy the ranks' stderr to ``out`` and end with one line saying how the run ended; return its exit code.

    Passed on: progress and the ranks' one-line messages (each distinct ``error:`` line once). Held back:
    torchrun's logs and report, and every traceback (a process that fails takes the others down, and each
    says so at length). At the end: 130 when the run was stopped (Ctrl-C/SIGTERM; rank 0 has said where its
    state was saved, else one line says it); 2 after a rank's usage error; 1, with one line naming the rank
    and the signal and the ``--resume`` hint, when a rank was killed; anything else unexplained shows what
    was held back (a bug needs its traceback). ``debug`` (``LOWRANK_DEBUG=1``) passes everything on as it is.
    """
    seen: set[str] = set()
    held: list[str] = []
    user_error = interrupted = failing = False
    for line in lines:
        if debug:
            out.write(line)
            out.flush()
            continue
        if line.startswith(_MESSAGE):
            user_error = user_error or line.startswith("error: ")
            interrupted = interrupted or line.startswith("interrupted: ")
            if line in seen:
                continue
            seen.add(line)
        elif failing or not line.strip() or _TORCHRUN_NOISE.match(line) or _FAILING.match(line):
            failing = failing or bool(_FAILING.match(line))
            held.append(line)
            continue
        out.write(line)
        out.flush()
    code = int(wait())
    if debug:
        return code
    stop = stopped()
    if stop is not None:
        if not interrupted:
            out.write(f"interrupted: stopped by {_signal_name(stop)}; {_resume_hint(directory)}\n")
        return 130
    if code == 0:
        return 0
    if user_error:
        return 2
    failure = _failed_rank(held)
    if failure is not None and failure[1] < 0:
        rank, number = failure
        who = f"rank {rank}" if rank is not None else "one of them"
        out.write(
            f"error: training process {who} was killed ({_signal_name(-number)}), so the run stopped; "
            f"{_resume_hint(directory)}\n"
        )
        return 1
    if interrupted:
        return 130
    out.writelines(held)  # a failure we cannot name in one line: its tracebacks are the information
    return code
