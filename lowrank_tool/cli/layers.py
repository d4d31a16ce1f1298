"""`lowrank layers`: the candidate layer names of a model, for --exclude and --layer-rank."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ..input_size import parse_input_size
from ..model_names import refuse_unknown
from ._common import MODEL_ARG_HELP, console, parse_model_args, print_json


def layers(
    model: Annotated[
        str, typer.Argument(help="Model name (see `lowrank models`), timm/NAME or 'package.module:factory'.")
    ],
    input_size: Annotated[str | None, typer.Option(help="Per-sample input CxHxW (CxTxHxW for video).")] = None,
    num_classes: Annotated[int | None, typer.Option(help="Number of output classes of the model.")] = None,
    model_arg: Annotated[list[str] | None, typer.Option("--model-arg", "-m", help=MODEL_ARG_HELP)] = None,
    json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """List a model's convolutions by fully qualified name, with shapes and whether they are eligible.

    Use the names with `lowrank convert --exclude NAME` or `--layer-rank NAME=R` ('re:REGEX' works too).
    """
    refuse_unknown(model)  # a mistyped name or a malformed size is refused before torch is imported
    parse_input_size(input_size)
    from ..convert.api import plan as make_plan

    plan = make_plan(
        model, input_size=input_size, num_classes=num_classes, model_kwargs=parse_model_args(model_arg) or None
    )
    if json:
        print_json(
            [
                {
                    k: getattr(entry, k)
                    for k in (
                        "name",
                        "kind",
                        "in_channels",
                        "out_channels",
                        "kernel_size",
                        "stride",
                        "groups",
                        "output_size",
                    )
                }
                | {"eligible": entry.converted, "reason": entry.reason}
                for entry in plan.layers
            ]
        )
        return
    table = Table(header_style="bold")
    for col in ("name", "kind", "channels", "kernel", "stride", "out size", "default"):
        table.add_column(col)
    for entry in plan.layers:
        table.add_row(
            escape(entry.name),
            entry.kind,
            f"{entry.in_channels}→{entry.out_channels}",
            "x".join(map(str, entry.kernel_size)),
            "x".join(map(str, entry.stride)),
            "x".join(map(str, entry.output_size or [])) or "-",
            entry.format if entry.converted else escape(f"dense: {entry.reason}"),
            style=None if entry.converted else "dim",
        )
    console.print(table)
    console.print(f"{len(plan.layers)} convolutions ({len(plan.converted_layers)} converted at the default rank 0.3)")
