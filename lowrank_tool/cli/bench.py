"""`lowrank bench DIR|FILE [--vs-dense]`: latency in ONNX Runtime, OpenVINO and PyTorch, speedup over dense."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from ..choices import DEFAULT_BENCH_ENGINES, ENGINES, MERGE_MODES, RUNTIME_DEVICES
from ._common import TRUST_CODE_HELP, choices, console, err_console, human, print_json

Merge = choices("Merge", MERGE_MODES)
Device = choices("Device", RUNTIME_DEVICES)


def bench(
    target: Annotated[
        Path,
        typer.Argument(
            help="Artifact directory (`lowrank convert -o DIR`) or .onnx file (`lowrank export`).", show_default=False
        ),
    ],
    vs_dense: Annotated[
        bool,
        typer.Option(
            "--vs-dense", help="Also measure the dense base model, in the same run, and report speedup and efficiency."
        ),
    ] = False,
    batch: Annotated[str, typer.Option(help="Batch sizes, comma-separated.")] = "1",
    threads: Annotated[
        str | None, typer.Option(help="Intra-op thread counts, comma-separated. [default: every core]")
    ] = None,
    engine: Annotated[
        str,
        typer.Option(
            help=f"Engines, comma-separated: {', '.join(ENGINES)} (openvino: CPU, f32; torch: PyTorch eager)."
        ),
    ] = ",".join(DEFAULT_BENCH_ENGINES),
    runs: Annotated[int, typer.Option(help="Timed runs per model and configuration (median and p90 reported).")] = 50,
    warmup: Annotated[int, typer.Option(help="Untimed warm-up runs before each measurement.")] = 10,
    repeats: Annotated[
        int | None,
        typer.Option(
            help="Rounds the runs are split into; each round times low-rank and dense back to back, and the speedup is "
            "the median of the rounds' ratios, with their range (a spread above 10% is flagged) and, from 6 rounds, "
            "a 95% interval of the median: hold targets against that. [default: 10, at most --runs]"
        ),
    ] = None,
    input_size: Annotated[str | None, typer.Option(help="Per-sample input CxHxW. [default: the plan's]")] = None,
    merge: Annotated[
        Merge,
        typer.Option(
            help="How an artifact's low-rank model is exported for ONNX Runtime (see `lowrank export --merge`)."
        ),
    ] = Merge.none,
    device: Annotated[
        Device,
        typer.Option(help="ONNX Runtime device (PyTorch follows: cuda or CPU; OpenVINO runs on the CPU)."),
    ] = Device.cpu,
    fp16: Annotated[
        bool,
        typer.Option("--fp16", help="Export the low-rank and the dense model in half precision (the GPU setting)."),
    ] = False,
    json: Annotated[bool, typer.Option("--json", help="Print the measurements as JSON (for scripts).")] = False,
    trust_code: Annotated[bool, typer.Option("--trust-code", help=TRUST_CODE_HELP)] = False,
) -> None:
    """Measure latency (median and p90 after warm-up) of a low-rank model, and of its dense counterpart with --vs-dense.

    speedup = dense latency / low-rank latency; efficiency = speedup / MAC reduction. Both models are
    measured one after the other in the same process for every configuration.

    Examples: lowrank bench r50 --vs-dense · lowrank bench r50 --vs-dense --batch 1,8 --threads 1,2 --json ·
    lowrank bench r50.onnx --engine onnxruntime · lowrank bench r50 --vs-dense --engine onnxruntime,openvino
    """
    from ..analysis.settings import bench_settings  # numpy, not torch

    engines = [e.strip() for e in engine.split(",") if e.strip()]
    shared: dict[str, Any] = dict(
        batches=batch,
        threads=threads,
        engines=engines,
        runs=runs,
        warmup=warmup,
        repeats=repeats,
        precision="fp16" if fp16 else "fp32",
        input_size=input_size,
    )
    # the arguments and the path are checked before torch is imported, so that a mistake is refused at once
    bench_settings(target, **shared)
    from ..analysis.bench import bench as run_bench

    with err_console.status("benchmarking", spinner="dots") as status:
        report = run_bench(
            target,
            vs_dense=vs_dense,
            device=device.value,
            merge=merge.value,
            progress=None if json else status.update,
            trust_code=trust_code,
            **shared,
        )
    if json:
        print_json(report.to_dict())
        return
    comparisons = {(c["engine"], c["batch"], c["threads"]): c for c in report.comparisons()}
    size = "x".join(map(str, report.input_size))
    table = Table(title=escape(f"{target} at {size}, {runs} runs after {warmup} warm-up"), header_style="bold")
    for col in (
        "model",
        "engine",
        "batch",
        "threads",
        "params",
        "MACs",
        "median ms",
        "p90 ms",
        "speedup",
        "efficiency",
    ):
        table.add_column(col, justify="left" if col in ("model", "engine") else "right")
    for r in report.rows:
        c = comparisons.get((r.engine, r.batch, r.threads)) if r.model != "dense" else None
        table.add_row(
            r.model,
            f"{r.engine} ({r.provider})",
            str(r.batch),
            str(r.threads),
            human(r.params) if r.params else "-",
            human(r.macs) if r.macs else "-",
            f"{r.median_ms:.2f}",
            f"{r.p90_ms:.2f}",
            _speedup_cell(c) if c else "",
            f"{c['efficiency']:.2f}" if c and c["efficiency"] else "",
        )
    console.print(table)
    software = ", ".join(f"{name} {version}" for name, version in report.versions.items())
    console.print(
        f"measured on {report.cpu.label if report.cpu else 'this machine'}" + (f" with {software}" if software else ""),
        highlight=False,
        markup=False,
    )
    for note in report.notes:
        console.print(f"note: {note}", highlight=False, markup=False)
    if comparisons:
        console.print(
            "speedup = median over the interleaved rounds of dense / low-rank latency (in brackets: its range over the rounds "
            "and, from 6 rounds, a 95% confidence interval of the median, the number to hold a target against); "
            "efficiency = speedup / MAC reduction (1.0 = every saved MAC saves time)"
        )


def _speedup_cell(c: dict[str, Any]) -> str:
    """``2.48x (2.18–2.50, 95% 2.41–2.49)``: the median ratio, the rounds' range, the median's interval."""
    cell = f"{c['speedup']:.2f}x"
    if c["rounds"] > 1:
        cell += f" ({c['speedup_min']:.2f}–{c['speedup_max']:.2f}"
        if c.get("speedup_ci"):
            cell += f", 95% {c['speedup_ci'][0]:.2f}–{c['speedup_ci'][1]:.2f}"
        cell += ")"
    return cell
