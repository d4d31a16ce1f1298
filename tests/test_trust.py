"""What loading trusts: a plan, ONNX metadata or recipe is data — it never imports code or downloads.

Every command that reads an artifact is tried on files naming ``os:system`` (which would run a shell
command) or an unregistered factory: each ends with one line, exit code 2, and nothing runs.
"""

from __future__ import annotations

import json
import sys
import textwrap

import onnx
import pytest
import torch

import lowrank_tool as lr
from lowrank_tool.errors import LowRankError

FACTORY_MODULE = textwrap.dedent('''
    import torch
    from torch import nn

    CALLS = []

    def make_net(width=16):
        CALLS.append(width)
        return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 32, 3, padding=1),
                             nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
''')


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """A small converted resnet20 artifact and its ONNX export."""
    root = tmp_path_factory.mktemp("trust")
    model = lr.convert("resnet20", rank=0.5, num_classes=10, input_size=(3, 16, 16))
    lr.save(model, root / "good")
    lr.export_onnx(model, root / "good.onnx", verify=False)
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


def test_load_refuses_factories_and_explains_both_ways(artifact, tmp_path):
    marker = tmp_path / "PWNED"
    d = _hostile_dir(artifact / "good", tmp_path / "h", _system(marker))
    with pytest.raises(LowRankError, match=r"names the factory 'os:system'.*load\(DIR, model=\.\.\.\).*trust_code=True"):
        lr.load(d)
    assert not marker.exists()


@pytest.mark.parametrize("command", ["bench", "analyze"])
def test_onnx_metadata_naming_a_factory_runs_nothing(command, artifact, tmp_path, cli):
    marker = tmp_path / "PWNED"
    f = _hostile_onnx(artifact / "good.onnx", tmp_path / "h.onnx", _system(marker))
    argv = ["bench", f, "--runs", "1", "--warmup", "0", "--engine", "torch"] if command == "bench" else ["analyze", f]
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


def test_recipe_naming_a_factory_needs_trust_code(tmp_path, cli):
    marker = tmp_path / "PWNED"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: os:system\noutput: {tmp_path / 'out'}\n")
    code, _, err = cli("train", "--recipe", recipe, "--data", "synthetic", "--epochs", "1")
    assert code == 2 and "os:system" in err and "--trust-code" in err and len(err.strip().splitlines()) == 1
    assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("kwargs, fragment", [
    ({"weights": "DEFAULT"}, "would download weights"),
    ({"weights_backbone": "DEFAULT"}, "would download weights"),
    ({"pretrained": True}, "would download weights"),
    ({"num_classes": {"__class__": "x"}}, "not a plain JSON value"),
    ({"bogus": 1}, "cannot build"),
    (["a", "list"], "must be a JSON object"),
])
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
    assert code == 2 and fragment in err
    assert torchvision  # imported for the monkeypatch target's module


def test_harmless_download_kwargs_are_accepted(artifact, tmp_path):
    spec = json.loads((artifact / "good" / "plan.json").read_text())["base_model"]
    spec["kwargs"] = {**spec["kwargs"], "pretrained": False}
    d = _hostile_dir(artifact / "good", tmp_path / "h", spec)
    with pytest.raises(LowRankError, match="cannot build"):  # the zoo's resnet20 takes no 'pretrained'
        lr.load(d)


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
    code, _, err = cli("convert", "mynets:make_net", "--rank", "0.5", "--input-size", "3x16x16", "--model-arg", "width=24", "-o", d)
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
    recipe.write_text(f"model: mynets:make_net\noutput: {tmp_path / 'out'}\nconvert:\n  rank: 0.5\n  input_size: 3x16x16\n")
    code, _, err = cli("train", "--recipe", recipe, "--data", "synthetic", "--epochs", "1", "--image-size", "16", "--trust-code", "--quiet")
    assert code == 0, err
    assert (tmp_path / "out" / "summary.json").is_file()
