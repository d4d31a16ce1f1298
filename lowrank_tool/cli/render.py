"""Rich rendering of a conversion plan: the per-layer table, the totals and what the ranks mean."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.markup import escape
from rich.table import Table

from ._common import console, human

if TYPE_CHECKING:
    from ..conversion_plan import ConversionPlan, LayerPlan


def _note(layer: LayerPlan) -> str:
    """The table's note: why the layer stayed dense, its other names when shared, its decomposition error."""
    parts = [layer.reason] if layer.reason else []
    if layer.aliases:
        parts.append("shared: also " + ", ".join(layer.aliases))
    if not layer.reason and layer.error is not None:
        parts.append(f"err {layer.error:.2e}")
    return "; ".join(parts)


def clip(value: object, limit: int = 200) -> str:
    """A value read from a file, as text safe to print: markup escaped, at most ``limit`` characters (rich wraps
    one long unbroken word in time that grows with the square of its length)."""
    text = str(value)
    return escape(text if len(text) <= limit else text[: limit - 1] + "…")


def _round_to(plan: ConversionPlan) -> int:
    value = plan.policy.get("round_to", 1)
    return value if isinstance(value, int) and not isinstance(value, bool) else 1


def rank_meaning(plan: ConversionPlan) -> str:
    policy = plan.policy
    rank = policy.get("rank")
    if policy.get("target_params") is not None or policy.get("target_macs") is not None:
        head = "ranks solved for the budget: one ratio ρ for all free layers"
        r = "ρ"
    elif isinstance(rank, int):
        return f"rank {rank} = absolute rank in every factorised mode (capped at the mode's channels)"
    else:
        head, r = f"rank {clip(rank, 40)} = fraction of channels kept in each factorised mode", clip(rank, 40)
    return (
        f"{head}: tucker2 r_in=⌈{r}·C_in⌉, r_out=⌈{r}·C_out⌉; svd r=⌈{r}·min(C_out, C_in·k)⌉; "
        f"cp R=⌈{r}·min(C_in, C_out)⌉"
        + (f"; rounded up to multiples of {_round_to(plan)}" if _round_to(plan) > 1 else "")
    )


def rounding_note(plan: ConversionPlan) -> str | None:
    """Where rounding ranks up to a multiple moved a layer well above the ratio asked (narrow layers).

    On a CIFAR network "rank 0.3" of a 16-channel layer is ⌈4.8⌉ = 5, rounded up to 8: half its channels.
    """
    from ..convert.options import RankSpec
    from ..convert.rank import ranks_for

    rank, round_to = plan.policy.get("rank"), _round_to(plan)
    if not isinstance(rank, float) or round_to <= 1:
        return None
    raised = []
    for layer in plan.layers:
        ranks = layer.ranks
        if not layer.converted or layer.format != "tucker2" or not ranks or len(ranks) != 2:
            continue
        exact = ranks_for("tucker2", layer.geometry(), RankSpec.parse(rank), round_to=1)
        kept = ranks[0] / layer.in_channels
        if kept > 1.25 * rank:
            raised.append((layer, ranks, exact, kept))
    if not raised:
        return None
    layer, ranks, exact, kept = raised[0]
    return (
        f"rounding to multiples of {round_to} raised {len(raised)} of {sum(x.converted for x in plan.layers)} layers "
        f"well above rank {rank} (e.g. {layer.name}: {exact[0]},{exact[1]} → {ranks[0]},{ranks[1]}, "
        f"{kept:.2f} of its {layer.in_channels} input channels); --round-to 1 keeps the exact ratio"
    )


def _size(sizes: list[int] | None) -> str:
    return "x".join(map(str, sizes)) if sizes else "-"


def plan_table(plan: ConversionPlan, title: str | None = None) -> Table:
    table = Table(title=escape(title) if title else None, show_lines=False, header_style="bold", pad_edge=False)
    for col in ("layer", "kernel", "channels", "out size", "format", "ranks", "params", "MACs", "note"):
        left = col in ("layer", "format", "note")
        table.add_column(
            col, justify="left" if left else "right", overflow="fold", no_wrap=col not in ("layer", "note")
        )
    for layer in plan.layers:
        style = None if layer.converted else "dim"
        table.add_row(
            escape(layer.name),
            "x".join(map(str, layer.kernel_size)),
            f"{layer.in_channels}→{layer.out_channels}",
            _size(layer.output_size),
            layer.format,
            ",".join(map(str, layer.ranks)) if layer.ranks else "-",
            f"{human(layer.params_before)}→{human(layer.params_after)}",
            f"{human(layer.macs_before)}→{human(layer.macs_after)}",
            clip(_note(layer)),
            style=style,
        )
    t = plan.totals()
    table.add_section()
    table.add_row(
        f"total ({t['converted']}/{t['layers']} convs converted)",
        "",
        "",
        "",
        "",
        "",
        f"{human(t['params_before'])}→{human(t['params_after'])}",
        f"{human(t['macs_before'])}→{human(t['macs_after'])}",
        f"{t['compression']:.2f}x params, {t['mac_reduction']:.2f}x MACs",
        style="bold",
    )
    return table


def print_plan(plan: ConversionPlan, title: str | None = None) -> None:
    t = plan.totals()
    console.print(plan_table(plan, title))
    console.print(
        f"[bold]params[/bold] {human(t['params_before'])} → {human(t['params_after'])} ({100 * t['params_ratio']:.1f}% kept, "
        f"{t['compression']:.2f}x)   [bold]MACs[/bold] {human(t['macs_before'])} → {human(t['macs_after'])} "
        f"({100 * t['macs_ratio']:.1f}% kept, {t['mac_reduction']:.2f}x)   per sample at {'x'.join(map(str, plan.input_size))}, "
        f"traced with {clip(plan.trace.get('path'), 40)}"
    )
    console.print(f"[dim]{rank_meaning(plan)}; MACs count conv and linear layers[/dim]")
    note = rounding_note(plan)
    if note is not None:
        console.print(f"[yellow]note:[/yellow] {escape(note)}", highlight=False)
    if plan.trace.get("path") == "hooks":
        console.print(
            f"[dim]torch.fx could not trace the whole model ({clip(plan.trace.get('fx_error'), 500)}); shapes came from forward hooks[/dim]"
        )
    for note in plan.notes:
        console.print(f"[yellow]note:[/yellow] {clip(note, 1000)}")
