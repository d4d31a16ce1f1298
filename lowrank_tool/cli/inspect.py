"""`lowrank inspect DIR`: load an artifact (plan + weights, fully checked) and show its plan."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..artifact import WEIGHTS_FILE, check_artifact
from ._common import TRUST_CODE_HELP, console, human, print_json
from .render import print_plan


def inspect(
    directory: Annotated[
        Path, typer.Argument(help="A directory written by `lowrank convert -o DIR`.", show_default=False)
    ],
    json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
    trust_code: Annotated[bool, typer.Option("--trust-code", help=TRUST_CODE_HELP)] = False,
) -> None:
    """Load a converted model from DIR (rebuilding it from plan.json, loading model.safetensors) and show its plan."""
    check_artifact(directory)  # a mistyped path is refused before torch is imported
    from ..convert.api import summary
    from ..io import load

    model = load(directory, trust_code=trust_code)
    plan = summary(model)
    params = sum(p.numel() for p in model.parameters())
    if json:
        print_json(plan.to_dict() | {"loaded_params": params})
        return
    print_plan(plan, title=str(directory))
    size = (directory / WEIGHTS_FILE).stat().st_size
    console.print(
        f"loaded {str(plan.base_model.get('name') or plan.base_model.get('class'))[:120]}: {human(params)} parameters, "
        f"{WEIGHTS_FILE} {human(size, 'B')}, plan schema v{plan.schema_version} (lowrank-tool {plan.toolkit_version})",
        markup=False,
    )
