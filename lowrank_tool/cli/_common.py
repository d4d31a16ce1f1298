"""What every command shares: consoles, number formatting, and turning errors into exit code 2."""

from __future__ import annotations

import sys
from enum import Enum
from typing import Iterable, NoReturn

from rich.console import Console

#: Human output; soft_wrap keeps an error message on one physical line however narrow the terminal.
console = Console()
if not console.is_terminal:  # piped or redirected: do not squeeze tables into 80 columns
    console = Console(width=200)
err_console = Console(stderr=True, soft_wrap=True, highlight=False)

EXIT_USAGE = 2


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    err_console.print(f"[bold red]error:[/bold red] {message}")
    sys.exit(code)


def human(n: float, unit: str = "") -> str:
    """12_345_678 → '12.3M'."""
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suffix}{unit}"
    return f"{n:.0f}{unit}"


def print_json(data: object) -> None:
    import json

    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def choices(name: str, values: Iterable[str]) -> type[Enum]:
    """A str Enum for typer's choice options, built from the tuple the library validates against."""
    return Enum(name, {v.replace("-", "_"): v for v in values}, type=str)  # type: ignore[return-value]
