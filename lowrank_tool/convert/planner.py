"""Build a :class:`ConversionPlan` from a model, its captured shapes and the user's options.

Per layer, in order of precedence: grouped convs, conv classes whose forward the toolkit does not know
(:mod:`.support`) and convs no forward pass reaches stay dense; ``exclude`` patterns keep a layer dense;
``layer_rank`` patterns give it its own rank; otherwise the stem conv that reads the image stays dense and
every other conv follows the global rank (or the ratio solved for a ``target_params``/``target_macs``
budget). A layer whose factorised form would not save both parameters and MACs stays dense, with the
numbers in its ``reason``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn
from torch.nn.modules.conv import _ConvNd

from ..conversion_plan import ConversionPlan, LayerPlan
from ..errors import LowRankError
from ..layers import LowRankConv
from ..layers.base import ConvGeometry
from .apply import check_finite_weight
from .options import ConvertOptions, RankSpec
from .rank import (
    SpatialSizes,
    choose_format,
    dense_cost,
    layer_cost,
    ranks_for,
    solve_ratio,
)
from .select import FqnMatcher
from .sharing import module_names, tied_elsewhere
from .support import conv_support, qualified_name
from .trace import ALL_CONVS, CONV_TYPES, OTHER_CONVS, Capture

__all__ = ["build_plan", "STEM_MAX_CHANNELS"]

#: Without a known image shape, a conv with at most this many input channels is taken for the stem.
STEM_MAX_CHANNELS = 4


@dataclass(eq=False)
class _Candidate:
    name: str
    module: _ConvNd
    geometry: ConvGeometry | None  # None for grouped convs
    sizes: SpatialSizes | None
    input_size: list[int] | None
    output_size: list[int] | None
    calls: int
    dense: tuple[int, int]
    aliases: list[str]  # the other names the same module is reachable under (a shared module)
    spec: RankSpec | None = None  # None: follows the global rank / budget
    spec_source: str = ""
    reason: str | None = None

    @property
    def names(self) -> list[str]:
        return [self.name, *self.aliases]


def _candidates(model: nn.Module, capture: Capture) -> list[_Candidate]:
    inner: list[str] = []
    out: list[_Candidate] = []
    names = module_names(model)
    tied = tied_elsewhere(model)
    counted: set[int] = set()  # parameters already counted by an earlier candidate (tied weights count once)
    for name, module in model.named_modules():
        if isinstance(module, LowRankConv):
            inner.append(name + ".")
            continue
        if not isinstance(module, ALL_CONVS) or any(name.startswith(p) for p in inner):
            continue
        groups = module.groups
        shapes = capture.shapes.get(name)
        sizes = None
        in_hw = out_hw = None
        calls = 0
        if shapes is not None and shapes.outputs:
            calls = len(shapes.outputs)
            in_hw, out_hw = list(shapes.inputs[0][2:]), list(shapes.outputs[0][2:])
            # CP's vertical conv output: H_out × W_in (only 2-D convs have a CP form).
            mid = (
                sum(o[2] * i[-1] * i[0] for i, o in zip(shapes.inputs, shapes.outputs, strict=True)) // shapes.batch
                if module.weight.dim() == 4
                else 0
            )
            sizes = SpatialSizes(shapes.spatial_numel("inputs"), shapes.spatial_numel("outputs"), mid)
        plain = ConvGeometry(
            module.in_channels,
            module.out_channels,
            module.kernel_size,
            module.stride,
            module.padding,
            module.dilation,
            module.padding_mode,
            module.bias is not None,
        )
        params, macs = dense_cost(plain, sizes or SpatialSizes(0, 0, 0), groups)
        if isinstance(module, nn.modules.conv._ConvTransposeNd):  # every input position meets the whole kernel
            macs = (
                (sizes.inp if sizes else 0) * module.in_channels * (module.out_channels // groups) * plain.kernel_numel
            )
        own = [p for p in (module.weight, module.bias) if isinstance(p, nn.Parameter)]
        params -= sum(p.numel() for p in own if id(p) in counted)
        counted.update(id(p) for p in own)
        support = conv_support(module) if groups == 1 else None
        geometry = support if isinstance(support, ConvGeometry) else None
        aliases = names[id(module)][1:]
        cand = _Candidate(name, module, geometry, sizes, in_hw, out_hw, calls, (params, macs), aliases)
        if isinstance(module, OTHER_CONVS):
            cand.reason = f"{_base_kind(module)}: no low-rank form (Conv2d and Conv3d are converted)"
        elif groups != 1:
            cand.reason = f"grouped conv (groups={groups})"
        elif isinstance(support, str):
            cand.reason = support
        elif id(module) in tied:
            shared = tied[id(module)]
            cand.reason = (
                f"parameters tied to {shared[0]}"
                + (f" and {len(shared) - 1} more" if len(shared) > 1 else "")
                + " (factorising would untie them)"
            )
        elif sizes is None:
            cand.reason = "not reached by the forward pass"
        out.append(cand)
    return out


def _base_kind(module: nn.Module) -> str:
    """The torch conv class a module is (``Conv2d`` for a subclass of it): the plan's ``kind``."""
    return next(k.__name__ for k in (*CONV_TYPES, *OTHER_CONVS) if isinstance(module, k))


def _stems(cands: list[_Candidate], capture: Capture, image_shape: Sequence[int] | None) -> set[str]:
    """The convs that read the image (at most ``STEM_MAX_CHANNELS`` channels: RGB, grey, RGBA).

    A stem takes the image's channel count at its spatial size (else: the first such conv that runs,
    for models that resize their input). An SE conv that happens to have 4 inputs is no stem. Without
    an image shape (an unusual example input), any conv with at most ``STEM_MAX_CHANNELS`` inputs.
    """
    if not image_shape:
        return {c.name for c in cands if c.module.in_channels <= STEM_MAX_CHANNELS}
    channels, spatial = image_shape[0], tuple(image_shape[1:])
    if channels > STEM_MAX_CHANNELS:
        return set()
    by_name = {c.name: c for c in cands}
    reading = [n for n in capture.shapes if n in by_name and by_name[n].module.in_channels == channels]
    exact = {n for n in reading if tuple(capture.shapes[n].inputs[0][2:]) == spatial}
    return exact or set(reading[:1])


def _decide(
    c: _Candidate, fmt_request: str, spec: RankSpec, round_to: int, allow_growth: bool = False
) -> tuple[str, tuple[int, ...] | None, tuple[int, int], str | None]:
    """(format, ranks, (params, macs), reason) for one layer under one rank request."""
    assert c.geometry is not None and c.sizes is not None
    if spec.kind == "dense":
        return "dense", None, c.dense, None
    fmt, note = choose_format(fmt_request, c.geometry)
    if spec.needs_weights:  # energy / erank read the spectrum: NaN would end in a LinAlgError
        check_finite_weight(c.module, c.name)
    ranks = ranks_for(fmt, c.geometry, spec, round_to, weight=c.module.weight.detach() if spec.needs_weights else None)
    cost = layer_cost(fmt, c.geometry, ranks, c.sizes)
    if not allow_growth and (cost[0] >= c.dense[0] or cost[1] >= c.dense[1]):
        r = "x".join(map(str, ranks))
        return (
            "dense",
            None,
            c.dense,
            (
                f"no saving at rank {r} ({fmt}: {cost[0]:,} vs {c.dense[0]:,} params, {cost[1]:,} vs {c.dense[1]:,} MACs)"
            ),
        )
    return fmt, ranks, cost, note


def build_plan(
    model: nn.Module,
    capture: Capture,
    options: ConvertOptions,
    *,
    base_model: dict[str, Any],
    input_size: Sequence[int],
    model_hint: str = "MODEL",
    image_shape: Sequence[int] | None = None,
) -> ConversionPlan:
    """Decide every candidate conv's format and ranks (no module is changed).

    ``image_shape`` is one sample of the model's image input (C, H, W or C, T, H, W), used to find the
    stem conv(s) that read it; default ``input_size``.
    """
    cands = _candidates(model, capture)
    stems = _stems(cands, capture, input_size if image_shape is None else image_shape)
    if any(isinstance(m, LowRankConv) for m in model.modules()):
        raise LowRankError("this model is already converted (it has low-rank layers); convert the dense model instead")
    exclude = FqnMatcher(dict.fromkeys(options.exclude, True), "--exclude")
    overrides = FqnMatcher(options.layer_specs, "--layer-rank")
    for c in cands:
        # a shared module is one layer: a pattern may name it under any of its names (each name is looked
        # up, so every pattern that names one counts as used)
        excluded = [exclude.lookup(n)[0] for n in c.names]
        hit_ex = any(excluded)
        ranked = [overrides.lookup(n) for n in c.names]
        hit_lr, spec = next((found for found in ranked if found[0]), (False, None))
        given = {str(found[1]) for found in ranked if found[0]}
        if len(given) > 1:
            raise LowRankError(
                f"layer_rank gives the shared conv {c.name!r} (also {', '.join(c.aliases)}) different ranks: "
                f"{', '.join(sorted(given))}; it is one layer, give it one rank"
            )
        if c.reason is not None:
            continue
        if hit_ex:
            c.reason, c.spec = "excluded (--exclude)", RankSpec("dense", 0)
        elif hit_lr and spec is not None:
            c.spec, c.spec_source = spec, "layer_rank"
            if spec.kind == "dense":
                c.reason = "dense (--layer-rank)"
        elif c.name in stems:
            c.reason = f"stem: reads the image (C_in={c.module.in_channels})"
            c.spec = RankSpec("dense", 0)
    exclude.check_all_used(model_hint)
    overrides.check_all_used(model_hint)
    if options.dense:
        for c in cands:
            if c.reason is None:
                c.reason, c.spec = "dense baseline (--dense)", RankSpec("dense", 0)

    active = [c for c in cands if c.reason is None]  # everything else stays dense, with its reason
    fixed_layers = [c for c in cands if c not in active]
    free = [c for c in active if c.spec is None]
    pinned = [c for c in active if c.spec is not None]

    total_params = sum(p.numel() for p in model.parameters())  # each parameter once, however many names reach it
    other_params = total_params - sum(c.dense[0] for c in cands)
    other_macs = sum(
        s.linear_macs(m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and (s := capture.shapes.get(n))
    )
    global_spec = options.rank_spec
    budget_note: str | None = None

    budget = options.budget
    if budget is not None and free:
        key, fraction = budget
        idx = 0 if key == "params" else 1
        dense_total = (other_params if idx == 0 else other_macs) + sum(c.dense[idx] for c in cands)
        base = (other_params if idx == 0 else other_macs) + sum(c.dense[idx] for c in fixed_layers)
        base += sum(
            _decide(c, options.format, c.spec, options.round_to, options.allow_growth)[2][idx] for c in pinned if c.spec
        )
        target = fraction * dense_total

        def total(ratio: float) -> int:
            spec = RankSpec("ratio", ratio)
            return base + sum(
                _decide(c, options.format, spec, options.round_to, options.allow_growth)[2][idx] for c in free
            )

        smallest = total(1e-6)
        if smallest > target:
            raise LowRankError(
                f"target_{key} {fraction:g} cannot be met: with rank 1 everywhere the model keeps {smallest / dense_total:.3f} "
                f"of the dense {key} (the rest is in layers that stay dense); raise the target or exclude fewer layers"
            )
        ratio = solve_ratio(total, int(target))
        global_spec = RankSpec("ratio", ratio)
        budget_note = f"budget target_{key}={fraction:g}: solved ratio {ratio:.4f} for {len(free)} layers"

    layers: list[LayerPlan] = []
    for c in cands:
        m = c.module
        if c in active:
            spec = c.spec if c.spec is not None else global_spec
            fmt, ranks, cost, note = _decide(c, options.format, spec, options.round_to, options.allow_growth)
            source = str(spec) if c.spec is not None or budget is None else f"budget:{spec.value:.4f}"
            if fmt != "dense" and c.geometry is not None and c.geometry.dynamic_same:
                note = "; ".join(
                    filter(None, [note, f"{type(m).__name__}: dynamic 'same' padding kept (pad, then the factors)"])
                )
        else:
            fmt, ranks, cost, note, source = "dense", None, c.dense, c.reason, None
        layers.append(
            LayerPlan(
                name=c.name,
                kind=_base_kind(m),
                in_channels=m.in_channels,
                out_channels=m.out_channels,
                kernel_size=list(m.kernel_size),
                stride=list(m.stride),
                padding=m.padding if isinstance(m.padding, str) else list(m.padding),
                dilation=list(m.dilation),
                groups=m.groups,
                padding_mode=m.padding_mode,
                bias=m.bias is not None,
                input_size=c.input_size,
                output_size=c.output_size,
                calls=c.calls,
                params_before=c.dense[0],
                params_after=cost[0],
                macs_before=c.dense[1],
                macs_after=cost[1],
                format=fmt,
                ranks=list(ranks) if ranks else None,
                rank_spec=source,
                reason=note,
                conv_class=None if type(m) in (*CONV_TYPES, *OTHER_CONVS) else qualified_name(type(m)),
                dynamic_same=bool(c.geometry is not None and c.geometry.dynamic_same),
                aliases=list(c.aliases) or None,
            )
        )

    plan = ConversionPlan(
        base_model=base_model,
        input_size=list(input_size),
        trace={
            "path": capture.path,
            "fx_error": capture.fx_error,
            "train_only": capture.train_only,
            "train_error": capture.train_error,
            "shapes_on_meta": capture.meta,
        },
        policy=options.to_json(),
        layers=layers,
        other_params=other_params,
        other_macs=other_macs,
    )
    if budget_note:
        plan.notes.append(budget_note)
        plan.policy["solved_ratio"] = global_spec.value
    elif budget is not None:
        plan.notes.append(
            f"target_{budget[0]} was not applied: no layer follows the global rank (all are pinned or dense)"
        )
    if capture.train_error:
        plan.notes.append(
            f"the train-mode pass failed ({capture.train_error}); layers only used in training stay dense"
        )
    if capture.functional_convs:
        plan.notes.append(
            f"{capture.functional_convs} convolution(s) are called through torch.nn.functional and cannot be converted"
        )
    if options.dense:
        plan.notes.append("dense baseline: nothing converted (--dense)")
    elif not plan.converted_layers:
        user_kept = [c.name for c in cands if c.reason in ("excluded (--exclude)", "dense (--layer-rank)")]
        if user_kept:
            raise LowRankError(
                f"every convertible layer is excluded ({len(user_kept)} by --exclude/--layer-rank); nothing would be converted — "
                "exclude fewer layers"
            )
        plan.notes.append("nothing was converted: no convolution is eligible (see the reasons per layer)")
    return plan
