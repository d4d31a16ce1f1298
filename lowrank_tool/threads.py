"""Thread counts a measurement may ask for: positive, and not far above this machine's CPUs.

Torch-free and numpy-free, so that every command checks ``--threads`` before it imports anything heavy.
"""

from __future__ import annotations

import os

from .errors import LowRankError

__all__ = ["THREADS_PER_CPU", "check_threads", "max_threads"]

#: Thread counts above this many per CPU are refused: they time contention, not the model, and a typo such
#: as 99999 made ONNX Runtime start 22,000 threads (17 GB) that SIGTERM could not stop.
THREADS_PER_CPU = 4


def max_threads() -> int:
    """The most intra-op threads a measurement may ask for on this machine."""
    return max(8, THREADS_PER_CPU * (os.cpu_count() or 1))


def check_threads(value: object, what: str = "threads") -> None:
    """A clear error for a thread count that is not a positive integer or is far above this machine's CPUs."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LowRankError(f"{what} {value!r} must be a positive integer")
    if value > max_threads():
        raise LowRankError(
            f"{what} {value} is more than {THREADS_PER_CPU}x this machine's {os.cpu_count() or 1} CPUs; "
            f"use at most {max_threads()} (timings above the core count measure contention, not the model)"
        )
