"""Helpers shared by the test modules (fixtures built on them live in conftest.py).

``run_cli`` runs the `lowrank` command in-process (``in_process`` wraps it in :func:`lowrank`'s result type),
``lowrank`` in a subprocess (for what needs a real process: console scripts, signals, torchrun, the
interpreter's own stream encoding), and ``TinyNet`` is a user's own small model.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import torch
from torch import nn


def run_cli(argv: list[Any], capsys: Any, monkeypatch: Any) -> tuple[int, str, str]:
    """``lowrank ARGV`` in this process: (exit code, stdout, stderr)."""
    from lowrank_tool.cli import main

    monkeypatch.setattr(sys, "argv", ["lowrank", *map(str, argv)])
    with pytest.raises(SystemExit) as info:
        main()
        raise SystemExit(0)
    out, err = capsys.readouterr()
    return info.value.code or 0, out, err


def in_process(capsys: Any, monkeypatch: Any) -> Any:
    """A stand-in for :func:`lowrank` that runs the command in this process (no interpreter and torch start-up,
    6-9 s a call on a slow machine): same ``returncode``/``stdout``/``stderr``, ``check=True`` raises."""

    def call(*args: Any, check: bool = False) -> subprocess.CompletedProcess:
        code, out, err = run_cli(list(args), capsys, monkeypatch)
        result = subprocess.CompletedProcess(["lowrank", *map(str, args)], code, out, err)
        if check:
            result.check_returncode()
        return result

    return call


def lowrank(*args: Any, timeout: float = 600, **kwargs: Any) -> subprocess.CompletedProcess:
    """``python -m lowrank_tool ARGS`` in a subprocess, output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "lowrank_tool", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


class TinyNet(nn.Module):
    """A user's own model: plain convs, a grouped conv, a functional conv and a 1x1 conv."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.body = nn.Sequential(
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1, groups=4),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, 64, 1),
            nn.ReLU(),
        )
        self.extra = nn.Parameter(torch.randn(64, 64, 3, 3) * 0.01)
        self.head = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.body(torch.relu(self.stem(x)))
        x = torch.nn.functional.conv2d(x, self.extra, padding=1)
        return self.head(x.mean((2, 3)))
