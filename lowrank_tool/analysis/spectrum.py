"""Per-layer rank analysis: how much of a conv kernel's spectrum a rank keeps, and how low-rank it really is.

For every conv of a model, :func:`analyze` computes from the singular values of both channel-mode
unfoldings (:mod:`lowrank_tool.linalg`) the effective rank (Roy & Vetterli 2007; the measure the low-rank
survey of Ou et al. 2023 recommends for choosing ranks), the stable rank and the energy the layer's
ranks keep. For a low-rank layer the merged kernel (:meth:`LowRankConv.dense_weight`) is analysed, plus
the orthogonality of its factor matrices, ``‖UᵀU − I‖_F`` (the quantity ELRT's soft-orthogonality
regulariser drives to zero). ``lowrank analyze`` prints it as a table, JSON or a plot.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..conversion_plan import plan_of
from ..convert.rank import RankSpec, choose_format, ranks_for
from ..errors import LowRankError
from ..layers.base import ConvGeometry, LowRankConv
from ..linalg import (  # re-exported: they were first defined here
    MODES,
    effective_rank,
    energy_kept,
    orthogonality_error,
    rank_for_energy,
    singular_values,
    stable_rank,
    unfold,
)

__all__ = [
    "MODES", "unfold", "singular_values", "effective_rank", "stable_rank", "energy_kept", "rank_for_energy",
    "orthogonality_error", "LayerSpectrum", "analyze",
]  # fmt: skip


@dataclass
class LayerSpectrum:
    """The rank analysis of one conv (dense or low-rank).

    ``energy_out``/``energy_in`` are the energy kept at the chosen ranks: a single rank (SVD, CP, or a
    1×1 conv) is applied in mode ``"out"``; Tucker-2's ``(r_in, r_out)`` apply ``r_out`` in mode
    ``"out"`` and ``r_in`` in mode ``"in"``. They are ``None`` when the layer has no ranks.
    """

    name: str
    format: str  # "tucker2" | "svd" | "cp" | "dense"
    kernel: list[int]
    in_channels: int
    out_channels: int
    ranks: list[int] | None
    effective_rank_out: float
    effective_rank_in: float
    stable_rank_out: float
    stable_rank_in: float
    energy_out: float | None
    energy_in: float | None
    orth_error: float | None  # max ‖UᵀU − I‖_F over the factors; None for dense layers
    note: str | None = None
    singular_values_out: list[float] = field(default_factory=list, repr=False)
    singular_values_in: list[float] = field(default_factory=list, repr=False)

    @property
    def full_rank_out(self) -> int:
        """Size of the smaller side of the mode-"out" unfolding, ``min(C_out, C_in·k)``."""
        return min(self.out_channels, self.in_channels * math.prod(self.kernel))

    @property
    def full_rank_in(self) -> int:
        """Size of the smaller side of the mode-"in" unfolding, ``min(C_in, C_out·k)``."""
        return min(self.in_channels, self.out_channels * math.prod(self.kernel))

    @classmethod
    def from_weight(
        cls,
        name: str,
        weight: Tensor,
        *,
        format: str = "dense",
        ranks: Sequence[int] | None = None,
        factors: Iterable[Tensor] = (),
        rank: RankSpec | float | int | str | None = None,
        note: str | None = None,
    ) -> LayerSpectrum:
        """Analyse one kernel.

        Args:
            name: the layer's name.
            weight: its (merged) kernel ``(C_out, C_in, *k)``.
            format: the layer's format, ``"dense"`` for a plain conv.
            ranks: the layer's ranks (one rank, or Tucker-2's ``(r_in, r_out)``), if it has any.
            factors: its factor matrices, for the orthogonality error.
            rank: where ``ranks`` is ``None``, a rank request (ratio, absolute, energy:F, erank) turned into ranks as
                the converter would (Tucker-2 for k×k kernels, SVD for 1×1).
            note: a remark shown with the layer.

        Example:
            >>> LayerSpectrum.from_weight("conv", torch.randn(16, 8, 3, 3), rank=0.5).ranks
            [4, 8]
        """
        weight = weight.detach()
        if weight.is_floating_point() and not bool(torch.isfinite(weight).all()):
            bad = int((~torch.isfinite(weight)).sum())
            raise LowRankError(
                f"the weights of {name!r} hold {bad} NaN/inf value(s): they have no spectrum; the model is corrupt or "
                "from a diverged run — analyse a good checkpoint"
            )
        if ranks is None and rank is not None:
            spec = RankSpec.parse(rank)
            if spec.kind != "dense":
                g = _geometry(weight)
                fmt, _ = choose_format("auto", g)
                ranks = list(ranks_for(fmt, g, spec, weight=weight))
                note = note or f"rank {spec} as {fmt}"
        s_out, s_in = singular_values(weight, "out"), singular_values(weight, "in")
        energy_out = energy_in = None
        if ranks:
            ranks = [int(r) for r in ranks]
            if len(ranks) == 2:  # Tucker-2: (r_in, r_out)
                energy_in, energy_out = energy_kept(s_in, ranks[0]), energy_kept(s_out, ranks[1])
            else:
                energy_out = energy_kept(s_out, ranks[0])
        errors = [orthogonality_error(f) for f in factors]
        return cls(
            name=name,
            format=format,
            kernel=list(weight.shape[2:]),
            in_channels=int(weight.shape[1]),
            out_channels=int(weight.shape[0]),
            ranks=list(ranks) if ranks else None,
            effective_rank_out=effective_rank(s_out),
            effective_rank_in=effective_rank(s_in),
            stable_rank_out=stable_rank(s_out),
            stable_rank_in=stable_rank(s_in),
            energy_out=energy_out,
            energy_in=energy_in,
            orth_error=max(errors) if errors else None,
            note=note,
            singular_values_out=s_out.tolist(),
            singular_values_in=s_in.tolist(),
        )

    def to_dict(self, spectra: bool = False) -> dict[str, Any]:
        """Plain JSON-ready values; the singular values only with ``spectra=True``.

        Example:
            >>> sorted(LayerSpectrum.from_weight("c", torch.randn(4, 4, 1, 1)).to_dict())[:3]
            ['effective_rank_in', 'effective_rank_out', 'energy_in']
        """
        data = {
            "name": self.name,
            "format": self.format,
            "kernel": list(self.kernel),
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "ranks": list(self.ranks) if self.ranks else None,
            "full_rank_out": self.full_rank_out,
            "full_rank_in": self.full_rank_in,
            "effective_rank_out": self.effective_rank_out,
            "effective_rank_in": self.effective_rank_in,
            "stable_rank_out": self.stable_rank_out,
            "stable_rank_in": self.stable_rank_in,
            "energy_out": self.energy_out,
            "energy_in": self.energy_in,
            "orth_error": self.orth_error,
            "note": self.note,
        }
        if spectra:
            data["singular_values_out"] = list(self.singular_values_out)
            data["singular_values_in"] = list(self.singular_values_in)
        return data


def _geometry(weight: Tensor) -> ConvGeometry:
    """The geometry the rank policy needs (channels, kernel) of a bare kernel."""
    nd = weight.dim() - 2
    return ConvGeometry(weight.shape[1], weight.shape[0], weight.shape[2:], (1,) * nd, (0,) * nd, (1,) * nd)


def analyze(model: nn.Module, rank: RankSpec | float | int | str | None = None) -> list[LayerSpectrum]:
    """Rank analysis of every ``Conv2d``/``Conv3d`` (groups 1) and every low-rank layer of a model.

    A low-rank layer is analysed through its merged kernel and its factors (its inner convs are not
    listed separately). A dense conv takes its ranks from the model's conversion plan where the plan gives
    it some, else from ``rank`` computed as the converter computes it (Tucker-2 ranks for k×k kernels, an
    SVD rank for 1×1), else it has none. Note that the converter itself keeps some layers dense (the
    stem, layers where factorising saves nothing); ``rank`` gives every dense conv ranks.

    Args:
        model: any model, converted or not.
        rank: a ratio in (0, 1] or an integer rank for the dense convs, e.g. ``0.3`` to see the energy a
            trained dense model keeps at the ranks ``lowrank convert --rank 0.3`` would give it.

    Returns:
        One :class:`LayerSpectrum` per layer, in module order.

    Example:
        >>> model = lowrank_tool.convert("resnet20", rank=0.5, input_size="3x32x32")
        >>> spectra = analyze(model)
        >>> spectra[1].name, spectra[1].format, spectra[1].ranks
        ('layer1.0.conv1', 'tucker2', [8, 8])
    """
    spec = RankSpec.parse(rank) if rank is not None else None
    plan = plan_of(model)
    entries = {entry.name: entry for entry in plan.layers} if plan is not None else {}
    out: list[LayerSpectrum] = []
    inside: list[str] = []  # names of low-rank layers whose submodules are skipped
    with torch.no_grad():
        for name, module in model.named_modules():
            if any(name.startswith(prefix + ".") for prefix in inside):
                continue
            entry = entries.get(name)
            if isinstance(module, LowRankConv):
                inside.append(name)
                out.append(
                    LayerSpectrum.from_weight(
                        name,
                        module.dense_weight(),
                        format=module.format_name,
                        ranks=module.ranks,
                        factors=module.factors(),
                        note=entry.reason if entry is not None else None,
                    )
                )
            elif isinstance(module, (nn.Conv2d, nn.Conv3d)) and module.groups == 1:
                ranks = entry.ranks if entry is not None and entry.ranks else None
                note = entry.reason if entry is not None else None
                if entry is not None and ranks and not note:
                    note = f"would be {entry.format} (plan not applied)"
                out.append(
                    LayerSpectrum.from_weight(
                        name or type(module).__name__, module.weight, ranks=ranks, rank=spec, note=note
                    )
                )
    return out
