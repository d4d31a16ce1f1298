"""Per-layer choices by fully qualified name: exact name beats ``re:`` regex beats the default.

Patterns that select nothing are an error (a typo would otherwise silently convert everything) that
repeats the patterns and points to ``lowrank layers MODEL``, which lists the candidate names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Generic, TypeVar

from ..errors import LowRankError

__all__ = ["FqnMatcher", "parse_layer_rank"]

T = TypeVar("T")


def _compile(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern[3:])
    except re.error as exc:
        raise LowRankError(
            f"pattern {pattern!r} is not a valid regular expression ({exc}); write e.g. 're:layer4\\..*'"
        ) from None


class FqnMatcher(Generic[T]):
    """Map layer names to values through exact names and ``re:`` patterns (full match)."""

    def __init__(self, rules: Mapping[str, T], what: str) -> None:
        self.what = what
        self.exact = {k: v for k, v in rules.items() if not k.startswith("re:")}
        self.regex = [(k, _compile(k), v) for k, v in rules.items() if k.startswith("re:")]
        self.order = list(rules)
        self.used: set[str] = set()

    def lookup(self, name: str) -> tuple[bool, T | None]:
        if name in self.exact:
            self.used.add(name)
            return True, self.exact[name]
        for key, rx, value in self.regex:
            if rx.fullmatch(name):
                self.used.add(key)
                return True, value
        return False, None

    def check_all_used(self, model_hint: str) -> None:
        unused = [k for k in self.order if k not in self.used]
        if unused:
            shown = ", ".join(repr(u) for u in unused)
            raise LowRankError(
                f"{self.what} pattern(s) {shown} match no convolution; list the layer names with `lowrank layers {model_hint}`"
            )


def parse_layer_rank(items: Iterable[str] | Mapping[str, object] | None) -> dict[str, object]:
    """``['re:layer4\\..*=0.5', 'fc=dense']`` → ``{'re:layer4\\..*': '0.5', 'fc': 'dense'}``."""
    if items is None:
        return {}
    if isinstance(items, Mapping):
        if not all(isinstance(k, str) for k in items):
            raise LowRankError(f"layer_rank {repr(dict(items))[:80]} must map layer names (strings) to ranks")
        return dict(items)
    if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
        raise LowRankError(
            f"layer_rank {repr(items)[:80]} must be a list of NAME=RANK items or a mapping, e.g. ['layer1.0.conv2=0.5']"
        )
    out: dict[str, object] = {}
    for item in items:
        name, sep, value = str(item).rpartition("=")
        if not sep or not name or not value:
            raise LowRankError(
                f"--layer-rank {item!r} is not NAME=RANK; write e.g. 'layer1.0.conv2=0.5' or 're:layer4\\..*=16'"
            )
        out[name] = value
    return out
