"""What every benchmark's result file records first, and how it is written.

Each script runs from this folder, so ``from _results import run_meta, write_result``. A result is only worth
what its provenance says: the command that wrote it (to run it again), the machine and its CPU (the instruction
set decides the kernels, and so the timings: AVX2 and AVX-512 VNNI machines differ by 2x in int8) and the
versions of the libraries that ran it. Files are written atomically: a run killed while writing leaves the
previous result, not half a JSON document.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from lowrank_tool.artifact import atomic_write_text

#: Distributions whose versions decide a benchmark's numbers (the first installed name of each group counts).
PACKAGES = {
    "torch": ("torch",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "openvino": ("openvino",),
}


def command_line(script: str, argv: list[str] | None = None) -> str:
    """``python benchmarks/SCRIPT ARGS``, quoted so that it can be pasted into a shell."""
    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python", f"benchmarks/{script}", *map(shlex.quote, args)])


def package_versions() -> dict[str, str]:
    """The installed versions of :data:`PACKAGES`, without importing them; a missing package is left out."""
    versions = {}
    for key, names in PACKAGES.items():
        for name in names:
            try:
                versions[key] = metadata.version(name)
                break
            except metadata.PackageNotFoundError:
                continue
    return versions


def run_meta(script: str, **fields: Any) -> dict[str, Any]:
    """The ``meta`` block of a result: command, machine, CPU, versions, then the script's own ``fields``
    (which may replace a default, e.g. a more precise ``openvino`` build string). Imports torch (the CPU's
    kernel capability comes from it)."""
    from lowrank_tool.runtime.machine import cpu_description

    return {
        "command": command_line(script),
        "machine": platform.platform(),
        "cpu": cpu_description().to_dict(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        **package_versions(),
        **fields,
    }


def write_result(path: str | os.PathLike[str], document: Any) -> Path:
    """Write ``document`` as indented JSON to ``path`` (parents created, atomically) and return the path."""
    return write_text(path, json.dumps(document, indent=2) + "\n")


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write a markdown table (or any text) beside a result, parents created, atomically; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
    return path
