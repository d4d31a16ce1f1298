"""What a rank means, format choice, and the budget solver."""

import math

import pytest
from torch import nn

import lowrank_tool as lr
from lowrank_tool import LowRankError
from lowrank_tool.convert.rank import RankSpec, choose_format, ranks_for
from lowrank_tool.layers.base import ConvGeometry


def geom(cin, cout, k=3):
    return ConvGeometry.of(nn.Conv2d(cin, cout, k))


@pytest.mark.parametrize(
    "value,kind,number",
    [
        (0.3, "ratio", 0.3),
        ("0.3", "ratio", 0.3),
        (1.0, "ratio", 1.0),
        (16, "absolute", 16),
        ("16", "absolute", 16),
        ("dense", "dense", 0),
    ],
)
def test_rank_parsing(value, kind, number):
    spec = RankSpec.parse(value)
    assert (spec.kind, spec.value) == (kind, number)


@pytest.mark.parametrize(
    "value,message",
    [
        (0, "not positive"),
        (-0.5, "not positive"),
        (1.5, "fraction above 1"),
        ("abc", "not a number"),
        (float("nan"), "not a finite number"),
    ],
)
def test_bad_ranks(value, message):
    with pytest.raises(LowRankError, match=message):
        RankSpec.parse(value)


def test_ratio_keeps_ceil_of_channels_per_mode():
    g = geom(64, 128)
    assert ranks_for("tucker2", g, RankSpec.parse(0.3)) == (math.ceil(0.3 * 64), math.ceil(0.3 * 128)) == (20, 39)
    assert ranks_for("svd", geom(256, 64, 1), RankSpec.parse(0.3)) == (20,)  # min(C_out, C_in) = 64
    assert ranks_for("cp", g, RankSpec.parse(0.5)) == (32,)


def test_absolute_rank_is_capped_and_rounded():
    g = geom(24, 100)
    assert ranks_for("tucker2", g, RankSpec.parse(32)) == (24, 32)
    assert ranks_for("tucker2", g, RankSpec.parse(0.3), round_to=8) == (8, 32)
    assert ranks_for("tucker2", geom(20, 20), RankSpec.parse(17), round_to=8) == (20, 20)  # capped at C


def test_pointwise_convs_use_svd():
    assert choose_format("tucker2", geom(64, 64, 1))[0] == "svd"
    assert choose_format("auto", geom(64, 64, 3)) == ("tucker2", None)
    assert choose_format("cp", geom(64, 64, 3)) == ("cp", None)
    assert choose_format("cp", ConvGeometry.of(nn.Conv3d(8, 8, 3)))[0] == "tucker2"


@pytest.mark.parametrize("budget", ["target_params", "target_macs"])
@pytest.mark.parametrize("fraction", [0.25, 0.4, 0.6])
def test_budget_met_within_2_percent_on_resnet50(budget, fraction):
    key = "params_ratio" if budget == "target_params" else "macs_ratio"
    plan = lr.plan("resnet50", round_to=1, **{budget: fraction})  # exact ranks: the solver's own precision
    got = plan.totals()[key]
    assert abs(got - fraction) <= 0.02 * fraction, got
    assert any("solved ratio" in n for n in plan.notes)
    # with the default rounding to multiples of 8 the steps are coarser: within 5%
    rounded = lr.plan("resnet50", **{budget: fraction}).totals()[key]
    assert abs(rounded - fraction) <= 0.05 * fraction, rounded


def test_budget_respects_pinned_layers():
    plan = lr.plan("resnet18", target_macs=0.5, layer_rank={"layer4.1.conv2": 8}, input_size="3x64x64")
    assert plan.layer("layer4.1.conv2").ranks == [8, 8]
    assert abs(plan.totals()["macs_ratio"] - 0.5) <= 0.01


def test_unreachable_budget_says_what_is_reachable():
    with pytest.raises(LowRankError, match=r"cannot be met: with rank 1 everywhere the model keeps 0\.\d+"):
        lr.plan("resnet18", target_params=0.01, input_size="3x64x64")


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(rank=0.3, target_macs=0.4), "either rank or target_macs"),
        (dict(target_macs=0.4, target_params=0.4), "at most one"),
        (dict(target_macs=1.5), r"fraction in \(0, 1\)"),
        (dict(round_to=0), "round_to 0"),
        (dict(format="tt"), "unknown format 'tt'"),
    ],
)
def test_bad_options(kwargs, message):
    with pytest.raises(LowRankError, match=message):
        lr.plan("resnet18", input_size="3x32x32", **kwargs)
