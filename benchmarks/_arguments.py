"""What the benchmark scripts share on the command line: argument types and how a script ends on a mistake.

Each script runs from this folder, so ``from _arguments import``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn


def at_least(low: float, kind: type = int) -> Callable[[str], float]:
    """An argparse type: a number of ``kind`` no smaller than ``low`` (else argparse's one-line error, exit 2)."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{text} is below {low}")
        return value

    return parse


def run_main(main: Callable[[], int | None]) -> NoReturn:
    """Run a script's ``main`` as the ``lowrank`` command runs a command: a mistake the toolkit refuses (a
    :class:`~lowrank_tool.errors.LowRankError`: an unknown model, a missing recipe) ends in one ``error:`` line on
    stderr with exit code 2, not a traceback; otherwise ``main``'s return value is the exit code."""
    from lowrank_tool.errors import LowRankError

    try:
        code = main()
    except LowRankError as exc:
        print(f"error: {str(exc).strip().splitlines()[-1]}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(code or 0)
