"""Rank analysis: the spectrum math on hand-made matrices, analyze() on converted and dense models, `lowrank analyze`."""

import json
import math
import os

import pytest
import torch
from helpers import run_cli

import lowrank_tool as lr
from lowrank_tool import LowRankError
from lowrank_tool.analysis.spectrum import (
    LayerSpectrum,
    analyze,
    effective_rank,
    energy_kept,
    orthogonality_error,
    rank_for_energy,
    singular_values,
    stable_rank,
    unfold,
)
from lowrank_tool.convert.rank import RankSpec, ranks_for
from lowrank_tool.layers.base import ConvGeometry

EXACT = 1e-9  # float64 math on exact inputs


run = run_cli  # (argv, capsys, monkeypatch) -> (code, out, err)


def rank_r(rows: int, cols: int, r: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(rows, r, generator=gen, dtype=torch.float64) @ torch.randn(
        r, cols, generator=gen, dtype=torch.float64
    )


def orthonormal(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(rows, cols, generator=gen, dtype=torch.float64)).Q


# -- the math ------------------------------------------------------------------------------------------------
def test_unfold_shapes_and_layout():
    w = torch.randn(8, 4, 3, 3)
    assert unfold(w, "out").shape == (8, 36) and unfold(w, "in").shape == (4, 72)
    assert torch.equal(unfold(w, "in")[2], w[:, 2].reshape(-1))  # row i of the in-unfolding is input channel i
    assert torch.equal(unfold(w, "out")[5], w[5].reshape(-1))
    w3 = torch.randn(8, 4, 3, 3, 3)
    assert unfold(w3, "out").shape == (8, 108) and unfold(w3, "in").shape == (4, 216)
    with pytest.raises(LowRankError, match="mode 'rows' is not known; allowed: out, in"):
        unfold(w, "rows")


def test_diagonal_spectrum_by_hand():
    w = torch.diag(torch.tensor([4.0, 2.0, 2.0, 0.0])).reshape(4, 4, 1, 1)
    s = singular_values(w)
    assert s.dtype == torch.float64 and torch.allclose(
        s, torch.tensor([4.0, 2.0, 2.0, 0.0], dtype=torch.float64), atol=EXACT
    )
    # p = (1/2, 1/4, 1/4): entropy 1.5 ln 2, erank 2^1.5; the zero is ignored
    assert abs(effective_rank(s) - 2**1.5) < EXACT
    assert abs(stable_rank(s) - 24 / 16) < EXACT
    assert abs(energy_kept(s, 1) - 16 / 24) < EXACT and abs(energy_kept(s, 2) - 20 / 24) < EXACT
    assert energy_kept(s, 4) == 1.0 and energy_kept(s, 10) == 1.0 and energy_kept(s, 0) == 0.0
    assert (
        rank_for_energy(s, 0.6) == 1
        and rank_for_energy(s, 0.8) == 2
        and rank_for_energy(s, 0.9) == 3
        and rank_for_energy(s, 1.0) == 3
    )


def test_identity_has_full_effective_and_stable_rank():
    for n in (1, 5, 32):
        s = singular_values(torch.eye(n).reshape(n, n, 1, 1))
        assert abs(effective_rank(s) - n) < EXACT and abs(stable_rank(s) - n) < EXACT
        assert energy_kept(s, n) == 1.0


@pytest.mark.parametrize("r", [1, 3, 7])
def test_random_rank_r_matrix(r):
    w = rank_r(20, 45, r, seed=r).reshape(20, 5, 3, 3)
    s = singular_values(w, "out")
    assert int((s > 1e-10 * s[0]).sum()) == r  # exactly r non-zeros
    assert rank_for_energy(s, 0.999999) == r
    assert abs(energy_kept(s, r) - 1.0) < EXACT and energy_kept(s, r - 1) < 0.999999
    assert effective_rank(s) <= r + EXACT and stable_rank(s) <= r + EXACT


def test_equal_singular_values_give_effective_rank_exactly_r():
    r = 6
    w = orthonormal(24, r, seed=1) @ orthonormal(30, r, seed=2).T  # r singular values, all 1
    s = singular_values(w.reshape(24, 30, 1, 1))
    assert abs(effective_rank(s) - r) < EXACT and abs(stable_rank(s) - r) < EXACT


def test_all_zero_and_bad_arguments():
    zero = singular_values(torch.zeros(4, 3, 3, 3))
    assert effective_rank(zero) == 0.0 and stable_rank(zero) == 0.0
    assert energy_kept(zero, 2) == 1.0 and rank_for_energy(zero, 0.9) == 1
    for bad in (0, 0.0, 1.5, -0.1):
        with pytest.raises(LowRankError, match="is not a fraction in \\(0, 1\\]"):
            rank_for_energy([1.0, 0.5], bad)
    with pytest.raises(LowRankError, match="not a non-negative integer"):
        energy_kept([1.0], -1)


def test_orthogonality_error():
    q = orthonormal(10, 4, seed=3)
    assert orthogonality_error(q) < 1e-12
    assert abs(orthogonality_error(2 * q) - 6.0) < EXACT  # ‖4I − I‖_F = 3·√4
    assert abs(orthogonality_error(torch.ones(3, 1)) - 2.0) < EXACT  # uᵀu = 3
    with pytest.raises(LowRankError, match="2-D"):
        orthogonality_error(torch.ones(3))


def test_layer_spectrum_to_dict_leaves_spectra_out_unless_asked():
    s = LayerSpectrum.from_weight("conv", torch.randn(16, 8, 3, 3), rank=0.5)
    assert s.ranks == [4, 8] and s.format == "dense" and "tucker2" in s.note  # ⌈0.5·8⌉, ⌈0.5·16⌉
    data = s.to_dict()
    assert "singular_values_out" not in data and data["full_rank_out"] == 16 and data["full_rank_in"] == 8
    full = s.to_dict(spectra=True)
    assert len(full["singular_values_out"]) == 16 and len(full["singular_values_in"]) == 8
    json.dumps(full)


# -- models --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def r20():
    torch.manual_seed(0)
    return lr.convert("resnet20", rank=0.5, input_size="3x32x32")


def test_converted_tucker2_layers(r20):
    plan = lr.summary(r20)
    spectra = {s.name: s for s in analyze(r20)}
    assert list(spectra) == [layer.name for layer in plan.layers]
    for layer in plan.converted_layers:
        s = spectra[layer.name]
        assert s.format == "tucker2" and s.ranks == layer.ranks
        r_in, r_out = layer.ranks
        # the merged kernel has exactly these ranks: everything is kept
        assert abs(s.energy_out - 1.0) < 1e-6 and abs(s.energy_in - 1.0) < 1e-6
        assert s.effective_rank_out <= r_out * (1 + 1e-3) and s.effective_rank_in <= r_in * (1 + 1e-3)
        assert s.orth_error < 1e-5  # orthonormal factors at init
    stem = spectra["conv1"]
    assert stem.format == "dense" and stem.ranks is None and stem.energy_out is None and stem.orth_error is None
    assert "stem" in stem.note


def test_svd_layers_and_grouped_convs(tiny):
    model = lr.convert(tiny, rank=0.25, input_size="3x16x16")
    spectra = {s.name: s for s in analyze(model)}
    assert "body.2" not in spectra  # groups=4: not analysed
    pointwise = spectra["body.6"]
    assert pointwise.format == "svd" and len(pointwise.ranks) == 1 and pointwise.energy_in is None
    assert abs(pointwise.energy_out - 1.0) < 1e-6 and pointwise.orth_error < 1e-5
    assert not any(name.startswith("body.6.") for name in spectra)  # inner convs are not listed


def test_dense_model_with_rank():
    model = lr.build_model("resnet20")
    spectra = analyze(model, rank=0.3)
    assert len(spectra) == 19
    for s in spectra:
        g = ConvGeometry(s.in_channels, s.out_channels, s.kernel, (1, 1), (0, 0), (1, 1))
        assert s.ranks == list(ranks_for("tucker2", g, RankSpec.parse(0.3)))
        assert 0 < s.energy_out < 0.99 and 0 < s.energy_in < 0.99  # random weights spread their energy
    weight = model.layer3[0].conv2.weight
    assert LayerSpectrum.from_weight("c", weight, rank=16).ranks == [16, 16]
    assert LayerSpectrum.from_weight("c", weight[:, :, :1, :1], rank=16).ranks == [16]  # 1x1: one SVD rank
    assert LayerSpectrum.from_weight("c", weight).ranks is None
    with pytest.raises(LowRankError, match="rank 1.5 is a fraction above 1"):
        analyze(model, rank=1.5)


# -- the command ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def r20_dir(r20, tmp_path_factory):
    return lr.save(r20, tmp_path_factory.mktemp("analyze") / "r20")


def test_cli_model_name_json(capsys, monkeypatch):
    code, out, err = run(["analyze", "resnet20", "--json"], capsys, monkeypatch)
    assert code == 0, err
    data = json.loads(out)
    assert len(data) == 19 and data[1]["name"] == "layer1.0.conv1" and data[1]["ranks"] is None
    assert 0 < data[1]["effective_rank_out"] <= 16 and "singular_values_out" not in data[1]


def test_cli_model_name_with_rank_uses_the_converters_plan(capsys, monkeypatch):
    code, out, err = run(
        ["analyze", "resnet20", "--rank", "0.3", "--input-size", "3x32x32", "--json"], capsys, monkeypatch
    )
    assert code == 0, err
    data = {d["name"]: d for d in json.loads(out)}
    assert data["conv1"]["ranks"] is None and "stem" in data["conv1"]["note"]  # the converter keeps the stem dense
    assert data["layer3.0.conv2"]["ranks"] == [24, 24] and data["layer3.0.conv2"]["energy_out"] < 0.99


def test_cli_artifact_table_and_plot(r20_dir, tmp_path, capsys, monkeypatch):
    png = tmp_path / "out.png"
    code, out, err = run(["analyze", str(r20_dir), "--plot", str(png)], capsys, monkeypatch)
    assert code == 0, err
    assert "layer3.2.conv2" in out and "tucker2" in out and "32,32" in out and "1.000/1.000" in out
    assert "19 convs (18 low-rank)" in out and "orth err max" in out and "erank = exp" in out
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]  # no temporary left behind


def test_cli_onnx_file(r20, tmp_path, capsys, monkeypatch):
    lr.export_onnx(r20, tmp_path / "r20.onnx", verify=False)
    code, out, err = run(["analyze", str(tmp_path / "r20.onnx"), "--json"], capsys, monkeypatch)
    assert code == 0, err
    data = {d["name"]: d for d in json.loads(out)}
    assert len(data) == 1 + 3 * 18  # the stem, then in_proj/core/out_proj per Tucker-2 layer
    core = data["layer2.0.conv1.core"]
    assert core["format"] == "dense" and "factor conv of layer2.0.conv1 (tucker2 8,16)" in core["note"]
    assert core["in_channels"] == 8 and core["out_channels"] == 16 and core["ranks"] is None
    assert "stem" in data["conv1"]["note"]
    code, out, _ = run(["analyze", str(tmp_path / "r20.onnx")], capsys, monkeypatch)
    assert code == 0 and "batch norm folded" in out and "54 Conv nodes are factors" in out


def test_cli_merged_onnx_keeps_the_ranks(r20, tmp_path, capsys, monkeypatch):
    lr.export_onnx(r20, tmp_path / "m.onnx", verify=False, merge="all")
    code, out, err = run(["analyze", str(tmp_path / "m.onnx"), "--json"], capsys, monkeypatch)
    assert code == 0, err
    data = {d["name"]: d for d in json.loads(out)}
    merged = data["layer3.1.conv1"]
    # folding batch norm scales output channels: the Tucker-2 ranks, and so the energy kept, are unchanged
    assert merged["format"] == "tucker2" and merged["ranks"] == [32, 32]
    assert abs(merged["energy_out"] - 1.0) < 1e-6 and abs(merged["energy_in"] - 1.0) < 1e-6


BAD = [
    (["analyze", "{tmp}/nope"], "is not a directory; point to a directory written by `lowrank convert -o DIR`"),
    (["analyze", "resnet5"], "unknown model 'resnet5'"),
    (["analyze", "{tmp}/nope.onnx"], "does not exist; point to an .onnx file"),
    (
        ["analyze", "resnet20", "--plot", "{tmp}/missing/out.png"],
        "directory {tmp}/missing does not exist; create it first",
    ),
    (["analyze", "resnet20", "--plot", "{tmp}/afile/out.png"], "{tmp}/afile is not a directory"),
    (["analyze", "resnet20", "--plot", "{tmp}/out.jpeg"], "use one of .png, .svg, .pdf"),
    (["analyze", "resnet20", "--rank", "1.5"], "--rank 1.5 is a fraction above 1"),
    (["analyze", "resnet20", "--input-size", "3x32x32"], "--input-size only sets where the converter's plan is traced"),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[" ".join(a[1:]).replace("{tmp}/", "") for a, _ in BAD])
def test_cli_bad_input_one_line_exit_2_nothing_written(argv, message, tmp_path, capsys, monkeypatch):
    (tmp_path / "afile").write_text("not a directory")
    before = sorted(tmp_path.rglob("*"))
    code, out, err = run([a.format(tmp=tmp_path) for a in argv], capsys, monkeypatch)
    assert code == 2, err
    assert message.format(tmp=tmp_path) in err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err and out == ""
    assert sorted(tmp_path.rglob("*")) == before


def test_cli_read_only_plot_directory(tmp_path, capsys, monkeypatch):
    # root writes into read-only directories anyway: make the permission check see one
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    code, out, err = run(["analyze", "resnet20", "--plot", str(tmp_path / "out.png")], capsys, monkeypatch)
    assert code == 2 and f"directory {tmp_path} is not writable; choose another path" in err and err.count("\n") == 1
    assert out == "" and list(tmp_path.iterdir()) == []


def test_effective_rank_matches_the_survey_definition():
    """erank = exp(H(p)) with p = σ/‖σ‖₁ (Ou et al. 2023), checked against a direct computation."""
    s = torch.tensor([5.0, 3.0, 1.0, 0.5, 0.0], dtype=torch.float64)
    p = [v / 9.5 for v in (5.0, 3.0, 1.0, 0.5)]
    assert abs(effective_rank(s) - math.exp(-sum(q * math.log(q) for q in p))) < EXACT


def test_energy_and_erank_requests_give_ranks_from_the_spectrum():
    from lowrank_tool.analysis.spectrum import LayerSpectrum

    w = torch.randn(32, 16, 3, 3)
    s = LayerSpectrum.from_weight("conv", w, rank="energy:0.9")
    assert s.energy_out >= 0.9 and s.energy_in >= 0.9 and s.note == "rank energy:0.9 as tucker2"
    r_in, r_out = s.ranks
    assert r_out == rank_for_energy(singular_values(w, "out"), 0.9) and r_in == rank_for_energy(
        singular_values(w, "in"), 0.9
    )
    e = LayerSpectrum.from_weight("conv", w, rank="erank")
    assert e.ranks[1] == math.ceil(effective_rank(singular_values(w, "out")))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_kernel_has_no_spectrum_one_line(bad):
    weight = torch.randn(8, 4, 3, 3)
    weight[1, 2, 0, 0] = bad
    with pytest.raises(lr.LowRankError, match=r"the weights of 'layer1.conv' hold 1 NaN/inf value\(s\)") as err:
        LayerSpectrum.from_weight("layer1.conv", weight, rank=0.5)
    assert "\n" not in str(err.value)
