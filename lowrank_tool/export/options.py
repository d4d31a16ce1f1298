"""The export's arguments, checked before anything heavy is imported: batch, output file, int8 weight width,
and an ONNX file to read.

Only the standard library and the toolkit's light modules (no torch, no ONNX), so that ``lowrank export``
refuses a bad value at once; :func:`~lowrank_tool.export.onnx.export_onnx` runs the same checks.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..artifact import (
    BEST_FILE,
    LOCK_FILE,
    METRICS_FILE,
    PLAN_FILE,
    STATE_FILE,
    SUMMARY_FILE,
    WEIGHTS_FILE,
    DirectoryLock,
    check_path,
)
from ..errors import LowRankError

__all__ = ["parse_batch", "check_output_path", "check_onnx_file", "WEIGHT_BITS", "check_weight_bits"]

#: int8 weight ranges: 7 bits ([-64, 64], ``reduce_range``; the default, safe on every CPU) or the full 8 bits
#: ([-127, 127]; a little more precision where the kernels do not saturate: x86 with VNNI, ARM, GPUs).
WEIGHT_BITS = (7, 8)


def check_weight_bits(bits: object) -> None:
    """A clear error for an int8 weight width other than 7 or 8."""
    if isinstance(bits, bool) or bits not in WEIGHT_BITS:
        raise LowRankError(
            f"int8 weight bits {bits!r} must be 7 (the default, safe on every CPU) or 8 (full range: CPUs with VNNI, "
            "ARM, GPUs)"
        )


def parse_batch(value: int | str) -> int | str:
    """``"dynamic"`` or a positive integer (``"8"`` → 8)."""
    if isinstance(value, str):
        if value.strip().lower() == "dynamic":
            return "dynamic"
        if value.strip().isdigit():
            value = int(value.strip())
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise LowRankError(f"batch {value!r} is not valid; use 'dynamic' or a positive integer such as 1")


def check_output_path(path: str | os.PathLike[str]) -> Path:
    """The output file's parent must exist and be writable, and the path must not be a directory."""
    path = check_path(Path(path).expanduser())
    try:
        os.fspath(path.absolute()).encode("utf-8")
    except UnicodeEncodeError:
        raise LowRankError(
            f"{os.fsencode(path)!r} is not a UTF-8 path, and the ONNX tools (exporter, checker, ONNX Runtime) take only "
            "UTF-8 paths; choose a UTF-8 name"
        ) from None
    if path.is_dir():
        raise LowRankError(f"{path} is a directory; give a file name such as {path / 'model.onnx'}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        if parent.exists():
            raise LowRankError(f"cannot write {path}: {parent} is a file, not a directory; choose another path")
        raise LowRankError(f"cannot write {path}: directory {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise LowRankError(f"cannot write {path}: directory {parent} is not writable; choose another path")
    if path.exists() and not os.access(path, os.W_OK):
        raise LowRankError(f"cannot write {path}: the file exists and is read-only; choose another path")
    if path.name == LOCK_FILE or (path.name in _ARTIFACT_FILES and (parent / PLAN_FILE).is_file()):
        raise LowRankError(
            f"{path} is a file of the artifact in {parent}; write the ONNX file under another name, e.g. {parent / 'model.onnx'}"
        )
    for directory in (parent, *parent.resolve().parents):  # a directory another run is training, or one inside it
        if (directory / LOCK_FILE).exists():
            DirectoryLock.check(directory, what="written")
    return path


#: The files an artifact directory keeps (an export never writes over them).
_ARTIFACT_FILES = (PLAN_FILE, WEIGHTS_FILE, BEST_FILE, STATE_FILE, METRICS_FILE, SUMMARY_FILE)


def check_onnx_file(path: str | os.PathLike[str]) -> Path:
    """An ONNX file to read: it must exist and not be empty (what it holds is checked when it is loaded)."""
    path = Path(path)
    if not path.is_file():
        raise LowRankError(f"{path} does not exist; point to an .onnx file written by `lowrank export`")
    if path.stat().st_size == 0:
        raise LowRankError(f"{path} is empty (0 bytes); re-export it with `lowrank export`")
    return path
