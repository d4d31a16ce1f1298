"""The converter on torchvision models and a user's own module: selection, plan, outputs."""

import pytest
import torch
import torchvision
from torch import nn

import lowrank_tool as lr
from lowrank_tool import LowRankError


@pytest.fixture(scope="module")
def resnet18():
    return torchvision.models.resnet18(num_classes=10).eval()


def test_convert_returns_new_model_and_leaves_input_untouched(resnet18):
    before = {k: v.clone() for k, v in resnet18.state_dict().items()}
    converted = lr.convert(resnet18, rank=0.3, input_size=(3, 64, 64))
    assert converted is not resnet18 and type(converted) is type(resnet18)
    assert isinstance(converted.layer1[0].conv1, lr.Tucker2Conv2d)
    assert isinstance(converted.layer2[0].downsample[0], lr.SVDConv2d)  # 1x1 -> svd
    assert isinstance(resnet18.layer1[0].conv1, nn.Conv2d)
    assert all(torch.equal(v, resnet18.state_dict()[k]) for k, v in before.items())
    assert converted(torch.randn(2, 3, 64, 64)).shape == (2, 10)


def test_plan_records_every_conv_with_reasons(resnet18):
    plan = lr.summary(lr.convert(resnet18, rank=0.3, input_size=(3, 64, 64)))
    assert len(plan.layers) == 20 and len(plan.converted_layers) == 19
    stem = plan.layer("conv1")
    assert stem.format == "dense" and "stem" in stem.reason
    entry = plan.layer("layer3.0.conv2")
    assert (entry.ranks, entry.format, entry.output_size) == ([80, 80], "tucker2", [4, 4])
    assert entry.params_after == 256 * 80 + 80 * 80 * 9 + 80 * 256
    assert entry.macs_before == 4 * 4 * 256 * 256 * 9
    assert plan.trace["path"] == "fx"
    t = plan.totals()
    assert t["params_before"] == sum(p.numel() for p in resnet18.parameters())


def test_converted_param_count_matches_plan(resnet18):
    converted = lr.convert(resnet18, rank=0.25, input_size=(3, 64, 64))
    assert lr.summary(converted).totals()["params_after"] == sum(p.numel() for p in converted.parameters())


def test_resnet50_rank_03_keeps_between_25_and_45_percent():
    plan = lr.plan("resnet50", rank=0.3)
    assert 0.25 <= plan.totals()["params_ratio"] <= 0.45


def test_layer_rank_exact_beats_regex_and_exclude_wins(resnet18):
    plan = lr.summary(
        lr.convert(
            resnet18,
            rank=0.3,
            input_size=(3, 64, 64),
            exclude=["layer1.0.conv1"],
            layer_rank=["re:layer4\\..*=0.5", "layer4.0.conv1=16", "layer3.1.conv2=dense", "conv1=0.5"],
        )
    )
    assert plan.layer("layer1.0.conv1").format == "dense" and "exclude" in plan.layer("layer1.0.conv1").reason
    assert plan.layer("layer4.0.conv1").ranks == [16, 16]
    assert plan.layer("layer4.1.conv2").ranks == [256, 256]
    assert plan.layer("layer3.1.conv2").format == "dense"
    assert plan.layer("conv1").format == "tucker2"  # an explicit rank converts the stem


def test_unmatched_patterns_are_repeated_with_a_hint(resnet18):
    with pytest.raises(
        LowRankError, match=r"'re:layer9.*', 'fc' match no convolution; list the layer names with `lowrank layers"
    ):
        lr.convert(resnet18, input_size=(3, 64, 64), exclude=["re:layer9.*", "fc"])


def test_everything_excluded_is_an_error(resnet18):
    with pytest.raises(LowRankError, match="every convertible layer is excluded"):
        lr.convert(resnet18, input_size=(3, 64, 64), exclude=["re:.*"])


def test_unprofitable_layers_stay_dense():
    model = nn.Sequential(nn.Conv2d(16, 8, 1), nn.Conv2d(8, 8, 3))
    plan = lr.plan(model, rank=0.9, input_size=(16, 8, 8))
    assert all(entry.format == "dense" and "no saving" in entry.reason for entry in plan.layers)
    assert any("nothing was converted" in n for n in plan.notes)


def test_custom_model_with_grouped_and_functional_convs(tiny):
    x = torch.randn(2, 3, 32, 32)
    converted = lr.convert(tiny, rank=0.5, input_size=(3, 32, 32))
    plan = lr.summary(converted)
    assert plan.base_model["source"] == "custom" and plan.base_model["class"].endswith("TinyNet")
    assert "grouped" in plan.layer("body.2").reason
    assert plan.layer("stem").format == "dense"
    assert [entry.name for entry in plan.converted_layers] == ["body.0", "body.4"]
    assert "no saving" in plan.layer("body.6").reason  # 64->64 1x1 at rank 32: 4096 params either way
    assert any("torch.nn.functional" in n for n in plan.notes)
    assert converted(x).shape == tiny(x).shape


def test_full_rank_decompose_reproduces_the_dense_model(resnet18):
    model = resnet18.eval()
    converted = lr.convert(
        model, rank=1.0, init="decompose", allow_growth=True, layer_rank={"conv1": 1.0}, input_size=(3, 64, 64)
    ).eval()
    assert len(lr.summary(converted).converted_layers) == 20
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        err = (converted(x) - model(x)).abs().max().item()
    assert err < 1e-4, err
    assert all(entry.error < 1e-5 for entry in lr.summary(converted).converted_layers)


def test_truncated_decompose_records_errors(resnet18):
    plan = lr.summary(lr.convert(resnet18, rank=0.3, init="decompose", input_size=(3, 64, 64)))
    errors = [entry.error for entry in plan.converted_layers]
    assert all(0 < e < 1 for e in errors)


def test_training_only_modules_are_reached_without_touching_bn_stats():
    model = torchvision.models.inception_v3(init_weights=False, aux_logits=True)
    stats = model.Mixed_5b.branch1x1.bn.running_mean.clone()
    converted = lr.convert(model, rank=0.3, input_size=(3, 299, 299))  # the aux head needs 299x299
    plan = lr.summary(converted)
    assert any(n.startswith("AuxLogits") for n in plan.trace["train_only"])
    assert plan.layer("AuxLogits.conv0.conv").format == "svd"
    assert torch.equal(model.Mixed_5b.branch1x1.bn.running_mean, stats)
    assert model.training  # restored


def test_detection_model_falls_back_to_hooks():
    model = lr.convert(
        "fasterrcnn_mobilenet_v3_large_320_fpn",
        rank=0.3,
        input_size="3x128x128",
        model_kwargs={"min_size": 128, "max_size": 128},
    ).eval()
    plan = lr.summary(model)
    assert plan.trace["path"] == "hooks" and plan.trace["fx_error"]
    assert plan.converted_layers
    out = model([torch.rand(3, 128, 128)])
    assert set(out[0]) == {"boxes", "labels", "scores"}


def test_video_model_gets_tucker2_conv3d():
    model = lr.convert("r3d_18", rank=0.3, input_size="3x4x32x32", num_classes=5).eval()
    assert isinstance(model.layer1[0].conv1[0], lr.Tucker2Conv3d)
    assert model(torch.randn(1, 3, 4, 32, 32)).shape == (1, 5)


def test_vit_reports_that_nothing_was_converted():
    plan = lr.plan("vit_b_16")
    assert not plan.converted_layers and any("nothing was converted" in n for n in plan.notes)


def test_summary_of_a_dense_model_is_an_error(resnet18):
    with pytest.raises(LowRankError, match="carries no conversion plan"):
        lr.summary(resnet18)


def test_converting_twice_is_an_error(resnet18):
    once = lr.convert(resnet18, input_size=(3, 32, 32))
    with pytest.raises(LowRankError, match="already converted"):
        lr.convert(once, input_size=(3, 32, 32))


@pytest.mark.parametrize(
    "size,message",
    [
        ("3x224", "malformed"),
        ("axbxc", "malformed"),
        ("3x0x224", "zero dimension"),
        ("3x16x16", "does not run on input size"),
    ],
)
def test_bad_input_sizes(size, message):
    model = torchvision.models.vit_b_16() if message.startswith("does not") else "resnet18"
    with pytest.raises(LowRankError, match=message):
        lr.convert(model, input_size=size)


def test_unknown_model_suggests_close_names():
    with pytest.raises(LowRankError, match="unknown model .resnet5.; did you mean .*resnet50"):
        lr.convert("resnet5")


# -- shape capture on meta tensors --------------------------------------------------------------------


def _force_real_forward(monkeypatch):
    from lowrank_tool.convert import trace

    def refuse(module):
        raise RuntimeError("meta disabled by the test")

    monkeypatch.setattr(trace, "_meta_state", refuse)


@pytest.mark.parametrize(
    "name, size", [("resnet18", "3x64x64"), ("efficientnet_b0", "3x96x96"), ("vit_b_32", "3x224x224")]
)
def test_meta_capture_gives_the_real_forwards_plan(name, size, monkeypatch):
    on_meta = lr.plan(name, rank=0.3, input_size=size)
    _force_real_forward(monkeypatch)
    real = lr.plan(name, rank=0.3, input_size=size)
    assert on_meta.trace["shapes_on_meta"] is True and real.trace["shapes_on_meta"] is False
    assert on_meta.to_dict()["layers"] == real.to_dict()["layers"]  # same shapes, MACs, ranks for every layer
    assert on_meta.totals() == real.totals()


def test_meta_capture_leaves_weights_buffers_and_mode_alone(resnet18):
    resnet18.train()
    before = {k: v.clone() for k, v in resnet18.state_dict().items()}
    plan = lr.plan(resnet18, rank=0.3, input_size=(3, 64, 64))
    assert plan.trace["shapes_on_meta"] is True
    state = resnet18.state_dict()
    assert all(v.device.type == "cpu" and torch.equal(v, state[k]) for k, v in before.items())
    assert resnet18.training
    resnet18.eval()


class _NeedsRealTensors(nn.Module):
    """fx-traceable, but reads a value (``.item()``), which meta tensors do not have."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 32, 3, stride=2, padding=1)

    def forward(self, x):
        y = self.conv1(x)
        return self.conv2(y / (1.0 + y.abs().max().item()))


def test_graph_that_needs_real_tensors_falls_back_to_a_real_forward():
    plan = lr.plan(_NeedsRealTensors(), rank=0.5, input_size=(3, 16, 16))
    assert plan.trace["path"] == "fx" and plan.trace["shapes_on_meta"] is False
    assert plan.layer("conv2").input_size == [16, 16] and plan.layer("conv2").output_size == [8, 8]
