"""Convert only what the toolkit understands: the conv-class registry, stems, and the post-convert run."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import lowrank_tool as lr
from lowrank_tool.convert import conv_support
from lowrank_tool.errors import LowRankError
from lowrank_tool.layers import LowRankConv


class SubclassNoOverride(nn.Conv2d):
    """Adds an attribute only: its forward is torch's, so it converts."""

    tag = "mine"


class CustomForward(nn.Conv2d):
    """Doubles its output: a forward the toolkit does not know."""

    def forward(self, x):
        return 2 * super().forward(x)


class Net(nn.Module):
    def __init__(self, conv_cls=nn.Conv2d) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.a = conv_cls(32, 64, 3, padding=1)
        self.b = nn.Conv2d(64, 64, 3, padding=1)
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        return self.head(self.b(torch.relu(self.a(torch.relu(self.stem(x))))).mean((2, 3)))


def _rel(a, b):
    return float((a - b).abs().max() / a.abs().max())


def test_exact_and_plain_subclass_convert():
    assert not isinstance(conv_support(nn.Conv2d(8, 8, 3)), str)
    converted = lr.convert(Net(SubclassNoOverride), rank=0.5, input_size=(3, 16, 16))
    assert isinstance(converted.a, LowRankConv)
    entry = lr.summary(converted).layer("a")
    assert entry.conv_class == f"{__name__}.SubclassNoOverride"


def test_custom_forward_stays_dense_with_reason_and_model_keeps_its_meaning():
    model = Net(CustomForward).eval()
    converted = lr.convert(
        model, rank=1.0, round_to=1, allow_growth=True, init="decompose", input_size=(3, 16, 16)
    ).eval()
    assert type(converted.a) is CustomForward
    reason = lr.summary(converted).layer("a").reason
    assert "CustomForward overrides forward" in reason and "register_conv_handler" in reason
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert _rel(model(x), converted(x)) <= 1e-4


def test_registered_handler_teaches_a_class():
    class Logged(nn.Conv2d):
        def forward(self, x):
            return super().forward(x)

    lr.register_conv_handler(Logged, lr.plain_conv)
    converted = lr.convert(Net(Logged), rank=0.5, input_size=(3, 16, 16))
    assert isinstance(converted.a, LowRankConv)
    with pytest.raises(LowRankError, match="already has a handler"):
        lr.register_conv_handler(Logged, lr.plain_conv)
    lr.register_conv_handler(Logged, lambda m: "kept dense by the user", replace=True)
    plan = lr.plan(Net(Logged), rank=0.5, input_size=(3, 16, 16))
    assert plan.layer("a").reason == "kept dense by the user"


def test_bad_registrations_and_handlers_are_clear_errors():
    with pytest.raises(LowRankError, match="subclass of nn.Conv2d"):
        lr.register_conv_handler(nn.Linear, lr.plain_conv)

    class Odd(nn.Conv2d):
        def forward(self, x):
            return super().forward(x)

    lr.register_conv_handler(Odd, lambda m: 42)
    with pytest.raises(LowRankError, match="returned int"):
        lr.plan(Net(Odd), rank=0.5, input_size=(3, 16, 16))


def test_parametrized_and_hooked_convs_stay_dense():
    class Scale(nn.Module):
        def forward(self, w):
            return 0.5 * w

    model = Net()
    parametrize.register_parametrization(model.a, "weight", Scale())
    model.b.register_forward_hook(lambda m, i, o: o * 2)
    plan = lr.plan(model, rank=0.5, input_size=(3, 16, 16))
    assert "parametrize" in plan.layer("a").reason
    assert "forward hooks" in plan.layer("b").reason


def test_standardised_conv_in_a_plan_file_cannot_be_converted(tmp_path):
    """A plan read from a file cannot make the toolkit swap a conv it does not understand."""
    pytest.importorskip("timm")
    from timm.layers import StdConv2d

    class WS(Net):
        def __init__(self):
            super().__init__(StdConv2d)

    saved = lr.convert(Net(), rank=0.5, input_size=(3, 16, 16))
    lr.save(saved, tmp_path / "art")
    with pytest.raises(LowRankError, match="stays dense here .*weight-standardised"):
        lr.load(tmp_path / "art", model=WS())


def test_dynamic_same_flag_must_match_between_plan_and_model(tmp_path):
    timm = pytest.importorskip("timm")
    same = lr.convert(Net(timm.layers.Conv2dSame), rank=0.5, input_size=(3, 16, 16))
    assert lr.summary(same).layer("a").dynamic_same
    assert "Conv2dSame: dynamic 'same' padding kept" in lr.summary(same).layer("a").reason
    lr.save(same, tmp_path / "art")
    data = json.loads((tmp_path / "art" / "plan.json").read_text())
    assert next(e for e in data["layers"] if e["name"] == "a")["dynamic_same"] is True
    with pytest.raises(LowRankError, match="dynamic 'same' padding"):
        lr.load(tmp_path / "art", model=Net())
    loaded = lr.load(tmp_path / "art", model=Net(timm.layers.Conv2dSame)).eval()
    x = torch.randn(1, 3, 17, 15)  # odd sizes: asymmetric padding
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), same.eval()(x))


@pytest.mark.parametrize(
    "source, se", [("efficientnet_b0", "features.2.0.block.2.fc2"), ("timm", "blocks.1.0.se.conv_expand")]
)
def test_se_conv_with_four_inputs_is_not_called_a_stem(source, se):
    if source == "timm":
        timm = pytest.importorskip("timm")
        source = timm.create_model("efficientnet_b0")
    plan = lr.plan(source, rank=0.3, input_size=(3, 64, 64))
    assert plan.layer(se).in_channels == 4
    assert not (plan.layer(se).reason or "").startswith("stem")
    stems = [layer.name for layer in plan.layers if (layer.reason or "").startswith("stem")]
    assert len(stems) == 1 and plan.layer(stems[0]).in_channels == 3


def test_grey_and_custom_example_inputs_find_the_stem():
    class Grey(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(1, 32, 3, padding=1)
            self.body = nn.Conv2d(32, 32, 3, padding=1)

        def forward(self, x):
            return self.body(self.stem(x))

    plan = lr.plan(Grey(), rank=0.5, example_input=torch.randn(1, 1, 20, 24))
    assert plan.layer("stem").reason.startswith("stem") and plan.layer("body").converted


def test_a_converted_model_that_cannot_run_is_an_error_naming_the_layer():
    class Picky(Net):
        def forward(self, x):
            assert isinstance(self.b, nn.Conv2d), "b must be a Conv2d"
            return super().forward(x)

    with pytest.raises(LowRankError, match=r"fails at 'Picky'.*AssertionError: b must be a Conv2d.*--exclude") as info:
        lr.convert(Picky(), rank=0.5, input_size=(3, 16, 16))
    assert "\n" not in str(info.value)
    converted = lr.convert(Picky(), rank=0.5, input_size=(3, 16, 16), exclude=["b"])
    assert isinstance(converted.a, LowRankConv)


def test_meta_device_model_converts_and_decompose_says_why_not():
    with torch.device("meta"):
        model = Net()
    converted = lr.convert(model, rank=0.5, input_size=(3, 16, 16))
    assert isinstance(converted.a, LowRankConv) and converted.a.core.weight.is_meta
    assert any("meta device" in n for n in lr.summary(converted).notes)
    converted.to_empty(device="cpu")
    for m in converted.modules():
        if isinstance(m, LowRankConv):
            m.reset_parameters()
    assert torch.isfinite(converted.a.weight).all() and converted.a.weight.abs().sum() > 0
    with pytest.raises(LowRankError, match="meta"):
        lr.convert(model, rank=0.5, input_size=(3, 16, 16), init="decompose")


def test_a_failure_in_the_models_own_forward_points_to_lowrank_layers():
    class Deep(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 32, 3, padding=1)
            self.blocks = nn.Sequential(*[nn.Conv2d(32, 32, 3, padding=1) for _ in range(4)])
            self.last = nn.Conv2d(32, 32, 3, padding=1)

        def forward(self, x):
            assert isinstance(self.last.weight, nn.Parameter), "needs a Parameter"  # a computed weight is not one
            return self.last(self.blocks(self.stem(x)))

    with pytest.raises(
        LowRankError, match=r"fails at 'Deep'.*needs a Parameter.*list them with `lowrank layers MODEL`"
    ):
        lr.convert(Deep(), rank=0.5, input_size=(3, 16, 16))
