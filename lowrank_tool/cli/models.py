"""`lowrank models`: the model names `lowrank convert` accepts."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from ..models import TASKS, list_models
from ._common import console, print_json


def models(
    task: Annotated[Optional[str], typer.Option(help=f"Only this task: {', '.join(TASKS)}.")] = None,
    json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """List the models that can be converted (torchvision's and the toolkit's own).

    Any other nn.Module can be converted from Python (lowrank_tool.convert(model)) or from the CLI as
    'package.module:factory'.
    """
    entries = list_models(task)
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
        table.add_row(f"{name} ({len(names)})", ", ".join(names))
    console.print(table)
    console.print(f"{len(entries)} models; also any 'package.module:factory' that returns an nn.Module")
