"""Merging factor chains back into dense convolutions for deployment (``--merge none|all|auto``).

A Tucker-2 layer is three convs (1×1 → k×k → 1×1). It has fewer MACs than the dense conv, but three
kernel launches, two extra activations in memory and small channel counts that vectorise worse. On a
given runtime some layers are faster merged back into one dense conv (``LowRankConv.to_dense``, exact up
to float rounding). ``auto`` decides per layer by measurement: it exports the factorised layer and its
merged conv alone at the layer's recorded input shape, times both in ONNX Runtime with the same
threads, and keeps whichever is faster. Identical layers (same geometry, ranks and input) are timed once.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from ..choices import MERGE_MODES
from ..conversion_plan import ConversionPlan, plan_of
from ..convert.apply import replace_module
from ..errors import LowRankError
from ..layers.base import LowRankConv
from ..runtime import time_module

__all__ = ["MERGE_MODES", "MergeDecision", "merge_factors"]


@dataclass
class MergeDecision:
    """What ``merge_factors`` did with one low-rank layer, and the timings behind it (``auto``)."""

    name: str
    merged: bool
    reason: str
    factorised_ms: float | None = None
    dense_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def merge_factors(
    model: nn.Module,
    mode: str = "all",
    *,
    plan: ConversionPlan | None = None,
    batch: int = 1,
    threads: int | None = None,
    device: str = "cpu",
    runs: int = 30,
    warmup: int = 5,
    precision: str = "fp32",
    progress: Callable[[int, int, str], None] | None = None,
) -> list[MergeDecision]:
    """Replace low-rank layers of ``model`` (in place) by the dense convs they compute.

    Args:
        model: a converted model (float32, eval mode for ``auto``).
        mode: ``"none"`` (keep every factor chain), ``"all"`` (merge every layer) or ``"auto"`` (merge a
            layer only where ONNX Runtime runs the merged conv faster; needs the plan's input sizes).
        plan: the conversion plan (default: the one the model carries); ``auto`` reads each layer's
            input size from it.
        batch: batch size the per-layer timings use (``auto``).
        threads: ONNX Runtime intra-op threads for the timings (``auto``).
        device: ONNX Runtime device for the timings (``auto``).
        runs, warmup: timed and untimed calls per candidate (``auto``).
        precision: what ``auto`` times, the precision the file will run in: ``fp32``, or ``int8`` (both forms
            quantized as the exporter quantizes).
        progress: called as ``progress(done, total, layer_name)``.

    Returns:
        One :class:`MergeDecision` per low-rank layer, in model order.

    Example:
        >>> model = lowrank_tool.convert("resnet18", rank=0.3)
        >>> decisions = merge_factors(model, "all")
        >>> all(d.merged for d in decisions)
        True
    """
    if mode not in MERGE_MODES:
        raise LowRankError(f"merge mode {mode!r} is not known; use one of: {', '.join(MERGE_MODES)}")
    if plan is None:
        plan = plan_of(model)
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, LowRankConv)]
    decisions: list[MergeDecision] = []
    cache: dict[tuple[Any, ...], tuple[float, float]] = {}
    for done, (name, layer) in enumerate(layers, 1):
        if mode == "none":
            decisions.append(MergeDecision(name, False, "merge none"))
        elif mode == "all":
            replace_module(model, name, layer.to_dense())
            decisions.append(MergeDecision(name, True, "merge all"))
        else:
            entry = _plan_entry(plan, name)
            if entry is None or not entry.input_size:
                decisions.append(MergeDecision(name, False, "no recorded input size in the plan: kept factorised"))
            else:
                shape = (batch, layer.geometry.in_channels, *entry.input_size)
                key = (type(layer), repr(layer), shape)
                if key not in cache:
                    factorised = copy.deepcopy(layer).float().eval()
                    dense = factorised.to_dense()
                    timed = functools.partial(
                        time_module, device=device, threads=threads, runs=runs, warmup=warmup, precision=precision
                    )
                    cache[key] = (timed(factorised, shape), timed(dense, shape))
                fact_ms, dense_ms = cache[key]
                merged = dense_ms < fact_ms
                if merged:
                    replace_module(model, name, layer.to_dense())
                reason = f"dense {dense_ms:.3f} ms vs factorised {fact_ms:.3f} ms"
                decisions.append(MergeDecision(name, merged, reason, fact_ms, dense_ms))
        if progress is not None:
            progress(done, len(layers), name)
    return decisions


def _plan_entry(plan: ConversionPlan | None, name: str) -> Any:
    if plan is None:
        return None
    try:
        return plan.layer(name)
    except KeyError:
        return None
