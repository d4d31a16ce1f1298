"""The layout holds: every import points down the pipeline, no cycle, and nothing imported inside a function
that could be imported at the top (docs/architecture.md draws the same layers).

The import graph is read from the source with ``ast``: every ``import`` statement, at module level or in a
function body, is an edge; importing ``a.b.c`` from outside ``a.b`` also runs the package ``a.b``'s
``__init__``, so that is an edge too (the root package aside: it loads its names lazily).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import lowrank_tool

ROOT = Path(lowrank_tool.__file__).parent

#: Bottom to top. A module may import its own layer (without a cycle) and the layers below it, never above.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("lowrank_tool._version", "lowrank_tool.errors", "lowrank_tool.choices", "lowrank_tool._lazy")),
    (
        "helpers",
        (
            "lowrank_tool.artifact",
            "lowrank_tool.linalg",
            "lowrank_tool.input_size",
            "lowrank_tool.model_names",
            "lowrank_tool.threads",
            "lowrank_tool.state_file",
        ),
    ),
    ("layers", ("lowrank_tool.layers",)),
    ("the plan", ("lowrank_tool.conversion_plan",)),
    ("sources", ("lowrank_tool.zoo", "lowrank_tool.models", "lowrank_tool.data", "lowrank_tool.runtime")),
    ("convert", ("lowrank_tool.convert",)),
    ("save/load", ("lowrank_tool.io",)),
    ("methods", ("lowrank_tool.methods",)),
    ("train", ("lowrank_tool.train",)),
    ("export", ("lowrank_tool.export",)),
    ("analysis", ("lowrank_tool.analysis",)),
    ("cli", ("lowrank_tool.cli",)),
    ("package", ("lowrank_tool", "lowrank_tool.__main__")),
]

#: Third-party modules that may be imported inside a function: optional or heavy, needed by one feature.
LAZY_OK = {"onnx", "onnxruntime", "openvino", "onnxscript", "matplotlib", "timm", "transformers", "tensorly", "sklearn"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _layer(module: str) -> int:
    best, index = "", None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
                best, index = prefix, i
    assert index is not None, f"{module} is in no layer of LAYERS; add it where it belongs"
    return index


def _owner(name: str) -> str | None:
    """The lowrank_tool module an imported dotted name lives in (``lowrank_tool.io.load`` → ``lowrank_tool.io``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> list[tuple[str, bool, int]]:
    """(imported dotted name, inside a function, line) for every import statement of ``module``."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    in_function = {
        id(n) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in ast.walk(fn)
    }
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, id(node) in in_function, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            for alias in node.names:
                full = f"{name}.{alias.name}"
                out.append((full if full in MODULES else name, id(node) in in_function, node.lineno))
    return out


def _edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for module in MODULES:
        for name, _, _ in _imports(module):
            target = _owner(name) if name.startswith("lowrank_tool") else None
            if target is None or target == module:
                continue
            edges[module].add(target)
            parent = target.rpartition(".")[0]
            while parent and parent != "lowrank_tool":  # importing a.b.c from outside a.b runs a.b's __init__
                if parent != module and not module.startswith(parent + "."):
                    edges[module].add(parent)
                parent = parent.rpartition(".")[0]
    return edges


EDGES = _edges()


def test_the_graph_is_not_empty():
    # A check over nothing passes; these numbers only guard against reading the wrong tree.
    assert len(MODULES) > 60 and sum(map(len, EDGES.values())) > 150


def test_every_import_points_down_the_pipeline():
    upward = [
        f"{src} ({LAYERS[_layer(src)][0]}) imports {dst} ({LAYERS[_layer(dst)][0]})"
        for src, targets in EDGES.items()
        for dst in targets
        if _layer(dst) > _layer(src)
    ]
    assert not upward, "imports that point up the pipeline:\n" + "\n".join(sorted(upward))


def test_no_import_cycle():
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(EDGES[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(MODULES):
        if module not in state:
            visit(module)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_imports_inside_functions_are_only_lazy_commands_and_optional_dependencies():
    found = []
    for module in MODULES:
        for name, inside, line in _imports(module):
            command = module.startswith("lowrank_tool.cli.")  # a command loads its work when it runs
            if inside and not command and (name.startswith("lowrank_tool") or name.split(".")[0] not in LAZY_OK):
                found.append(f"{module}:{line} imports {name}")
    assert not found, "imports inside functions (move them to the top of the module):\n" + "\n".join(sorted(found))


def _lazy_names(module: str) -> tuple[dict[str, str], dict[str, str]]:
    """A lazy package's ``_EXPORTS`` (name → absolute module) and its ``if TYPE_CHECKING:`` imports (the same)."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    exports: dict[str, str] = {}
    checked: dict[str, str] = {}

    def absolute(relative: str) -> str:
        level = len(relative) - len(relative.lstrip("."))
        base = module.split(".")[: len(module.split(".")) - level + 1]
        return ".".join(base + ([relative.lstrip(".")] if relative.lstrip(".") else []))

    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in node.targets):
            exports = {k: absolute(v) for k, v in ast.literal_eval(node.value).items()}
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for imp in node.body:
                assert isinstance(imp, ast.ImportFrom), f"{module}: only `from X import names` under TYPE_CHECKING"
                source = absolute("." * imp.level + (imp.module or ""))
                checked.update({alias.name: source for alias in imp.names})
                plain = [alias.name for alias in imp.names if alias.asname != alias.name]
                assert not plain, f"{module}: write `{plain[0]} as {plain[0]}` (re-exported for mypy --strict)"
    return exports, checked


@pytest.mark.parametrize(
    "module", sorted(m for m in MODULES if "\n__getattr__, __dir__ = lazy_exports(" in MODULES[m].read_text())
)
def test_lazy_packages_show_their_names_to_type_checkers(module):
    """Each lazy ``_EXPORTS`` name is also imported under ``TYPE_CHECKING`` from the same module, so that mypy
    and IDEs see the real signatures (the package ships py.typed) instead of ``Any``."""
    exports, checked = _lazy_names(module)
    assert exports, f"{module} calls lazy_exports without a literal _EXPORTS"
    assert checked == exports


def test_help_and_version_do_not_import_torch():
    """`lowrank --help`, each command's module and the package root load without torch (they answer at once)."""
    code = (
        "import sys, importlib, lowrank_tool, lowrank_tool.cli as cli\n"
        "for name in cli.COMMANDS: importlib.import_module(f'lowrank_tool.cli.{name}')\n"
        "import lowrank_tool.convert.options\n"
        "heavy = sorted(m for m in ('torch', 'torchvision', 'onnx', 'onnxruntime', 'numpy') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"imported at --help time: {out.stdout.strip()}"


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["convert", "--help"], ["train", "--help"]])
def test_help_answers_without_loading_torch(argv):
    code = (
        "import sys\nsys.argv = ['lowrank', *sys.argv[1:]]\nfrom lowrank_tool.cli import main\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n"
    )
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("NO-TORCH")
    assert ("lowrank-tool" in out.stdout) if argv == ["--version"] else ("Usage" in out.stdout)


def test_command_list_matches_each_commands_docstring():
    import importlib

    from lowrank_tool.cli import COMMANDS

    for name, short in COMMANDS.items():
        doc = getattr(importlib.import_module(f"lowrank_tool.cli.{name}"), name).__doc__
        assert doc.strip().splitlines()[0] == short, name


def test_convert_help_comes_from_the_options():
    """One source of truth: `lowrank convert --help` shows each ConvertOptions field's own help text."""
    import dataclasses

    from lowrank_tool.cli import load_command
    from lowrank_tool.convert.options import ConvertOptions, option_help

    fields = [f.name for f in dataclasses.fields(ConvertOptions) if f.init]
    assert all(option_help(name) for name in fields)
    cli_name = {
        "latency_threads": "threads",
        "latency_batch": "batch",
        "latency_engine": "engine",
        "model_kwargs": "model_arg",
    }
    params = {p.name: p for p in load_command("convert").params}
    shown = [name for name in fields if name != "model_kwargs"]
    assert len(shown) == 20
    for name in shown:
        assert params[cli_name.get(name, name)].help == option_help(name), name
