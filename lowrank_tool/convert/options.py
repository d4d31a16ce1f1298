"""What the user asks a conversion for: the rank request (:class:`RankSpec`) and every option (:class:`ConvertOptions`).

``ConvertOptions`` is the one source of truth for the conversion's options: ``convert`` and ``plan``
take its fields as keyword arguments (or one ``options=`` instance) and validate them here, and the
CLI's ``--help`` reads each field's help text from its metadata (the habit of PEFT's ``LoraConfig``).
This module imports neither torch nor the rest of the converter, so ``lowrank convert --help`` answers
at once.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ..choices import (
    DEFAULT_ROUND_TO,
    FORMAT_CHOICES,
    INITS,
    LATENCY_PRECISIONS,
    MEMORY_FORMATS,
    POLICIES,
    RUNTIME_ENGINES,
    Init,
)
from ..errors import LowRankError
from ..input_size import parse_input_size
from ..threads import check_threads
from .select import parse_layer_rank

__all__ = ["RankSpec", "ConvertOptions", "option_help", "python_number"]


def python_number(value: Any) -> Any:
    """A NumPy (or other ``numbers``-registered) scalar as the Python ``int`` / ``float`` it stands for; any other
    value as it is. A float32 keeps the number as written: ``np.float32(0.3)`` → ``0.3``, not 0.30000001192...

    Example:
        >>> python_number(np.float32(0.3)), python_number(np.int64(16))  # doctest: +SKIP
        (0.3, 16)
    """
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        try:
            return float(str(value))  # the shortest repr of its own precision
        except ValueError:
            return float(value)
    return value


#: The options that are numbers: NumPy scalars are taken as the Python numbers they stand for.
_NUMBER_FIELDS = (
    "rank",
    "target_params",
    "target_macs",
    "round_to",
    "target_speedup",
    "latency_threads",
    "latency_batch",
    "num_classes",
)


@dataclass(frozen=True)
class RankSpec:
    """A rank request for one layer: a ratio, an absolute rank, or "keep dense"."""

    kind: Literal["ratio", "absolute", "dense", "energy", "erank"]
    value: float

    @property
    def needs_weights(self) -> bool:
        return self.kind in ("energy", "erank")

    @classmethod
    def parse(cls, value: RankSpec | float | int | str, what: str = "rank") -> RankSpec:
        """Accept ``0.3`` / ``"0.3"`` (ratio), ``16`` / ``"16"`` (absolute), ``"dense"``, ``"energy:0.9"`` or ``"erank"``."""
        if isinstance(value, RankSpec):
            return value
        value = python_number(value)
        if isinstance(value, str):
            text = value.strip().lower()
            if text == "dense":
                return cls("dense", 0)
            if text == "erank":
                return cls("erank", 0)
            if text.startswith("energy:"):
                try:
                    energy = float(text.split(":", 1)[1])
                except ValueError:
                    energy = float("nan")
                if not (0 < energy <= 1):
                    raise LowRankError(f"{what} {value!r}: the energy must be a fraction in (0, 1], e.g. energy:0.9")
                return cls("energy", energy)
            try:
                value = int(text) if text.lstrip("+-").isdigit() else float(text)
            except ValueError:
                raise LowRankError(
                    f"{what} {value!r} is not a number; use a fraction in (0, 1] (e.g. 0.3), an integer rank (e.g. 16), "
                    "energy:0.9, erank or 'dense'"
                ) from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise LowRankError(f"{what} must be a number, got {value!r}; use e.g. 0.3 or 16")
        if isinstance(value, int):
            if value < 1:
                raise LowRankError(
                    f"{what} {value} is not positive; use a fraction in (0, 1] (e.g. 0.3) or an integer rank >= 1"
                )
            return cls("absolute", value)
        if not math.isfinite(value):
            raise LowRankError(
                f"{what} {value} is not a finite number; use a fraction in (0, 1] (e.g. 0.3) or an integer rank >= 1"
            )
        if value <= 0:
            raise LowRankError(
                f"{what} {value} is not positive; use a fraction in (0, 1] (e.g. 0.3) or an integer rank >= 1"
            )
        if value > 1:
            raise LowRankError(
                f"{what} {value} is a fraction above 1; use a fraction in (0, 1] (e.g. 0.3) or an integer rank written without a decimal point (e.g. {int(value)})"
            )
        return cls("ratio", float(value))

    def __str__(self) -> str:
        if self.kind in ("dense", "erank"):
            return self.kind
        if self.kind == "energy":
            return f"energy:{self.value:g}"
        return f"{int(self.value)}" if self.kind == "absolute" else f"{self.value:g}"

    def to_json(self) -> float | int | str:
        if self.kind in ("dense", "erank", "energy"):
            return str(self)
        return int(self.value) if self.kind == "absolute" else float(self.value)


def _opt(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field with its help text (read by the CLI and the docs)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kwargs)
    return field(default=default, metadata={"help": help}, **kwargs)


@dataclass
class ConvertOptions:
    """How to convert: every keyword of :func:`~lowrank_tool.convert` and :func:`~lowrank_tool.plan`, validated once.

    Each field's help is in its metadata (``option_help("rank")``); ``lowrank convert --help`` shows the
    same text.

    Example:
        >>> opts = ConvertOptions(rank=0.5, exclude=["re:layer4\\..*"])
        >>> opts.rank_spec
        RankSpec(kind='ratio', value=0.5)
        >>> option_help("round_to").split(";")[0]
        'Round every rank up to a multiple of N (8: channel counts the CPU/GPU kernels like, measured faster'
    """

    rank: float | int | str | None = _opt(
        None,
        "Fraction of channels kept per factorised mode, in (0, 1] (0.3: r_in=ceil(0.3*C_in), r_out=ceil(0.3*C_out)), an "
        "integer absolute rank, 'energy:0.9' (per mode, the smallest rank keeping 90% of the kernel's Frobenius energy) or "
        "'erank' (ceil of each mode's effective rank); the last two read trained weights. Default 0.3 when no budget is given.",
    )
    format: str = _opt(
        "auto",
        f"Low-rank format, one of {', '.join(FORMAT_CHOICES)}; auto = svd for 1x1 convs, tucker2 (ELRT) otherwise.",
    )
    target_params: float | None = _opt(
        None, "Keep this fraction of the dense model's parameters; ranks are solved across layers."
    )
    target_macs: float | None = _opt(
        None, "Keep this fraction of the dense model's MACs; ranks are solved across layers."
    )
    round_to: int = _opt(
        DEFAULT_ROUND_TO,
        "Round every rank up to a multiple of N (8: channel counts the CPU/GPU kernels like, measured faster; 1: exact ceil(rank*C)).",
    )
    exclude: Sequence[str] = _opt((), "Keep a layer dense: a fully qualified name or 're:REGEX' (repeatable).")
    layer_rank: Mapping[str, Any] | Sequence[str] | None = _opt(
        None, "Per-layer rank, NAME=R or 're:REGEX=R' (a mapping in Python); R may be 'dense' (repeatable)."
    )
    allow_growth: bool = _opt(False, "Convert layers even when the factorised form is not smaller (full-rank checks).")
    dense: bool = _opt(False, "Convert nothing: an artifact of the dense model, the baseline to train and compare.")
    policy: str = _opt(
        "rank",
        "rank: ranks as requested; latency: each layer's form (dense, factorised, ranks rounded to multiples of 8/16) chosen "
        "by measuring it on this machine in the latency engine (ONNX Runtime by default; cached).",
    )
    target_speedup: float | None = _opt(
        None,
        "With policy latency: lower ranks until the model is predicted S times faster than dense (instead of a rank).",
    )
    latency_threads: int | None = _opt(
        None, "With policy latency: intra-op threads of the measurements (default: every core)."
    )
    latency_batch: int = _opt(1, "With policy latency: batch size of the measurements.")
    latency_engine: str = _opt(
        "onnxruntime",
        "With policy latency: the engine the measurements run in, the one you deploy with: onnxruntime or openvino.",
    )
    latency_precision: str = _opt(
        "fp32",
        "With policy latency: the precision the forms are timed in, the one you deploy in: fp32, or int8 (quantized as "
        "`lowrank export --int8` quantizes).",
    )
    input_size: str | Sequence[int] | None = _opt(
        None, "Per-sample input CxHxW (CxTxHxW for video); default from the model family."
    )
    num_classes: int | None = _opt(None, "Number of output classes of a model given by name.")
    model_kwargs: Mapping[str, Any] | None = _opt(
        None,
        "Keyword arguments for building a model given by name (recorded in plan.json; plain values only). Not with a module.",
    )
    weights: Any = _opt(
        None,
        "Trained dense weights to load first: .safetensors, a weights-only .pt/.pth state dict, or a dense artifact DIR "
        "(with init decompose the factors fit them).",
    )
    init: Init = _opt(
        "random", "random: ELRT training from scratch; decompose: fit the factors to the model's weights."
    )
    memory_format: str = _opt(
        "auto",
        "Layout of the returned model's 4-D weights: channels_last (NHWC; low-rank training steps measured ~25% faster "
        "on CPU), contiguous (PyTorch's default), or auto = channels_last for a CPU model with converted 2-D layers "
        "that runs in it, else the layout the model came in. Inputs may stay NCHW either way.",
    )
    rank_spec: RankSpec = field(init=False, repr=False)
    layer_specs: dict[str, RankSpec] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for name in _NUMBER_FIELDS:
            setattr(self, name, python_number(getattr(self, name)))
        budgets = [b for b in ("target_params", "target_macs") if getattr(self, b) is not None]
        if len(budgets) > 1:
            raise LowRankError("give at most one of target_params and target_macs (--target-params / --target-macs)")
        if budgets and self.rank is not None:
            raise LowRankError(
                f"give either rank or {budgets[0]} (--rank or --{budgets[0].replace('_', '-')}), not both"
            )
        for b in budgets:
            value = getattr(self, b)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
                raise LowRankError(f"{b} {value!r} must be a fraction in (0, 1) of the dense model, e.g. 0.4")
        parse_input_size(self.input_size)  # a malformed size is refused here, before the model is built
        self.rank_spec = RankSpec.parse(0.3 if self.rank is None else self.rank)
        if self.dense and (self.rank is not None or budgets):
            given = "rank" if self.rank is not None else budgets[0]
            raise LowRankError(
                f"dense converts nothing, so {given} would be ignored; drop --dense or drop --{given.replace('_', '-')}"
            )
        if self.policy not in POLICIES:
            raise LowRankError(
                f"policy {self.policy!r} is not known; use 'rank' (ranks as requested) or 'latency' (measured per layer)"
            )
        if self.target_speedup is not None:
            if self.policy != "latency":
                raise LowRankError("target_speedup needs policy 'latency' (CLI: --policy latency --target-speedup S)")
            if budgets or self.rank is not None:
                raise LowRankError("give either a target speedup or a rank/budget with --policy latency, not both")
            if (
                isinstance(self.target_speedup, bool)
                or not isinstance(self.target_speedup, (int, float))
                or not self.target_speedup > 1
            ):
                raise LowRankError(
                    f"target_speedup {self.target_speedup!r} must be a number above 1, e.g. 2 (twice as fast as dense)"
                )
        if self.latency_engine not in RUNTIME_ENGINES:
            raise LowRankError(
                f"latency engine {self.latency_engine!r} is not known; use one of: {', '.join(RUNTIME_ENGINES)}"
            )
        if self.memory_format not in MEMORY_FORMATS:
            raise LowRankError(
                f"memory format {self.memory_format!r} is not known; use one of: {', '.join(MEMORY_FORMATS)}"
            )
        if self.latency_engine != "onnxruntime" and self.policy != "latency":
            raise LowRankError("a latency engine needs policy 'latency' (CLI: --policy latency --engine NAME)")
        if self.latency_precision not in LATENCY_PRECISIONS:
            raise LowRankError(
                f"latency precision {self.latency_precision!r} is not known; use one of: {', '.join(LATENCY_PRECISIONS)}"
            )
        if self.latency_precision != "fp32" and self.policy != "latency":
            raise LowRankError(
                "a latency precision needs policy 'latency' (CLI: --policy latency --latency-precision int8)"
            )
        for name in ("latency_threads", "latency_batch"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise LowRankError(f"{name} {value!r} must be a positive integer")
        if self.latency_threads is not None:
            check_threads(self.latency_threads, "latency_threads")
        if self.format not in FORMAT_CHOICES:
            raise LowRankError(f"unknown format {self.format!r}; expected one of {', '.join(FORMAT_CHOICES)}")
        if isinstance(self.round_to, bool) or not isinstance(self.round_to, int) or self.round_to < 1:
            raise LowRankError(f"round_to {self.round_to!r} must be a positive integer (1 = no rounding), e.g. 8")
        if self.init not in INITS:
            raise LowRankError(f"init={self.init!r} is not known; allowed: {', '.join(INITS)}")
        if self.num_classes is not None and (
            isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 1
        ):
            raise LowRankError(f"num_classes {self.num_classes!r} must be a positive integer, e.g. 10")
        if self.model_kwargs is not None and not isinstance(self.model_kwargs, Mapping):
            raise LowRankError(
                f"model_kwargs must be a mapping of argument names to values, got {type(self.model_kwargs).__name__}"
            )
        if isinstance(self.exclude, str):
            self.exclude = [self.exclude]
        if not isinstance(self.exclude, Sequence) or not all(isinstance(x, str) for x in self.exclude):
            raise LowRankError(
                f"exclude {repr(self.exclude)[:80]} must be a layer name or a list of names / 're:REGEX' patterns"
            )
        self.exclude = list(self.exclude)
        layer_rank: dict[str, Any] = parse_layer_rank(self.layer_rank)
        self.layer_rank = layer_rank
        self.layer_specs = {k: RankSpec.parse(v, what=f"rank for {k!r}") for k, v in layer_rank.items()}

    @classmethod
    def from_kwargs(cls, options: ConvertOptions | None = None, /, **kwargs: Any) -> ConvertOptions:
        """``options`` with ``kwargs`` (field names) on top; an unknown name is a ``TypeError`` that lists the fields."""
        names = [f.name for f in dataclasses.fields(cls) if f.init]
        unknown = [k for k in kwargs if k not in names]
        if unknown:
            raise TypeError(
                f"unexpected keyword argument {unknown[0]!r}; the conversion options are: {', '.join(names)}"
            )
        if options is None:
            return cls(**kwargs)
        if not isinstance(options, cls):
            raise LowRankError(f"options must be a ConvertOptions, got {type(options).__name__}")
        base = {name: getattr(options, name) for name in names}
        return cls(**(base | kwargs))

    @property
    def budget(self) -> tuple[str, float] | None:
        if self.target_params is not None:
            return "params", float(self.target_params)
        if self.target_macs is not None:
            return "macs", float(self.target_macs)
        return None

    def to_json(self) -> dict[str, Any]:
        """What the plan records under ``policy`` (``convert`` adds ``init``)."""
        return {
            "rank": self.rank_spec.to_json() if self.budget is None else None,
            "format": self.format,
            "target_params": self.target_params,
            "target_macs": self.target_macs,
            "round_to": self.round_to,
            "exclude": list(self.exclude),
            "layer_rank": {k: v.to_json() for k, v in self.layer_specs.items()},
            "allow_growth": self.allow_growth,
            "dense": self.dense,
            "policy": self.policy,
        }


def option_help(name: str) -> str:
    """The help text of one :class:`ConvertOptions` field (what ``lowrank convert --help`` shows)."""
    for f in dataclasses.fields(ConvertOptions):
        if f.name == name and "help" in f.metadata:
            return str(f.metadata["help"])
    raise KeyError(name)
