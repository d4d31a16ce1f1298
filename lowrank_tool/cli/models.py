"""`lowrank models`: the model names `lowrank convert` accepts."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ..choices import SOURCES, TASK_NAMES
from ._common import console, print_json


def models(
    task: Annotated[str | None, typer.Option(help=f"Only this task: {', '.join(TASK_NAMES)}.")] = None,
    source: Annotated[
        str | None,
        typer.Option(
            help=f"Only this source: {', '.join(SOURCES)}, or all. [default: torchvision and lowrank_tool; timm's names only when asked]"
        ),
    ] = None,
    pattern: Annotated[
        str | None, typer.Argument(help="Only names containing this text (e.g. resnet).", show_default=False)
    ] = None,
    json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """List the models that can be converted (torchvision's, the toolkit's own, and timm's as timm/NAME).

    Any other nn.Module can be converted from Python (lowrank_tool.convert(model)) or from the CLI as
    'package.module:factory'. Examples: lowrank models · lowrank models --source timm convnext
    """
    from ..models import list_models

    entries = list_models(task, source=source)
    if pattern:
        entries = [e for e in entries if pattern.lower() in e.name.lower()]
    if json:
        print_json([{"name": e.name, "task": e.task, "source": e.source} for e in entries])
        return
    table = Table(header_style="bold")
    table.add_column("task")
    table.add_column("models")
    by_task: dict[str, list[str]] = {}
    for e in entries:
        by_task.setdefault(e.task, []).append(e.name)
    for name, names in by_task.items():
        table.add_row(f"{name} ({len(names)})", escape(", ".join(names)))
    console.print(table)
    console.print(f"{len(entries)} models; also any 'package.module:factory' that returns an nn.Module")
