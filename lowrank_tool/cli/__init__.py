"""The `lowrank` command line: a thin typer shell over the Python API, one module per command."""

from __future__ import annotations

import sys

import typer

from .._version import __version__
from ..errors import LowRankError, VerificationError
from ._common import fail
from .analyze import analyze
from .bench import bench
from .convert import convert
from .demo import demo
from .export import export
from .inspect import inspect
from .layers import layers
from .models import models
from .train import train

app = typer.Typer(
    name="lowrank",
    help="Low-rank CNNs: convert torchvision models (or yours) to ELRT Tucker-2 layers, train from scratch, export to ONNX.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command()(convert)
app.command()(train)
app.command()(export)
app.command()(bench)
app.command()(demo)
app.command()(models)
app.command()(layers)
app.command()(inspect)
app.command()(analyze)


def _version(value: bool) -> None:
    if value:
        print(f"lowrank-tool {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version and exit.")) -> None:
    """Low-rank CNNs: convert, train from scratch, export."""


def main() -> None:
    """Console-script entry point: user errors become one line on stderr and exit code 2."""
    try:
        app()
    except LowRankError as exc:
        fail(str(exc))
    except VerificationError as exc:
        fail(str(exc), code=1)
    except KeyboardInterrupt:
        sys.exit(130)
