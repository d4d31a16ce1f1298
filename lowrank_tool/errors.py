"""User-facing error and warning types.

Every mistake a user can make (a bad rank, an unknown model, a corrupt artifact) raises
:class:`LowRankError` with one line that names the bad value, what is allowed and the fix. The CLI
prints that line to stderr and exits with code 2; Python callers can catch it as a ``ValueError``.
"""

from __future__ import annotations

import re

__all__ = ["LowRankError", "LowRankWarning", "VerificationError", "first_line", "one_line", "DEBUG_ENV"]

#: Set to 1 to see the full traceback behind an error (the CLI's ``lowrank --debug``).
DEBUG_ENV = "LOWRANK_DEBUG"

#: A message that carries a traceback (an error re-raised from a DataLoader worker): kept as it is.
_TRACEBACK = "Traceback (most recent call last)"


class LowRankError(ValueError):
    """Bad input from the user: the message is one line meant to be shown as is.

    Control characters in the message (a newline or carriage return in a path) are written as escapes
    (``\\n``), so that a value the user gave can never split the line or hide the start of it.
    """

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], str) and _TRACEBACK not in args[0]:
            args = (one_line(args[0]),)
        super().__init__(*args)


class LowRankWarning(UserWarning):
    """Something recoverable and surprising happened (e.g. a layer left dense by request)."""


class VerificationError(RuntimeError):
    """An exported file does not compute what the PyTorch model computes (above tolerance).

    Not a usage error: the CLI prints the one-line message and exits with code 1.
    """


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def one_line(text: str) -> str:
    r"""``text`` with every control character escaped as Python writes it in a repr (``\n``, ``\x1b``).

    Example:
        >>> print(one_line("runs/a\nb is not a directory"))
        runs/a\nb is not a directory
    """
    return _CONTROL.sub(lambda m: _ESCAPES.get(m.group(), f"\\x{ord(m.group()):02x}"), text)


#: Sentences of ``torch.load``'s refusal that advise ``weights_only=False`` (running the file's code) or
#: allow-listing its classes: never advice to pass on about a file that is data.
_UNSAFE_ADVICE = re.compile(
    r"weights_only|safe_globals|trusted source|trust the source|trust this class|can still be loaded|file an issue|"
    r"Weights only load failed|Check the documentation of torch\.load",
    re.IGNORECASE,
)


def _without_unsafe_advice(line: str) -> str:
    sentences = re.split(r"(?<=[.!?])\s+", line)
    return " ".join(s for s in sentences if not _UNSAFE_ADVICE.search(s)).strip()


def first_line(exc: BaseException, *, with_type: bool = True, limit: int = 200) -> str:
    """An exception in one line for a message: ``"TypeError: text"`` (or just the text, ``with_type=False``).

    The line is the first of the message that is not a quoted traceback (some libraries, such as the ONNX
    exporters, put one in the message) nor a header ending in ``:`` with the detail below it, with terminal
    colour codes removed. ``torch.load``'s refusals lose their advice to load with ``weights_only=False``
    (which would run the file's code): what is left names what the file holds.
    """
    text = _ANSI.sub("", str(exc)).strip()
    text = text.split("WeightsUnpickler error:", 1)[-1].strip()  # torch.load's refusal: the detail follows
    lines = [s.strip() for s in text.splitlines() if s.strip() and not s.strip().startswith(("Traceback", "File "))]
    if any(_UNSAFE_ADVICE.search(line) for line in lines):
        lines = [kept for kept in map(_without_unsafe_advice, lines) if kept]
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
