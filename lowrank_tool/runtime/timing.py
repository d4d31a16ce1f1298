"""Latency measurement: median and p90 over repeated runs after warm-up, in ONNX Runtime or PyTorch eager.

Timings use ``time.perf_counter`` around each call; CUDA work is synchronised before the clock stops.
Compare numbers measured in one process, one after the other: absolute times drift on a shared machine.
Two models are compared by :func:`paired_speedup`: time them in alternating rounds (:func:`interleave`,
which waits out the previous model's spinning worker threads before timing the next) and take the median of
the per-round ratios, with their range and a distribution-free confidence interval of the median. A range
wider than :data:`STABLE_SPREAD` of the median marks the comparison as noisy; whether a speedup target
is met is decided by the interval (:meth:`PairedSpeedup.verdict`): met when its lower end reaches the
target, missed when its upper end stays below, undecided otherwise.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

__all__ = [
    "Latency",
    "PairedSpeedup",
    "CONFIDENCE",
    "interleave",
    "STABLE_SPREAD",
    "measure",
    "median_interval",
    "paired_speedup",
    "time_onnx",
    "time_torch",
    "torch_threads",
]

#: a paired speedup whose range (max − min of the per-round ratios) exceeds this fraction of its median is
#: reported as unstable: too noisy to claim a target from.
STABLE_SPREAD = 0.10
#: coverage of :func:`median_interval` as :func:`paired_speedup` uses it.
CONFIDENCE = 0.95

K = TypeVar("K", bound=Hashable)


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


def interleave(
    calls: Mapping[K, Callable[[], Any]],
    *,
    rounds: int,
    runs: int,
    warmup: int = 10,
    round_warmup: int = 2,
    idle_spin_s: Mapping[K, float] | None = None,
    sync: Mapping[K, Callable[[], None] | None] | None = None,
) -> dict[K, list[Latency]]:
    """Time several models in ``rounds`` interleaved rounds: one :class:`Latency` of ``runs`` calls per model
    per round, the models in turn, round ``r`` starting from the ``r``-th (so each goes first equally often).

    The first round warms each model up with ``warmup`` untimed calls, later ones with ``round_warmup``. Before
    a model's turn, the previous model's ``idle_spin_s`` (its :attr:`~.engines.Runner.idle_spin_s`) is waited
    out: an ONNX Runtime session's worker threads spin for tens of milliseconds after a run, and a model timed
    meanwhile shares the cores with them (measured: a ResNet-50 rank-0.3 int8 file at 2 threads, 16 ms alone,
    30 ms right after another session). A deployment runs one model; so does each timed call here.
    """
    if rounds < 1 or runs < 1 or warmup < 0 or round_warmup < 0:
        raise ValueError(
            f"rounds and runs must be >= 1 and the warm-ups >= 0, got rounds={rounds}, runs={runs}, "
            f"warmup={warmup}, round_warmup={round_warmup}"
        )
    keys = list(calls)
    spin = idle_spin_s or {}
    syncs = sync or {}
    out: dict[K, list[Latency]] = {k: [] for k in keys}
    previous: K | None = None
    for r in range(rounds):
        start = r % len(keys) if keys else 0
        for key in keys[start:] + keys[:start]:
            if previous is not None and previous != key and spin.get(previous, 0.0) > 0:
                time.sleep(spin[previous])
            out[key].append(
                measure(calls[key], runs=runs, warmup=warmup if r == 0 else round_warmup, sync=syncs.get(key))
            )
            previous = key
    return out


def time_onnx(session: Any, feed: dict[str, np.ndarray], *, runs: int = 50, warmup: int = 10) -> Latency:
    """Latency of ``session.run`` on one input feed."""
    return measure(lambda: session.run(None, feed), runs=runs, warmup=warmup)


def time_torch(
    model: nn.Module, example: Any, *, threads: int | None = None, runs: int = 50, warmup: int = 10
) -> Latency:
    """Latency of an eager forward pass in inference mode, with ``threads`` intra-op threads on the CPU."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    with torch_threads(threads), torch.inference_mode():
        return measure(lambda: model(example), runs=runs, warmup=warmup, sync=sync)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` PyTorch intra-op threads (``None``: leave them), then restore them."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def median_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """A distribution-free confidence interval of the median of ``values``: two order statistics.

    With ``n`` values sorted, ``[x_(k), x_(n-k+1)]`` covers the true median with probability
    ``1 - 2 P(B <= k-1)``, B ~ Binomial(n, 1/2), whatever the distribution (the sign test's interval); ``k`` is
    the largest that keeps that at least ``confidence``. ``None`` when ``n`` is too small for any pair to
    reach it (fewer than 6 values at 95 %). 10 values give the 2nd and 9th (97.9 %), 40 the 14th and 27th.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    xs = sorted(values)
    n = len(xs)
    tail = (1.0 - confidence) / 2
    k, below = 0, 0.0  # below = P(B <= k - 1)
    while k < n // 2:
        nxt = below + math.comb(n, k) / 2.0**n
        if nxt > tail:
            break
        below, k = nxt, k + 1
    if k == 0:
        return None
    return xs[k - 1], xs[n - k]


@dataclass(frozen=True)
class PairedSpeedup:
    """How many times faster one model ran than another: median ``speedup`` of the per-round ratios, the
    lowest and highest round, how many rounds were paired, and a :data:`CONFIDENCE` interval of the median
    (``ci_low``, ``ci_high``; ``None`` with fewer than 6 rounds) — see :func:`paired_speedup`."""

    speedup: float
    low: float
    high: float
    rounds: int
    ci_low: float | None = None
    ci_high: float | None = None

    @property
    def spread(self) -> float:
        """The range of the per-round ratios as a fraction of their median."""
        return (self.high - self.low) / self.speedup if self.speedup > 0 else 0.0

    @property
    def stable(self) -> bool:
        """More than one round, and a spread within :data:`STABLE_SPREAD`."""
        return self.rounds > 1 and self.spread <= STABLE_SPREAD

    def verdict(self, target: float) -> str:
        """``"met"`` when the interval's lower end reaches ``target``, ``"missed"`` when its upper end is below
        it, else ``"undecided"`` (also when there are too few rounds for an interval)."""
        if self.ci_low is None or self.ci_high is None:
            return "undecided"
        if self.ci_low >= target:
            return "met"
        if self.ci_high < target:
            return "missed"
        return "undecided"


def paired_speedup(slow_ms: Sequence[float], fast_ms: Sequence[float]) -> PairedSpeedup:
    """``slow / fast`` from times measured in the same rounds: the median of the per-round ratios, its range
    and its confidence interval (:func:`median_interval`).

    Pairing round by round cancels the machine's drift, which moves both models of a round together.
    Rounds where either time is not positive are left out; with none left the result is 0 over 0 rounds.
    """
    if len(slow_ms) != len(fast_ms):
        raise ValueError(f"paired times need the same number of rounds, got {len(slow_ms)} and {len(fast_ms)}")
    ratios = [s / f for s, f in zip(slow_ms, fast_ms, strict=True) if s > 0 and f > 0]
    if not ratios:
        return PairedSpeedup(0.0, 0.0, 0.0, 0)
    interval = median_interval(ratios)
    ci_low, ci_high = interval if interval is not None else (None, None)
    return PairedSpeedup(statistics.median(ratios), min(ratios), max(ratios), len(ratios), ci_low, ci_high)
