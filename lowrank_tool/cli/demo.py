"""`lowrank demo`: the whole idea in one command — dense vs ELRT low-rank, trained from scratch on digits.

Uses the embedded `digits` dataset (scikit-learn's real handwritten digits; nothing is downloaded),
converts a small CIFAR-style ResNet, trains the dense model and the low-rank one the same way, and
prints accuracy, parameters, MACs and time side by side; then exports both to ONNX (verified against
PyTorch) and times them in ONNX Runtime, back to back.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from ._common import console, human, print_json


def demo(
    model: Annotated[str, typer.Option(help="Network to compare (a name from `lowrank models`).")] = "resnet20",
    rank: Annotated[float, typer.Option(help="Rank of the low-rank model (fraction of channels kept per mode).")] = 0.5,
    epochs: Annotated[int, typer.Option(help="Epochs for each model.")] = 8,
    image_size: Annotated[int, typer.Option(help="Digits are upscaled from 8x8 to this size.")] = 16,
    seed: Annotated[int, typer.Option(help="Seed (data order, augmentation).")] = 0,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Keep both trained artifacts here (DIR/dense, DIR/elrt).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the final table.")] = False,
    json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Train a dense network and its ELRT low-rank version from scratch on digits, export both to ONNX, compare them."""
    from ..analysis.settings import demo_configs  # numpy, not torch

    demo_configs(rank, epochs=epochs, image_size=image_size, seed=seed, output=output)  # a mistake, refused at once
    from ..analysis.compare import compare_dense_and_lowrank

    chatty = not (quiet or json)

    def on_start(name: str) -> None:
        if chatty:
            console.print(f"[bold]{escape(name)}[/bold]: training {escape(model)} on digits for {epochs} epochs")

    def on_epoch(r: dict[str, Any]) -> None:
        if chatty:
            console.print(
                f"  epoch {r['epoch'] + 1}/{epochs}  loss {r['train_loss']:.3f}  val top1 {r['val_top1']:5.1f}%  "
                f"{r['epoch_seconds']:.1f}s",
                highlight=False,
            )

    from ..train.trainer import TrainingInterrupted

    try:
        rows = compare_dense_and_lowrank(
            model,
            rank,
            epochs=epochs,
            image_size=image_size,
            seed=seed,
            output=output,
            progress=chatty,
            on_start=on_start,
            on_epoch=on_epoch,
        )
    except TrainingInterrupted:  # Ctrl-C / SIGTERM: the demo's output directory is already removed
        sys.exit(130)
    if json:
        print_json({"model": model, "data": "digits", "epochs": epochs, "image_size": image_size, "results": rows})
        return
    table = Table(
        title=escape(f"{model} on digits ({image_size}x{image_size}), {epochs} epochs from scratch"),
        header_style="bold",
    )
    for col in (
        "model",
        "params",
        "MACs",
        "val top-1 (last)",
        "val top-1 (best)",
        "train time",
        "ONNX ms (CPU, batch 1)",
    ):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in rows:
        table.add_row(
            r["model"],
            human(r["params"]),
            human(r["macs"]),
            f"{r['last_top1']:.1f}%",
            f"{r['best_top1']:.1f}%",
            f"{r['train_seconds']:.1f}s",
            f"{r['onnx_ms']:.3f}",
        )
    console.print(table)
    dense, low = rows
    console.print(
        f"low-rank keeps {100 * low['params'] / dense['params']:.0f}% of the parameters and "
        f"{100 * low['macs'] / dense['macs']:.0f}% of the MACs; accuracy {low['last_top1'] - dense['last_top1']:+.1f} points; "
        f"ONNX Runtime {dense['onnx_ms'] / low['onnx_ms']:.2f}x the dense speed (both exports verified, max rel error "
        f"{max(dense['onnx_max_rel_error'], low['onnx_max_rel_error']):.1e})"
    )
    if output is not None:
        console.print(
            f"artifacts in {output}/dense and {output}/elrt, ONNX files {output}/dense.onnx and {output}/elrt.onnx"
        )
