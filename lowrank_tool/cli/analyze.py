"""`lowrank analyze TARGET`: per-layer rank analysis (effective rank, stable rank, energy kept, orthogonality).

TARGET is a model name (built with random weights), an artifact directory or an exported ``.onnx`` file.
The numbers come from :mod:`lowrank_tool.analysis.spectrum`; this module resolves the target, prints the
table (or JSON) and draws the optional plot.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, List, Optional, Sequence

import typer
from rich.table import Table

from ..errors import LowRankError
from ._common import MODEL_ARG_HELP, TRUST_CODE_HELP, console, err_console, parse_model_args, print_json

if TYPE_CHECKING:
    from ..analysis.spectrum import LayerSpectrum
    from ..convert.rank import RankSpec

#: File types the plot can be written as (by extension).
PLOT_FORMATS = ("png", "svg", "pdf")
#: Layers drawn in colour in the spectrum panel (the others are thin grey lines).
_COLOURED = 6

DEFINITIONS = (
    "out = C_out × C_in·k unfolding (what SVD factorises), in = C_in × C_out·k (Tucker-2's input mode); "
    "erank = exp(−Σ p log p), p = σ/Σσ; stable rank = Σσ²/σ₁²; energy = Σ_{i≤r} σ²/Σσ² at the layer's ranks "
    "(tucker2: r_out in out, r_in in in; svd/cp: r in out); orth err = max ‖UᵀU − I‖_F over the factors"
)


def analyze(
    target: Annotated[str, typer.Argument(help="Model name (see `lowrank models`), artifact directory (`lowrank convert -o DIR`) or .onnx file (`lowrank export`).", show_default=False)],
    rank: Annotated[Optional[str], typer.Option("--rank", "-r", help="Ranks for the layers that have none, as `lowrank convert --rank` computes them: a fraction in (0, 1] or an integer rank. For a model name: the ranks `lowrank convert NAME --rank R` would choose.")] = None,
    json: Annotated[bool, typer.Option("--json", help="Print a JSON list, one object per layer.")] = False,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write a figure (.png, .svg or .pdf): effective vs chosen rank per layer, and normalised singular-value spectra.", show_default=False)] = None,
    input_size: Annotated[Optional[str], typer.Option(help="With a model name and --rank: the per-sample input CxHxW the converter's plan is traced at. [default: the model family's]")] = None,
    model_arg: Annotated[Optional[List[str]], typer.Option("--model-arg", "-m", help="With a model name: " + MODEL_ARG_HELP)] = None,
    trust_code: Annotated[bool, typer.Option("--trust-code", help=TRUST_CODE_HELP)] = False,
) -> None:
    """Per-layer rank analysis: effective rank, stable rank, energy kept at the chosen ranks, factor orthogonality.

    Each conv kernel is unfolded along its output-channel and input-channel modes and its singular
    values σ are measured (a low-rank layer through its merged kernel). A model name is analysed with
    random weights; an .onnx file through its Conv weights (batch norm folded in).

    Examples: lowrank analyze r50 · lowrank analyze resnet50 --rank 0.3 · lowrank analyze trained_dir --rank 0.3 --plot ranks.png ·
    lowrank analyze r50.onnx --json
    """
    if plot is not None:
        _check_plot_path(plot)
    with err_console.status("analysing", spinner="dots"):
        spectra, notes = _resolve(target, rank, input_size, trust_code, parse_model_args(model_arg))
    if not spectra:
        raise LowRankError(f"{target} has no convolution with groups=1 to analyse; analyze a CNN, its artifact directory or its .onnx file")
    if plot is not None:
        write_plot(spectra, plot, title=f"lowrank analyze {target}" + (f" --rank {rank}" if rank else ""))
    if json:
        print_json([s.to_dict() for s in spectra])
        return
    console.print(_table(spectra, title=str(target)))
    console.print(_summary(spectra))
    console.print(f"[dim]{DEFINITIONS}[/dim]")
    for note in notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    if plot is not None:
        console.print(f"plot written to {plot}")


# -- targets ---------------------------------------------------------------------------------------------
def _resolve(target: str, rank: str | None, input_size: str | None, trust_code: bool = False,
             model_kwargs: dict[str, Any] | None = None) -> tuple[list[LayerSpectrum], list[str]]:
    """The spectra of a model name, artifact directory or .onnx file, and notes about how they were read."""
    from ..analysis.spectrum import analyze as analyze_model
    from ..convert.rank import RankSpec

    spec = RankSpec.parse(rank, what="--rank") if rank is not None else None
    if spec is not None and spec.kind == "dense":
        raise LowRankError("--rank dense gives no ranks to analyse; use a fraction in (0, 1] (e.g. 0.3) or an integer rank (e.g. 16)")
    path = Path(target).expanduser()
    is_path = path.suffix.lower() == ".onnx" or path.exists() or os.sep in target or target.startswith(".")
    if is_path and input_size is not None:
        raise LowRankError(f"--input-size applies to a model name with --rank, not to {target}; drop --input-size")
    if is_path and model_kwargs:
        raise LowRankError(f"--model-arg applies to a model name, not to {target} (its plan records the model's arguments); drop --model-arg")
    if input_size is not None and spec is None:
        raise LowRankError("--input-size only sets where the converter's plan is traced, which --rank asks for; add --rank 0.3 or drop --input-size")
    if path.suffix.lower() == ".onnx":
        return _onnx_spectra(path, spec)
    if is_path:
        from .. import load

        if path.exists() and not path.is_dir():
            raise LowRankError(f"{target} is neither an artifact directory nor an .onnx file; point to a directory from `lowrank convert -o DIR` or a file from `lowrank export`")
        return analyze_model(load(path, trust_code=trust_code), rank=spec), []
    return _model_spectra(target, spec, input_size, model_kwargs or {})


def _model_spectra(name: str, spec: RankSpec | None, input_size: str | None, model_kwargs: dict[str, Any]) -> tuple[list[LayerSpectrum], list[str]]:
    """A model by name, with random weights; with a rank, the converter's plan gives the ranks."""
    from .. import build_model, plan
    from ..analysis.spectrum import analyze as analyze_model
    from ..convert.api import PLAN_ATTR
    from ..models import default_input_size, get_entry

    try:
        get_entry(name)
    except LowRankError as exc:
        raise LowRankError(f"{exc}; no artifact directory or .onnx file named {name!r} exists either") from None
    model = build_model(name, **model_kwargs)
    notes = ["random weights (the model is built untrained): spectra show initialisation, not a trained model"]
    if spec is None:
        return analyze_model(model), notes
    setattr(model, PLAN_ATTR, plan(model, rank=spec.to_json(), input_size=input_size or default_input_size(name, model_kwargs)))
    notes.append(f"ranks are those `lowrank convert {name} --rank {spec}` would choose; layers it keeps dense have none")
    return analyze_model(model), notes


def _module_path(node_name: str) -> str:
    """``/layer1/layer1.0/conv1/core/Conv`` (TorchScript exporter scopes) → ``layer1.0.conv1.core``."""
    path = ""
    for part in node_name.strip("/").split("/")[:-1]:
        path = part if not path or part.startswith(path + ".") else f"{path}.{part}"
    return path


def _onnx_spectra(path: Path, spec: RankSpec | None) -> tuple[list[LayerSpectrum], list[str]]:
    """Every group-1 Conv node of an ONNX file whose weight is an initializer, named after the plan where it can."""
    import torch
    from onnx import numpy_helper

    from ..analysis.spectrum import LayerSpectrum
    from ..export.onnx import _load_proto, plan_from_onnx

    proto = _load_proto(path)
    plan = plan_from_onnx(path)
    entries = {entry.name: entry for entry in plan.layers} if plan is not None else {}
    inits = {init.name: init for init in proto.graph.initializer}
    spectra: list[LayerSpectrum] = []
    computed = factors = 0
    for index, node in enumerate(n for n in proto.graph.node if n.op_type == "Conv"):
        if next((a.i for a in node.attribute if a.name == "group"), 1) != 1:
            continue
        init = inits.get(node.input[1])
        if init is None:
            computed += 1
            continue
        if len(init.dims) not in (4, 5):  # Conv1d: not a 2-D/3-D kernel
            continue
        weight = torch.from_numpy(numpy_helper.to_array(init).astype("float64"))
        name = _module_path(node.name) or (init.name.removesuffix(".weight") if not init.name.startswith("onnx::") else node.name or f"Conv_{index}")
        entry = entries.get(name)
        owner = next((e for n, e in entries.items() if e.converted and name.startswith(n + ".")), None)
        if entry is not None and entry.converted:
            spectra.append(LayerSpectrum.from_weight(name, weight, format=entry.format, ranks=entry.ranks, note="factor chain merged into one Conv"))
        elif owner is not None:
            factors += 1
            ranks = ",".join(map(str, owner.ranks or []))
            spectra.append(LayerSpectrum.from_weight(name, weight, note=f"factor conv of {owner.name} ({owner.format} {ranks})"))
        else:
            spectra.append(LayerSpectrum.from_weight(name, weight, rank=spec, note=entry.reason if entry is not None else None))
    notes = ["ONNX Conv weights have batch norm folded in (each output channel scaled by γ/√(var+ε)): spectra differ from the PyTorch model's"]
    if plan is None:
        notes.append(f"{path} carries no conversion plan (exported without lowrank_tool metadata): layer names come from the graph")
    if factors:
        notes.append(f"{factors} Conv nodes are factors of low-rank layers, stored as separate convs (1x1 → kxk → 1x1); each is analysed as a "
                     "dense conv — analyse the artifact directory for the merged kernels and the factors' orthogonality")
    if computed:
        notes.append(f"{computed} Conv nodes compute their weights (quantized or cast) instead of storing them; they are not analysed")
    return spectra, notes


# -- table and summary -----------------------------------------------------------------------------------
def _pair(a: float | None, b: float | None, fmt: str) -> str:
    return "/".join("-" if v is None else format(v, fmt) for v in (a, b))


def _table(spectra: Sequence[LayerSpectrum], title: str | None = None) -> Table:
    table = Table(title=title, header_style="bold", pad_edge=False)
    for col in ("layer", "kernel", "channels", "format", "ranks", "erank out/in", "stable rank out/in", "energy kept out/in", "orth err", "note"):
        table.add_column(col, justify="left" if col in ("layer", "format", "note") else "right", overflow="fold",
                         no_wrap=col not in ("layer", "note"))
    for s in spectra:
        table.add_row(
            s.name, "x".join(map(str, s.kernel)), f"{s.in_channels}→{s.out_channels}", s.format,
            ",".join(map(str, s.ranks)) if s.ranks else "-",
            _pair(s.effective_rank_out, s.effective_rank_in, ".1f"), _pair(s.stable_rank_out, s.stable_rank_in, ".1f"),
            _pair(s.energy_out, s.energy_in, ".3f") if s.ranks else "-",
            "-" if s.orth_error is None else f"{s.orth_error:.1e}", s.note or "",
            style=None if s.ranks else "dim",
        )
    return table


def _summary(spectra: Sequence[LayerSpectrum]) -> str:
    low_rank = sum(s.format != "dense" for s in spectra)
    share = sum(s.effective_rank_out / s.full_rank_out for s in spectra) / len(spectra)
    text = (f"[bold]{len(spectra)} convs[/bold] ({low_rank} low-rank): effective rank (out) is {100 * share:.0f}% of full rank "
            f"min(C_out, C_in·k) on average")
    kept = [(e, s.name) for s in spectra for e in (s.energy_out, s.energy_in) if e is not None]
    if kept:
        low, where = min(kept)
        text += f"; energy kept at the ranks: mean {sum(e for e, _ in kept) / len(kept):.3f}, lowest {low:.3f} ({where})"
    orth = [s.orth_error for s in spectra if s.orth_error is not None]
    if orth:
        text += f"; orth err max {max(orth):.1e}"
    return text


# -- the plot --------------------------------------------------------------------------------------------
def _check_plot_path(path: Path) -> None:
    """One-line errors before any work: a known extension, an existing writable directory, not a directory."""
    ext = path.suffix.lower().lstrip(".")
    if ext not in PLOT_FORMATS:
        raise LowRankError(f"plot file {path} has extension {path.suffix or '(none)'!r}; use one of .{', .'.join(PLOT_FORMATS)}, e.g. ranks.png")
    if path.is_dir():
        raise LowRankError(f"plot path {path} is a directory; give a file name such as {path / 'ranks.png'}")
    parent = path.parent
    if not parent.exists():
        raise LowRankError(f"cannot write {path}: directory {parent} does not exist; create it first")
    if not parent.is_dir():
        raise LowRankError(f"cannot write {path}: {parent} is not a directory; choose another path")
    if not os.access(parent, os.W_OK):
        raise LowRankError(f"cannot write {path}: directory {parent} is not writable; choose another path")


def write_plot(spectra: Sequence[LayerSpectrum], path: str | os.PathLike[str], title: str | None = None) -> Path:
    """Draw the rank figure and write it atomically (temporary file in the same directory, then rename).

    Top panel: per layer, the full rank min(C_out, C_in·k) and the chosen rank (bars) against the
    effective rank of both unfoldings (lines), log scale. Bottom panel: normalised spectra σᵢ/σ₁ of the
    out unfolding, log scale, a few layers spread over the depth in colour and the rest in grey.

    Args:
        spectra: the layers, from :func:`lowrank_tool.analysis.spectrum.analyze`.
        path: a ``.png``, ``.svg`` or ``.pdf`` file.
        title: the figure title.

    Example:
        >>> write_plot(analyze(model), "ranks.png")  # doctest: +SKIP
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    path = Path(path)
    _check_plot_path(path)
    n = len(spectra)
    x = list(range(n))
    fig = Figure(figsize=(min(30.0, max(8.0, 0.22 * n)), 8.5), layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, height_ratios=(1.1, 1.0))

    top.bar(x, [s.full_rank_out for s in spectra], color="0.88", label="full rank min(C_out, C_in·k)")
    chosen = [(s.ranks[-1] if s.ranks else 0) for s in spectra]
    if any(chosen):
        top.bar(x, chosen, width=0.55, color="tab:blue", label="chosen rank (r_out or r)")
    top.plot(x, [s.effective_rank_out for s in spectra], "o-", color="tab:orange", ms=3, lw=1.2, label="effective rank, out")
    top.plot(x, [s.effective_rank_in for s in spectra], "s--", color="tab:green", ms=2.5, lw=1.0, label="effective rank, in")
    top.set_yscale("log", base=2)  # ranks are often powers of two: ticks 1, 2, 4, 8, ...
    top.yaxis.set_major_formatter(ScalarFormatter())
    top.yaxis.set_minor_formatter(NullFormatter())
    top.set_ylabel("rank")
    top.set_xlim(-0.6, n - 0.4)
    step = max(1, n // 60)
    top.set_xticks(x[::step], [s.name for s in spectra][::step], rotation=90, fontsize=6)
    top.legend(fontsize=7, loc="upper left", ncols=2)
    if title:
        top.set_title(title, fontsize=10)

    coloured = sorted({round(i * (n - 1) / (_COLOURED - 1)) for i in range(_COLOURED)} if n > 1 else {0})
    for i, s in enumerate(spectra):
        sv = s.singular_values_out
        if not sv or sv[0] <= 0:
            continue
        ratio = [max(v / sv[0], 1e-12) for v in sv]
        idx = range(1, len(ratio) + 1)
        if i in coloured:
            bottom.plot(idx, ratio, lw=1.4, label=s.name, zorder=3)
        else:
            bottom.plot(idx, ratio, lw=0.5, color="0.75", zorder=2)
    bottom.set_yscale("log")
    bottom.set_xlabel("singular value index i (out unfolding)")
    bottom.set_ylabel("σᵢ / σ₁")
    bottom.legend(fontsize=7, loc="lower left")
    bottom.grid(True, which="major", lw=0.3, alpha=0.5)

    tmp: Path | None = None
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        fig.savefig(tmp, format=path.suffix.lower().lstrip("."), dpi=130)
        os.replace(tmp, path)
    except OSError as exc:
        raise LowRankError(f"cannot write {path} ({exc.strerror or exc}); choose a writable path") from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    return path
