"""Dense vs ELRT low-rank, trained the same way from scratch, exported and timed: what ``lowrank demo`` shows.

Both networks start from the same seed, train with the same recipe on the embedded ``digits`` data (nothing
is downloaded), are exported to ONNX (verified against PyTorch) and timed back to back in ONNX Runtime.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..convert.api import convert
from ..export.onnx import export_onnx
from ..io import load, save
from ..runtime import make_session, time_onnx
from ..train.run import train_artifact
from .settings import demo_configs

__all__ = ["compare_dense_and_lowrank"]


def compare_dense_and_lowrank(
    model: str = "resnet20",
    rank: float = 0.5,
    *,
    epochs: int = 8,
    image_size: int = 16,
    seed: int = 0,
    output: Path | None = None,
    progress: bool = True,
    on_start: Callable[[str], None] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Train ``model`` dense and at ELRT ``rank`` on digits, export both to ONNX, time them; one row per model.

    Args:
        model: a model name (``lowrank models``), built with 10 classes.
        rank: the low-rank model's rank (fraction of channels kept per mode).
        epochs, image_size, seed: the training run (digits are upscaled from 8×8 to ``image_size``).
        output: keep the artifacts (``output/dense``, ``output/elrt`` and their ``.onnx`` files) here; it
            must not exist, and is removed again if the demo does not finish (an error, Ctrl-C). Default: a
            temporary directory, removed at the end.
        progress: show the trainer's progress bar.
        on_start: called with the row's name before each model trains.
        on_epoch: called with each epoch's metrics.

    Returns:
        ``[dense, low-rank]`` rows: ``model``, ``params``, ``macs``, ``best_top1``, ``last_top1``,
        ``train_seconds``, ``directory``, ``onnx_file`` (with ``output``), ``onnx_max_rel_error``, ``onnx_ms``.
    """
    configs = demo_configs(rank, epochs=epochs, image_size=image_size, seed=seed, output=output)
    root = output or Path(tempfile.mkdtemp(prefix="lowrank-demo-"))
    rows: list[dict[str, Any]] = []
    finished = False
    try:
        for name, kwargs, method in (
            ("dense", {"dense": True}, "dense"),
            (f"ELRT rank {rank:g}", {"rank": rank}, "elrt"),
        ):
            directory = root / method
            torch.manual_seed(seed)  # the same initial dense weights for both runs, and a reproducible demo
            save(convert(model, num_classes=10, input_size=(3, image_size, image_size), **kwargs), directory)
            cfg = configs[method]
            if on_start is not None:
                on_start(name)
            _, summary = train_artifact(directory, cfg, progress=progress, on_epoch=on_epoch)
            rows.append(
                {
                    "model": name,
                    "params": summary["params"],
                    "macs": summary["macs"],
                    "best_top1": summary["best_top1"],
                    "last_top1": summary["last_top1"],
                    "train_seconds": summary["wall_seconds"],
                    "directory": str(directory),
                }
            )
        # Deployment: both trained models to ONNX (verified against PyTorch), timed back to back in ONNX Runtime.
        for row, method in zip(rows, ("dense", "elrt"), strict=True):
            onnx_file = root / f"{method}.onnx"
            result = export_onnx(load(root / method), onnx_file)
            row["onnx_file"] = str(onnx_file) if output is not None else None
            row["onnx_max_rel_error"] = result.verification.max_rel
        x = torch.randn(1, 3, image_size, image_size).numpy()
        for row, method in zip(rows, ("dense", "elrt"), strict=True):
            session = make_session(root / f"{method}.onnx", device="cpu")
            row["onnx_ms"] = time_onnx(session, {"input": x}, runs=200, warmup=20).median_ms
        finished = True
    finally:
        if output is None or not finished:  # a demo that did not finish leaves nothing behind (output was new)
            shutil.rmtree(root, ignore_errors=True)
    return rows
