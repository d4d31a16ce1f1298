"""`lowrank demo`: the whole idea in one command — dense vs ELRT low-rank, trained from scratch on digits.

Uses the embedded `digits` dataset (scikit-learn's real handwritten digits; nothing is downloaded),
converts a small CIFAR-style ResNet, trains the dense model and the low-rank one the same way, and
prints accuracy, parameters, MACs and time side by side; then exports both to ONNX (verified against
PyTorch) and times them in ONNX Runtime, back to back.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
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
    import torch

    from ..convert.api import convert
    from ..errors import LowRankError
    from ..export.onnx import export_onnx
    from ..io import load, save
    from ..runtime import make_session, time_onnx
    from ..train.config import TrainConfig
    from ..train.run import train_artifact

    if output is not None and output.exists():
        raise LowRankError(f"{output} already exists; choose another --output directory")
    root = output or Path(tempfile.mkdtemp(prefix="lowrank-demo-"))
    rows: list[dict[str, Any]] = []
    try:
        for name, kwargs, method in (
            ("dense", {"dense": True}, "dense"),
            (f"ELRT rank {rank:g}", {"rank": rank}, "elrt"),
        ):
            directory = root / method
            torch.manual_seed(seed)  # the same initial dense weights for both runs, and a reproducible demo
            net = convert(model, num_classes=10, input_size=(3, image_size, image_size), **kwargs)
            save(net, directory)
            cfg = TrainConfig(
                data="digits",
                epochs=epochs,
                batch_size=64,
                lr=0.05,
                weight_decay=5e-4,
                warmup_epochs=1,
                method=method,
                image_size=image_size,
                seed=seed,
            )
            if not (quiet or json):
                console.print(f"[bold]{name}[/bold]: training {model} on digits for {epochs} epochs")

            def on_epoch(r: dict[str, Any]) -> None:
                if not (quiet or json):
                    console.print(
                        f"  epoch {r['epoch'] + 1}/{epochs}  loss {r['train_loss']:.3f}  val top1 {r['val_top1']:5.1f}%  "
                        f"{r['epoch_seconds']:.1f}s",
                        highlight=False,
                    )

            _, summary = train_artifact(directory, cfg, progress=not (quiet or json), on_epoch=on_epoch)
            rows.append(
                {
                    "model": name,
                    "params": summary["params"],
                    "macs": summary["macs"],
                    "best_top1": summary["best_top1"],
                    "last_top1": summary["last_top1"],
                    "train_seconds": summary["wall_seconds"],
                    "directory": str(directory),
                }
            )
        # Deployment: both trained models to ONNX (verified against PyTorch), timed back to back in ONNX Runtime.
        for row, method in zip(rows, ("dense", "elrt"), strict=True):
            onnx_file = root / f"{method}.onnx"
            result = export_onnx(load(root / method), onnx_file)
            row["onnx_file"] = str(onnx_file) if output is not None else None
            row["onnx_max_rel_error"] = result.verification.max_rel
        x = torch.randn(1, 3, image_size, image_size).numpy()
        for row, method in zip(rows, ("dense", "elrt"), strict=True):
            session = make_session(root / f"{method}.onnx", device="cpu")
            row["onnx_ms"] = time_onnx(session, {"input": x}, runs=200, warmup=20).median_ms
    finally:
        if output is None:
            shutil.rmtree(root, ignore_errors=True)
    if json:
        print_json({"model": model, "data": "digits", "epochs": epochs, "image_size": image_size, "results": rows})
        return
    table = Table(
        title=f"{model} on digits ({image_size}x{image_size}), {epochs} epochs from scratch", header_style="bold"
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
