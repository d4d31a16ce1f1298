"""LRPET and DeepTwist: the projection math on hand-made cases, and each method end to end on digits."""

import json

import pytest
import torch
from helpers import in_process

import lowrank_tool as lr
from lowrank_tool.errors import LowRankError
from lowrank_tool.layers import LowRankConv, SVDConv2d
from lowrank_tool.methods import LRPET, DeepTwist, get_method
from lowrank_tool.methods.dense_training import following_batchnorms
from lowrank_tool.methods.projection import BN_EPS_INVERSE, lower, project_svd, project_tiled
from lowrank_tool.train.config import TrainConfig


def rank_of(matrix, tol=1e-6):
    s = torch.linalg.svdvals(matrix.double())
    return int((s > tol * s[0]).sum())


# -- projection math ---------------------------------------------------------------------------------
@pytest.mark.parametrize("rank", [1, 4, 9])
def test_projection_gives_exactly_rank_r(rank):
    w = torch.randn(16, 8, 3, 3, dtype=torch.float64)
    assert rank_of(project_svd(w, rank).reshape(16, -1)) == rank
    assert rank_of(lower(project_svd(w, rank, lowering="spatial"), "spatial")) == rank


def test_energy_transfer_preserves_the_frobenius_norm():
    w = torch.randn(32, 16, 3, 3, dtype=torch.float64)
    kept = project_svd(w, 5, energy_transfer=1.0)
    assert kept.norm().item() == pytest.approx(w.norm().item(), rel=1e-10)
    plain = project_svd(w, 5, energy_transfer=0.0)
    assert plain.norm() < 0.9 * w.norm()  # truncation alone loses energy
    half = project_svd(w, 5, energy_transfer=0.5)
    assert plain.norm() < half.norm() < kept.norm()
    # the transfer only rescales: same direction as plain truncation
    assert torch.allclose(kept / kept.norm(), plain / plain.norm(), atol=1e-12)


def test_bn_rectification_matches_the_formula_on_a_hand_made_case():
    # W = I (2x2, 1x1 kernel), BN scale a = (2, 0.5): diag(a) W = diag(2, 0.5); its rank-1 truncation keeps
    # the 2 at (0, 0); mapped back with a/(a^2 + 1e-5): 2 * 2 / (4 + 1e-5) at (0, 0), zeros elsewhere.
    w = torch.eye(2, dtype=torch.float64).reshape(2, 2, 1, 1)
    a = torch.tensor([2.0, 0.5], dtype=torch.float64)
    got = project_svd(w, 1, bn_scale=a).reshape(2, 2)
    expected = torch.tensor([[2 * 2 / (4 + BN_EPS_INVERSE), 0.0], [0.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(got, expected, atol=1e-12)
    # and in general: diag(a/(a^2+eps)) @ truncate(diag(a) @ W)
    w = torch.randn(6, 4, 3, 3, dtype=torch.float64)
    a = torch.rand(6, dtype=torch.float64) + 0.2
    m = a[:, None] * w.reshape(6, -1)
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    ref = (a / (a * a + BN_EPS_INVERSE))[:, None] * ((u[:, :2] * s[:2]) @ vh[:2])
    assert torch.allclose(project_svd(w, 2, bn_scale=a).reshape(6, -1), ref, atol=1e-12)


def test_tiled_projection_bounds_each_tile():
    w = torch.randn(16, 16, 1, 1, dtype=torch.float64)
    out = project_tiled(w, 4, tiles=2).reshape(16, 16)
    for block in (out[:8, :8], out[:8, 8:], out[8:, :8], out[8:, 8:]):
        assert rank_of(block) == 2  # ceil(4 * 8 / 16)


def test_following_batchnorms_on_resnet20():
    model = lr.build_model("resnet20")
    bns = following_batchnorms(model)
    assert bns["conv1"] is model.bn1 and bns["layer2.0.conv2"] is model.layer2[0].bn2 and len(bns) == 19


# -- the methods on a model --------------------------------------------------------------------------
def test_lrpet_setup_trains_dense_and_projects_to_plan_ranks():
    model = lr.convert("resnet20", rank=0.5, format="svd", input_size="3x16x16")
    plan = lr.summary(model)
    method = LRPET()
    method.setup(model)
    assert not any(isinstance(m, LowRankConv) for m in model.modules())  # dense during training
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))  # training moves the weights off low rank
    method.after_epoch(model, 0)
    for entry in plan.converted_layers:
        w = model.get_submodule(entry.name).weight
        assert rank_of(w.reshape(w.shape[0], -1)) == entry.ranks[0]
    saved = method.deployable(model)
    assert all(isinstance(saved.get_submodule(e.name), SVDConv2d) for e in plan.converted_layers)
    x = torch.randn(2, 3, 16, 16)
    model.eval(), saved.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), saved(x), atol=1e-4)  # the decomposition of an exactly rank-r kernel is exact


def test_lrpet_refuses_tucker2_and_dense_plans():
    with pytest.raises(LowRankError, match="LRPET ends in SVD convs, but the plan has tucker2 layers; convert with"):
        LRPET().setup(lr.convert("resnet20", rank=0.5, input_size="3x16x16"))
    with pytest.raises(LowRankError, match="method 'lrpet' needs a converted model"):
        LRPET().setup(lr.convert("resnet20", dense=True, input_size="3x16x16"))


@pytest.mark.parametrize("lowering", ["format", "out", "spatial", "tiled"])
def test_deeptwist_distortion_yields_the_requested_rank(lowering):
    model = lr.convert("resnet20", rank=0.5, input_size="3x16x16")
    plan = lr.summary(model)
    method = DeepTwist(distort_every=1, lowering=lowering)
    method.setup(model)
    method.after_step(model, 0)
    assert method.distortions == 1
    entry = plan.layer("layer2.1.conv1")  # 32 -> 32, Tucker-2 ranks (16, 16)
    w = model.get_submodule(entry.name).weight.detach()
    if lowering == "format":
        r_in, r_out = entry.ranks
        assert rank_of(w.reshape(32, -1)) == r_out and rank_of(w.transpose(0, 1).reshape(32, -1)) == r_in
    elif lowering == "out":
        assert rank_of(w.reshape(32, -1)) == 16  # the plan's fraction 16/32 of min(32, 288)
    elif lowering == "spatial":
        assert rank_of(lower(w, "spatial")) == 48  # 16/32 of min(96, 96)
    else:
        assert rank_of(w.reshape(32, -1)[:16, :144]) == 8
    # the end of an epoch always projects in the plan's own form
    method.after_epoch(model, 0)
    w = model.get_submodule(entry.name).weight.detach()
    assert rank_of(w.reshape(32, -1)) == 16 and rank_of(w.transpose(0, 1).reshape(32, -1)) == 16


def test_method_options_are_validated():
    with pytest.raises(LowRankError, match="lowering 'diagonal' is not known"):
        TrainConfig(method="deeptwist", lowering="diagonal")
    with pytest.raises(LowRankError, match="distort_every 0 must be a positive integer"):
        TrainConfig(distort_every=0)
    with pytest.raises(LowRankError, match="method 'lrpt' is not known"):
        TrainConfig(method="lrpt")
    assert isinstance(get_method("deeptwist", distort_every=5), DeepTwist)


# -- end to end on digits: train, save, load, export --------------------------------------------------
METHODS = [
    ("elrt", {}, {}),
    ("dense", {"dense": True}, {}),
    ("lrpet", {"format": "svd"}, {}),
    ("deeptwist", {}, {"distort_every": 10}),
]


@pytest.mark.parametrize("method,convert_kwargs,options", METHODS, ids=[m[0] for m in METHODS])
def test_each_method_trains_on_digits_and_exports(method, convert_kwargs, options, tmp_path):
    from lowrank_tool.train.run import train_artifact

    directory = tmp_path / method
    torch.manual_seed(0)
    kwargs = {"rank": 0.5} | convert_kwargs if "dense" not in convert_kwargs else convert_kwargs
    lr.save(lr.convert("resnet20", num_classes=10, input_size="3x16x16", **kwargs), directory)
    cfg = TrainConfig(data="digits", epochs=2, batch_size=64, lr=0.05, image_size=16, method=method, **options)
    result, summary = train_artifact(directory, cfg, progress=False)
    assert summary["last_top1"] > 30, summary  # it learned (10 classes: chance is 10%)
    model = lr.load(directory)
    plan = lr.summary(model)
    for entry in plan.converted_layers:  # the saved weights have exactly the plan's structure and ranks
        layer = model.get_submodule(entry.name)
        assert isinstance(layer, LowRankConv) and list(layer.ranks) == entry.ranks
        if method == "lrpet":
            w = layer.dense_weight().detach()
            assert rank_of(w.reshape(w.shape[0], -1)) == entry.ranks[0]
    exported = lr.export_onnx(model, tmp_path / "m.onnx")
    assert exported.verification.max_rel < 1e-4
    metrics = [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2
    # the accuracy recorded for the last epoch is the saved (low-rank) model's
    from lowrank_tool.data import build_loaders

    _, val, _ = build_loaders("digits", batch_size=256, image_size=16, augment=False)
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in val:
            correct += (model(x).argmax(1) == y).sum().item()
            total += len(y)
    assert 100 * correct / total == pytest.approx(metrics[-1]["val_top1"], abs=0.3)


def test_cli_trains_lrpet_and_deeptwist(tmp_path, capsys, monkeypatch):
    lowrank = in_process(capsys, monkeypatch)
    d = tmp_path / "lp"
    lowrank(
        "convert",
        "resnet20",
        "--rank",
        "0.5",
        "--format",
        "svd",
        "--num-classes",
        "10",
        "--input-size",
        "3x16x16",
        "-o",
        d,
        check=True,
    )
    res = lowrank(
        "train",
        d,
        "--data",
        "digits",
        "--image-size",
        "16",
        "--epochs",
        "1",
        "--method",
        "lrpet",
        "--project-every",
        "5",
        "--energy-transfer",
        "0.5",
        "--no-bn-rectify",
        "--json",
        "-q",
    )
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["method"] == "lrpet"
    state = torch.load(d / "train_state.pt", weights_only=True)
    assert (
        state["method"]["project_every"] == 5
        and state["method"]["energy_transfer"] == 0.5
        and not state["method"]["bn_rectify"]
    )
    res = lowrank("train", d, "--method", "deeptwist", "--lowering", "diagonal", "--force")
    assert res.returncode == 2 and "diagonal" in res.stderr and "Traceback" not in res.stderr
