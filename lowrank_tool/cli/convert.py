"""`lowrank convert`: build the plan, show it, and write the artifact (plan.json + model.safetensors)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from ..artifact import DirectoryLock, check_path
from ..choices import (
    DEFAULT_ROUND_TO,
    FORMAT_CHOICES,
    INITS,
    LATENCY_PRECISIONS,
    MEMORY_FORMATS,
    POLICIES,
    RUNTIME_ENGINES,
)
from ..convert.options import ConvertOptions, RankSpec, option_help
from ..errors import LowRankError
from ..model_names import refuse_unknown
from ._common import (
    MODEL_ARG_HELP,
    choices,
    console,
    err_console,
    parse_model_args,
    print_json,
)
from .render import print_plan

Format = choices("Format", FORMAT_CHOICES)
Init = choices("Init", INITS)
Policy = choices("Policy", POLICIES)
Engine = choices("Engine", RUNTIME_ENGINES)
LatencyPrecision = choices("LatencyPrecision", LATENCY_PRECISIONS)
MemoryFormat = choices("MemoryFormat", MEMORY_FORMATS)


def convert(
    model: Annotated[
        str,
        typer.Argument(
            help="Model name (see `lowrank models`), timm/NAME (timm installed; `lowrank models --source timm`) or 'package.module:factory'."
        ),
    ],
    rank: Annotated[str | None, typer.Option("--rank", "-r", help=option_help("rank"))] = None,
    energy: Annotated[
        float | None,
        typer.Option(
            help="Per mode, the smallest rank keeping this fraction of each kernel's Frobenius energy, e.g. 0.9 (needs trained --weights)."
        ),
    ] = None,
    policy: Annotated[Policy, typer.Option(help=option_help("policy"))] = Policy.rank,
    target_speedup: Annotated[float | None, typer.Option(help=option_help("target_speedup"))] = None,
    threads: Annotated[int | None, typer.Option(help=option_help("latency_threads"))] = None,
    batch: Annotated[int, typer.Option(help=option_help("latency_batch"))] = 1,
    engine: Annotated[Engine, typer.Option(help=option_help("latency_engine"))] = Engine.onnxruntime,
    latency_precision: Annotated[
        LatencyPrecision, typer.Option(help=option_help("latency_precision"))
    ] = LatencyPrecision.fp32,
    weights: Annotated[Path | None, typer.Option(help=option_help("weights"))] = None,
    format: Annotated[Format, typer.Option("--format", "-f", help=option_help("format"))] = Format.auto,
    target_params: Annotated[float | None, typer.Option(help=option_help("target_params"))] = None,
    target_macs: Annotated[float | None, typer.Option(help=option_help("target_macs"))] = None,
    round_to: Annotated[int, typer.Option(help=option_help("round_to"))] = DEFAULT_ROUND_TO,
    exclude: Annotated[list[str] | None, typer.Option("--exclude", "-x", help=option_help("exclude"))] = None,
    layer_rank: Annotated[list[str] | None, typer.Option("--layer-rank", "-l", help=option_help("layer_rank"))] = None,
    input_size: Annotated[str | None, typer.Option(help=option_help("input_size"))] = None,
    num_classes: Annotated[int | None, typer.Option(help=option_help("num_classes"))] = None,
    model_arg: Annotated[list[str] | None, typer.Option("--model-arg", "-m", help=MODEL_ARG_HELP)] = None,
    allow_growth: Annotated[bool, typer.Option("--allow-growth", help=option_help("allow_growth"))] = False,
    dense: Annotated[bool, typer.Option("--dense", help=option_help("dense"))] = False,
    init: Annotated[Init, typer.Option(help=option_help("init"))] = Init.random,
    memory_format: Annotated[MemoryFormat, typer.Option(help=option_help("memory_format"))] = MemoryFormat.auto,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write DIR/plan.json and DIR/model.safetensors.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output directory.")] = False,
    json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON instead of the table.")] = False,
) -> None:
    """Convert a model's convolutions into ELRT low-rank layers at initialisation and show the plan.

    Examples: lowrank convert resnet50 --rank 0.3 -o r50 ·
    lowrank convert timm/convnext_atto --rank 0.5 --model-arg num_classes=10 -o cnx ·
    lowrank convert resnet18 --weights r18.pth --init decompose --energy 0.9 -o r18 (then `lowrank train r18` fine-tunes) ·
    lowrank convert resnet50 --policy latency --target-speedup 2 -o r50
    """
    # the options are checked before torch is imported, so that a mistake is refused at once
    refuse_unknown(model)
    if output is not None and check_path(output).exists() and not force:
        raise LowRankError(f"{output} already exists; choose another output directory or pass --force")
    if output is not None and force and output.is_dir():
        DirectoryLock.check(output)  # not a directory another run is training (said now, not after converting)
    if target_speedup is not None and policy.value != "latency":
        raise LowRankError("--target-speedup needs --policy latency")
    if energy is not None:
        if rank is not None:
            raise LowRankError("--energy and --rank exclude each other; choose one rank rule")
        rank = f"energy:{energy}"
    if rank is not None:  # a bad value is named first, before what it would need
        RankSpec.parse(rank, what="--energy" if energy is not None else "--rank")
    if weights is not None and output is not None and _inside(weights, output):
        raise LowRankError(
            f"--weights {weights} is inside the output directory {output}, which the conversion replaces; "
            "write the converted model to another -o DIR"
        )
    if weights is not None and init.value != "decompose":
        raise LowRankError(
            "--weights are only used to decompose trained weights; add --init decompose (random init would discard them)"
        )
    needs_weights = rank is not None and (rank.strip().lower() == "erank" or rank.startswith("energy:"))
    if needs_weights and weights is None and init.value != "decompose":
        raise LowRankError(f"rank {rank} is computed from trained weights; add --weights FILE --init decompose")
    options = ConvertOptions(
        rank=rank,
        format=format.value,
        target_params=target_params,
        target_macs=target_macs,
        round_to=round_to,
        exclude=exclude or (),
        layer_rank=layer_rank or None,
        input_size=input_size,
        num_classes=num_classes,
        init=init.value,
        allow_growth=allow_growth,
        dense=dense,
        weights=weights,
        model_kwargs=parse_model_args(model_arg) or None,
        policy=policy.value,
        target_speedup=target_speedup,
        latency_threads=threads,
        latency_batch=batch,
        latency_engine=engine.value,
        latency_precision=latency_precision.value,
        memory_format=memory_format.value,
    )
    from ..convert.api import convert as do_convert, summary
    from ..io import save

    if policy.value == "latency" and not json:
        err_console.print(
            f"measuring layer forms in {engine.value} ({latency_precision.value}) on this machine (cached per machine; the first run takes longer)"
        )
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("[dim]{task.fields[layer]}"),
        console=err_console,
        transient=True,
        disable=json or not err_console.is_terminal,
    )
    with bar:
        task = bar.add_task(escape(f"tracing {model}"), total=None, layer="")

        def progress(done: int, total: int, name: str) -> None:
            bar.update(task, description=f"{init.value} init", completed=done, total=total, layer=escape(name))

        converted = do_convert(model, options=options, progress=progress)
        plan = summary(converted)
        if output is not None:
            bar.update(task, description=escape(f"writing {output}"), layer="")
            save(converted, output, overwrite=force)
    if json:
        data = plan.to_dict()
        if output is not None:
            data["output"] = str(output)
        print_json(data)
        return
    print_plan(plan, title=f"{model} → low-rank")
    if output is not None:
        out = escape(str(output))
        console.print(f"wrote [bold]{out}/plan.json[/bold] and [bold]{out}/model.safetensors[/bold]")


def _inside(path: Path, directory: Path) -> bool:
    """Whether ``path`` is ``directory`` or lies in it (both resolved: links and ``..`` followed)."""
    path, directory = path.resolve(), directory.resolve()
    return path == directory or directory in path.parents
