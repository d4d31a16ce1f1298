"""What loading trusts: a plan, ONNX metadata or recipe is data — it never imports code or downloads.

Every command that reads an artifact is tried on files naming ``os:system`` (which would run a shell
command) or an unregistered factory: each ends with one line, exit code 2, and nothing runs.
"""

from __future__ import annotations

import importlib
import json
import sys
import textwrap

import onnx
import pytest
import torch
from helpers import lowrank

import lowrank_tool as lr
from lowrank_tool.errors import LowRankError

FACTORY_MODULE = textwrap.dedent("""
    import torch
    from torch import nn

    CALLS = []

    def make_net(width=16):
        CALLS.append(width)
        return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 32, 3, padding=1),
                             nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
""")


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """A small converted resnet20 artifact and its ONNX export, written by `lowrank export`."""
    from typer.testing import CliRunner

    from lowrank_tool.cli import typer_app as app

    root = tmp_path_factory.mktemp("trust")
    model = lr.convert("resnet20", rank=0.5, num_classes=10, input_size=(3, 16, 16))
    lr.save(model, root / "good")
    result = CliRunner().invoke(app, ["export", str(root / "good"), "--onnx", str(root / "good.onnx"), "--no-verify"])
    assert result.exit_code == 0, result.output
    return root


def _hostile_dir(src, dst, base_model):
    dst.mkdir()
    plan = json.loads((src / "plan.json").read_text())
    plan["base_model"] = base_model
    (dst / "plan.json").write_text(json.dumps(plan))
    (dst / "model.safetensors").write_bytes((src / "model.safetensors").read_bytes())
    return dst


def _hostile_onnx(src, dst, base_model):
    proto = onnx.load(str(src))
    for prop in proto.metadata_props:
        if prop.key == "lowrank_tool.plan":
            plan = json.loads(prop.value)
            plan["base_model"] = base_model
            prop.value = json.dumps(plan)
    onnx.save(proto, str(dst))
    return dst


def _system(marker):
    return {"source": "import", "name": "os:system", "task": "classification", "kwargs": {"command": f"touch {marker}"}}


COMMANDS = {
    "inspect": lambda d: ["inspect", d],
    "export": lambda d: ["export", d, "--onnx", str(d) + ".onnx", "--no-verify"],
    "train": lambda d: ["train", d, "--data", "synthetic", "--epochs", "1", "--image-size", "16"],
    "bench": lambda d: ["bench", d, "--runs", "1", "--warmup", "0"],
    "analyze": lambda d: ["analyze", d],
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("factory", ["os:system", "somepkg.evil:factory"])
def test_artifact_naming_a_factory_runs_nothing(command, factory, artifact, tmp_path, cli):
    marker = tmp_path / "PWNED"
    spec = _system(marker) if factory == "os:system" else {"source": "import", "name": factory, "kwargs": {}}
    d = _hostile_dir(artifact / "good", tmp_path / f"hostile[{command}]", spec)
    code, out, err = cli(*COMMANDS[command](d))
    assert code == 2, (out, err)
    assert not marker.exists()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert factory in lines[0] and "--trust-code" in lines[0] and "model=" in lines[0]
    assert "somepkg" not in sys.modules
    assert not (tmp_path / f"hostile[{command}].onnx").exists()


@pytest.mark.parametrize("factory", ["os:system", "somepkg.evil:factory"])
def test_load_refuses_factories_and_explains_both_ways(factory, artifact, tmp_path):
    marker = tmp_path / "PWNED"
    spec = _system(marker) if factory == "os:system" else {"source": "import", "name": factory, "kwargs": {}}
    d = _hostile_dir(artifact / "good", tmp_path / "h", spec)
    with pytest.raises(
        LowRankError, match=rf"names the factory '{factory}'.*load\(DIR, model=\.\.\.\).*trust_code=True"
    ) as info:
        lr.load(d)
    assert "\n" not in str(info.value) and str(d / "plan.json") in str(info.value)
    assert not marker.exists() and "somepkg" not in sys.modules
    from lowrank_tool.analysis.bench import bench

    with pytest.raises(LowRankError, match="--trust-code"):
        bench(d, runs=1, warmup=0)
    assert not marker.exists()


def test_a_timm_hub_name_in_a_file_is_refused(artifact, tmp_path):
    pytest.importorskip("timm")
    spec = {"source": "timm", "name": "timm/hf-hub:someone/net", "task": "classification", "kwargs": {}}
    d = _hostile_dir(artifact / "good", tmp_path / "h", spec)
    for trust_code in (False, True):
        with pytest.raises(LowRankError, match="hf-hub:/local-dir: names are not a source here"):
            lr.load(d, trust_code=trust_code)


@pytest.mark.parametrize("command", ["bench", "analyze"])
def test_onnx_metadata_naming_a_factory_runs_nothing(command, artifact, tmp_path, cli):
    marker = tmp_path / "PWNED"
    f = _hostile_onnx(artifact / "good.onnx", tmp_path / "h.onnx", _system(marker))
    assert "os:system" in onnx.load(str(f)).metadata_props.__repr__()  # the rewrite took
    argv = ["bench", f, "--runs", "1", "--warmup", "0"] if command == "bench" else ["analyze", f]
    code, out, err = cli(*argv)
    assert not marker.exists()
    if command == "bench":  # PyTorch eager needs the model rebuilt from the plan: refused
        assert code == 2 and "os:system" in err and "--trust-code" in err and len(err.strip().splitlines()) == 1
    else:  # analyze reads the ONNX weights only: the plan's model spec is never built
        assert code == 0, err


def test_onnx_metadata_plan_that_is_not_json(artifact, tmp_path, cli):
    proto = onnx.load(str(artifact / "good.onnx"))
    next(p for p in proto.metadata_props if p.key == "lowrank_tool.plan").value = "{not json"
    onnx.save(proto, str(tmp_path / "bad.onnx"))
    code, _, err = cli("bench", tmp_path / "bad.onnx", "--runs", "1", "--warmup", "0")
    assert code == 2 and "not JSON" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("nproc", [1, 2])
def test_recipe_naming_a_factory_needs_trust_code(nproc, tmp_path, cli, monkeypatch):
    train_cli = importlib.import_module("lowrank_tool.cli.train")

    monkeypatch.setattr(train_cli, "_launch", lambda n, argv, directory=None: pytest.fail("launched torchrun"))
    marker = tmp_path / "PWNED"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: os:system\noutput: {tmp_path / 'out'}\n")
    code, _, err = cli("train", "--recipe", recipe, "--data", "synthetic", "--epochs", "1", "--nproc", nproc)
    assert code == 2 and "os:system" in err and "--trust-code" in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_train_under_torchrun_forwards_trust_code(artifact, tmp_path, cli, monkeypatch):
    train_cli = importlib.import_module("lowrank_tool.cli.train")

    launched = []
    monkeypatch.setattr(train_cli, "_launch", lambda n, argv, directory=None: launched.append((n, argv)) or 0)
    for flags in ([], ["--trust-code"]):
        code, _, err = cli("train", artifact / "good", "--data", "synthetic", "--epochs", "1", "--nproc", "2", *flags)
        assert code == 0, err
    assert [n for n, _ in launched] == [2, 2]
    assert "--trust-code" not in launched[0][1] and "--trust-code" in launched[1][1]


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"weights": "DEFAULT"}, "would download weights; loading never downloads"),
        ({"weights": "ResNet18_Weights.IMAGENET1K_V1"}, "would download weights"),
        ({"weights_backbone": "DEFAULT"}, "would download weights"),
        ({"pretrained": True}, "would download weights"),
        ({"checkpoint_path": "/tmp/x.pth"}, "would download weights"),
        ({"num_classes": {"__class__": "x"}}, "not a plain JSON value"),
        ({"norm_layer": [{"a": 1}]}, "not a plain JSON value"),
        ({"bogus": 1}, "cannot build"),
        ({"replace_stride_with_dilation": [True]}, "replace_stride_with_dilation should be None or a 3-element tuple"),
        (["a", "list"], "must be a JSON object"),
    ],
)
def test_plan_kwargs_are_checked_before_anything_is_built(kwargs, fragment, artifact, tmp_path, cli, monkeypatch):
    import torchvision

    def no_download(*a, **k):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    spec = {"source": "torchvision", "name": "resnet18", "task": "classification", "kwargs": kwargs}
    d = _hostile_dir(artifact / "good", tmp_path / "h", spec)
    with pytest.raises(LowRankError, match=fragment) as info:
        lr.load(d)
    assert "\n" not in str(info.value) and "plan.json" in str(info.value)
    code, _, err = cli("inspect", d)
    assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1
    assert torchvision  # imported for the monkeypatch target's module


def test_harmless_download_kwargs_are_accepted(artifact, tmp_path, monkeypatch):
    def no_download(*a, **k):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    spec = json.loads((artifact / "good" / "plan.json").read_text())["base_model"]
    # null/false mean "no download": accepted even by a builder that takes no such argument (the zoo's resnet20)
    spec["kwargs"] = {
        **spec["kwargs"],
        "pretrained": False,
        "weights": None,
        "weights_backbone": False,
        "checkpoint_path": None,
    }
    d = _hostile_dir(artifact / "good", tmp_path / "h", spec)
    reference = lr.load(artifact / "good").eval()
    model = lr.load(d).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("resnet18", {"weights": None, "pretrained": False}),
        ("resnet18", {"weights": False}),
        ("fasterrcnn_mobilenet_v3_large_fpn", {"weights_backbone": False, "weights": None}),
        ("timm/resnet18", {"pretrained": False, "pretrained_cfg": None, "checkpoint_path": None, "weights": False}),
    ],
)
def test_harmless_download_kwargs_build_every_source(name, kwargs, monkeypatch):
    from lowrank_tool.models import build_from_spec

    if name.startswith("timm/"):
        pytest.importorskip("timm")

    def no_download(*a, **k):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    assert isinstance(build_from_spec({"name": name, "kwargs": kwargs}, where="plan.json"), torch.nn.Module)


def test_a_builder_failing_on_file_arguments_is_one_line():
    pytest.importorskip("timm")
    from lowrank_tool.models import build_from_spec

    for kwargs in ({"act_layer": "no_such_activation"}, {"block": "x"}, {"in_chans": -3}, {"output_stride": 7}):
        with pytest.raises(LowRankError, match=r"^plan\.json: .*cannot build 'timm/resnet18' with arguments") as info:
            build_from_spec({"source": "timm", "name": "timm/resnet18", "kwargs": kwargs}, where="plan.json")
        assert "\n" not in str(info.value) and next(iter(kwargs)) in str(info.value)


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    (tmp_path / "mynets.py").write_text(FACTORY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    sys.modules.pop("mynets", None)
    yield tmp_path
    sys.modules.pop("mynets", None)


def test_user_factory_artifact_loads_with_model_or_trust_code(factory_module, tmp_path, cli):
    d = tmp_path / "art"
    code, _, err = cli(
        "convert", "mynets:make_net", "--rank", "0.5", "--input-size", "3x16x16", "--model-arg", "width=24", "-o", d
    )
    assert code == 0, err
    import mynets

    calls = len(mynets.CALLS)
    with pytest.raises(LowRankError, match="--trust-code"):
        lr.load(d)
    assert len(mynets.CALLS) == calls  # refused before the factory was called
    by_model = lr.load(d, model=mynets.make_net(width=24)).eval()
    trusted = lr.load(d, trust_code=True).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(by_model(x), trusted(x))
    assert mynets.CALLS[-1] == 24  # the recorded model argument
    code, out, err = cli("inspect", d, "--trust-code")
    assert code == 0, err
    code, _, err = cli("inspect", d)
    assert code == 2 and "--trust-code" in err


def test_recipe_factory_with_trust_code(factory_module, tmp_path, cli):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"model: mynets:make_net\noutput: {tmp_path / 'out'}\nconvert:\n  rank: 0.5\n  input_size: 3x16x16\n"
    )
    code, _, err = cli(
        "train",
        "--recipe",
        recipe,
        "--data",
        "synthetic",
        "--epochs",
        "1",
        "--image-size",
        "16",
        "--trust-code",
        "--quiet",
    )
    assert code == 0, err
    assert (tmp_path / "out" / "summary.json").is_file()


def test_console_entry_point_refuses_in_one_line(artifact, tmp_path):
    """The real `lowrank` process (not the in-process runner): exit 2, one stderr line, nothing run."""
    marker = tmp_path / "PWNED"
    d = _hostile_dir(artifact / "good", tmp_path / "h", _system(marker))
    proc = lowrank("inspect", d, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert "os:system" in proc.stderr and "--trust-code" in proc.stderr
    assert not marker.exists()
