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
import errno
import os
import re
import shutil
import socket
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

from .errors import LowRankError, LowRankWarning, first_line

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows has no fcntl: runs are not locked there
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "PLAN_FILE",
    "WEIGHTS_FILE",
    "BEST_FILE",
    "STATE_FILE",
    "METRICS_FILE",
    "SUMMARY_FILE",
    "atomic_file",
    "atomic_write_text",
    "follow_umask",
    "write_error",
    "WriteError",
    "check_path",
    "check_artifact",
    "atomic_directory",
    "LOCK_FILE",
    "DirectoryLock",
    "sweep_stale",
    "native_path",
]

PLAN_FILE = "plan.json"
WEIGHTS_FILE = "model.safetensors"
BEST_FILE = "best.safetensors"
STATE_FILE = "train_state.pt"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"


#: errno values that mean "this place cannot take the file": full disk, quota, read-only, permission, too long.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.ENAMETOOLONG}
#: ... and how libraries that wrap the OS error (safetensors, torch.save's C++ writer) report a failed write.
_WRITE_TEXTS = ("No space left on device", "os error 28", "file write failed", "Disk quota exceeded", "iostream error",
                "unexpected pos")  # fmt: skip


def _disk_fault(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in _WRITE_ERRNOS:
        return True
    return isinstance(exc, Exception) and any(text in str(exc) for text in _WRITE_TEXTS)


def _nearly_full(path: Path) -> bool:
    try:
        return shutil.disk_usage(path if path.is_dir() else path.parent).free < 1 << 20
    except OSError:
        return False


class WriteError(LowRankError):
    """A write the disk refused (one line). ``path`` and ``cause`` let a caller that wrote several files say
    which of them were written (:func:`write_error` with ``outcome``)."""

    def __init__(self, message: str, path: Path, cause: BaseException) -> None:
        super().__init__(message)
        self.path, self.cause = path, cause


def write_error(path: Path, exc: BaseException, outcome: str = "nothing was written") -> WriteError:
    """A write that the disk refused, as one line ending in ``outcome``: what is on disk now (by default
    nothing: the caller removed its temporary)."""
    if isinstance(exc, WriteError):  # said again by a caller that knows more (the directory, what was written)
        exc = exc.cause
    if isinstance(exc, OSError) and exc.strerror:
        why = exc.strerror
    elif "No space left" in str(exc) or "os error 28" in str(exc) or _nearly_full(path):
        why = "No space left on device"  # torch.save and safetensors report a full disk in their own words
    else:
        why = f"write failed: {first_line(exc, with_type=False)}"
    space = why == "No space left on device" or "quota" in why.lower() or "too large" in why.lower()
    fix = "free some space or choose another directory" if space else "choose another directory"
    return WriteError(f"cannot write {path} ({why}); {fix} — {outcome}", Path(path), exc)


#: File-name and path limits of Linux and macOS file systems, in bytes.
NAME_MAX, PATH_MAX = 255, 4096


#: What a temporary name adds to its target's (``.NAME.PID-XXXXXXXX.tmp``, with room for longer suffixes).
_TEMP_OVERHEAD = 32


def _name_max(path: Path) -> int:
    """The file system's limit on one name (``PC_NAME_MAX``) where ``path`` would be, else :data:`NAME_MAX`."""
    for place in [path.parent, *path.parent.parents]:
        try:
            return min(NAME_MAX, int(os.pathconf(place, "PC_NAME_MAX")))
        except (OSError, ValueError, AttributeError):
            continue
    return NAME_MAX


def check_path(path: str | os.PathLike[str]) -> Path:
    """A path the file system can take (else one line): each name within the file system's limit (255 bytes on
    most), the last one with room for the temporary name it is written under, the whole at most 4096 bytes."""
    path = Path(path)
    limit = _name_max(Path(os.path.abspath(path)))
    for i, part in enumerate(path.parts):
        size = len(os.fsencode(part))
        room = limit - _TEMP_OVERHEAD if i == len(path.parts) - 1 else limit
        if size > room:
            why = f"over the {limit}-byte limit of a file name here"
            if room < limit:
                why += f" less {_TEMP_OVERHEAD} for the temporary name it is written under ({room} bytes at most)"
            raise LowRankError(f"the name {part[:32]}... is {size} bytes long, {why}; choose a shorter name")
    size = len(os.fsencode(os.path.abspath(path)))
    if size >= PATH_MAX:
        raise LowRankError(
            f"the path {str(path)[:48]}... is {size} bytes long, over the {PATH_MAX}-byte limit; choose a shorter path"
        )
    return path


def check_artifact(directory: str | os.PathLike[str]) -> Path:
    """``directory`` as an artifact: a directory holding ``plan.json`` and ``model.safetensors`` (else one line).

    Only whether the files are there: what they hold is checked when they are read. Cheap (no torch), so
    that a mistyped path is refused at once, before any heavy import or work.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise LowRankError(f"{directory} is not a directory; point to a directory written by `lowrank convert -o DIR`")
    plan = directory / PLAN_FILE
    if not plan.is_file():
        what = "is not a file" if plan.exists() else "does not exist"
        raise LowRankError(f"{plan} {what}; point to a directory written by `lowrank convert -o DIR`")
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        what = "is not a file" if weights.exists() else "does not exist"
        raise LowRankError(f"{weights} {what}; the artifact is incomplete, re-create it with `lowrank convert -o DIR`")
    return directory


def _temp_prefix(target: Path) -> str:
    """``.NAME.PID-``: temporaries are hidden, name their target, and name the process that writes them."""
    return f".{target.name}.{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, it is someone else's
        return True
    return True


def sweep_stale(target: str | os.PathLike[str]) -> list[Path]:
    """Remove what a killed writer of ``target`` left beside it; return what was removed (and warn).

    A write killed at a moment no handler can catch (SIGKILL, power loss) leaves its temporary
    (``.NAME.PID-XXXXXXXX.tmp``) beside the target; one killed between the two renames of a directory
    replacement leaves the previous directory as ``.NAME.old-PID`` (put back when the target is missing).
    Only leftovers of processes that no longer run are touched, so a concurrent writer's files are safe.
    Every write through :func:`atomic_file` / :func:`atomic_directory` sweeps first; each sweep that finds
    something says so with one :class:`~lowrank_tool.errors.LowRankWarning`.
    """
    target = Path(target)
    parent = target.parent
    try:
        names = os.listdir(parent)
    except OSError:
        return []
    temp = re.compile(re.escape(f".{target.name}.") + r"(\d+)-[A-Za-z0-9_]{8}\.[A-Za-z0-9]+")
    old = re.compile(re.escape(f".{target.name}.old-") + r"(\d+)")
    removed: list[Path] = []
    restored: Path | None = None
    for name in names:
        match = temp.fullmatch(name) or old.fullmatch(name)
        if match is None or _alive(int(match.group(1))) or int(match.group(1)) == os.getpid():
            continue
        leftover = parent / name
        try:
            if match.re is old and not os.path.lexists(target):
                os.replace(leftover, target)
                restored = leftover
            elif leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover)
                removed.append(leftover)
            else:
                leftover.unlink()
                removed.append(leftover)
        except OSError:
            continue  # not ours to remove (permissions): leave it
    if removed or restored:
        what = [f"removed {len(removed)} temporary file(s) left by an interrupted write"] if removed else []
        if restored:
            what.append(f"put back the previous {target.name} from {restored.name}")
        warnings.warn(f"{target}: {'; '.join(what)} (the writer was killed)", LowRankWarning, stacklevel=3)
    return removed


@contextlib.contextmanager
def native_path(path: str | os.PathLike[str]) -> Iterator[str]:
    """``path`` as a str that libraries taking UTF-8 paths (safetensors) accept, while it is open.

    A name that is not valid UTF-8 (a byte-named directory from an old file system, a tar) is passed as
    the ``/proc/self/fd`` (or ``/dev/fd``) path of an open descriptor; any other path unchanged.
    """
    text = os.fspath(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        fd = os.open(path, os.O_RDONLY)
        try:
            proc = f"/proc/self/fd/{fd}"
            yield proc if os.path.exists(proc) else f"/dev/fd/{fd}"
        finally:
            os.close(fd)
        return
    yield text


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def follow_umask(path: str | os.PathLike[str]) -> None:
    """Give a file written by a library (safetensors writes 0600) the mode the user's umask says."""
    os.chmod(path, 0o666 & ~_umask())


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
    sweep_stale(path)
    try:
        fd, name = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=suffix, dir=path.parent)
    except OSError as exc:
        raise write_error(path, exc) from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the file gets what the user's umask says
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if _disk_fault(exc):
            raise write_error(path, exc) from None
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


class atomic_directory:
    """Context manager: yields a temporary directory beside ``target``, renamed to ``target`` on success.

    Missing parent directories are created (and removed again on failure). With ``overwrite`` an
    existing ``target`` is replaced only after the new one is complete, and only while this process holds
    its :class:`DirectoryLock`: a directory that another run is training is refused (one line), not replaced.
    """

    def __init__(self, target: str | os.PathLike[str], overwrite: bool = False) -> None:
        self.target = Path(target)
        self.overwrite = overwrite
        self.tmp: Path | None = None
        self.created: list[Path] = []  # parent directories made here, removed again on failure
        self.lock: DirectoryLock | None = None

    def __enter__(self) -> Path:
        check_path(self.target)
        if self.target.exists() and not self.overwrite:
            raise LowRankError(
                f"{self.target} already exists; choose another output directory or pass --force (overwrite=True)"
            )
        if self.target.exists() and not self.target.is_dir():
            raise LowRankError(f"{self.target} exists and is not a directory; choose another output path")
        if self.target.is_dir():  # replaced: not while another run trains (or replaces) it
            self.lock = DirectoryLock(self.target, what="replaced", required=False)
            self.lock.__enter__()
        parent = self.target.parent
        try:
            missing = [p for p in [parent, *parent.parents] if not p.exists()]
            for p in reversed(missing):
                p.mkdir()
                self.created.append(p)
            sweep_stale(self.target)
            self.tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(self.target), suffix=".tmp", dir=parent))
        except OSError as exc:
            self._remove_created()
            self._unlock()
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

    def _unlock(self) -> None:
        if self.lock is not None:
            self.lock.__exit__(None, None, None)
            self.lock = None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self.tmp is not None
        try:
            if exc_type is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)
                self._remove_created()
                if exc is not None and _disk_fault(exc):
                    raise write_error(self.target, exc) from None
                return
            os.chmod(self.tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; the directory gets what the umask says
            old = None
            if self.target.exists():
                old = self.target.with_name(f".{self.target.name}.old-{os.getpid()}")
                os.replace(self.target, old)
            try:
                os.replace(self.tmp, self.target)
            except OSError as error:  # another process created the target meanwhile
                shutil.rmtree(self.tmp, ignore_errors=True)
                if old is not None:
                    os.replace(old, self.target)
                raise LowRankError(
                    f"cannot write {self.target} ({error.strerror}): another process wrote it meanwhile; "
                    "choose another output directory"
                ) from None
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            self._unlock()


#: The lock file of an artifact directory (empty when no run holds it).
LOCK_FILE = ".lowrank.lock"

#: What a refused writer would have done, as the end of its refusal.
_CLASH = {
    "trained": "two runs in one directory would mix their checkpoints and metrics",
    "replaced": "it cannot be replaced while in use",
    "removed": "it is left as it is",
    "written": "nothing is written into it while in use",
}


def _read_record(fd: int) -> tuple[str, str]:
    """(holder, what) from a lock file: ``pid N on HOST, since TIME`` and, on a second line, what it is doing."""
    text = os.pread(fd, 512, 0).decode("utf-8", "replace").strip()
    holder, _, what = text.partition("\n")
    return holder.strip(), what.strip() or "trained"


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (its directory was not replaced meanwhile)."""
    try:
        now = os.stat(path)
    except OSError:
        return False
    opened = os.fstat(fd)
    return (now.st_dev, now.st_ino) == (opened.st_dev, opened.st_ino)


class DirectoryLock:
    """An exclusive lock on an artifact directory for one run or one write (``DIR/.lowrank.lock``, an OS file lock).

    Every writer of an artifact directory takes it: a training run for its whole length, and a replacement
    (``lowrank convert -o DIR --force``, ``lowrank train --recipe ... --force``, ``save(..., overwrite=True)``)
    while it swaps the directory. A second writer gets a one-line :class:`LowRankError` naming the holder's PID
    and what it is doing ("DIR is being trained by another run (pid ...)"), and changes nothing. The operating
    system releases the lock when its process ends, however it ends, so a lock left by a killed run is taken
    over; the holder it recorded is then reported in :attr:`stale` (with a warning). Within one process the
    lock is re-entrant (``train_artifact`` holds it around ``Trainer.fit``, which takes it too), except that a
    directory this process is training is not replaced. Where the OS has no file locks (no :mod:`fcntl`, i.e.
    Windows) the lock is not taken.

    Args:
        directory: the artifact directory (it must exist).
        what: what the holder does, as the refusal says it: ``"trained"``, ``"replaced"``, ``"removed"``.
        required: refuse (one line) when the lock file cannot be created; ``False``: go on without the lock
            when no lock file exists and none can be made (then no other run can hold one either).

    Example:
        >>> with DirectoryLock("runs/r20") as lock:  # doctest: +SKIP
        ...     train()
    """

    _held: ClassVar[dict[str, list[Any]]] = {}  # resolved path → [fd, depth, what], this process's locks

    def __init__(self, directory: str | os.PathLike[str], what: str = "trained", *, required: bool = True) -> None:
        self.directory = Path(directory)
        self.what = what
        self.required = required
        self.stale: str | None = None  # "pid 1234 on host, since ..." of a dead holder that was taken over
        self._key: str | None = None

    def _refusal(self, holder: str, doing: str, who: str = "another run") -> LowRankError:
        return LowRankError(
            f"{self.directory} is being {doing} by {who} ({holder}); wait for it to finish or stop it — "
            f"{_CLASH.get(self.what, _CLASH['trained'])}"
        )

    @classmethod
    def check(cls, directory: str | os.PathLike[str], what: str = "replaced") -> None:
        """Refuse (one line) if another process holds ``directory``'s lock; take nothing, create nothing.

        For commands that would replace a directory only after long work (a conversion): they say it at once.
        """
        if fcntl is None:  # pragma: no cover - Windows
            return
        directory = Path(directory)
        held = cls._held.get(str(directory.resolve()))
        if held is not None:
            if what != "trained" and held[2] == "trained":
                raise cls(directory, what)._refusal(f"pid {os.getpid()}", "trained", "this process")
            return
        try:
            fd = os.open(directory / LOCK_FILE, os.O_RDONLY)
        except OSError:
            return  # no lock file (or an unreadable one): nobody holds it that we could know of
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            holder, doing = _read_record(fd)
            raise cls(directory, what)._refusal(holder or "another process", doing) from None
        finally:
            os.close(fd)  # also releases the shared lock just taken

    def _open(self, path: Path) -> int | None:
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            try:  # a lock file in a directory this user cannot write: locking needs only read access
                return os.open(path, os.O_RDONLY)
            except OSError:
                pass
            if self.required:
                raise LowRankError(f"cannot create {path} ({exc.strerror}); make {self.directory} writable") from None
            return None  # no lock file, and none can be made: no other run can hold it

    def __enter__(self) -> DirectoryLock:
        if fcntl is None:  # pragma: no cover - Windows
            return self
        key = str(self.directory.resolve())
        held = self._held.get(key)
        if held is not None:
            if self.what != "trained" and held[2] == "trained":
                raise self._refusal(f"pid {os.getpid()}", "trained", "this process")
            held[1] += 1
            self._key = key
            return self
        path = self.directory / LOCK_FILE
        for _ in range(100):
            fd = self._open(path)
            if fd is None:
                return self
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder, doing = _read_record(fd)
                os.close(fd)
                raise self._refusal(holder or "another process", doing) from None
            if _same_file(fd, path):
                break
            os.close(fd)  # the directory was replaced between open and lock: lock the new one
        else:  # pragma: no cover - a directory replaced a hundred times over while we looked
            raise LowRankError(f"{self.directory} keeps being replaced by another process; try again when it is done")
        previous, _ = _read_record(fd)
        self.stale = previous or None  # a holder that did not clear its record: it was killed
        if self.stale:
            warnings.warn(
                f"{self.directory}: the run that held it ({self.stale}) ended without releasing its lock (killed?); "
                "taking it over — its files are as its last checkpoint left them",
                LowRankWarning,
                stacklevel=2,
            )
        record = f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n{self.what}"
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, record.encode(), 0)
        except OSError:
            pass  # a read-only lock file: locked all the same, only without the record
        self._held[key] = [fd, 1, self.what]
        self._key = key
        return self

    def __exit__(self, *exc: object) -> None:
        key, self._key = self._key, None
        held = self._held.get(key) if key is not None else None
        if held is None:
            return
        held[1] -= 1
        if held[1] == 0:
            del self._held[key]  # type: ignore[arg-type]
            try:
                os.ftruncate(held[0], 0)  # an empty lock file: nobody holds it, nobody was killed
            except OSError:
                pass
            finally:
                os.close(held[0])  # releases the lock
