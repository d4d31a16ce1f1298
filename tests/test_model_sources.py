"""Model sources: timm as ``timm/NAME``, ``--model-arg`` / ``model_kwargs``, ``lowrank models --source``."""

from __future__ import annotations

import json

import pytest
import torch

import lowrank_tool as lr
from lowrank_tool.errors import LowRankError
from lowrank_tool.models import build_from_spec, default_input_size, get_entry, list_models


def test_timm_name_converts_saves_and_loads_without_model(tmp_path, cli):
    d = tmp_path / "r18"
    code, out, err = cli(
        "convert", "timm/resnet18", "--rank", "0.5", "--input-size", "3x64x64", "--model-arg", "num_classes=7", "-o", d
    )
    assert code == 0, err
    spec = json.loads((d / "plan.json").read_text())["base_model"]
    assert spec == {"source": "timm", "name": "timm/resnet18", "task": "classification", "kwargs": {"num_classes": 7}}
    model = lr.load(d).eval()
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 7)
    again = lr.load(d).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), again(x))


def test_timm_model_loads_without_model_and_matches(tmp_path):
    pytest.importorskip("timm")
    model = lr.convert("timm/resnet18", rank=0.5, input_size=(3, 64, 64)).eval()
    assert lr.summary(model).base_model == {
        "source": "timm",
        "name": "timm/resnet18",
        "task": "classification",
        "kwargs": {},
    }
    assert model.fc.out_features == 1000  # timm's default head; --model-arg num_classes=7 changes it (above)
    lr.save(model, tmp_path / "r18")
    loaded = lr.load(tmp_path / "r18").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_timm_pretrained_from_python_is_the_users_call(monkeypatch):
    timm = pytest.importorskip("timm")
    seen = {}
    create = timm.create_model

    def fake_create(name, pretrained=False, **kwargs):
        seen["pretrained"] = pretrained
        return create(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", fake_create)
    plan = lr.plan("timm/resnet18", rank=0.5, input_size=(3, 32, 32), model_kwargs={"pretrained": True})
    assert seen["pretrained"] is True
    assert plan.base_model["kwargs"] == {} and plan.base_model["built_with"] == {"pretrained": True}
    lr.plan("timm/resnet18", rank=0.5, input_size=(3, 32, 32))
    assert seen["pretrained"] is False  # never pretrained unless asked


def test_timm_hub_names_are_not_a_source():
    pytest.importorskip("timm")
    with pytest.raises(LowRankError, match=r"hf-hub:/local-dir: names are not a source here.*timm/NAME"):
        get_entry("timm/hf-hub:timm/resnet18.a1_in1k")


def test_timm_default_input_size_comes_from_its_pretrained_config():
    assert default_input_size("timm/resnet18") == (3, 224, 224)
    assert default_input_size("timm/tf_efficientnet_b3") == (3, 300, 300)
    assert default_input_size("timm/resnet18", {"img_size": 96}) == (3, 96, 96)
    timm = pytest.importorskip("timm")
    plan = lr.plan(timm.create_model("tf_efficientnet_b3"), rank=0.3)  # a module: its pretrained_cfg says 300
    assert plan.input_size == [3, 300, 300]


def test_unknown_timm_name_suggests_close_ones():
    with pytest.raises(
        LowRankError, match=r"unknown timm model 'timm/resnet181'; did you mean timm/resnet18.*--source timm"
    ):
        get_entry("timm/resnet181")


def test_missing_timm_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    with pytest.raises(LowRankError, match=r"needs timm: pip install 'lowrank-tool\[timm\]'"):
        get_entry("timm/resnet18")


def test_models_source_lists(cli):
    code, out, _ = cli("models", "--source", "timm", "--json")
    names = {m["name"] for m in json.loads(out)}
    assert code == 0 and "timm/resnet50" in names and "resnet50" not in names and len(names) > 500
    code, out, _ = cli("models", "--json")
    names = {m["name"] for m in json.loads(out)}
    assert "resnet50" in names and "resnet20" in names and not any(n.startswith("timm/") for n in names)
    code, out, _ = cli("models", "--source", "lowrank_tool", "--json")
    assert {m["source"] for m in json.loads(out)} == {"lowrank_tool"}
    code, _, err = cli("models", "--source", "hub")
    assert code == 2 and "unknown source 'hub'" in err
    assert {e.source for e in list_models(source="all")} == {"torchvision", "lowrank_tool", "timm"}


@pytest.mark.parametrize(
    "items, expected",
    [
        (["num_classes=10"], {"num_classes": 10}),
        (["drop_rate=0.1", "global_pool=avg"], {"drop_rate": 0.1, "global_pool": "avg"}),
        (["features_only=true", "out_indices=[1,2]"], {"features_only": True, "out_indices": [1, 2]}),
    ],
)
def test_model_arg_values_are_json_else_strings(items, expected):
    from lowrank_tool.cli._common import parse_model_args

    assert parse_model_args(items) == expected


@pytest.mark.parametrize(
    "item, fragment", [("num_classes", "is not KEY=VALUE"), ("=3", "is not KEY=VALUE"), ("a-b=1", "Python identifier")]
)
def test_bad_model_arg_is_one_line(item, fragment, cli):
    code, _, err = cli("convert", "resnet18", "--model-arg", item)
    assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1


def test_num_classes_in_model_kwargs_and_conflicts():
    plan = lr.plan("resnet18", rank=0.5, input_size=(3, 32, 32), model_kwargs={"num_classes": 5})
    assert plan.base_model["kwargs"] == {"num_classes": 5}
    plan = lr.plan("resnet18", rank=0.5, input_size=(3, 32, 32), num_classes=5, model_kwargs={"num_classes": 5})
    assert plan.base_model["kwargs"] == {"num_classes": 5}
    with pytest.raises(LowRankError, match="num_classes=5 and the model argument num_classes=7 disagree"):
        lr.plan("resnet18", rank=0.5, input_size=(3, 32, 32), num_classes=5, model_kwargs={"num_classes": 7})
    with pytest.raises(LowRankError, match="cannot build 'resnet18' with arguments"):
        lr.plan("resnet18", rank=0.5, model_kwargs={"bogus": 1})
    with pytest.raises(LowRankError, match="cannot be recorded in plan.json"):
        lr.plan("resnet18", rank=0.5, model_kwargs={"norm_layer": torch.nn.Identity})
    with pytest.raises(LowRankError, match="model_kwargs apply to a model given by name"):
        lr.plan(
            torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3)),
            rank=0.5,
            input_size=(3, 8, 8),
            model_kwargs={"num_classes": 5},
        )


def test_num_classes_in_model_kwargs_from_the_cli(tmp_path, cli):
    code, out, err = cli(
        "convert",
        "resnet20",
        "--rank",
        "0.5",
        "--input-size",
        "3x16x16",
        "--num-classes",
        "5",
        "--model-arg",
        "num_classes=5",
        "--json",
    )
    assert code == 0, err
    assert json.loads(out)["base_model"]["kwargs"] == {"num_classes": 5}
    code, _, err = cli(
        "convert",
        "resnet20",
        "--rank",
        "0.5",
        "--input-size",
        "3x16x16",
        "--num-classes",
        "5",
        "--model-arg",
        "num_classes=7",
    )
    assert code == 2 and "disagree" in err and len(err.strip().splitlines()) == 1


def test_analyze_takes_model_args(cli):
    code, out, err = cli("analyze", "resnet20", "--json")
    assert code == 0, err
    plain = {s["name"] for s in json.loads(out)}
    code, out, err = cli("analyze", "resnet20", "--model-arg", "shortcut=B", "--json")
    assert code == 0, err
    shortcut_b = {s["name"] for s in json.loads(out)}
    assert shortcut_b > plain  # option B adds 1x1 projection convs
    code, _, err = cli("analyze", "resnet20", "--model-arg", "bogus=1")
    assert code == 2 and "cannot build 'resnet20'" in err and len(err.strip().splitlines()) == 1


def test_list_kwargs_are_recorded_and_replayed(tmp_path):
    model = lr.convert(
        "resnet50", rank=0.3, input_size=(3, 64, 64), model_kwargs={"replace_stride_with_dilation": (False, True, True)}
    )
    assert lr.summary(model).base_model["kwargs"] == {"replace_stride_with_dilation": [False, True, True]}
    lr.save(model, tmp_path / "a")
    assert lr.load(tmp_path / "a").layer4[0].conv2.dilation == (2, 2)


@pytest.mark.parametrize("enum", [True, False], ids=["weights-enum", "weights-string"])
def test_download_arguments_are_used_now_but_never_replayed(enum, monkeypatch):
    import torchvision

    seen = {}

    def fake_get_model(name, **kwargs):
        seen.update(kwargs)
        kwargs.pop("weights")
        return torchvision.models.resnet18(**kwargs)

    monkeypatch.setattr(torchvision.models, "get_model", fake_get_model)
    weights = torchvision.models.ResNet18_Weights.DEFAULT if enum else "DEFAULT"
    plan = lr.plan("resnet18", rank=0.5, input_size=(3, 32, 32), model_kwargs={"weights": weights})
    assert seen["weights"] is weights
    # recorded for information only (an enum as its text), never in the kwargs a load replays
    assert "weights" not in plan.base_model["kwargs"] and plan.base_model["built_with"] == {"weights": str(weights)}


def test_build_from_spec_registered_names_only():
    assert isinstance(
        build_from_spec({"source": "lowrank_tool", "name": "resnet20", "kwargs": {"num_classes": 3}}, where="x"),
        torch.nn.Module,
    )
    with pytest.raises(LowRankError, match="x: unknown model 'nope'"):
        build_from_spec({"source": "torchvision", "name": "nope", "kwargs": {}}, where="x")
    with pytest.raises(LowRankError, match="x: model name 3 must be a non-empty string"):
        build_from_spec({"name": 3}, where="x")
    with pytest.raises(LowRankError, match="custom model"):
        build_from_spec({"source": "custom", "name": None, "class": "a.B"}, where="x")
