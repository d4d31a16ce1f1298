"""Saving and loading converted models as a directory: ``plan.json`` + ``model.safetensors``.

Loading rebuilds the architecture from the plan's base-model spec (or a module the caller passes),
replays the plan, then loads the weights. Nothing is unpickled: weights are safetensors, the plan is
JSON. A directory is written under a temporary name and renamed into place, so an interrupted or failed
save never leaves a half-written artifact.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from ._version import __version__
from .convert.api import PLAN_ATTR, summary
from .convert.apply import apply_plan
from .convert.plan import PLAN_FILE, ConversionPlan
from .errors import LowRankError
from .models import build_from_spec

__all__ = ["save", "load", "WEIGHTS_FILE", "PLAN_FILE", "atomic_directory"]

WEIGHTS_FILE = "model.safetensors"


class atomic_directory:
    """Context manager: yields a temporary directory beside ``target``, renamed to ``target`` on success.

    With ``overwrite`` an existing ``target`` is replaced only after the new one is complete.
    """

    def __init__(self, target: str | os.PathLike[str], overwrite: bool = False) -> None:
        self.target = Path(target)
        self.overwrite = overwrite
        self.tmp: Path | None = None
        self.created: list[Path] = []  # parent directories made here, removed again on failure

    def __enter__(self) -> Path:
        if self.target.exists() and not self.overwrite:
            raise LowRankError(f"{self.target} already exists; choose another output directory or pass --force (overwrite=True)")
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
            raise LowRankError(f"cannot write into {parent} ({exc.strerror}); choose a writable output directory") from None
        return self.tmp

    def _remove_created(self) -> None:
        for p in reversed(self.created):
            try:
                p.rmdir()
            except OSError:
                break

    def __exit__(self, exc_type, exc, tb) -> None:  # type: ignore[no-untyped-def]
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


def save(model: nn.Module, directory: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Save a converted model as ``DIR/plan.json`` and ``DIR/model.safetensors``.

    Args:
        model: a model returned by :func:`lowrank_tool.convert` or :func:`lowrank_tool.load`.
        directory: the output directory (must not exist unless ``overwrite``).
        overwrite: replace an existing directory (only once the new one is fully written).

    Example:
        >>> model = lowrank_tool.convert("resnet18", rank=0.3)
        >>> lowrank_tool.save(model, "runs/r18")  # doctest: +SKIP
    """
    from safetensors.torch import save_model

    plan = summary(model)
    with atomic_directory(directory, overwrite=overwrite) as tmp:
        plan.save(tmp / PLAN_FILE)
        save_model(model, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "lowrank_tool": __version__})
    return Path(directory)


def load(
    directory: str | os.PathLike[str], model: nn.Module | None = None, *, map_location: str | torch.device = "cpu",
    trust_code: bool = False,
) -> nn.Module:
    """Rebuild a converted model from a directory written by :func:`save` / ``lowrank convert -o``.

    The directory is data, never code: the base model is rebuilt only from a registered name
    (torchvision, the zoo, :func:`~lowrank_tool.register_model`, ``timm/NAME``) with the plan's plain
    arguments, nothing is downloaded, and the weights are safetensors. A plan naming
    ``package.module:factory`` needs ``model=`` or ``trust_code=True``.

    Args:
        directory: the artifact directory.
        model: a freshly built dense instance of the same class and arguments (required for a custom
            model; for a model given by name it is rebuilt from the plan).
        map_location: device for the weights.
        trust_code: import the ``package.module:factory`` the plan names (only for files you trust;
            the CLI's ``--trust-code``).

    Example:
        >>> model = lowrank_tool.load("runs/r18")  # doctest: +SKIP
        >>> model(torch.randn(2, 3, 224, 224)).shape  # doctest: +SKIP
        torch.Size([2, 1000])
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    directory = Path(directory)
    if not directory.is_dir():
        raise LowRankError(f"{directory} is not a directory; point to a directory written by `lowrank convert -o DIR`")
    plan = ConversionPlan.load(directory / PLAN_FILE)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise LowRankError(f"{weights} does not exist; the artifact is incomplete, re-create it with `lowrank convert -o DIR`")
    if model is None:
        model = build_from_spec(plan.base_model, where=str(directory / PLAN_FILE), trust_code=trust_code)
    elif not isinstance(model, nn.Module):
        raise LowRankError(f"load(DIR, model=...) takes a dense nn.Module, got {type(model).__name__}")
    elif getattr(model, PLAN_ATTR, None) is not None:
        raise LowRankError("load(DIR, model=...) needs the dense model, not an already converted one")
    apply_plan(model, plan, init="none")
    try:
        missing, unexpected = load_model(model, str(weights), strict=False, device=str(map_location))
    except SafetensorError as exc:
        raise LowRankError(f"{weights} is corrupt or not a safetensors file ({exc}); re-create it with `lowrank convert -o DIR`") from None
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise LowRankError(f"{weights} does not match the model rebuilt from the plan ({first}); save and load with the same model") from None
    if missing or unexpected:
        sample = ", ".join(list(missing)[:3] + list(unexpected)[:3])
        raise LowRankError(
            f"{weights} does not match the model rebuilt from the plan ({len(missing)} missing, {len(unexpected)} unexpected tensors: {sample}); "
            "save and load with the same model"
        )
    model.to(map_location)
    setattr(model, PLAN_ATTR, plan)
    return model
