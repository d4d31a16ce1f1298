"""`lowrank export DIR --onnx FILE`: an inference-ready ONNX file, verified against PyTorch by default."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..artifact import PLAN_FILE, WEIGHTS_FILE, check_artifact
from ..choices import (
    DEFAULT_OPSET,
    EXPORTERS,
    MAX_OPSET,
    MERGE_MODES,
    MIN_OPSET,
    RUNTIME_DEVICES,
    RUNTIME_ENGINES,
    TOLERANCES,
)
from ..errors import LowRankError
from ..export.options import check_output_path, check_weight_bits, parse_batch
from ..input_size import parse_input_size
from ._common import TRUST_CODE_HELP, choices, console, err_console, human, print_json

Merge = choices("Merge", MERGE_MODES)
Exporter = choices("Exporter", EXPORTERS)
Device = choices("Device", RUNTIME_DEVICES)


def export(
    directory: Annotated[
        Path,
        typer.Argument(help="Artifact directory from `lowrank convert -o DIR` (trained or not).", show_default=False),
    ],
    onnx: Annotated[
        Path,
        typer.Option(
            "--onnx",
            help="The .onnx file to write (atomically; an existing file only with --force).",
            show_default=False,
        ),
    ],
    opset: Annotated[int, typer.Option(help=f"ONNX opset, {MIN_OPSET}-{MAX_OPSET}.")] = DEFAULT_OPSET,
    batch: Annotated[str, typer.Option(help="'dynamic' (any batch size) or a fixed batch size N.")] = "dynamic",
    input_size: Annotated[
        str | None, typer.Option(help="Per-sample input CxHxW. [default: the size the model was converted at]")
    ] = None,
    fp16: Annotated[
        bool, typer.Option("--fp16", help="Half-precision weights, activations, inputs and outputs.")
    ] = False,
    int8: Annotated[
        bool, typer.Option("--int8", help="Static int8 quantization (QDQ), calibrated on --calib-data.")
    ] = False,
    calib_data: Annotated[
        str | None,
        typer.Option(
            help="Data spec for int8 calibration (train split) and fp32-vs-int8 accuracy (val split): digits, cifar10:PATH, ..."
        ),
    ] = None,
    calib_samples: Annotated[int, typer.Option(help="Images used to calibrate int8.")] = 256,
    int8_weight_bits: Annotated[
        int | None,
        typer.Option(
            help="int8 weight range: 7 bits ([-64, 64]; runs unsaturated on every CPU) or 8 (full range: a little more "
            "precision on x86 CPUs with VNNI, ARM and GPUs; saturates on x86 CPUs without VNNI). [default: 7]"
        ),
    ] = None,
    merge: Annotated[
        Merge,
        typer.Option(
            help="Merge factor chains back into dense convs: none, all, or auto (per layer, whichever ONNX Runtime runs faster)."
        ),
    ] = Merge.none,
    exporter: Annotated[
        Exporter, typer.Option(help="auto: TorchScript exporter, dynamo where it fails.")
    ] = Exporter.auto,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify/--no-verify",
            help="Check the file and compare each --verify-with engine with PyTorch (exit 1 above tolerance).",
        ),
    ] = True,
    verify_with: Annotated[
        str,
        typer.Option(
            help=f"Engines to verify on, comma-separated: {', '.join(RUNTIME_ENGINES)}; auto = every installed one "
            "(an installed engine other than onnxruntime that cannot load the file is then a note, not an error).",
        ),
    ] = "auto",
    tolerance: Annotated[
        float | None,
        typer.Option(
            help=f"Maximum relative error. [default: fp32 {TOLERANCES['fp32']:g}, fp16 {TOLERANCES['fp16']:g}, int8 {TOLERANCES['int8']:g}]"
        ),
    ] = None,
    device: Annotated[
        Device,
        typer.Option(
            help="ONNX Runtime device for verification: auto = CUDA when a GPU is present, else CPU; tensorrt = its "
            "TensorRT provider. OpenVINO verifies on the CPU."
        ),
    ] = Device.auto,
    threads: Annotated[
        int | None, typer.Option(help="ONNX Runtime threads for --merge auto timings. [default: all cores]")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --onnx file.")] = False,
    json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    trust_code: Annotated[bool, typer.Option("--trust-code", help=TRUST_CODE_HELP)] = False,
) -> None:
    """Export an artifact to ONNX for GPU or edge inference, verified against PyTorch on every installed engine.

    The file is the eval-mode model (batch norms folded, no dropout) with named inputs and outputs and
    metadata (toolkit version, plan summary, ranks, the plan). Verification runs a batch of 3 when the
    batch is dynamic and exits with code 1 when the error is above tolerance (no file is written then).

    Examples: lowrank export r50 --onnx r50.onnx ·
    lowrank export r20 --onnx r20-int8.onnx --int8 --calib-data digits ·
    lowrank export r50 --onnx r50.onnx --merge auto --batch 1 ·
    lowrank export r50 --onnx r50.onnx --verify-with openvino
    """
    # arguments and paths are checked before torch is imported, so that a mistake is refused at once
    from ..runtime.engines import parse_engines  # numpy, not torch
    from ..threads import check_threads

    if fp16 and int8:
        raise LowRankError("--fp16 and --int8 exclude each other; choose one precision")
    if int8 and calib_data is None:
        raise LowRankError(
            "--int8 needs calibration data; add --calib-data digits (or cifar10:PATH, imagefolder:PATH, ...)"
        )
    if calib_data is not None and not int8:
        raise LowRankError("--calib-data is only used with --int8; add --int8 or drop --calib-data")
    if int8_weight_bits is not None and not int8:
        raise LowRankError("--int8-weight-bits is only used with --int8; add --int8 or drop --int8-weight-bits")
    if int8_weight_bits is not None:
        check_weight_bits(int8_weight_bits)
    parse_batch(batch)
    parse_input_size(input_size)
    if verify:
        parse_engines(verify_with)  # an unknown or missing engine is refused before the export starts
    if threads is not None:
        check_threads(threads)
    if check_output_path(onnx).exists() and not force:
        raise LowRankError(f"{onnx} already exists; choose another --onnx file or pass --force to replace it")
    check_artifact(directory)
    if onnx.resolve() in {(directory / name).resolve() for name in (PLAN_FILE, WEIGHTS_FILE)}:
        raise LowRankError(
            f"{onnx} is a file of the artifact being exported; choose an --onnx path outside {directory}'s plan and weights"
        )
    from ..data import DataSpec  # its dataset records need torch
    from ..export.onnx import export_onnx
    from ..io import load

    if calib_data is not None:
        DataSpec.parse(calib_data)
    model = load(directory, trust_code=trust_code)
    precision = "fp16" if fp16 else "int8" if int8 else "fp32"
    with err_console.status("exporting", spinner="dots") as status:
        result = export_onnx(
            model,
            onnx,
            input_size=input_size,
            batch=batch,
            opset=opset,
            precision=precision,
            merge=merge.value,
            exporter=exporter.value,
            calib_data=calib_data,
            calib_samples=calib_samples,
            int8_weight_bits=7 if int8_weight_bits is None else int8_weight_bits,
            verify=verify,
            verify_with=verify_with,
            tolerance=tolerance,
            device=device.value,
            threads=threads,
            progress=lambda message: status.update(message) if not json else None,
        )
    if json:
        print_json(result.to_dict())
        return
    shapes = ", ".join(
        f"{n} {'x'.join(map(str, s))}" for n, s in zip(result.input_names, result.input_shapes, strict=True)
    )
    console.print(
        f"wrote {result.path} ({human(result.size_bytes, 'B')}, {precision}) in {result.seconds:.1f}s: "
        f"{result.exporter} exporter, opset {result.opset}; inputs {shapes} → outputs {', '.join(result.output_names)}",
        highlight=False,
        markup=False,
    )
    if merge.value != "none":
        total = len(result.merge_decisions)
        console.print(
            f"merged {len(result.merged)}/{total} low-rank layers back into dense convs ({merge.value})",
            highlight=False,
        )
    if result.quantization is not None and result.quantization.fp32_top1 is not None:
        q = result.quantization
        console.print(
            f"int8 accuracy on {q.data} val ({q.eval_samples} images): fp32 {q.fp32_top1:.2f}% → int8 {q.int8_top1:.2f}% "
            f"({q.int8_top1 - q.fp32_top1:+.2f} points; calibrated on {q.calib_samples} train images)",
            highlight=False,
            markup=False,
        )
    for report in result.verifications:
        console.print(report.line(), highlight=False, markup=False)
        for note in report.notes:
            console.print(f"  note: {note}", highlight=False, markup=False)
    if not verify:
        console.print("not verified (--no-verify)")
