"""The training configuration: one validated dataclass shared by recipes, the CLI and ``fit``.

Precedence when a run is assembled: defaults < recipe file < saved train state (``--resume``) <
options given on the command line. Every key of a recipe is a field here (plus the conversion keys
``model``, ``num_classes``, ``convert`` and ``output`` that :mod:`.recipes` handles).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from typing import Any

from ..choices import (
    AMP_MODES,
    DEEPTWIST_LOWERINGS,
    DEFAULT_ORTH_WEIGHT,
    DEVICES,
    MEMORY_FORMATS,
    OPTIMIZERS,
    ORTH_KINDS,
    SCHEDULES,
)
from ..errors import LowRankError
from ..methods.registry import list_methods

__all__ = ["TrainConfig", "OPTIMIZERS", "SCHEDULES", "AMP_MODES", "DEVICES", "MEMORY_FORMATS"]


#: The largest value a numeric training setting (lr, momentum, weight decay ...) may take: each is used as a
#: float32 tensor value, and 1e300 (a typo) ended in an overflow traceback mid-run.
MAX_HYPERPARAMETER = 1e30


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run.

    Attributes:
        data: dataset spec ``NAME[:PATH]`` (``digits``, ``synthetic``, ``cifar10:~/data``...).
        epochs: number of epochs.
        batch_size: per-process batch size (DDP: each rank gets this many).
        optimizer: ``sgd`` (momentum, optional Nesterov) or ``adamw``.
        lr: peak learning rate (after warm-up).
        momentum: SGD momentum.
        nesterov: Nesterov momentum for SGD.
        weight_decay: L2 / decoupled weight decay; never applied to biases and normalisation weights.
        frobenius_decay: decay the kernel each low-rank layer computes (``weight_decay / 2 · ‖W‖²`` added to
            the loss) instead of each of its factors (Khodak et al. 2021; see :mod:`.decay`).
        schedule: ``cosine`` (to 0), ``step`` (×gamma at ``milestones``), ``onecycle`` (linear up over
            30%, or ``warmup_epochs`` if longer, then cosine down) or ``constant``; all per step, after
            ``warmup_epochs`` of linear warm-up.
        warmup_epochs: linear warm-up length in epochs (fractions allowed). The default 0.1 is measured: without
            it ELRT ResNet-56 at lr 0.1 diverges within 13 steps (the orthogonality penalty, quartic in the
            factors, explodes after the first large steps) and dense ResNet-56 loses 1.7 points; on ResNet-20
            it changes nothing beyond seed noise (docs/training.md#accuracy-on-real-data).
        milestones: epochs at which ``step`` multiplies the rate by ``gamma`` (default: 50% and 75%).
        gamma: the ``step`` schedule's factor.
        label_smoothing: cross-entropy label smoothing.
        grad_clip: clip the global gradient norm to this value (``None`` = off).
        seed: seeds model-independent randomness: data order, augmentation, dropout.
        amp: ``auto`` (fp16 autocast + GradScaler on CUDA, off on CPU), ``off``, ``fp16`` (CUDA) or
            ``bf16`` (autocast on CPU or CUDA).
        method: training method: ``elrt``, ``dense``, ``lrpet`` or ``deeptwist`` (see ``lowrank_tool.methods``).
        orth: ELRT's orthogonality regulariser: ``so``, ``dso``, ``srip`` or ``none``.
        orth_weight: its coefficient.
        project_every: LRPET also projects every N steps (0: once per epoch).
        energy_transfer: LRPET's energy-transfer exponent (1: keep the Frobenius energy; 0: plain truncation).
        bn_rectify: LRPET's BN rectification.
        distort_every: DeepTwist's S_D, steps between low-rank distortions.
        lowering: DeepTwist's distortion form: ``format`` (the plan's), ``out``, ``spatial`` or ``tiled``.
        tiles: tiles per side for DeepTwist's ``tiled`` lowering.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        memory_format: layout of the 4-D weights and images while training: ``channels_last`` (NHWC),
            ``contiguous`` (NCHW) or ``auto``: channels-last for a model with low-rank layers on the CPU,
            where it made the training step 0.65-0.74x as long in every case measured (the factor
            chains' 1x1 convs skip oneDNN's layout reorders), contiguous otherwise (dense models gain or
            lose by model; pass channels_last to try). ``benchmarks/train_speed.py`` measures both.
        workers: data-loader workers (``None``: automatic).
        image_size: input resolution override (``None``: the dataset's).
        download: let torchvision download the dataset (needs internet).
    """

    data: str = "digits"
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    frobenius_decay: bool = False
    schedule: str = "cosine"
    warmup_epochs: float = 0.1
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    seed: int = 0
    amp: str = "auto"
    method: str = "elrt"
    orth: str = "so"
    orth_weight: float = DEFAULT_ORTH_WEIGHT
    project_every: int = 0
    energy_transfer: float = 1.0
    bn_rectify: bool = True
    distort_every: int = 200
    lowering: str = "format"
    tiles: int = 2
    device: str = "auto"
    memory_format: str = "auto"
    workers: int | None = None
    image_size: int | None = None
    download: bool = False

    def __post_init__(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise LowRankError(msg)

        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            need(
                isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                f"{name} {value!r} must be a positive integer",
            )
        for name in ("distort_every", "tiles"):
            value = getattr(self, name)
            need(
                isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                f"{name} {value!r} must be a positive integer",
            )
        need(
            isinstance(self.project_every, int)
            and not isinstance(self.project_every, bool)
            and self.project_every >= 0,
            f"project_every {self.project_every!r} must be an integer >= 0 (0 = once per epoch)",
        )
        for name in (
            "lr",
            "momentum",
            "weight_decay",
            "gamma",
            "label_smoothing",
            "warmup_epochs",
            "orth_weight",
            "energy_transfer",
        ):
            value = getattr(self, name)
            need(
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and math.isfinite(value)
                and 0 <= value <= MAX_HYPERPARAMETER,
                f"{name} {value!r} must be a finite number from 0 to {MAX_HYPERPARAMETER:g}",
            )
        need(
            isinstance(self.seed, int) and not isinstance(self.seed, bool) and 0 <= self.seed < 2**32,
            f"seed {self.seed!r} must be an integer from 0 to {2**32 - 1}",
        )
        need(self.lr > 0, f"lr {self.lr} must be > 0, e.g. 0.1 for SGD or 1e-3 for AdamW")
        need(self.label_smoothing < 1, f"label_smoothing {self.label_smoothing} must be in [0, 1)")
        need(
            self.grad_clip is None
            or (
                isinstance(self.grad_clip, (int, float))
                and not isinstance(self.grad_clip, bool)
                and math.isfinite(self.grad_clip)
                and self.grad_clip > 0
            ),
            f"grad_clip {self.grad_clip!r} must be a finite positive number or omitted",
        )
        for name, allowed in (
            ("optimizer", OPTIMIZERS),
            ("schedule", SCHEDULES),
            ("amp", AMP_MODES),
            ("device", DEVICES),
            ("memory_format", MEMORY_FORMATS),
        ):
            value = getattr(self, name)
            need(value in allowed, f"{name} {value!r} is not known; expected one of {', '.join(allowed)}")
        need(self.warmup_epochs <= self.epochs, f"warmup_epochs {self.warmup_epochs} exceeds epochs {self.epochs}")
        need(
            isinstance(self.milestones, (list, tuple)),
            f"milestones {self.milestones!r} must be a list of epochs, e.g. [30, 60]",
        )
        need(
            all(isinstance(m, int) and 0 < m <= self.epochs for m in self.milestones),
            f"milestones {self.milestones} must be epochs in 1..{self.epochs}",
        )
        need(
            self.workers is None or (isinstance(self.workers, int) and self.workers >= 0),
            f"workers {self.workers!r} must be >= 0",
        )
        need(
            self.image_size is None or (isinstance(self.image_size, int) and self.image_size >= 8),
            f"image_size {self.image_size!r} must be an integer >= 8",
        )
        need(self.orth in ORTH_KINDS, f"orth {self.orth!r} is not known; expected one of {', '.join(ORTH_KINDS)}")
        need(
            self.method in list_methods(),
            f"method {self.method!r} is not known; expected one of {', '.join(list_methods())}",
        )
        need(
            self.lowering in DEEPTWIST_LOWERINGS,
            f"lowering {self.lowering!r} is not known; expected one of {', '.join(DEEPTWIST_LOWERINGS)}",
        )
        for name in ("bn_rectify", "frobenius_decay", "nesterov", "download"):
            value = getattr(self, name)
            need(isinstance(value, bool), f"{name} {value!r} must be true or false")

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> TrainConfig:
        known = cls.keys()
        for key in data:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise LowRankError(f"{source}: unknown key {key!r}{hint}; allowed: {', '.join(known)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise LowRankError(f"{source}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        return TrainConfig.from_dict({**self.to_dict(), **{k: v for k, v in changes.items() if v is not None}})
