"""The training loop: one epoch after another, with the method's hooks, records and checkpoints.

``Trainer`` trains any ``nn.Module`` classifier — a model converted by :func:`lowrank_tool.convert`
(ELRT: the low-rank factors are the parameters, the full-size weights never exist) or a dense baseline
— on a pair of data loaders. Around the loop it does what a days-long run needs: per-step schedule
with warm-up, AMP, gradient clipping, no weight decay on biases and normalisation weights, a rich
progress bar, ``metrics.jsonl``, atomic checkpoints (last and best) every epoch, exact resume,
SIGINT/SIGTERM handling, a stop on non-finite loss that keeps the last good checkpoint, and DDP.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import math
import signal
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from ..artifact import (
    BEST_FILE,
    METRICS_FILE,
    STATE_FILE,
    WEIGHTS_FILE,
    DirectoryLock,
    WriteError,
    atomic_write_text,
    write_error,
)
from ..errors import LowRankError, LowRankWarning, first_line
from ..layers.memory_format import MEMORY_FORMAT_NAMES, apply_memory_format, memory_format_name, resolve_memory_format
from ..methods import Method, get_method, get_method_class
from .checkpoint import (
    atomic_save_weights,
    load_train_state,
    rng_state,
    save_train_state,
    set_rng_state,
)
from .config import TrainConfig
from .decay import frobenius_penalty, param_groups
from .distributed import DistInfo, all_reduce_sum

__all__ = ["Trainer", "TrainResult", "TrainingInterrupted", "TrainingDiverged", "RESUMABLE"]

#: The options ``--resume`` may change: how long, where and how fast it runs. Any other change would make
#: a different run, so it is refused with a one-line error instead of being recorded but not applied.
RESUMABLE = ("epochs", "workers", "device", "download", "memory_format")
#: what a diverged run can change, said by both divergence checks
DIVERGENCE_FIX = "lower --lr, warm up longer (--warmup-epochs) or set --grad-clip"


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM arrived; the state was saved and the run can be resumed."""


class TrainingDiverged(Exception):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    best_top1: float = 0.0
    best_epoch: int = -1
    wall_seconds: float = 0.0

    @property
    def last(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}


def lr_factor(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Learning-rate multiplier at a global step (warm-up, then the schedule's shape)."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = int(round(cfg.warmup_epochs * steps_per_epoch))
    if cfg.schedule == "onecycle":  # its own ramp: 30 % of the steps (a longer warm-up asked for wins)
        warm = max(warm, int(0.3 * total))
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    if cfg.schedule in ("cosine", "onecycle"):
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    if cfg.schedule == "step":
        milestones = cfg.milestones or [int(cfg.epochs * 0.5), int(cfg.epochs * 0.75)]
        epoch = step / steps_per_epoch
        return cfg.gamma ** sum(epoch >= m for m in milestones)
    return 1.0


class _Stopper:
    """Turns SIGINT/SIGTERM into a flag checked between steps (so the state saved is consistent)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _Stopper:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


class Trainer:
    """Train a classifier with a method's hooks, records and checkpoints.

    Args:
        model: the model (converted or dense); moved to the run's device.
        train_loader: training batches ``(images, labels)``.
        val_loader: validation batches.
        config: hyper-parameters (:class:`TrainConfig`).
        out_dir: directory for ``metrics.jsonl``, ``train_state.pt``, ``model.safetensors``,
            ``best.safetensors`` and ``summary.json`` (``None``: nothing is written).
        method: a :class:`~lowrank_tool.methods.Method` (default: from ``config.method``).
        dist: process-group info (:func:`lowrank_tool.train.distributed.setup`).
        on_epoch: called with each epoch's metrics dict (rank 0 only).
        progress: show a rich progress bar (rank 0 only).

    Example:
        >>> trainer = Trainer(model, train_loader, val_loader, TrainConfig(epochs=2, lr=0.05))  # doctest: +SKIP
        >>> result = trainer.fit()  # doctest: +SKIP
    """

    def __init__(
        self,
        model: nn.Module,
        train_loader: DataLoader,
        val_loader: DataLoader | None,
        config: TrainConfig,
        *,
        out_dir: str | Path | None = None,
        method: Method | None = None,
        dist: DistInfo | None = None,
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
        progress: bool = True,
    ) -> None:
        self.cfg = config
        self.dist = dist or DistInfo(device=_device(config.device))
        self.device = self.dist.device
        self.raw_model = model.to(self.device)
        self.model: nn.Module = self.raw_model
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.out_dir = Path(out_dir) if out_dir is not None else None
        if self.out_dir is not None and self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        self.method = method or get_method(config.method, **_method_options(config))
        self.on_epoch = on_epoch
        self.show_progress = progress and self.dist.is_main
        self.method.setup(self.raw_model)
        # Before DDP and the optimizer, so gradient buckets and momentum buffers share the layout.
        self.memory_format = resolve_memory_format(config.memory_format, self.raw_model, self.device)
        self.given_memory_format = MEMORY_FORMAT_NAMES[memory_format_name(self.raw_model)]  # handed back in it
        apply_memory_format(self.raw_model, self.memory_format)
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.raw_model, device_ids=ids)
        self.optimizer = self._optimizer()
        self.steps_per_epoch = max(1, len(train_loader))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(self.cfg, s, self.steps_per_epoch)
        )
        self.amp_dtype, use_scaler = self._amp()
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self.best_top1 = -1.0
        self.best_epoch = -1
        self.history: list[dict[str, Any]] = []
        self._metrics_started = False

    # -- setup ------------------------------------------------------------------------------------------
    def _optimizer(self) -> torch.optim.Optimizer:
        groups = param_groups(self.raw_model, self.cfg.weight_decay, frobenius=self.cfg.frobenius_decay)
        if self.cfg.optimizer == "adamw":
            return torch.optim.AdamW(groups, lr=self.cfg.lr)
        return torch.optim.SGD(
            groups, lr=self.cfg.lr, momentum=self.cfg.momentum, nesterov=self.cfg.nesterov and self.cfg.momentum > 0
        )

    def _amp(self) -> tuple[torch.dtype | None, bool]:
        mode, cuda = self.cfg.amp, self.device.type == "cuda"
        if mode == "bf16":
            return torch.bfloat16, False
        if mode == "fp16" or (mode == "auto" and cuda):
            if not cuda:
                raise LowRankError("amp 'fp16' needs a CUDA device; use --amp bf16 on CPU or --amp off")
            return torch.float16, True
        return None, False

    # -- state ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.raw_model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "best_top1": self.best_top1,
            "best_epoch": self.best_epoch,
            "config": self.cfg.to_dict(),
            "method": self.method.state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            self.raw_model.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise LowRankError(
                f"train state does not match the model ({first_line(exc, with_type=False, limit=160)}); train without --resume"
            ) from None
        try:  # a tampered or foreign state fails here in many ways; each is one line
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            set_rng_state(state["rng"])
            self.epoch, self.step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])
            self.global_step = int(state["global_step"])
            self.best_top1, self.best_epoch = float(state["best_top1"]), int(state["best_epoch"])
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError, AttributeError) as exc:
            raise LowRankError(
                f"the train state is damaged or not from this run ({first_line(exc, limit=160)}); "
                "delete train_state.pt and train without --resume"
            ) from None
        if self.epoch < 0 or self.step_in_epoch < 0 or self.global_step < 0:
            raise LowRankError(
                "the train state has negative counters; delete train_state.pt and train without --resume"
            )

    def resume(self) -> None:
        """Continue from ``out_dir/train_state.pt`` (model, optimizer, scheduler, scaler, RNG, epoch)."""
        if self.out_dir is None:
            raise LowRankError("resume needs an output directory (the run's DIR)")
        state = load_train_state(self.out_dir / STATE_FILE, map_location=self.device)
        self._check_resumable(state)
        self.load_state_dict(state)
        metrics = self.out_dir / METRICS_FILE
        if metrics.is_file():  # drop records of epochs the saved state does not include
            self.history = [m for m in _metric_records(metrics) if m["epoch"] < self.epoch]
            if self.dist.is_main:
                atomic_write_text(metrics, "".join(json.dumps(m) + "\n" for m in self.history))

    def _check_resumable(self, state: dict[str, Any]) -> None:
        """A resumed run is the saved run: options that change what is trained are refused, not half-applied.

        Only :data:`RESUMABLE` options may differ. A longer ``epochs`` continues the run; its learning-rate
        schedule then spans the new length from here on (a note says so), so the result equals a run started
        with that many epochs only if the saved run had been started with it too.
        """
        saved = state.get("config")
        if not isinstance(saved, dict):
            return  # a state from before configs were saved: nothing to compare
        now = self.cfg.to_dict()
        changed = [k for k in now if k in saved and saved[k] != now[k] and k not in RESUMABLE]
        if changed:
            diffs = ", ".join(f"{k} {saved[k]!r} → {now[k]!r}" for k in changed)
            raise LowRankError(
                f"--resume continues the saved run, and these options differ from it: {diffs}; drop them to continue, "
                "or train anew with them (--force, without --resume)"
            )
        completed = int(state.get("epoch", 0))
        if now["epochs"] <= completed:
            raise LowRankError(
                f"the saved run has already trained {completed} epochs, as many as --epochs {now['epochs']} asks for; "
                f"to train longer, pass --epochs greater than {completed} with --resume"
            )
        if saved.get("epochs") != now["epochs"]:
            warnings.warn(
                f"--epochs {now['epochs']} instead of the saved run's {saved.get('epochs')}: the learning-rate schedule "
                f"now spans {now['epochs']} epochs, so the result is not the same as a run started with --epochs {now['epochs']}",
                LowRankWarning,
                stacklevel=3,
            )

    def _save(self, best: bool, record: dict[str, Any] | None = None) -> None:
        """Write the checkpoint, then (after an epoch) its ``record`` in ``metrics.jsonl``.

        The train state comes first: it is what ``--resume`` continues from, and it holds the weights too.
        A write the disk refuses stops the run with one line that says which of these files now hold this
        epoch (or step) and which do not.
        """
        if self.out_dir is None or not self.dist.is_main:
            return
        written: list[str] = []
        names = [STATE_FILE, WEIGHTS_FILE] + ([BEST_FILE] if best else []) + ([METRICS_FILE] if record else [])
        try:
            save_train_state(self.out_dir / STATE_FILE, self.state_dict())
            written.append(STATE_FILE)
            to_save = self.method.deployable(self.raw_model)  # the artifact's structure (LRPET/DeepTwist train dense)
            atomic_save_weights(to_save, self.out_dir / WEIGHTS_FILE)
            written.append(WEIGHTS_FILE)
            if best:
                atomic_save_weights(to_save, self.out_dir / BEST_FILE)
                written.append(BEST_FILE)
            if record is not None:
                self._append_metrics(record)
        except WriteError as exc:
            raise write_error(exc.path, exc, self._saved_so_far(written, names, record is not None)) from None

    def _append_metrics(self, record: dict[str, Any]) -> None:
        """Add one line to ``metrics.jsonl`` (a fresh run's first line replaces the file of an earlier run);
        a failed write leaves the file as it was, without a cut line."""
        assert self.out_dir is not None
        path = self.out_dir / METRICS_FILE
        if not self._metrics_started:  # a run started anew (--force): the earlier run's records go
            atomic_write_text(path, json.dumps(record) + "\n")
            self._metrics_started = True
            return
        try:
            with open(path, "a", encoding="utf-8") as fh:
                size = fh.tell()
                try:
                    fh.write(json.dumps(record) + "\n")
                    fh.flush()
                except OSError:
                    fh.truncate(size)
                    raise
        except OSError as exc:
            raise write_error(path, exc) from None

    def _saved_so_far(self, written: list[str], names: list[str], epoch_end: bool) -> str:
        """What a checkpoint cut short by the disk left: which files hold it, which still hold the one before."""
        when = f"epoch {self.epoch}" if epoch_end else f"epoch {self.epoch + 1}, step {self.step_in_epoch}"
        if not written:
            return f"nothing of {when} was saved; {self.out_dir} keeps its previous checkpoint"
        missing = [n for n in names if n not in written]
        return (
            f"of {when}, {' and '.join(written)} {'was' if len(written) == 1 else 'were'} saved (a resume continues "
            f"from it), {' and '.join(missing)} {'was' if len(missing) == 1 else 'were'} not"
        )

    # -- loop -------------------------------------------------------------------------------------------
    def _epoch_order(self, epoch: int) -> None:
        """Make the data order a function of (seed, epoch) so resumed runs see the same batches."""
        sampler = getattr(self.train_loader, "sampler", None)
        if sampler is not None and hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        gen = getattr(self.train_loader, "generator", None)
        if isinstance(gen, torch.Generator):
            gen.manual_seed(self.cfg.seed * 100_003 + epoch)

    def fit(self, resume: bool = False, stop_at: int | None = None) -> TrainResult:
        """Train until ``config.epochs`` (or until ``stop_at`` epochs are done, to continue later with resume).

        Returns the per-epoch history and the best accuracy. ``out_dir`` is locked for the whole run
        (:class:`~lowrank_tool.artifact.DirectoryLock`): a directory another process is training or replacing
        is refused with one line.
        """
        lock = (
            DirectoryLock(self.out_dir) if self.out_dir is not None and self.dist.is_main else contextlib.nullcontext()
        )
        with lock:
            return self._fit(resume, stop_at)

    def _fit(self, resume: bool, stop_at: int | None) -> TrainResult:
        if resume:
            self.resume()
        self._metrics_started = resume or bool(self.history)  # a new run replaces an earlier run's metrics.jsonl
        start = time.perf_counter()
        end = self.cfg.epochs if stop_at is None else min(stop_at, self.cfg.epochs)
        apply_memory_format(self.raw_model, self.memory_format)  # again: a previous fit() handed it back
        hooks = match_gradient_strides(self.raw_model) if self.dist.enabled else []
        try:
            with _Stopper() as stopper:
                while self.epoch < end:
                    record = self._train_epoch(stopper)
                    self.method.after_epoch(
                        self.raw_model, self.epoch
                    )  # before evaluating: LRPET evaluates the projected model
                    record.update(self.evaluate())
                    self._check_finite()  # before the checkpoint: a kept checkpoint is a good one
                    improved = record["val_top1"] > self.best_top1
                    if improved:
                        self.best_top1, self.best_epoch = record["val_top1"], self.epoch
                    self.epoch += 1
                    self.step_in_epoch = 0
                    self.history.append(record)
                    self._save(improved, record)
                    if self.on_epoch is not None and self.dist.is_main:
                        self.on_epoch(record)
            if self.epoch >= self.cfg.epochs:
                self.method.finalize(self.raw_model)
        finally:  # hand the model back in the layout it came in, also after an interruption or an error
            for hook in hooks:
                hook.remove()
            apply_memory_format(self.raw_model, self.given_memory_format)
        return TrainResult(list(self.history), self.best_top1, self.best_epoch, time.perf_counter() - start)

    def _batches(self) -> Iterable[Any]:
        """This epoch's batches; resumed mid-epoch, those after the ones done (replaying the epoch's order).

        A sampler with ``skip_next`` (the loaders of :func:`lowrank_tool.data.build_loaders`) skips the done
        batches without loading them; any other loader's are loaded and dropped.
        """
        self._epoch_order(self.epoch)
        loader = self.train_loader
        sampler, batch_size = getattr(loader, "sampler", None), getattr(loader, "batch_size", None)
        if self.step_in_epoch and batch_size and callable(getattr(sampler, "skip_next", None)):
            sampler.skip_next(self.step_in_epoch * batch_size)  # type: ignore[union-attr]
            return iter(loader)
        it: Iterable[Any] = iter(loader)
        if self.step_in_epoch:
            it = itertools.islice(it, self.step_in_epoch, None)
        return it

    def _train_epoch(self, stopper: _Stopper) -> dict[str, Any]:
        self.model.train()
        resumed_at = self.step_in_epoch  # > 0: this epoch started before an interruption
        t0 = time.perf_counter()
        loss_sum = correct = count = pen_sum = 0.0
        steps = 0
        bar = _progress(
            self.show_progress, f"epoch {self.epoch + 1}/{self.cfg.epochs}", self.steps_per_epoch, self.step_in_epoch
        )
        with bar:
            for images, labels in self._batches():
                images = self._images(images, non_blocking=True)
                given = labels
                labels = labels.to(self.device, non_blocking=True)
                with torch.autocast(
                    self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
                ):
                    logits = self.model(images)
                    _check_labels(given, logits.shape[-1])
                    loss = self.criterion(logits, labels)
                penalty = self.method.penalty(self.raw_model)
                total = loss.float() + (penalty if penalty is not None else 0.0)
                if self.cfg.frobenius_decay:
                    decay = frobenius_penalty(self.raw_model, self.cfg.weight_decay)
                    total = total + (decay if decay is not None else 0.0)
                if not torch.isfinite(total):
                    raise TrainingDiverged(
                        f"loss became {total.item()} at epoch {self.epoch + 1}, step {self.step_in_epoch + 1}; "
                        f"{self._kept()}; {DIVERGENCE_FIX}"
                    )
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(total).backward()
                if self.cfg.grad_clip:
                    self.scaler.unscale_(self.optimizer)
                    nn.utils.clip_grad_norm_(self.raw_model.parameters(), self.cfg.grad_clip)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.scheduler.step()
                self.method.after_step(self.raw_model, self.global_step)
                n = labels.shape[0]
                loss_sum += loss.item() * n
                pen_sum += (penalty.item() if penalty is not None else 0.0) * n
                correct += (logits.argmax(1) == labels).sum().item()
                count += n
                steps += 1
                self.step_in_epoch += 1
                self.global_step += 1
                elapsed = time.perf_counter() - t0
                bar.advance(
                    loss=loss_sum / count,
                    acc=100 * correct / count,
                    ips=count * self.dist.world_size / max(elapsed, 1e-9),
                )
                if self._should_stop(stopper):
                    self._save(False)  # mid-epoch state: epoch and step_in_epoch say where to continue
                    raise TrainingInterrupted(
                        f"stopped by signal {stopper.signum or 'on another rank'} at epoch {self.epoch + 1}, step {self.step_in_epoch}"
                    )
        loss_sum, correct, count, pen_sum = all_reduce_sum([loss_sum, correct, count, pen_sum], self.dist)
        seconds = time.perf_counter() - t0
        return {
            "epoch": self.epoch,
            "train_loss": loss_sum / max(count, 1),
            "train_top1": 100 * correct / max(count, 1),
            "orth_penalty": pen_sum / max(count, 1),
            "lr": self.optimizer.param_groups[0]["lr"],
            "epoch_seconds": seconds,
            "images_per_s": count / max(seconds, 1e-9),
        } | ({"resumed_at_step": resumed_at} if resumed_at else {})  # its train loss/top-1 cover the later steps only

    def _kept(self) -> str:
        """What the output directory holds after a divergence in the current epoch."""
        if self.out_dir is None:
            return "nothing was saved (no output directory)"
        if self.epoch == 0:
            return "no epoch finished, so this run wrote no checkpoint: the directory keeps what it held before"
        return f"the last good checkpoint (after epoch {self.epoch}) is kept"

    def _check_finite(self) -> None:
        """Refuse to checkpoint weights or buffers (e.g. batch-norm running variances) that are NaN or inf."""
        tensors = itertools.chain(self.raw_model.named_parameters(), self.raw_model.named_buffers())
        bad = [name for name, t in tensors if t.is_floating_point() and not bool(torch.isfinite(t).all())]
        if self.dist.enabled:  # buffers can differ per rank: every rank must stop together
            any_bad = all_reduce_sum([float(len(bad))], self.dist)[0] > 0
        else:
            any_bad = bool(bad)
        if any_bad:
            where = f"{len(bad)} tensors, e.g. {bad[0]}" if bad else "on another rank"
            raise TrainingDiverged(
                f"weights or buffers became NaN/inf in epoch {self.epoch + 1} ({where}); {self._kept()}; {DIVERGENCE_FIX}"
            )

    def _images(self, images: torch.Tensor, non_blocking: bool = False) -> torch.Tensor:
        images = images.to(self.device, non_blocking=non_blocking)
        return images.contiguous(memory_format=self.memory_format) if images.dim() == 4 else images

    def _should_stop(self, stopper: _Stopper) -> bool:
        flag = 1.0 if stopper.signum is not None else 0.0
        if self.dist.enabled:  # every rank must stop at the same step
            flag = all_reduce_sum([flag], self.dist)[0]
        return flag > 0

    @torch.no_grad()
    def evaluate(self, loader: DataLoader | None = None) -> dict[str, float]:
        """Validation loss, top-1 and top-5 accuracy (percent), reduced over ranks."""
        loader = loader or self.val_loader
        if loader is None:
            return {"val_loss": float("nan"), "val_top1": float("nan"), "val_top5": float("nan")}
        self.model.eval()
        loss_sum = top1 = top5 = count = 0.0
        for images, labels in loader:
            images, labels = self._images(images), labels.to(self.device)
            with torch.autocast(
                self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
            ):
                logits = self.model(images)
            logits = logits.float()
            loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
            k = min(5, logits.shape[1])
            top = logits.topk(k, dim=1).indices
            hit = top == labels[:, None]
            top1 += hit[:, 0].sum().item()
            top5 += hit.any(1).sum().item()
            count += labels.shape[0]
        loss_sum, top1, top5, count = all_reduce_sum([loss_sum, top1, top5, count], self.dist)
        return {
            "val_loss": loss_sum / max(count, 1),
            "val_top1": 100 * top1 / max(count, 1),
            "val_top5": 100 * top5 / max(count, 1),
        }


def _check_labels(labels: torch.Tensor, classes: int) -> None:
    """Labels the model cannot predict are a data error, in one line (cross-entropy would raise an IndexError,
    or a device-side assert on CUDA). ``labels`` is the batch as the loader gave it (on the CPU: no sync)."""
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        bad = int(labels.max()) if int(labels.max()) >= classes else int(labels.min())
        raise LowRankError(
            f"the training data has label {bad}, outside 0..{classes - 1} (the model has {classes} outputs); check the "
            "dataset's label files, or convert the model with --num-classes matching the data"
        )


def _metric_records(path: Path) -> list[dict[str, Any]]:
    """The epoch records of ``metrics.jsonl``; a line cut by a crash, or one that is not ours, is skipped."""
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("epoch"), int) and not isinstance(record["epoch"], bool):
            records.append(record)
    return records


def match_gradient_strides(model: nn.Module) -> list[Any]:
    """Give each 1x1-like weight's gradient exactly its parameter's strides (hooks; returns their handles).

    A tensor with size-1 dims, such as a 1x1 kernel ``(O, I, 1, 1)``, has the same memory order in both
    layouts, and which strides its gradient carries on those dims depends on the backend and on which
    terms (convolution, orthogonality penalty) contributed to it. Autograd accepts either, but DDP builds
    its gradient buckets from the parameters' strides and copies every gradient whose strides differ
    through a slow path ("Grad strides do not match bucket view strides"). The hook restrides such a
    gradient to its parameter's strides: the same memory, no copy.
    """
    handles = []
    for param in model.parameters():
        if param.dim() >= 2 and 1 in param.shape[1:] and param.requires_grad:
            handles.append(param.register_hook(functools.partial(_restride, param)))
    return handles


def _restride(param: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    if grad.stride() == param.stride() or grad.shape != param.shape:
        return grad
    for fmt in (torch.contiguous_format, torch.channels_last):
        if grad.dim() == 4 or fmt is torch.contiguous_format:
            if grad.is_contiguous(memory_format=fmt) and param.is_contiguous(memory_format=fmt):
                return grad.as_strided(param.shape, param.stride(), grad.storage_offset())  # same order: no copy
    return grad


def _device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise LowRankError("device 'cuda' requested but no CUDA device is available; use --device cpu")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


def _method_options(cfg: TrainConfig) -> dict[str, Any]:
    return {key: getattr(cfg, key) for key in get_method_class(cfg.method).config_keys}


#: Progress bars go to stderr, so that stdout stays for results (JSON).
_ERR = Console(stderr=True, soft_wrap=True, highlight=False)


class _progress:
    """A rich progress bar for one epoch, or nothing (quiet runs, other ranks, no terminal)."""

    def __init__(self, enabled: bool, description: str, total: int, completed: int) -> None:
        self.bar = None
        if enabled:
            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.4f}  acc {task.fields[acc]:5.1f}%  {task.fields[ips]:,.0f} img/s"),
                TimeRemainingColumn(),
                console=_ERR,
                transient=False,
                disable=not _ERR.is_terminal,
            )
            self.task = self.bar.add_task(description, total=total, completed=completed, loss=0.0, acc=0.0, ips=0.0)

    def __enter__(self) -> _progress:
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def advance(self, **fields: float) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=1, **cast(dict[str, Any], fields))
