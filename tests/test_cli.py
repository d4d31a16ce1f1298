"""The `lowrank` command: tables, JSON, files on disk, and one-line errors with exit code 2."""

import json

import pytest
from helpers import lowrank, run_cli

run = run_cli  # (argv, capsys, monkeypatch) -> (code, out, err)


def test_convert_writes_artifact_and_prints_table(tmp_path, capsys, monkeypatch):
    code, out, err = run(
        ["convert", "resnet18", "--rank", "0.3", "--input-size", "3x64x64", "-o", str(tmp_path / "r18")],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    assert (tmp_path / "r18" / "plan.json").is_file() and (tmp_path / "r18" / "model.safetensors").is_file()
    assert "layer4.1.conv2" in out and "tucker2" in out and "160,160" in out
    assert "19/20 convs converted" in out and "fraction of channels kept" in out


def test_convert_json(capsys, monkeypatch):
    code, out, _ = run(
        ["convert", "resnet18", "--target-macs", "0.5", "--input-size", "3x64x64", "--json"], capsys, monkeypatch
    )
    assert code == 0
    data = json.loads(out)
    assert abs(data["totals"]["macs_ratio"] - 0.5) < 0.01 and data["policy"]["target_macs"] == 0.5


def test_models_and_layers(capsys, monkeypatch):
    code, out, _ = run(["models", "--json"], capsys, monkeypatch)
    entries = json.loads(out)
    names = {m["name"]: m["task"] for m in entries}
    assert names["resnet50"] == "classification" and names["fasterrcnn_resnet50_fpn"] == "detection"
    assert sum(m["task"] == "classification" and m["source"] == "torchvision" for m in entries) == 80
    assert {"resnet20", "resnet56", "vgg16_cifar"} <= {m["name"] for m in entries if m["source"] == "lowrank_tool"}
    code, out, _ = run(["layers", "resnet18", "--input-size", "3x32x32"], capsys, monkeypatch)
    assert code == 0 and "layer2.0.downsample.0" in out and "stem" in out


BAD = [
    (["convert", "resnet5"], "unknown model 'resnet5'; did you mean resnet56, resnet50"),
    (["convert", "resnet18", "--rank", "0"], "rank 0 is not positive"),
    (["convert", "resnet18", "--rank", "-1"], "rank -1 is not positive"),
    (["convert", "resnet18", "--rank", "1.5"], "rank 1.5 is a fraction above 1"),
    (["convert", "resnet18", "--input-size", "224x224"], "input size '224x224' is malformed"),
    (
        ["convert", "resnet18", "--input-size", "3x32x32", "--exclude", "layer9"],
        "'layer9' match no convolution; list the layer names with `lowrank layers resnet18`",
    ),
    (["convert", "resnet18", "--input-size", "3x32x32", "--exclude", "re:.*"], "every convertible layer is excluded"),
    (["convert", "resnet18", "--input-size", "3x32x32", "--layer-rank", "layer1"], "is not NAME=RANK"),
    (["convert", "resnet18", "--input-size", "3x32x32", "--target-params", "2"], "must be a fraction in (0, 1)"),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[" ".join(a[2:]) or a[1] for a, _ in BAD])
def test_bad_input_one_line_exit_2_nothing_written(argv, message, tmp_path, capsys, monkeypatch):
    out_dir = tmp_path / "out"
    code, out, err = run([*argv, "-o", str(out_dir)], capsys, monkeypatch)
    assert code == 2
    assert message in err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    assert not out_dir.exists() and list(tmp_path.iterdir()) == []


def test_existing_output_needs_force(tmp_path, capsys, monkeypatch):
    (tmp_path / "out").mkdir()
    code, _, err = run(
        ["convert", "resnet18", "--input-size", "3x32x32", "-o", str(tmp_path / "out")], capsys, monkeypatch
    )
    assert code == 2 and "already exists" in err
    code, _, _ = run(
        ["convert", "resnet18", "--input-size", "3x32x32", "-o", str(tmp_path / "out"), "--force"], capsys, monkeypatch
    )
    assert code == 0 and (tmp_path / "out" / "plan.json").is_file()


def test_unknown_option_is_a_usage_error(capsys, monkeypatch):
    code, _, err = run(["convert", "resnet18", "--frobnicate"], capsys, monkeypatch)
    assert code == 2 and "No such option" in err


def test_console_script_end_to_end(tmp_path):
    """The installed `lowrank` script, as a user runs it."""
    ok = lowrank("convert", "resnet18", "--input-size", "3x32x32", "-o", tmp_path / "m", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["output"] == str(tmp_path / "m")
    bad = lowrank("convert", "resnet18", "--rank", "7.5")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


def test_user_model_by_import_path(tmp_path, capsys, monkeypatch):
    (tmp_path / "mynets.py").write_text(
        "import torch.nn as nn\n"
        "def small(num_classes=10):\n"
        "    return nn.Sequential(nn.Conv2d(3, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.Conv2d(64, 64, 3),\n"
        "                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    code, out, err = run(
        ["convert", "mynets:small", "--num-classes", "4", "--input-size", "3x16x16", "-o", str(tmp_path / "m")],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    import torch

    import lowrank_tool as lr

    with pytest.raises(
        lr.LowRankError, match="names the factory 'mynets:small'"
    ):  # a file never imports code by itself
        lr.load(tmp_path / "m")
    model = lr.load(tmp_path / "m", trust_code=True)
    assert model(torch.randn(1, 3, 16, 16)).shape == (1, 4)
    code, _, err = run(["convert", "mynets:nope"], capsys, monkeypatch)
    assert code == 2 and "cannot import 'mynets:nope'" in err


def test_inspect_loads_and_reports(tmp_path, capsys, monkeypatch):
    run(["convert", "resnet18", "--input-size", "3x32x32", "-o", str(tmp_path / "m")], capsys, monkeypatch)
    code, out, err = run(["inspect", str(tmp_path / "m"), "--json"], capsys, monkeypatch)
    assert code == 0, err
    data = json.loads(out)
    assert data["loaded_params"] == data["totals"]["params_after"]


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda d: (d / "plan.json").unlink(), "plan.json does not exist"),
        (lambda d: (d / "plan.json").write_text("[1, 2"), "plan.json is not valid JSON"),
        (lambda d: (d / "plan.json").write_text('{"name": "resnet18"}'), "is not a lowrank_tool plan"),
        (
            lambda d: (d / "plan.json").write_text(
                (d / "plan.json").read_text().replace('"schema_version": 1', '"schema_version": 2')
            ),
            "schema version 2, newer than the 1",
        ),
        (lambda d: (d / "model.safetensors").unlink(), "model.safetensors does not exist"),
        (lambda d: (d / "model.safetensors").write_bytes(b"garbage"), "model.safetensors is corrupt"),
    ],
)
def test_inspect_bad_artifacts(damage, message, tmp_path, capsys, monkeypatch):
    run(["convert", "resnet18", "--input-size", "3x32x32", "-o", str(tmp_path / "m")], capsys, monkeypatch)
    damage(tmp_path / "m")
    code, _, err = run(["inspect", str(tmp_path / "m")], capsys, monkeypatch)
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("name", ["hp[/lr]/run", "exp[lr=0.1]", "ün[bold]ï"])
def test_errors_print_user_values_verbatim(name, tmp_path, capsys, monkeypatch):
    """Brackets and unicode in a path are text, not rich markup: one line, the path as given."""
    target = tmp_path / name
    code, _, err = run(["inspect", str(target)], capsys, monkeypatch)
    assert code == 2 and str(target) in err and len(err.strip().splitlines()) == 1


def test_convert_says_where_rounding_moved_ranks_well_above_the_ratio(capsys, monkeypatch):
    """A CIFAR network's 16-channel layers: rank 0.3 is ⌈4.8⌉ = 5, rounded up to 8 — half the channels."""
    code, out, _ = run_cli(["convert", "resnet20", "--rank", "0.3"], capsys, monkeypatch)
    assert code == 0
    assert (
        "note: rounding to multiples of 8 raised 13 of 18 layers well above rank 0.3 (e.g. layer1.0.conv1: 5,5 → 8,8, "
        "0.50 of its 16 input channels); --round-to 1 keeps the exact ratio" in " ".join(out.split())
    )
    code, out, _ = run_cli(["convert", "resnet20", "--rank", "0.3", "--round-to", "1"], capsys, monkeypatch)
    assert code == 0 and "rounding to multiples" not in out and "5,5" in out
