"""The `lowrank` command line: a thin typer shell over the Python API, one module per command.

Commands are loaded when they run (or when their own ``--help`` is asked for): ``lowrank --help``
lists them from :data:`COMMANDS` without importing any of them, and no command module imports torch at
module level, so help and ``--version`` answer at once. ``tests/test_cli_startup.py`` keeps
:data:`COMMANDS` equal to each command's docstring.
"""

from __future__ import annotations

import importlib
import re
import signal
import sys
import threading
import warnings
from typing import Any

import typer
import typer.core

from .._version import __version__
from ..errors import LowRankError, LowRankWarning, VerificationError, first_line
from ..model_names import TYPED_FACTORIES, is_factory
from ._common import DEBUG_HELP, debug_enabled, fail, note, set_debug

#: Command → its one-line help (the first line of the command function's docstring), in help order.
COMMANDS = {
    "convert": "Convert a model's convolutions into ELRT low-rank layers at initialisation and show the plan.",
    "train": "Train a low-rank model from scratch (ELRT) or a dense baseline; results are written back into DIR.",
    "export": "Export an artifact to ONNX for GPU or edge inference, verified against PyTorch on every installed engine.",
    "bench": "Measure latency (median and p90 after warm-up) of a low-rank model, and of its dense counterpart with --vs-dense.",
    "demo": "Train a dense network and its ELRT low-rank version from scratch on digits, export both to ONNX, compare them.",
    "models": "List the models that can be converted (torchvision's, the toolkit's own, and timm's as timm/NAME).",
    "layers": "List a model's convolutions by fully qualified name, with shapes and whether they are eligible.",
    "inspect": "Load a converted model from DIR (rebuilding it from plan.json, loading model.safetensors) and show its plan.",
    "analyze": "Per-layer rank analysis: effective rank, stable rank, energy kept at the chosen ranks, factor orthogonality.",
}

_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"]}


def load_command(name: str) -> Any:
    """The click command of ``lowrank NAME``, built from ``lowrank_tool.cli.NAME.NAME`` (imports that module)."""
    function = getattr(importlib.import_module(f"{__name__}.{name}"), name)
    single = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    single.command(name=name, context_settings=_SETTINGS)(function)
    return typer.main.get_command(single)


class _LazyGroup(typer.core.TyperGroup):
    """A typer group whose commands are imported only when one runs or shows its own help."""

    _listing = False

    def list_commands(self, ctx: Any) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in COMMANDS:
            return None
        if self._listing:  # the group's help lists names and one-line helps only
            return typer.core.TyperCommand(cmd_name, help=COMMANDS[cmd_name], short_help=COMMANDS[cmd_name])
        return load_command(cmd_name)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False


def _version(value: bool) -> None:
    if value:
        print(f"lowrank-tool {__version__}")
        raise typer.Exit()


_typer_app = typer.Typer(
    name="lowrank",
    cls=_LazyGroup,
    help="Low-rank CNNs: convert torchvision models (or yours) to ELRT Tucker-2 layers, train from scratch, export to ONNX.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings=_SETTINGS,
)


@_typer_app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
) -> None:
    """Low-rank CNNs: convert torchvision models (or yours) to ELRT Tucker-2 layers, train from scratch, export to ONNX."""
    set_debug(debug)


#: The ``lowrank`` command group (a click group; ``typer.testing``'s runner takes :data:`typer_app`).
app = typer.main.get_command(_typer_app)
typer_app = _typer_app


def _print_any_path() -> None:
    """Let stdout/stderr print file names that are not valid UTF-8 (as ``ls`` does: their bytes as they are).

    Under a UTF-8 locale Python's streams refuse the surrogates such names decode to, so printing a
    path like ``run-\\xff`` would end the command with a UnicodeEncodeError.
    """
    for stream in (sys.stdout, sys.stderr):
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(errors="surrogateescape")
            except (ValueError, OSError):  # a closed or foreign stream: leave it
                pass


def main() -> None:
    """Console-script entry point: user errors become one line on stderr and exit code 2; the toolkit's
    warnings (:class:`LowRankWarning`) become one ``note:`` line each."""
    previous = warnings.showwarning
    warnings.showwarning = _show_warning
    _print_any_path()
    main_thread = threading.current_thread() is threading.main_thread()
    # SIGTERM unwinds like Ctrl-C: temporary files and directories are removed on the way out
    previous_term = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    typed = _typed_factories(sys.argv[1:])
    TYPED_FACTORIES.update(typed)
    try:
        code = app.main(prog_name="lowrank", standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except typer.Abort:
        sys.exit(130)
    except typer.TyperException as exc:  # click's usage errors: an unknown option, a value not among the choices
        if not exc.format_message().strip():  # `lowrank` alone: the help was printed, nothing else to say
            sys.exit(int(getattr(exc, "exit_code", 2)))
        fail(_usage_line(exc), code=int(getattr(exc, "exit_code", 2)))
    except LowRankError as exc:
        # an error that wraps one from the user's code (a model factory) keeps it as its cause
        hint = (
            f" (`lowrank --debug {_command()} ...` shows its traceback)"
            if exc.__cause__ and not debug_enabled()
            else ""
        )
        fail(_last_line(str(exc)) + hint)
    except VerificationError as exc:
        fail(str(exc), code=1)
    except OSError as exc:  # the last safety net: a path the OS refuses, a permission, a vanished file
        where = f": {str(exc.filename)[:80]}" if exc.filename else ""
        fail(f"{exc.strerror or first_line(exc)}{where}; check the path and its permissions")
    except KeyboardInterrupt:
        sys.exit(130)
    except (MemoryError, RuntimeError) as exc:  # torch's allocator says "can't allocate memory" in a RuntimeError
        if not (isinstance(exc, MemoryError) or _out_of_memory(str(exc))):
            raise
        fail(f"out of memory ({_allocation(exc)}); use a smaller --batch, --input-size, --image-size or --num-classes")
    finally:
        warnings.showwarning = previous
        TYPED_FACTORIES.difference_update(typed)
        set_debug(False)
        if main_thread:
            signal.signal(signal.SIGTERM, previous_term)


def _typed_factories(argv: list[str]) -> set[str]:
    """The ``package.module:factory`` specs on the command line: the user's own code, typed by the user."""
    out = set()
    for arg in argv:
        module, sep, attr = arg.partition(":")
        if sep and is_factory(arg) and attr.isidentifier() and all(p.isidentifier() for p in module.split(".")):
            out.add(arg)
    return out


def _command() -> str:
    """The command being run (``convert``), for a hint that repeats it."""
    return next((arg for arg in sys.argv[1:] if arg in COMMANDS), "COMMAND")


def _out_of_memory(message: str) -> bool:
    """Whether a RuntimeError is an allocation that failed (torch's CPU and CUDA allocators)."""
    return any(
        words in message for words in ("can't allocate memory", "not enough memory", "out of memory", "Out of memory")
    )


def _allocation(exc: BaseException) -> str:
    """What could not be allocated, in a few words."""
    asked = re.search(r"allocate (\d+) bytes", str(exc))
    if asked:
        return f"an allocation of {int(asked.group(1)) / 2**30:,.1f} GiB failed"
    return first_line(exc, with_type=False, limit=120) or type(exc).__name__


def _last_line(message: str) -> str:
    """A LowRankError re-raised from a DataLoader worker carries the worker's traceback: keep its message."""
    if "\n" not in message:
        return message
    last = [line.strip() for line in message.splitlines() if line.strip()][-1]
    return last.split("LowRankError: ", 1)[-1]


def _usage_line(exc: Exception) -> str:
    """A click usage error in one line, with the command whose --help explains it."""
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    ctx = getattr(exc, "ctx", None)
    where = f"`{ctx.command_path} --help`" if ctx is not None else "`lowrank --help`"
    return f"{' '.join(message.split())} (see {where})"


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


_default_showwarning = warnings.showwarning


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    if issubclass(category, LowRankWarning):
        note(str(message))
    else:
        _default_showwarning(message, category, filename, lineno, file, line)
