"""Latency measurement: median and p90 over repeated runs after warm-up, in ONNX Runtime or PyTorch eager.

Timings use ``time.perf_counter`` around each call; CUDA work is synchronised before the clock stops.
Compare numbers measured in one process, one after the other: absolute times drift on a shared machine.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["Latency", "measure", "time_onnx", "time_torch"]


@dataclass
class Latency:
    """Milliseconds per call over ``runs`` timed calls (after ``warmup`` untimed ones)."""

    median_ms: float
    p90_ms: float
    min_ms: float
    runs: int
    warmup: int
    samples: list[float] = field(default_factory=list, repr=False)  # every timed call, ms, in order

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("median_ms", "p90_ms", "min_ms", "runs", "warmup")}


def measure(
    call: Callable[[], Any], *, runs: int = 50, warmup: int = 10, sync: Callable[[], None] | None = None
) -> Latency:
    """Time ``call()``: ``warmup`` untimed calls, then ``runs`` timed ones."""
    if runs < 1 or warmup < 0:
        raise ValueError(f"runs must be >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    for _ in range(warmup):
        call()
    if sync is not None:
        sync()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        if sync is not None:
            sync()
        samples.append((time.perf_counter() - start) * 1e3)
    p90 = float(np.percentile(samples, 90)) if len(samples) > 1 else samples[0]
    return Latency(statistics.median(samples), p90, min(samples), runs, warmup, samples)


def time_onnx(session: Any, feed: dict[str, np.ndarray], *, runs: int = 50, warmup: int = 10) -> Latency:
    """Latency of ``session.run`` on one input feed."""
    return measure(lambda: session.run(None, feed), runs=runs, warmup=warmup)


def time_torch(
    model: nn.Module, example: Any, *, threads: int | None = None, runs: int = 50, warmup: int = 10
) -> Latency:
    """Latency of an eager forward pass in inference mode, with ``threads`` intra-op threads on the CPU."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            return measure(lambda: model(example), runs=runs, warmup=warmup, sync=sync)
    finally:
        torch.set_num_threads(previous)
