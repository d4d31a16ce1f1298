"""Hostile and clumsy calls of the Python API, one row each: the API section of the hostile suite (the command
line's is test_hostile_inputs.py).

A row is a call (a function of the shared ``world`` and a fresh output directory ``out``) and what it must give:
``Err(fragment)`` — a :class:`LowRankError` whose one-line message holds the fragment, and nothing written to
``out``; ``Warns(fragment, check)`` — a :class:`LowRankWarning` holding the fragment, then ``check(result)``;
``Ok(check)`` — no toolkit warning, and ``check(result)`` passes. After every row the files of ``world`` must be
byte for byte as they were. Cases that need the command line (a factory typed in the working directory, the
``--debug`` switch) follow the table, run in this process (or, for the console script itself, in a real one).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import lowrank_tool as lr
from lowrank_tool.errors import LowRankError, LowRankWarning

SIZE = (3, 16, 16)


# -- what a row expects -------------------------------------------------------------------------------------
@dataclass
class Err:
    fragment: str


@dataclass
class Warns:
    fragment: str
    check: Callable[[Any, Path], None] | None = None


@dataclass
class Ok:
    check: Callable[[Any, Path], None] | None = None


# -- models -------------------------------------------------------------------------------------------------
class Dilated(nn.Module):
    """'same' padding with a dilation and with an even kernel (padded one more after than before)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.dilated = nn.Conv2d(32, 32, 3, padding="same", dilation=2)
        self.even = nn.Conv2d(32, 32, 4, padding="same", dilation=1)
        self.odd_total = nn.Conv2d(32, 32, 2, padding="same", dilation=3)
        self.reflect = nn.Conv2d(32, 32, 3, padding="same", dilation=2, padding_mode="reflect")
        self.valid = nn.Conv2d(32, 32, 3, padding="valid")
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.odd_total(self.even(self.dilated(x)))
        return self.head(self.valid(self.reflect(x)))


class _Evil:
    """Pickles as a call to os.system: what a hostile checkpoint would carry."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (os.system, (f"touch '{self.path}'",))


# -- the world every row reads ---------------------------------------------------------------------------------
def _copy(w: Path, name: str) -> Path:
    shutil.copytree(w / "art", w / name)
    return w / name


def _edit_weights(d: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> None:
    tensors = load_file(str(d / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(d / "model.safetensors"))


def _edit_plan(d: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    data = json.loads((d / "plan.json").read_text())
    edit(data)
    (d / "plan.json").write_text(json.dumps(data))


def _first_bn_var(tensors: dict[str, torch.Tensor]) -> str:
    return next(k for k in tensors if k.endswith("running_var"))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    w = tmp_path_factory.mktemp("api_world")
    torch.manual_seed(0)
    model = lr.convert("resnet20", rank=0.5, input_size=SIZE).eval()
    lr.save(model, w / "art")
    dense = lr.build_model("resnet20").eval()
    sd = dense.state_dict()
    torch.save(sd, w / "dense_sd.pt")
    for key in ("net", "state_dict", "model", "model_state_dict"):
        torch.save({key: sd, "epoch": 3, "acc": 91.5}, w / f"ckpt_{key}.pt")
    torch.save({"net": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, w / "ckpt_dataparallel.pt")
    torch.save({"weights": sd, "epoch": 3}, w / "ckpt_other_key.pt")
    torch.save({"epoch": 3, "acc": 91.5}, w / "ckpt_no_sd.pt")
    torch.save({"a": sd, "b": sd}, w / "ckpt_two_sd.pt")
    save_file({f"module.{k}": v.contiguous() for k, v in sd.items()}, str(w / "dp.safetensors"))
    torch.save({"net": _Evil(w / "PWNED")}, w / "evil.pt")
    torch.save({"net": Dilated()}, w / "pickled_module.pt")  # a class outside the allow-list: refused too

    _edit_weights(_copy(w, "half"), lambda t: t.update({k: v.half() for k, v in t.items() if v.is_floating_point()}))
    _edit_weights(_copy(w, "bf16_one"), lambda t: t.update({"conv1.weight": t["conv1.weight"].bfloat16()}))
    _edit_weights(_copy(w, "float8"), lambda t: t.update({"conv1.weight": t["conv1.weight"].to(torch.float8_e4m3fn)}))
    _edit_weights(_copy(w, "neg_var"), lambda t: t[_first_bn_var(t)].__setitem__(0, -1.0))
    _edit_plan(_copy(w, "huge_name"), lambda d: d["base_model"].update(name="regnet_y_128gf", kwargs={}))
    _edit_plan(_copy(w, "vit_name"), lambda d: d["base_model"].update(name="vit_h_14", kwargs={}))
    _edit_plan(_copy(w, "r18_name"), lambda d: d["base_model"].update(name="resnet18", kwargs={}))
    other = w / "other_model"
    lr.save(lr.convert("resnet32", rank=0.5, input_size=SIZE), other)
    shutil.copy(other / "model.safetensors", _copy(w, "other_weights") / "model.safetensors")
    big = _copy(w, "big_plan")
    with (big / "plan.json").open("r+b") as fh:  # sparse: 65 MiB that take no disk space
        fh.truncate(65 << 20)
    _copy(w, "new\nline")
    torch.save(Dilated().state_dict(), w / "dilated_sd.pt")
    return w


def _snapshot(w: Path) -> dict[str, str]:
    out = {}
    for path in sorted(w.rglob("*")):
        if path.is_file():
            data = path.read_bytes() if path.stat().st_size < 1 << 20 else path.read_bytes()[:4096]
            out[str(path.relative_to(w))] = hashlib.sha256(data).hexdigest()
    return out


# -- checks ----------------------------------------------------------------------------------------------------
def _same_outputs(a: nn.Module, b: nn.Module) -> None:
    x = torch.randn(2, *SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(a.eval()(x), b.eval()(x), rtol=0, atol=0)


def _loads_like_the_artifact(result: Any, w: Path) -> None:
    _same_outputs(lr.load(result), lr.load(w / "art"))


def _holds_dense_weights(result: nn.Module, w: Path) -> None:
    expected = torch.load(w / "dense_sd.pt", weights_only=True)
    got = result.state_dict()
    assert all(torch.equal(got[k], v) for k, v in expected.items())


def _verified(result: Any, w: Path) -> None:
    assert result.verification is not None and result.verification.max_rel < 1e-4, result.verification
    assert lr.plan_from_onnx(result.path) is not None


def _explicit_pads(result: Any, w: Path) -> None:
    assert result.verification is not None and result.verification.max_rel < 1e-4, result.verification
    import onnx

    graph = onnx.load(str(result.path)).graph
    auto = [a.s for n in graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "auto_pad"]
    assert all(value in (b"", b"NOTSET") for value in auto), auto


def _ranks_like(**kwargs: Any) -> Callable[[Any, Path], None]:
    def check(result: nn.Module, w: Path) -> None:
        want = lr.plan_of(lr.convert("resnet20", input_size=SIZE, **kwargs))
        got = lr.plan_of(result)
        assert want is not None and got is not None
        assert [layer.ranks for layer in got.layers] == [layer.ranks for layer in want.layers]
        json.dumps(got.to_dict())  # the numbers are plain Python numbers

    return check


def _converted(w: Path) -> nn.Module:
    return lr.convert("resnet20", rank=0.5, input_size=SIZE).eval()


def _art(w: Path) -> nn.Module:
    return lr.load(w / "art").eval()


def _half_model(result: nn.Module, w: Path) -> None:
    assert all(p.dtype == torch.float32 for p in result.parameters())
    x = torch.randn(2, *SIZE)
    torch.testing.assert_close(result.eval()(x), _art(w)(x), rtol=2e-2, atol=2e-2)


#: How training scripts save: ``{"net": state_dict, "epoch": ...}`` and the like (see the world fixture).
_LAYOUTS = ("net", "state_dict", "model", "model_state_dict", "dataparallel", "other_key")


def _convert_with(weights: str) -> Callable[[Path, Path], Any]:
    return lambda w, o: lr.convert("resnet20", dense=True, weights=w / weights, input_size=SIZE)


# (id, call(world, out), expectation)
ROWS: list[tuple[str, Callable[[Path, Path], Any], Any]] = [
    # -- a converted model wrapped for training: its plan, its weights, its graph are the inner model's ----------
    ("summary-dataparallel", lambda w, o: lr.summary(nn.DataParallel(_art(w))), Ok(lambda r, w: r.converted_layers)),
    ("plan_of-compiled", lambda w, o: lr.plan_of(torch.compile(_art(w))), Ok(lambda r, w: r.converted_layers)),
    (
        "plan_of-nested-wrappers",
        lambda w, o: lr.plan_of(nn.DataParallel(torch.compile(_art(w)))),
        Ok(lambda r, w: r.converted_layers),
    ),
    ("plan_of-plain-module", lambda w, o: lr.plan_of(nn.DataParallel(nn.Conv2d(3, 3, 1))), Ok(lambda r, w: r is None)),
    ("save-dataparallel", lambda w, o: lr.save(nn.DataParallel(_art(w)), o / "dp"), Ok(_loads_like_the_artifact)),
    ("save-compiled", lambda w, o: lr.save(torch.compile(_art(w)), o / "c"), Ok(_loads_like_the_artifact)),
    (
        "export-dataparallel",
        lambda w, o: lr.export_onnx(nn.DataParallel(_art(w)), o / "m.onnx", verify_with="onnxruntime"),
        Ok(_verified),
    ),
    (
        "summary-plain-dense",
        lambda w, o: lr.summary(nn.DataParallel(nn.Conv2d(3, 3, 1))),
        Err("carries no conversion plan"),
    ),
    # -- weights= accepts the usual checkpoint layouts, and only data ------------------------------------------
    *[(f"weights-{key}", _convert_with(f"ckpt_{key}.pt"), Ok(_holds_dense_weights)) for key in _LAYOUTS],
    (
        "weights-safetensors-module-prefix",
        lambda w, o: lr.convert("resnet20", dense=True, weights=w / "dp.safetensors", input_size=SIZE),
        Ok(_holds_dense_weights),
    ),
    (
        "weights-no-state-dict",
        lambda w, o: lr.convert("resnet20", dense=True, weights=w / "ckpt_no_sd.pt"),
        Err("holds no state dict (name → tensor), but a dict without one (keys 'epoch', 'acc')"),
    ),
    (
        "weights-two-state-dicts",
        lambda w, o: lr.convert("resnet20", dense=True, weights=w / "ckpt_two_sd.pt"),
        Err("holds no state dict"),
    ),
    (
        "weights-hostile-pickle",
        lambda w, o: lr.convert("resnet20", dense=True, weights=w / "evil.pt"),
        Err("unsupported GLOBAL posix.system"),
    ),
    (
        "weights-pickled-class",
        lambda w, o: lr.convert("resnet20", dense=True, weights=w / "pickled_module.pt"),
        Err("was not an allowed global by default"),
    ),
    # -- numbers from NumPy ---------------------------------------------------------------------------------
    (
        "rank-np-float32",
        lambda w, o: lr.convert("resnet20", rank=np.float32(0.3), round_to=np.int64(1), input_size=SIZE),
        Ok(_ranks_like(rank=0.3, round_to=1)),
    ),
    (
        "rank-np-int",
        lambda w, o: lr.convert("resnet20", rank=np.int32(8), input_size=SIZE),
        Ok(_ranks_like(rank=8)),
    ),
    (
        "target-params-np",
        lambda w, o: lr.convert("resnet20", target_params=np.float64(0.5), input_size=SIZE),
        Ok(_ranks_like(target_params=0.5)),
    ),
    (
        "layer-rank-np",
        lambda w, o: lr.convert("resnet20", layer_rank={"conv1": np.float32(0.5)}, input_size=SIZE),
        Ok(_ranks_like(layer_rank={"conv1": 0.5})),
    ),
    ("rank-np-bool", lambda w, o: lr.convert("resnet20", rank=np.bool_(True)), Err("rank must be a number")),
    ("rank-np-nan", lambda w, o: lr.convert("resnet20", rank=np.float32("nan")), Err("not a finite number")),
    # -- 'same' padding with a dilation, converted or dense: explicit pads that ONNX Runtime runs ------------
    (
        "export-same-dilated-lowrank",
        lambda w, o: lr.export_onnx(
            lr.convert(Dilated(), rank=0.5, input_size=SIZE), o / "m.onnx", verify_with="onnxruntime"
        ),
        Ok(_explicit_pads),
    ),
    (
        "export-same-dilated-dense",
        lambda w, o: lr.export_onnx(
            lr.convert(Dilated(), dense=True, input_size=SIZE), o / "m.onnx", verify_with="onnxruntime"
        ),
        Ok(_explicit_pads),
    ),
    (
        "export-same-dilated-merged",
        lambda w, o: lr.export_onnx(
            lr.convert(Dilated(), rank=0.5, input_size=SIZE), o / "m.onnx", merge="all", verify_with="onnxruntime"
        ),
        Ok(_explicit_pads),
    ),
    (
        "export-same-dilated-plain-module",
        lambda w, o: lr.export_onnx(Dilated(), o / "m.onnx", input_size=SIZE, verify_with="onnxruntime"),
        Ok(_explicit_pads),
    ),
    # -- artifacts: precision, batch norm, device, size, names -----------------------------------------------
    ("load-half-weights", lambda w, o: lr.load(w / "half"), Warns("tensor(s) in another precision", _half_model)),
    (
        "load-one-bf16-tensor",
        lambda w, o: lr.load(w / "bf16_one"),
        Warns("stores 1 tensor(s) in another precision than the model (e.g. conv1.weight as BF16)"),
    ),
    ("load-float8", lambda w, o: lr.load(w / "float8"), Err("stores conv1.weight as F8_E4M3 (float8)")),
    (
        "load-negative-running-var",
        lambda w, o: lr.load(w / "neg_var"),
        Err("negative batch-norm variance in bn1.running_var"),
    ),
    (
        "load-map-location-bogus",
        lambda w, o: lr.load(w / "art", map_location="banana"),
        Err("'banana' is not a device"),
    ),
    (
        "load-map-location-cuda-99",
        lambda w, o: lr.load(w / "art", map_location="cuda:99"),
        Err("cuda:0 to" if torch.cuda.is_available() else "this machine has no CUDA GPU"),
    ),
    (
        "load-plan-names-huge-model",
        lambda w, o: lr.load(w / "huge_name"),
        Err("names regnet_y_128gf (644.8M parameters)"),
    ),
    (
        "load-plan-names-other-model",
        lambda w, o: lr.load(w / "vit_name"),
        Err("names vit_h_14 (633.5M parameters)"),
    ),
    (
        "load-plan-names-a-model-it-does-not-fit",
        lambda w, o: lr.load(w / "r18_name"),
        Err("r18_name/plan.json: the plan does not match the model at 'layer1.0.conv1'"),
    ),
    (
        "load-weights-of-another-model",
        lambda w, o: lr.load(w / "other_weights"),
        Err("does not match the model rebuilt from the plan"),
    ),
    ("load-plan-too-big", lambda w, o: lr.load(w / "big_plan"), Err("plan.json is larger than 64 MiB")),
    ("load-newline-in-path", lambda w, o: lr.load(w / "new\nline" / "nope"), Err("new\\nline/nope is not a directory")),
    ("save-name-255-bytes", lambda w, o: lr.save(_art(w), o / ("n" * 255)), Err("(223 bytes at most)")),
    ("save-name-223-bytes", lambda w, o: lr.save(_art(w), o / ("n" * 223)), Ok(_loads_like_the_artifact)),
    # -- the user's own factory: an error in it is one line that names it --------------------------------------
    (
        "factory-missing-module",
        lambda w, o: lr.convert("nosuchpkg34.nets:make"),
        Err("cannot import 'nosuchpkg34.nets:make'"),
    ),
]


def test_the_table_covers_every_item():
    ids = [row[0] for row in ROWS]
    assert len(ids) == len(set(ids)) and len(ids) >= 40
    for prefix in ("summary-", "save-", "export-", "weights-", "rank-", "load-"):
        assert any(i.startswith(prefix) for i in ids), prefix


@pytest.mark.parametrize("case, call, expect", ROWS, ids=[row[0] for row in ROWS])
def test_hostile_call(world, tmp_path, case, call, expect):
    out = tmp_path / "out"
    out.mkdir()
    before = _snapshot(world)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if isinstance(expect, Err):
            with pytest.raises(LowRankError) as info:
                call(world, out)
            message = str(info.value)
            assert "\n" not in message and "Traceback" not in message, message
            assert expect.fragment in message, f"{case}: {expect.fragment!r} not in {message!r}"
            assert "weights_only" not in message
            assert not any(out.iterdir()), f"{case}: wrote {list(out.iterdir())}"
            result = None
        else:
            result = call(world, out)
    ours = [str(w.message) for w in caught if issubclass(w.category, LowRankWarning)]
    if isinstance(expect, Warns):
        assert any(expect.fragment in m for m in ours), f"{case}: {expect.fragment!r} not in {ours}"
        assert all("\n" not in m for m in ours)
    if isinstance(expect, Ok):
        assert not [m for m in ours if "precision" in m], ours
    check = getattr(expect, "check", None)
    if check is not None:
        assert check(result, world) is not False
    assert _snapshot(world) == before, f"{case}: changed the files it read"
    assert not (world / "PWNED").exists()


@pytest.mark.parametrize("name", ["huge_name", "vit_name", "r18_name", "other_weights"])
def test_what_the_plan_and_the_file_show_is_checked_before_the_model_is_built(world, monkeypatch, name):
    import lowrank_tool.io as lio

    built = []
    real = lio.build_from_spec

    def spy(*args, **kwargs):
        built.append(str(torch.get_default_device()))
        return real(*args, **kwargs)

    monkeypatch.setattr(lio, "build_from_spec", spy)
    with pytest.raises(LowRankError):
        lr.load(world / name)
    assert all(device == "meta" for device in built), built


def test_a_factory_error_keeps_its_cause_for_python_callers(tmp_path, monkeypatch):
    (tmp_path / "buggy34.py").write_text(
        "from torch import nn\n\ndef Net(num_classes=10):\n    raise ZeroDivisionError('boom in Net')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(
        LowRankError, match=r"the model factory buggy34:Net\(\) raised ZeroDivisionError: boom in Net"
    ) as info:
        lr.convert("buggy34:Net")
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_ddp_wrapped_model_is_saved_and_exported_as_the_inner_one(world, tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        ddp = DistributedDataParallel(_art(world))
        assert lr.plan_of(ddp) is lr.plan_of(ddp.module)
        lr.save(ddp, tmp_path / "ddp")
        _loads_like_the_artifact(tmp_path / "ddp", world)
    finally:
        dist.destroy_process_group()


# -- the command line: a factory in the working directory, a factory that raises, --debug -------------------------
_FACTORIES = {
    "mynets34/__init__.py": (
        "from torch import nn\n\n"
        "def ResNet18(num_classes=10):\n"
        "    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1),\n"
        "                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes))\n"
    ),
    "buggy34.py": "from torch import nn\n\ndef Net():\n    return nn.Conv2d(3, 8, 3) / 0\n",
    "broken34.py": "import torch\nundefined_name_34\n",
}


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A user's repository with its models beside it, as the working directory, not on the import path (as under
    the console script, which, unlike `python -m`, does not put the working directory there)."""
    for rel, text in _FACTORIES.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    monkeypatch.chdir(tmp_path)
    here = {"", ".", str(tmp_path), os.path.realpath(tmp_path)}
    monkeypatch.setattr(
        sys, "path", [p for p in sys.path if p not in here and os.path.abspath(p or ".") != str(tmp_path)]
    )
    for name in ("mynets34", "buggy34", "broken34"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    yield tmp_path
    for name in ("mynets34", "buggy34", "broken34"):
        sys.modules.pop(name, None)


def test_a_factory_typed_in_its_repository_is_found(repo, cli):
    code, out, err = cli(
        "convert", "mynets34:ResNet18", "--input-size", "3x16x16", "-o", repo / "out", "--round-to", "1"
    )
    assert code == 0, err
    assert str(repo) not in sys.path and "" not in sys.path  # only for that import
    sys.modules.pop("mynets34", None)
    # the same factory named by a file is never looked for there: the plan is data
    code, out, err = cli("inspect", repo / "out", "--trust-code")
    assert code == 2 and "Traceback" not in err
    assert "is in the working directory, which is not on the import path here: run with PYTHONPATH=." in err


def test_the_console_script_finds_a_factory_in_the_working_directory(repo):
    script = shutil.which("lowrank")
    if script is None:
        pytest.skip("the lowrank console script is not installed")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [script, "layers", "mynets34:ResNet18", "--input-size", "3x16x16", "--json"],
        cwd=repo,
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert [layer["name"] for layer in json.loads(proc.stdout)][:2] == ["0", "2"]


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["convert", "buggy34:Net"], "the model factory buggy34:Net() raised TypeError: unsupported operand type(s)"),
        (["layers", "broken34:Net"], "importing 'broken34' for the model factory 'broken34:Net' raised NameError"),
    ],
    ids=["factory-raises", "module-raises"],
)
def test_a_factory_that_raises_is_one_line_and_debug_shows_the_traceback(repo, cli, monkeypatch, argv, fragment):
    code, out, err = cli(*argv)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert fragment in lines[0] and f"`lowrank --debug {argv[0]} ...` shows its traceback" in lines[0]

    code, out, err = cli("--debug", *argv)
    assert code == 2 and "Traceback (most recent call last)" in err and fragment in err
    assert err.strip().splitlines()[-1].startswith("error: ") and "--debug" not in err.strip().splitlines()[-1]

    monkeypatch.setenv("LOWRANK_DEBUG", "1")
    code, out, err = cli(*argv)
    assert code == 2 and "Traceback (most recent call last)" in err and fragment in err


def test_debug_shows_the_traceback_of_any_error_and_is_in_the_help(cli, tmp_path):
    code, out, err = cli("inspect", tmp_path / "nope")
    assert code == 2 and "Traceback" not in err
    code, out, err = cli("--debug", "inspect", tmp_path / "nope")
    assert code == 2 and "Traceback (most recent call last)" in err and "is not a directory" in err
    code, out, err = cli("--help")
    assert "--debug" in out and "LOWRANK_DEBUG=1" in out


def test_a_path_with_a_newline_is_one_line_on_the_command_line(world, cli):
    code, out, err = cli("inspect", world / "new\nline" / "nope")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "new\\nline" in err
