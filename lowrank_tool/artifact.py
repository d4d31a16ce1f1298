"""The artifact directory on disk: its file names, and writing any file or directory atomically.

An artifact is a directory: ``plan.json`` (the conversion plan) and ``model.safetensors`` (the weights),
plus, once trained, ``best.safetensors``, ``train_state.pt``, ``metrics.jsonl`` and ``summary.json``.
Every file the toolkit writes goes through :func:`atomic_file` (or :func:`atomic_directory` for a whole
artifact): it is written under a temporary name beside its target and renamed into place only when
complete, so a run killed at any moment, a full disk or an exception leaves either the old file or the
new one, never half of one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from .errors import LowRankError

__all__ = [
    "PLAN_FILE",
    "WEIGHTS_FILE",
    "BEST_FILE",
    "STATE_FILE",
    "METRICS_FILE",
    "SUMMARY_FILE",
    "atomic_file",
    "atomic_write_text",
    "atomic_directory",
]

PLAN_FILE = "plan.json"
WEIGHTS_FILE = "model.safetensors"
BEST_FILE = "best.safetensors"
STATE_FILE = "train_state.pt"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on any error it is removed.

    ``suffix`` is the temporary file's ending (writers that pick a format from the name, such as
    matplotlib, need the real one).

    Example:
        >>> with atomic_file("out.json") as tmp:  # doctest: +SKIP
        ...     tmp.write_text("{}")
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


class atomic_directory:
    """Context manager: yields a temporary directory beside ``target``, renamed to ``target`` on success.

    Missing parent directories are created (and removed again on failure). With ``overwrite`` an
    existing ``target`` is replaced only after the new one is complete.
    """

    def __init__(self, target: str | os.PathLike[str], overwrite: bool = False) -> None:
        self.target = Path(target)
        self.overwrite = overwrite
        self.tmp: Path | None = None
        self.created: list[Path] = []  # parent directories made here, removed again on failure

    def __enter__(self) -> Path:
        if self.target.exists() and not self.overwrite:
            raise LowRankError(
                f"{self.target} already exists; choose another output directory or pass --force (overwrite=True)"
            )
        if self.target.exists() and not self.target.is_dir():
            raise LowRankError(f"{self.target} exists and is not a directory; choose another output path")
        parent = self.target.parent
        try:
            missing = [p for p in [parent, *parent.parents] if not p.exists()]
            for p in reversed(missing):
                p.mkdir()
                self.created.append(p)
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.", suffix=".tmp", dir=parent))
        except OSError as exc:
            self._remove_created()
            raise LowRankError(
                f"cannot write into {parent} ({exc.strerror}); choose a writable output directory"
            ) from None
        return self.tmp

    def _remove_created(self) -> None:
        for p in reversed(self.created):
            try:
                p.rmdir()
            except OSError:
                break

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self.tmp is not None
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self._remove_created()
            return
        old = None
        if self.target.exists():
            old = self.target.with_name(f".{self.target.name}.old-{os.getpid()}")
            os.replace(self.target, old)
        os.replace(self.tmp, self.target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
