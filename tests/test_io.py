"""Artifacts: plan.json + model.safetensors round trip, and every way a directory can be wrong."""

import json
import os

import pytest
import torch
from helpers import TinyNet

import lowrank_tool as lr
from lowrank_tool import LowRankError
from lowrank_tool.conversion_plan import SCHEMA_VERSION


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    model = lr.convert("resnet18", rank=0.3, num_classes=7, input_size="3x64x64").eval()
    directory = tmp_path_factory.mktemp("a") / "r18"
    lr.save(model, directory)
    return model, directory


def test_round_trip_gives_identical_outputs(artifact):
    model, directory = artifact
    assert sorted(p.name for p in directory.iterdir()) == ["model.safetensors", "plan.json"]
    loaded = lr.load(directory).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert lr.summary(loaded).to_dict()["layers"] == lr.summary(model).to_dict()["layers"]


def test_plan_json_schema(artifact):
    data = json.loads((artifact[1] / "plan.json").read_text())
    assert data["kind"] == "lowrank_tool.plan" and data["schema_version"] == SCHEMA_VERSION
    assert data["base_model"] == {
        "source": "torchvision",
        "name": "resnet18",
        "task": "classification",
        "kwargs": {"num_classes": 7},
    }
    assert {"name", "format", "ranks", "params_before", "params_after", "macs_before", "macs_after", "reason"} <= set(
        data["layers"][1]
    )


def test_custom_model_needs_a_dense_instance(tmp_path, tiny):
    converted = lr.convert(tiny, rank=0.5, input_size=(3, 32, 32)).eval()
    lr.save(converted, tmp_path / "t")
    with pytest.raises(LowRankError, match=r"custom model \(.*TinyNet\); pass a dense instance"):
        lr.load(tmp_path / "t")
    loaded = lr.load(tmp_path / "t", model=TinyNet()).eval()
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(loaded(x), converted(x), rtol=0, atol=0)


def test_save_refuses_existing_directory_and_overwrites_on_request(artifact, tmp_path):
    model, _ = artifact
    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(LowRankError, match="already exists"):
        lr.save(model, target)
    lr.save(model, target, overwrite=True)
    assert (target / "plan.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary leftovers


def test_failed_save_leaves_nothing(tmp_path, tiny):
    with pytest.raises(LowRankError, match="carries no conversion plan"):
        lr.save(tiny, tmp_path / "x")
    assert list(tmp_path.iterdir()) == []


def _copy(src, dst):
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda d: (d / "plan.json").unlink(), "plan.json does not exist"),
        (lambda d: (d / "plan.json").write_text("{not json"), "not valid JSON"),
        (lambda d: (d / "plan.json").write_text('{"hello": 1}'), "not a lowrank_tool plan"),
        (
            lambda d: (d / "plan.json").write_text(
                json.dumps({**json.loads((d / "plan.json").read_text()), "schema_version": 99})
            ),
            "schema version 99, newer than",
        ),
        (
            lambda d: (d / "plan.json").write_text(
                json.dumps({**json.loads((d / "plan.json").read_text()), "layers": "x"})
            ),
            "malformed field",
        ),
        (lambda d: (d / "model.safetensors").unlink(), "model.safetensors does not exist"),
        (lambda d: (d / "model.safetensors").write_bytes(b"\x00" * 64), "corrupt or not a safetensors file"),
    ],
)
def test_damaged_artifacts_give_one_clear_error(artifact, tmp_path, damage, message):
    d = _copy(artifact[1], tmp_path / "d")
    damage(d)
    with pytest.raises(LowRankError, match=message) as info:
        lr.load(d)
    assert "\n" not in str(info.value)


def test_weights_of_another_model_are_refused(artifact, tmp_path):
    other = lr.convert("resnet18", rank=0.5, num_classes=7, input_size="3x64x64")
    lr.save(other, tmp_path / "other")
    d = _copy(artifact[1], tmp_path / "d")
    (d / "model.safetensors").write_bytes((tmp_path / "other" / "model.safetensors").read_bytes())
    with pytest.raises(LowRankError, match="does not match the model rebuilt from the plan"):
        lr.load(d)


def test_plan_for_a_different_architecture_is_refused(artifact, tmp_path):
    d = _copy(artifact[1], tmp_path / "d")
    data = json.loads((d / "plan.json").read_text())
    data["base_model"]["name"] = "resnet34"
    (d / "plan.json").write_text(json.dumps(data))
    with pytest.raises(
        LowRankError, match="plan does not match the model at 'layer1.0.conv1'|does not match the model rebuilt"
    ):
        lr.load(d)


def test_missing_directory(tmp_path):
    with pytest.raises(LowRankError, match="is not a directory"):
        lr.load(tmp_path / "nope")


def test_save_creates_missing_parents_and_cleans_up_on_failure(artifact, tmp_path):
    model, _ = artifact
    lr.save(model, tmp_path / "a" / "b" / "c")
    assert (tmp_path / "a" / "b" / "c" / "plan.json").is_file()
    (tmp_path / "file").write_text("x")
    with pytest.raises(LowRankError, match="cannot write into"):
        lr.save(model, tmp_path / "file" / "sub" / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "file"]


def test_half_precision_model_converts():
    model = lr.convert(TinyNet().to(torch.bfloat16), rank=0.5, input_size=(3, 16, 16))
    assert next(model.parameters()).dtype == torch.bfloat16


def test_the_weights_file_gets_the_same_mode_as_the_plan(tmp_path):
    import stat

    previous = os.umask(0o022)
    try:
        lr.save(lr.convert("resnet20", rank=0.5, input_size="3x16x16"), tmp_path / "art")
    finally:
        os.umask(previous)
    modes = {
        name: stat.S_IMODE((tmp_path / "art" / name).stat().st_mode) for name in ("plan.json", "model.safetensors")
    }
    assert modes == {"plan.json": 0o644, "model.safetensors": 0o644}  # safetensors alone wrote 0600
