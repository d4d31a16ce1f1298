"""`lowrank analyze TARGET`: per-layer rank analysis (effective rank, stable rank, energy kept, orthogonality).

TARGET is a model name (built with random weights), an artifact directory or an exported ``.onnx`` file.
The numbers come from :mod:`lowrank_tool.analysis.sources` (which reads the target) and
:mod:`lowrank_tool.analysis.spectrum`; this module prints the table (or JSON) and asks
:mod:`lowrank_tool.analysis.plot` for the optional figure.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import LowRankError
from ._common import (
    MODEL_ARG_HELP,
    TRUST_CODE_HELP,
    console,
    err_console,
    parse_model_args,
    print_json,
)

if TYPE_CHECKING:
    from ..analysis.spectrum import LayerSpectrum

DEFINITIONS = (
    "out = C_out × C_in·k unfolding (what SVD factorises), in = C_in × C_out·k (Tucker-2's input mode); "
    "erank = exp(−Σ p log p), p = σ/Σσ; stable rank = Σσ²/σ₁²; energy = Σ_{i≤r} σ²/Σσ² at the layer's ranks "
    "(tucker2: r_out in out, r_in in in; svd/cp: r in out); orth err = max ‖UᵀU − I‖_F over the factors"
)


def analyze(
    target: Annotated[
        str,
        typer.Argument(
            help="Model name (see `lowrank models`), artifact directory (`lowrank convert -o DIR`) or .onnx file (`lowrank export`).",
            show_default=False,
        ),
    ],
    rank: Annotated[
        str | None,
        typer.Option(
            "--rank",
            "-r",
            help="Ranks for the layers that have none, as `lowrank convert --rank` computes them: a fraction in (0, 1] or an integer rank. For a model name: the ranks `lowrank convert NAME --rank R` would choose.",
        ),
    ] = None,
    json: Annotated[bool, typer.Option("--json", help="Print a JSON list, one object per layer.")] = False,
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot",
            help="Write a figure (.png, .svg or .pdf): effective vs chosen rank per layer, and normalised singular-value spectra.",
            show_default=False,
        ),
    ] = None,
    input_size: Annotated[
        str | None,
        typer.Option(
            help="With a model name and --rank: the per-sample input CxHxW the converter's plan is traced at. [default: the model family's]"
        ),
    ] = None,
    model_arg: Annotated[
        list[str] | None, typer.Option("--model-arg", "-m", help="With a model name: " + MODEL_ARG_HELP)
    ] = None,
    trust_code: Annotated[bool, typer.Option("--trust-code", help=TRUST_CODE_HELP)] = False,
) -> None:
    """Per-layer rank analysis: effective rank, stable rank, energy kept at the chosen ranks, factor orthogonality.

    Each conv kernel is unfolded along its output-channel and input-channel modes and its singular
    values σ are measured (a low-rank layer through its merged kernel). A model name is analysed with
    random weights; an .onnx file through its Conv weights (batch norm folded in).

    Examples: lowrank analyze r50 · lowrank analyze resnet50 --rank 0.3 · lowrank analyze trained_dir --rank 0.3 --plot ranks.png ·
    lowrank analyze r50.onnx --json
    """
    from ..analysis.settings import analysis_target  # numpy, not torch

    # a mistyped path or a misplaced option is refused before torch is imported
    analysis_target(target, rank, input_size=input_size, model_kwargs=parse_model_args(model_arg))
    from ..analysis.plot import check_plot_path, write_plot
    from ..analysis.sources import spectra_of

    if plot is not None:
        check_plot_path(plot)
    with err_console.status("analysing", spinner="dots"):
        spectra, notes = spectra_of(
            target, rank, input_size=input_size, trust_code=trust_code, model_kwargs=parse_model_args(model_arg)
        )
    if not spectra:
        raise LowRankError(
            f"{target} has no convolution with groups=1 to analyse; analyze a CNN, its artifact directory or its .onnx file"
        )
    if plot is not None:
        write_plot(spectra, plot, title=f"lowrank analyze {target}" + (f" --rank {rank}" if rank else ""))
    if json:
        print_json([s.to_dict() for s in spectra])
        return
    console.print(_table(spectra, title=escape(str(target))))
    console.print(_summary(spectra))
    console.print(f"[dim]{DEFINITIONS}[/dim]")
    for note in notes:
        console.print(f"[yellow]note:[/yellow] {escape(note)}")
    if plot is not None:
        console.print(f"plot written to {plot}", markup=False)


# -- table and summary -----------------------------------------------------------------------------------
def _pair(a: float | None, b: float | None, fmt: str) -> str:
    return "/".join("-" if v is None else format(v, fmt) for v in (a, b))


def _table(spectra: Sequence[LayerSpectrum], title: str | None = None) -> Table:
    table = Table(title=title, header_style="bold", pad_edge=False)
    for col in (
        "layer",
        "kernel",
        "channels",
        "format",
        "ranks",
        "erank out/in",
        "stable rank out/in",
        "energy kept out/in",
        "orth err",
        "note",
    ):
        table.add_column(
            col,
            justify="left" if col in ("layer", "format", "note") else "right",
            overflow="fold",
            no_wrap=col not in ("layer", "note"),
        )
    for s in spectra:
        table.add_row(
            escape(s.name),
            "x".join(map(str, s.kernel)),
            f"{s.in_channels}→{s.out_channels}",
            s.format,
            ",".join(map(str, s.ranks)) if s.ranks else "-",
            _pair(s.effective_rank_out, s.effective_rank_in, ".1f"),
            _pair(s.stable_rank_out, s.stable_rank_in, ".1f"),
            _pair(s.energy_out, s.energy_in, ".3f") if s.ranks else "-",
            "-" if s.orth_error is None else f"{s.orth_error:.1e}",
            escape(s.note or ""),
            style=None if s.ranks else "dim",
        )
    return table


def _summary(spectra: Sequence[LayerSpectrum]) -> str:
    low_rank = sum(s.format != "dense" for s in spectra)
    share = sum(s.effective_rank_out / s.full_rank_out for s in spectra) / len(spectra)
    text = (
        f"[bold]{len(spectra)} convs[/bold] ({low_rank} low-rank): effective rank (out) is {100 * share:.0f}% of full rank "
        f"min(C_out, C_in·k) on average"
    )
    kept = [(e, s.name) for s in spectra for e in (s.energy_out, s.energy_in) if e is not None]
    if kept:
        low, where = min(kept)
        text += (
            f"; energy kept at the ranks: mean {sum(e for e, _ in kept) / len(kept):.3f}, lowest {low:.3f} ({where})"
        )
    orth = [s.orth_error for s in spectra if s.orth_error is not None]
    if orth:
        text += f"; orth err max {max(orth):.1e}"
    return text
