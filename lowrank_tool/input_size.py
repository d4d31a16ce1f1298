"""A model's per-sample input size, as the user writes it: ``3x224x224`` (C×H×W) or ``3x16x112x112`` (video).

Light (the standard library only), so that every command can check ``--input-size`` before torch is imported.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Iterable, Mapping, Sequence

from .errors import LowRankError

__all__ = ["parse_input_size"]


def parse_input_size(value: str | Sequence[int] | None) -> tuple[int, ...] | None:
    """``"3x224x224"`` or ``(3, 224, 224)`` → ``(3, 224, 224)``; C×H×W, or C×T×H×W for video."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().lower().replace("×", "x")
        if not re.fullmatch(r"\d+(x\d+){2,3}", text):
            raise LowRankError(
                f"input size {value!r} is malformed; write CxHxW such as 3x224x224 (or CxTxHxW for video, e.g. 3x16x112x112)"
            )
        dims = tuple(int(d) for d in text.split("x"))
    else:
        items = list(value) if isinstance(value, Iterable) and not isinstance(value, (bytes, Mapping)) else None
        if items is None or not all(isinstance(d, numbers.Integral) and not isinstance(d, bool) for d in items):
            raise LowRankError(
                f"input size {value!r} must be 'CxHxW' or a list of 3 or 4 integers, e.g. 3x224x224 or [3, 224, 224]"
            )
        dims = tuple(int(d) for d in items)
        if len(dims) not in (3, 4):
            raise LowRankError(f"input size {tuple(value)} must have 3 (C, H, W) or 4 (C, T, H, W) dimensions")
    if any(d < 1 for d in dims):
        raise LowRankError(f"input size {value!r} has a zero dimension; every dimension must be >= 1")
    return dims
