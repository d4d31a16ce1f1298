"""Assemble and run training: an artifact directory (or a recipe) + data + config → a trained artifact.

Used by ``lowrank train``/``lowrank demo`` and by :func:`fit` for users' own loaders.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as tdist
from torch import nn
from torch.utils.data import DataLoader

from ..artifact import PLAN_FILE, SUMMARY_FILE, DirectoryLock, atomic_write_text
from ..conversion_plan import ConversionPlan
from ..convert.api import summary
from ..data import build_loaders
from ..errors import LowRankError, LowRankWarning, first_line
from ..io import load
from .config import TrainConfig
from .distributed import DistInfo, setup, teardown
from .trainer import Trainer, TrainResult

__all__ = ["fit", "train_artifact", "refuse_dense_on_low_rank"]


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader | None = None,
    *,
    epochs: int = 10,
    method: str = "elrt",
    out_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    **config: Any,
) -> TrainResult:
    """Train ``model`` on your own loaders with the toolkit's trainer (ELRT regulariser by default).

    Args:
        model: a converted model (``lowrank_tool.convert``) for ``method="elrt"``, a dense one for ``"dense"``
            (a model with low-rank layers is refused: build the baseline with ``convert(model, dense=True)``).
        train_loader: batches of ``(images, labels)``.
        val_loader: validation batches (top-1/top-5 each epoch), optional.
        epochs: number of epochs.
        method: ``"elrt"`` or ``"dense"`` (see ``lowrank_tool.methods.list_methods()``).
        out_dir: where to write metrics and checkpoints (``None``: keep everything in memory); locked for the
            run, so a directory another process is training is refused with one line.
        resume: continue from ``out_dir/train_state.pt``.
        progress: show a progress bar.
        on_epoch: called with each epoch's metrics.
        **config: any :class:`TrainConfig` field (``lr``, ``optimizer``, ``schedule``, ``orth_weight``...).

    Returns:
        The per-epoch history with the best validation accuracy.

    Example:
        >>> model = lowrank_tool.convert(torchvision.models.resnet18(num_classes=10), rank=0.3)  # doctest: +SKIP
        >>> result = lowrank_tool.fit(model, train_loader, val_loader, epochs=5, lr=0.05)  # doctest: +SKIP
    """
    cfg = TrainConfig.from_dict({"epochs": epochs, "method": method, **config}, source="fit()")
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    trainer = Trainer(model, train_loader, val_loader, cfg, out_dir=out_dir, on_epoch=on_epoch, progress=progress)
    return trainer.fit(resume=resume)


def _check_classes(model: nn.Module, loader: DataLoader, num_classes: int, device: torch.device, where: str) -> None:
    if num_classes < 2:
        warnings.warn(
            f"the data has {num_classes} class: every prediction is right, so accuracy says nothing; check the data",
            LowRankWarning,
            stacklevel=3,
        )
    images, _ = next(iter(loader))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(images[:1].to(device))
    except Exception as exc:
        first = first_line(exc, with_type=False, limit=160)
        raise LowRankError(
            f"the model in {where} cannot run on the data's {tuple(images.shape[1:])} images ({first}); pick --image-size or another model"
        ) from None
    finally:
        model.train(was)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise LowRankError(
            f"the model in {where} does not return class logits (got {type(out).__name__}); lowrank train trains classifiers"
        )
    if out.shape[1] != num_classes:
        raise LowRankError(
            f"the model in {where} has {out.shape[1]} outputs but the data has {num_classes} classes; convert it with --num-classes {num_classes}"
        )


def train_artifact(
    directory: str | Path,
    config: TrainConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    dist: DistInfo | None = None,
    trust_code: bool = False,
) -> tuple[TrainResult, dict[str, Any]]:
    """Train the artifact in ``directory`` in place; returns the result and the summary written.

    ``trust_code`` lets the artifact's plan name a ``package.module:factory`` (see :func:`lowrank_tool.load`).
    """
    directory = Path(directory)
    refuse_dense_on_low_rank(directory, config.method)  # before the lock: a refused run leaves DIR as it was
    owns_dist = dist is None
    dist = dist or setup(config.device)
    completed = False
    lock = DirectoryLock(directory) if dist.is_main else contextlib.nullcontext()
    try:
        with lock:
            result, summary_data = _train_locked(directory, config, resume, progress, on_epoch, dist, trust_code)
        completed = True
        return result, summary_data
    finally:
        if owns_dist:
            teardown(dist, completed)


def refuse_dense_on_low_rank(directory: Path, method: str, *, cli: bool = False) -> None:
    """Method ``dense`` trains the dense baseline: refuse (one line) an artifact whose plan made layers low-rank.

    Otherwise the low-rank layers would be trained without their regulariser and reported as the dense model.
    ``cli`` words the fix as commands and flags, else as arguments.
    """
    if method != "dense":
        return
    plan = ConversionPlan.load(directory / PLAN_FILE)
    converted = plan.converted_layers
    if not converted:
        return
    model = plan.base_model.get("name") or "MODEL"
    what = f"{directory} holds a low-rank model ({len(converted)} converted layers, e.g. {converted[0].name})"
    if cli:
        raise LowRankError(
            f"{what}; --method dense trains the dense baseline: convert it with `lowrank convert {model} --dense -o "
            "NEW_DIR` and train that (or train these layers with --method elrt, --orth none for no regulariser)"
        )
    raise LowRankError(
        f"{what}; method='dense' trains the dense baseline: save convert({model!r}, dense=True) to a new directory and "
        "train that (or train these layers with method='elrt', orth='none' for no regulariser)"
    )


def _train_locked(
    directory: Path,
    config: TrainConfig,
    resume: bool,
    progress: bool,
    on_epoch: Callable[[dict[str, Any]], None] | None,
    dist: DistInfo,
    trust_code: bool,
) -> tuple[TrainResult, dict[str, Any]]:
    model = load(directory, trust_code=trust_code)
    plan = summary(model)
    train_loader, val_loader, info = build_loaders(
        config.data,
        batch_size=config.batch_size,
        workers=config.workers,
        image_size=config.image_size,
        download=config.download,
        seed=config.seed,
        distributed=dist.enabled,
    )
    _check_classes(model.to(dist.device), val_loader, info.num_classes, dist.device, str(directory))
    if not resume:
        torch.manual_seed(config.seed)
    trainer = Trainer(
        model, train_loader, val_loader, config, out_dir=directory, dist=dist, on_epoch=on_epoch, progress=progress
    )
    result = trainer.fit(resume=resume)
    totals = plan.totals()
    summary_data = {
        "directory": str(directory),
        "model": plan.base_model.get("name") or plan.base_model.get("class"),
        "method": config.method,
        "data": config.data,
        "epochs": config.epochs,
        "best_top1": result.best_top1,
        "best_epoch": result.best_epoch,
        "last_top1": result.last.get("val_top1"),
        "last_top5": result.last.get("val_top5"),
        "params": totals["params_after"],
        "macs": totals["macs_after"],
        "dense_params": totals["params_before"],
        "dense_macs": totals["macs_before"],
        "wall_seconds": result.wall_seconds,
        "world_size": dist.world_size,
    }
    if dist.enabled:
        summary_data["rank_checksums"] = _rank_checksums(trainer.raw_model, dist)
    if dist.is_main:
        atomic_write_text(directory / SUMMARY_FILE, json.dumps(summary_data, indent=2) + "\n")
    return result, summary_data


def _rank_checksums(model: nn.Module, dist: DistInfo) -> list[float]:
    """Each rank's sum of its parameters (float64): equal values mean the ranks stayed in sync."""
    local = torch.tensor(
        [sum(p.detach().double().sum().item() for p in model.parameters())], dtype=torch.float64, device=dist.device
    )
    gathered = [torch.zeros_like(local) for _ in range(dist.world_size)]
    tdist.all_gather(gathered, local)
    return [float(t.item()) for t in gathered]
