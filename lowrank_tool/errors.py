"""User-facing error and warning types.

Every mistake a user can make (a bad rank, an unknown model, a corrupt artifact) raises
:class:`LowRankError` with one line that names the bad value, what is allowed and the fix. The CLI
prints that line to stderr and exits with code 2; Python callers can catch it as a ``ValueError``.
"""

from __future__ import annotations

import re

__all__ = ["LowRankError", "LowRankWarning", "VerificationError", "first_line"]


class LowRankError(ValueError):
    """Bad input from the user: the message is one line meant to be shown as is."""


class LowRankWarning(UserWarning):
    """Something recoverable and surprising happened (e.g. a layer left dense by request)."""


class VerificationError(RuntimeError):
    """An exported file does not compute what the PyTorch model computes (above tolerance).

    Not a usage error: the CLI prints the one-line message and exits with code 1.
    """


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def first_line(exc: BaseException, *, with_type: bool = True, limit: int = 200) -> str:
    """An exception in one line for a message: ``"TypeError: text"`` (or just the text, ``with_type=False``).

    The line is the first of the message that is not a quoted traceback (some libraries, such as the ONNX
    exporters, put one in the message) nor a header ending in ``:`` with the detail below it, with terminal
    colour codes removed.
    """
    text = _ANSI.sub("", str(exc)).strip()
    lines = [s.strip() for s in text.splitlines() if s.strip() and not s.strip().startswith(("Traceback", "File "))]
    if len(lines) > 1 and lines[0].endswith(
        ":"
    ):  # a header ("Error(s) in loading state_dict for Net:"): the detail follows
        lines = lines[1:]
    line = lines[0] if lines else ""
    if with_type:
        return f"{type(exc).__name__}: {line}"[:limit]
    if isinstance(exc, KeyError):  # its text is only the missing key
        return f"unknown value {text}"[:limit]
    return (line or type(exc).__name__)[:limit]
