"""`lowrank convert`: build the plan, show it, and write the artifact (plan.json + model.safetensors)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from ..convert.rank import DEFAULT_ROUND_TO, FORMAT_CHOICES
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
Init = choices("Init", ("random", "decompose"))
Policy = choices("Policy", ("rank", "latency"))


def convert(
    model: Annotated[str, typer.Argument(help="Model name (see `lowrank models`), timm/NAME (timm installed; `lowrank models --source timm`) or 'package.module:factory'.")],
    rank: Annotated[Optional[str], typer.Option("--rank", "-r", help="Fraction of channels kept per factorised mode, in (0, 1] (0.3: r_in=ceil(0.3*C_in), r_out=ceil(0.3*C_out)), an integer absolute rank, or 'erank' (ceil of each mode's effective rank; needs --weights). Default 0.3.")] = None,
    energy: Annotated[Optional[float], typer.Option(help="Per mode, the smallest rank keeping this fraction of each kernel's Frobenius energy, e.g. 0.9 (needs trained --weights).")] = None,
    policy: Annotated[Policy, typer.Option(help="rank: ranks as requested; latency: each layer's form (dense, factorised, ranks rounded to multiples of 8/16) chosen by measuring it in ONNX Runtime on this machine (cached).")] = Policy.rank,
    target_speedup: Annotated[Optional[float], typer.Option(help="With --policy latency: lower ranks until the model is predicted S times faster than dense (instead of --rank).")] = None,
    threads: Annotated[Optional[int], typer.Option(help="With --policy latency: ONNX Runtime threads of the measurements. [default: every core]")] = None,
    batch: Annotated[int, typer.Option(help="With --policy latency: batch size of the measurements.")] = 1,
    weights: Annotated[Optional[Path], typer.Option(help="Trained dense weights to decompose (with --init decompose): .safetensors, a weights-only .pt/.pth state dict, or a dense artifact DIR.")] = None,
    format: Annotated[Format, typer.Option("--format", "-f", help="Low-rank format; auto = svd for 1x1 convs, tucker2 (ELRT) otherwise.")] = Format.auto,
    target_params: Annotated[Optional[float], typer.Option(help="Keep this fraction of the dense model's parameters; ranks are solved across layers.")] = None,
    target_macs: Annotated[Optional[float], typer.Option(help="Keep this fraction of the dense model's MACs; ranks are solved across layers.")] = None,
    round_to: Annotated[int, typer.Option(help="Round every rank up to a multiple of N (8: channel counts the CPU/GPU kernels like, measured faster; 1: exact ceil(rank*C)).")] = DEFAULT_ROUND_TO,
    exclude: Annotated[Optional[List[str]], typer.Option("--exclude", "-x", help="Keep a layer dense: a fully qualified name or 're:REGEX' (repeatable).")] = None,
    layer_rank: Annotated[Optional[List[str]], typer.Option("--layer-rank", "-l", help="Per-layer rank, NAME=R or 're:REGEX=R'; R may be 'dense' (repeatable).")] = None,
    input_size: Annotated[Optional[str], typer.Option(help="Per-sample input CxHxW (CxTxHxW for video); default from the model family.")] = None,
    num_classes: Annotated[Optional[int], typer.Option(help="Number of output classes of the model.")] = None,
    model_arg: Annotated[Optional[List[str]], typer.Option("--model-arg", "-m", help=MODEL_ARG_HELP)] = None,
    allow_growth: Annotated[bool, typer.Option("--allow-growth", help="Convert layers even when the factorised form is not smaller (full-rank checks).")] = False,
    dense: Annotated[bool, typer.Option("--dense", help="Convert nothing: an artifact of the dense model, the baseline to train and compare.")] = False,
    init: Annotated[Init, typer.Option(help="random: ELRT training from scratch; decompose: fit the factors to the model's weights.")] = Init.random,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write DIR/plan.json and DIR/model.safetensors.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output directory.")] = False,
    json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON instead of the table.")] = False,
) -> None:
    """Convert a model's convolutions into ELRT low-rank layers at initialisation and show the plan.

    Examples: lowrank convert resnet50 --rank 0.3 -o r50 ·
    lowrank convert timm/convnext_atto --rank 0.5 --model-arg num_classes=10 -o cnx ·
    lowrank convert resnet18 --weights r18.pth --init decompose --energy 0.9 -o r18 (then `lowrank train r18` fine-tunes) ·
    lowrank convert resnet50 --policy latency --target-speedup 2 -o r50
    """
    from .. import convert as do_convert
    from .. import save, summary
    from ..errors import LowRankError

    if output is not None and output.exists() and not force:
        raise LowRankError(f"{output} already exists; choose another output directory or pass --force")
    if target_speedup is not None and policy.value != "latency":
        raise LowRankError("--target-speedup needs --policy latency")
    if policy.value == "latency" and not json:
        err_console.print("measuring layer forms in ONNX Runtime on this machine (cached per machine; the first run takes longer)")
    if energy is not None:
        if rank is not None:
            raise LowRankError("--energy and --rank exclude each other; choose one rank rule")
        rank = f"energy:{energy}"
    if weights is not None and init.value != "decompose":
        raise LowRankError("--weights are only used to decompose trained weights; add --init decompose (random init would discard them)")
    if rank is not None and (rank.strip().lower() == "erank" or rank.startswith("energy:")) and weights is None and init.value != "decompose":
        raise LowRankError(f"rank {rank} is computed from trained weights; add --weights FILE --init decompose")
    kwargs = parse_model_args(model_arg)
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   TextColumn("[dim]{task.fields[layer]}"), console=err_console, transient=True, disable=json or not err_console.is_terminal)
    with bar:
        task = bar.add_task(f"tracing {model}", total=None, layer="")

        def progress(done: int, total: int, name: str) -> None:
            bar.update(task, description=f"{init.value} init", completed=done, total=total, layer=name)

        converted = do_convert(
            model, rank, format=format.value, target_params=target_params, target_macs=target_macs, round_to=round_to,
            exclude=exclude or (), layer_rank=layer_rank or None, input_size=input_size, num_classes=num_classes,
            init=init.value, allow_growth=allow_growth, dense=dense, progress=progress, weights=weights, model_kwargs=kwargs or None,
            policy=policy.value, target_speedup=target_speedup, latency_threads=threads, latency_batch=batch,
        )
        plan = summary(converted)
        if output is not None:
            bar.update(task, description=f"writing {output}", layer="")
            save(converted, output, overwrite=force)
    if json:
        data = plan.to_dict()
        if output is not None:
            data["output"] = str(output)
        print_json(data)
        return
    print_plan(plan, title=f"{model} → low-rank")
    if output is not None:
        console.print(f"wrote [bold]{output}/plan.json[/bold] and [bold]{output}/model.safetensors[/bold]")
