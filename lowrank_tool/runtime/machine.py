"""Which CPU a measurement ran on, in the terms that change it: the instruction set, not the marketing name.

Timings and even float results depend on the vector instructions the kernels use: oneDNN, ONNX Runtime
and OpenVINO pick AVX-512, AVX-512 VNNI or AVX2 code paths at run time, and a training run's losses on an
AVX2 machine differ from the same seed's on an AVX-512 one (chaotically, after a few hundred steps).
Virtual machines often mask the model name (``AMD EPYC``, no generation), so two different CPUs read the
same in ``/proc/cpuinfo``'s ``model name``; the ISA flags tell them apart. The latency cache keys on this,
and the benchmarks record it with every result.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["ISA_FLAGS", "CPU", "cpu_description", "machine_label", "parse_cpuinfo"]

#: The CPU flags that select different kernels in PyTorch, ONNX Runtime and OpenVINO.
ISA_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)


def parse_cpuinfo(text: str) -> tuple[str | None, tuple[str, ...]]:
    """(model name, the :data:`ISA_FLAGS` present) of the first processor in a ``/proc/cpuinfo`` text."""
    name: str | None = None
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if not key and (name or flags):  # a blank line ends the first processor's block
            break
        if key == "model name":
            name = value.strip() or None
        elif key in ("flags", "Features"):  # x86, ARM
            flags.update(value.split())
    return name, tuple(f for f in ISA_FLAGS if f in flags)


@functools.cache
def _cpuinfo() -> tuple[str, tuple[str, ...]]:
    try:
        name, flags = parse_cpuinfo(Path("/proc/cpuinfo").read_text(errors="replace"))
    except OSError:  # not Linux
        name, flags = None, ()
    return name or platform.processor() or platform.machine(), flags


@dataclass(frozen=True)
class CPU:
    """The CPU as far as kernels can tell."""

    name: str  # /proc/cpuinfo's model name (often masked in a VM: "AMD EPYC")
    isa: str  # PyTorch's CPU capability: "AVX512", "AVX2", "DEFAULT"...
    flags: tuple[str, ...]  # the ISA_FLAGS present
    cpus: int

    @property
    def label(self) -> str:
        """One short line for a results table: ``AMD EPYC, AVX2, 2 CPUs``."""
        return f"{self.name}, {self.isa}, {self.cpus} CPUs"

    @property
    def saturates_int8(self) -> bool:
        """Whether full-range int8 (u8 activations × s8 weights) can overflow here: x86 without VNNI, where ONNX
        Runtime's kernels add two products into a saturating 16-bit integer (VPMADDUBSW)."""
        return "avx2" in self.flags and not {"avx512_vnni", "avx_vnni", "amx_int8"} & set(self.flags)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"flags": list(self.flags)}


def cpu_description() -> CPU:
    """This machine's CPU: model name, ISA flags, PyTorch's CPU capability and core count."""
    name, flags = _cpuinfo()
    return CPU(name, torch.backends.cpu.get_cpu_capability(), flags, os.cpu_count() or 1)


def machine_label() -> str:
    """This machine in one short line for a results table: ``AMD EPYC, AVX2, 2 CPUs``."""
    return cpu_description().label
