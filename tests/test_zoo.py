"""The CIFAR networks (ResNet-20/32/56/110, VGG-16) and the CIFAR stem for torchvision ResNets."""

import re

import pytest
import torch
import torchvision
from torch import nn

import lowrank_tool as lr
from lowrank_tool import LowRankError
from lowrank_tool.layers import Tucker2Conv2d
from lowrank_tool.models import default_input_size, get_entry
from lowrank_tool.zoo import CIFAR_MODELS, CifarResNet, CifarVGG, cifar_stem_

# name, parameters with 10 classes (pinned: any change to the architecture shows here), the paper's
# figure and its tolerance: half a unit of the paper's last printed digit, i.e. the count must round
# to the published number (He et al. 2016 Table 6: 0.27M, 0.46M, 0.85M, 1.7M; VGG-16 CIFAR: 14.7M).
PARAMS = [
    ("resnet20", 269_722, 0.27e6, 0.005e6),
    ("resnet32", 464_154, 0.46e6, 0.005e6),
    ("resnet56", 853_018, 0.85e6, 0.005e6),
    ("resnet110", 1_727_962, 1.7e6, 0.05e6),
    ("vgg16_cifar", 14_724_042, 14.7e6, 0.05e6),
]


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name,exact,paper,tol", PARAMS, ids=[p[0] for p in PARAMS])
def test_parameter_counts_match_the_papers(name, exact, paper, tol):
    n = count(lr.build_model(name))
    assert abs(n - paper) <= tol, f"{name}: {n} parameters, paper {paper:.0f} ± {tol:.0f}"
    assert n == exact


@pytest.mark.parametrize("name", list(CIFAR_MODELS))
@pytest.mark.parametrize("num_classes", [10, 100])
def test_forward_shapes(name, num_classes):
    model = lr.build_model(name, num_classes=num_classes).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, num_classes)


@pytest.mark.parametrize(
    "name,shortcut", [("resnet20", "A"), ("resnet20", "B"), ("resnet110", "A"), ("vgg16_cifar", None)]
)
def test_fx_traceable(name, shortcut):
    model = lr.build_model(name, **({"shortcut": shortcut} if shortcut else {})).eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(traced(x), model(x))
    if shortcut == "A":  # the shortcut was traced through as plain ops, not a call to an opaque module
        assert any(n.op == "call_function" and "pad" in str(n.target) for n in traced.graph.nodes)


def test_option_a_is_parameter_free_and_zero_pads():
    model = lr.build_model("resnet20")
    shortcut = model.layer2[0].shortcut
    assert not list(shortcut.parameters()) and all(b.shortcut.__class__ is nn.Identity for b in model.layer1)
    assert not any(m.kernel_size == (1, 1) for m in model.modules() if isinstance(m, nn.Conv2d))
    out = shortcut(torch.randn(1, 16, 32, 32))
    assert out.shape == (1, 32, 16, 16)
    assert torch.count_nonzero(out[:, :8]) == 0 and torch.count_nonzero(out[:, 24:]) == 0


def test_option_b_has_projections_and_kaiming_init():
    model = lr.build_model("resnet20", shortcut="B")
    proj = model.layer2[0].shortcut
    assert isinstance(proj[0], nn.Conv2d) and proj[0].kernel_size == (1, 1) and isinstance(proj[1], nn.BatchNorm2d)
    # Kaiming normal, fan-out: std = sqrt(2 / (C_out * k * k)) = sqrt(2 / 576) for a 64-channel 3x3 conv.
    w = lr.build_model("resnet110").layer3[5].conv1.weight
    assert abs(w.std().item() / (2 / 576) ** 0.5 - 1) < 0.05


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: lr.build_model("resnet20", shortcut="C"), "shortcut 'C' is not supported; use shortcut='A'"),
        (lambda: CifarResNet(21), "depth 21 is not 6n+2"),
        (lambda: CifarResNet(2), "depth 2 is not 6n+2"),
        (lambda: lr.zoo.resnet20(num_classes=0), "num_classes must be a positive integer, got 0"),
        (lambda: CifarVGG(cfg=(64, "X")), "VGG cfg entry 'X'"),
    ],
    ids=["shortcut", "depth", "depth-too-small", "num-classes", "vgg-cfg"],
)
def test_bad_options_raise_one_line_errors(call, message):
    with pytest.raises(LowRankError, match=re.escape(message)) as info:
        call()
    assert "\n" not in str(info.value)


def test_registered_listed_and_duplicates_refused():
    entries = {e.name: e for e in lr.list_models()}
    for name in CIFAR_MODELS:
        assert entries[name].source == "lowrank_tool" and entries[name].task == "classification"
        assert get_entry(name).input_size == (3, 32, 32) == default_input_size(name)
    assert {e.name for e in lr.list_models("classification")} >= set(CIFAR_MODELS)
    with pytest.raises(ValueError, match="'resnet20' is already registered"):
        lr.register_model("resnet20", CIFAR_MODELS["resnet20"])
    with pytest.raises(ValueError, match="already registered"):  # torchvision's names are taken too
        lr.register_model("resnet18", CIFAR_MODELS["resnet20"])


def test_resnet56_converts_to_tucker2_with_a_dense_stem():
    model = lr.convert("resnet56", rank=0.5)
    plan = lr.summary(model)
    assert plan.trace["path"] == "fx" and plan.input_size == [3, 32, 32]
    assert plan.layer("conv1").format == "dense" and isinstance(model.conv1, nn.Conv2d)
    converted = plan.converted_layers
    assert len(converted) == 54 and {p.format for p in converted} == {"tucker2"}
    assert plan.layer("layer1.0.conv1").ranks == [8, 8] and plan.layer("layer3.8.conv2").ranks == [32, 32]
    assert isinstance(model.layer2[0].conv1, Tucker2Conv2d) and isinstance(model.layer3[8].conv2, Tucker2Conv2d)
    with torch.no_grad():
        out = model.eval()(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert count(model) < 0.5 * 853_018


def test_vgg16_converts_all_but_the_stem():
    plan = lr.plan("vgg16_cifar", rank=0.3)
    assert plan.layer("features.0").format == "dense" and len(plan.converted_layers) == 12


def test_converted_resnet20_round_trip(tmp_path):
    model = lr.convert("resnet20", rank=0.5, num_classes=100).eval()
    lr.save(model, tmp_path / "r20")
    loaded = lr.load(tmp_path / "r20").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert loaded.fc.out_features == 100


def test_converted_option_b_round_trip_keeps_the_builder_option(tmp_path):
    model = lr.convert("resnet20", rank=0.5, model_kwargs={"shortcut": "B"}).eval()
    lr.save(model, tmp_path / "r20b")
    loaded = lr.load(tmp_path / "r20b").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert isinstance(loaded.layer2[0].shortcut, nn.Sequential)


def layer4_size(model: nn.Module, size: int = 32) -> tuple[int, int]:
    feats = {}
    handle = model.layer4.register_forward_hook(lambda m, i, o: feats.update(out=o))
    with torch.no_grad():
        model.eval()(torch.randn(1, 3, size, size))
    handle.remove()
    return tuple(feats["out"].shape[-2:])


def test_cifar_stem_on_resnet18():
    model = torchvision.models.resnet18(num_classes=10)
    assert layer4_size(model) == (1, 1)  # the ImageNet stem leaves nothing to pool at 32x32
    assert cifar_stem_(model) is model
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1) and model.conv1.padding == (1, 1)
    assert model.conv1.out_channels == 64 and isinstance(model.maxpool, nn.Identity)
    assert layer4_size(model) == (4, 4)
    conv1 = model.conv1
    assert cifar_stem_(model).conv1 is conv1  # idempotent: an adapted stem (and its weights) is kept


def test_cifar_stem_on_resnext_and_a_converted_pipeline():
    model = cifar_stem_(torchvision.models.resnext50_32x4d(num_classes=10))
    assert layer4_size(model) == (4, 4) and model.conv1.out_channels == 64
    small = lr.convert(cifar_stem_(torchvision.models.resnet18(num_classes=10)), rank=0.3, input_size=(3, 32, 32))
    assert lr.summary(small).layer("conv1").format == "dense" and layer4_size(small) == (4, 4)
    with pytest.raises(LowRankError, match="already converted"):
        cifar_stem_(small)


def test_cifar_stem_refuses_other_models():
    with pytest.raises(
        LowRankError, match=r"ResNet-family models \(resnet\*, resnext\*, wide_resnet\*\), not MobileNetV2"
    ) as info:
        cifar_stem_(torchvision.models.mobilenet_v2())
    assert "\n" not in str(info.value)
    with pytest.raises(LowRankError, match="not CifarResNet"):
        cifar_stem_(lr.build_model("resnet20"))
