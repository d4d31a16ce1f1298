"""Decomposing trained weights: weight files, energy / effective-rank rules, exactness at full rank, errors."""

import json

import pytest
import torch
from helpers import in_process
from safetensors.torch import save_file

import lowrank_tool as lr
from lowrank_tool.convert.rank import RankSpec
from lowrank_tool.errors import LowRankError


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A resnet20 with non-trivial weights saved three ways: .pth (DDP prefix, nested), .safetensors."""
    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(1)
    model = lr.build_model("resnet20", num_classes=10).eval()
    with torch.no_grad():  # running statistics that are not the identity, like a trained model's
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, root / "r20.pth")
    save_file(model.state_dict(), str(root / "r20.safetensors"))
    return model, root


@pytest.mark.parametrize("name", ["r20.pth", "r20.safetensors"])
def test_full_rank_decomposition_matches_the_dense_model(trained, name):
    model, root = trained
    full = lr.convert(
        "resnet20",
        num_classes=10,
        rank=1.0,
        allow_growth=True,
        weights=root / name,
        init="decompose",
        input_size="3x32x32",
    ).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref, got = model(x), full(x)
    assert (got - ref).abs().max() / ref.abs().max() < 1e-4
    plan = lr.summary(full)
    assert len(plan.converted_layers) == 18 and all(e.error < 1e-5 for e in plan.converted_layers)
    assert plan.base_model["weights"].endswith(name)


def test_energy_rule_finds_an_exactly_low_rank_kernel():
    model = lr.build_model("resnet20", num_classes=10)
    conv = model.layer3[0].conv2  # 64 -> 64, 3x3
    with torch.no_grad():
        a, b = torch.randn(64, 5), torch.randn(5, 64 * 9)
        conv.weight.copy_((a @ b).reshape(64, 64, 3, 3))  # rank 5 in the C_out x C_in*k unfolding
    plan = lr.plan(model, rank="energy:0.999999", format="svd", input_size="3x32x32", round_to=1)
    assert plan.layer("layer3.0.conv2").ranks == [5] and plan.layer("layer3.0.conv2").rank_spec == "energy:0.999999"
    converted = lr.convert(
        model, rank="energy:0.999999", format="svd", init="decompose", input_size="3x32x32", round_to=1
    )
    assert lr.summary(converted).layer("layer3.0.conv2").error < 1e-5


def test_erank_rule_on_equal_singular_values():
    model = lr.build_model("resnet20", num_classes=10)
    conv = model.layer3[0].conv2
    with torch.no_grad():
        q = torch.linalg.qr(torch.randn(64 * 9, 64))[0][:, :7]  # 7 orthonormal columns
        u = torch.linalg.qr(torch.randn(64, 64))[0][:, :7]
        conv.weight.copy_((u @ q.T).reshape(64, 64, 3, 3))  # 7 equal singular values: erank exactly 7
    plan = lr.plan(model, rank="erank", format="svd", input_size="3x32x32", round_to=1)
    assert plan.layer("layer3.0.conv2").ranks == [7]


def test_rank_spec_parsing():
    assert RankSpec.parse("energy:0.9") == RankSpec("energy", 0.9) and str(RankSpec.parse("energy:0.9")) == "energy:0.9"
    assert RankSpec.parse("erank").kind == "erank"
    for bad in ("energy:1.5", "energy:x", "energy:0"):
        with pytest.raises(LowRankError, match="the energy must be a fraction in \\(0, 1\\]"):
            RankSpec.parse(bad)


def test_weight_file_errors(trained, tmp_path):
    _, root = trained
    with pytest.raises(LowRankError, match="do not exist"):
        lr.convert("resnet20", weights=tmp_path / "none.pth", init="decompose")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")  # a pickled module, not a state dict
    with pytest.raises(LowRankError, match="cannot be read as a weights-only PyTorch checkpoint"):
        lr.convert("resnet20", weights=tmp_path / "module.pt", init="decompose")
    with pytest.raises(LowRankError, match="do not fit the model|do not match the model"):
        lr.convert("resnet32", weights=root / "r20.safetensors", init="decompose")
    with pytest.raises(LowRankError, match="do not fit the model"):
        lr.convert("resnet20", num_classes=100, weights=root / "r20.safetensors", init="decompose")
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(LowRankError, match="is not a readable safetensors file"):
        lr.convert("resnet20", weights=tmp_path / "bad.safetensors", init="decompose")


def test_cli_decompose_a_trained_dense_artifact_then_fine_tune(tmp_path, capsys, monkeypatch):
    lowrank = in_process(capsys, monkeypatch)
    dense = tmp_path / "dense"
    assert (
        lowrank(
            "convert", "resnet20", "--dense", "--num-classes", "10", "--input-size", "3x16x16", "-o", str(dense)
        ).returncode
        == 0
    )
    res = lowrank(
        "train",
        str(dense),
        "--method",
        "dense",
        "--data",
        "digits",
        "--image-size",
        "16",
        "--epochs",
        "2",
        "--lr",
        "0.05",
        "-q",
    )
    assert res.returncode == 0, res.stderr
    out = tmp_path / "dec"
    res = lowrank(
        "convert",
        "resnet20",
        "--num-classes",
        "10",
        "--input-size",
        "3x16x16",
        "--weights",
        str(dense),
        "--init",
        "decompose",
        "--energy",
        "0.7",
        "-o",
        str(out),
        "--json",
    )
    assert res.returncode == 0, res.stderr
    plan = json.loads(res.stdout)
    layers = [layer for layer in plan["layers"] if layer["format"] != "dense"]
    assert layers and all(layer["rank_spec"] == "energy:0.7" and 0 < layer["error"] < 0.75 for layer in layers)
    res = lowrank(
        "train", str(out), "--data", "digits", "--image-size", "16", "--epochs", "2", "--lr", "0.05", "--json", "-q"
    )
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1])["last_top1"] > 50
    # a low-rank artifact is not a source of dense weights
    res = lowrank(
        "convert", "resnet20", "--num-classes", "10", "--weights", str(out), "--init", "decompose", "--rank", "0.5"
    )
    assert res.returncode == 2 and "holds a low-rank model" in res.stderr


@pytest.mark.parametrize(
    "argv,message",
    [
        (
            ["convert", "resnet20", "--weights", "x.pth"],
            "--weights are only used to decompose trained weights; add --init decompose",
        ),
        (["convert", "resnet20", "--energy", "0.9", "--rank", "0.5"], "--energy and --rank exclude each other"),
        (
            ["convert", "resnet20", "--energy", "0.9"],
            "is computed from trained weights; add --weights FILE --init decompose",
        ),
        (
            ["convert", "resnet20", "--rank", "energy:2", "--init", "decompose"],
            "the energy must be a fraction in (0, 1]",
        ),
    ],
)
def test_cli_decompose_errors(argv, message, capsys, monkeypatch):
    res = in_process(capsys, monkeypatch)(*argv)
    assert res.returncode == 2 and message in res.stderr and len(res.stderr.strip().splitlines()) == 1
