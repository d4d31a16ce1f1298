"""The rank figure of ``lowrank analyze --plot``: chosen vs effective rank per layer, and the spectra."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..artifact import atomic_file, check_path
from ..errors import LowRankError
from .spectrum import LayerSpectrum

__all__ = ["PLOT_FORMATS", "check_plot_path", "write_plot"]

#: File types the plot can be written as (by extension).
PLOT_FORMATS = ("png", "svg", "pdf")
#: Layers drawn in colour in the spectrum panel (the others are thin grey lines).
_COLOURED = 6


def check_plot_path(path: Path) -> None:
    """One-line errors before any work: a known extension, an existing writable directory, not a directory."""
    check_path(path)
    ext = path.suffix.lower().lstrip(".")
    if ext not in PLOT_FORMATS:
        raise LowRankError(
            f"plot file {path} has extension {path.suffix or '(none)'!r}; use one of .{', .'.join(PLOT_FORMATS)}, e.g. ranks.png"
        )
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
    check_plot_path(path)
    n = len(spectra)
    x = list(range(n))
    fig = Figure(figsize=(min(30.0, max(8.0, 0.22 * n)), 8.5), layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, height_ratios=(1.1, 1.0))

    top.bar(x, [s.full_rank_out for s in spectra], color="0.88", label="full rank min(C_out, C_in·k)")
    chosen = [(s.ranks[-1] if s.ranks else 0) for s in spectra]
    if any(chosen):
        top.bar(x, chosen, width=0.55, color="tab:blue", label="chosen rank (r_out or r)")
    top.plot(
        x, [s.effective_rank_out for s in spectra], "o-", color="tab:orange", ms=3, lw=1.2, label="effective rank, out"
    )
    top.plot(
        x, [s.effective_rank_in for s in spectra], "s--", color="tab:green", ms=2.5, lw=1.0, label="effective rank, in"
    )
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

    try:
        with atomic_file(path, suffix=path.suffix) as tmp:
            fig.savefig(tmp, format=path.suffix.lower().lstrip("."), dpi=130)
    except OSError as exc:
        raise LowRankError(f"cannot write {path} ({exc.strerror or exc}); choose a writable path") from None
    return path
