"""What every command shares: consoles, number formatting, and turning errors into exit code 2."""

from __future__ import annotations

import json
import math
import os
import sys
import traceback
from collections.abc import Iterable
from enum import Enum
from typing import Any, NoReturn

from rich.console import Console
from rich.markup import escape

from ..errors import DEBUG_ENV, LowRankError

#: Human output; soft_wrap keeps an error message on one physical line however narrow the terminal.
console = Console()
if not console.is_terminal:  # piped or redirected: do not squeeze tables into 80 columns
    console = Console(width=200)
err_console = Console(stderr=True, soft_wrap=True, highlight=False)

EXIT_USAGE = 2

TRUST_CODE_HELP = (
    "Let the artifact (plan.json, ONNX metadata, recipe) name a 'package.module:factory' to import and call. "
    "Only for files you trust: a file is otherwise data and never runs code."
)


MODEL_ARG_HELP = (
    "A keyword argument for the model's builder (torchvision, timm/NAME, a factory), KEY=VALUE; the value is read as "
    "JSON (num_classes=10, drop_rate=0.1, features_only=true, replace_stride_with_dilation=[false,true,true]), else as "
    "a string (global_pool=avg). Repeatable; recorded in plan.json."
)


def parse_model_args(items: Iterable[str] | None) -> dict[str, Any]:
    """``["num_classes=10", "global_pool=avg"]`` → ``{"num_classes": 10, "global_pool": "avg"}``."""

    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise LowRankError(
                f"--model-arg {item!r} is not KEY=VALUE with KEY a Python identifier; write e.g. --model-arg num_classes=10"
            )
        if key in out:
            raise LowRankError(f"--model-arg {key} is given twice; give each argument once")
        try:
            out[key] = json.loads(text)
        except json.JSONDecodeError:
            out[key] = text
    return out


#: ``lowrank --debug`` (or ``LOWRANK_DEBUG=1``): show the traceback behind an error line.
_DEBUG = {"on": False}

DEBUG_HELP = f"Show the full traceback behind an error (for a bug report); the same as {DEBUG_ENV}=1."


def set_debug(on: bool) -> None:
    _DEBUG["on"] = bool(on)


def debug_enabled() -> bool:
    """Whether errors show their traceback: ``lowrank --debug`` or ``LOWRANK_DEBUG`` set to anything but 0."""
    return _DEBUG["on"] or os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print ``error: MESSAGE`` on stderr and exit with ``code``; in debug mode, called while an exception is
    handled, its traceback first."""
    if debug_enabled() and sys.exc_info()[1] is not None:
        traceback.print_exc(file=sys.stderr)
    # The message carries user values (paths, patterns): printed as text, never read as rich markup.
    err_console.print(f"[bold red]error:[/bold red] {escape(message)}")
    sys.exit(code)


def note(message: str) -> None:
    """A remark for the user, one line on stderr (user values printed as text, never as markup)."""
    err_console.print(f"[yellow]note:[/yellow] {escape(message)}")


def human(n: float, unit: str = "") -> str:
    """12_345_678 → '12.3M'."""
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suffix}{unit}"
    return f"{n:.0f}{unit}"


def print_json(data: object) -> None:
    """``data`` as strict JSON on stdout: a NaN or infinity (an unmeasured value) is written as null."""
    sys.stdout.write(json_text(data, indent=2) + "\n")


def json_text(data: object, indent: int | None = None) -> str:
    """``data`` as strict JSON text: a NaN or infinity (an unmeasured value) is written as null."""
    return json.dumps(_finite(data), indent=indent, allow_nan=False)


def _finite(data: Any) -> Any:
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(v) for v in data]
    return data


def choices(name: str, values: Iterable[str]) -> type[Enum]:
    """A str Enum for typer's choice options, built from the tuple the library validates against."""
    return Enum(name, {v.replace("-", "_"): v for v in values}, type=str)  # type: ignore[return-value]
