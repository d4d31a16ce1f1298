"""The CIFAR networks and the CIFAR stem."""

import pytest
import torch
import torchvision

import lowrank_tool as lr
from lowrank_tool import LowRankError
from lowrank_tool.zoo import cifar_stem_


@pytest.mark.parametrize("name,params", [("resnet20", 0.27e6), ("resnet32", 0.46e6), ("resnet56", 0.85e6), ("resnet110", 1.73e6), ("vgg16_cifar", 14.7e6)])
def test_parameter_counts_match_the_papers(name, params):
    model = lr.build_model(name)
    assert abs(sum(p.numel() for p in model.parameters()) - params) / params < 0.01
    out = lr.build_model(name, num_classes=100)(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 100)
    torch.fx.symbolic_trace(model)


def test_listed_and_convertible():
    names = {e.name: e.source for e in lr.list_models()}
    assert names["resnet56"] == "lowrank_tool"
    model = lr.convert("resnet56", rank=0.5)
    plan = lr.summary(model)
    assert plan.trace["path"] == "fx" and plan.input_size == [3, 32, 32]
    assert plan.layer("conv1").format == "dense" and plan.layer("layer1.0.conv1").ranks == [8, 8]
    assert len(plan.converted_layers) == 54
    with pytest.raises(ValueError, match="already registered"):
        lr.register_model("resnet20", lambda: None)


def test_shortcut_b_has_projections():
    model = lr.build_model("resnet20", shortcut="B")
    assert isinstance(model.layer2[0].shortcut[0], torch.nn.Conv2d)


def test_cifar_stem():
    model = cifar_stem_(torchvision.models.resnet18(num_classes=10))
    feats = {}
    model.layer4.register_forward_hook(lambda m, i, o: feats.update(out=o))
    model(torch.randn(1, 3, 32, 32))
    assert feats["out"].shape[-2:] == (4, 4)
    with pytest.raises(LowRankError, match="ResNet-family"):
        cifar_stem_(torchvision.models.mobilenet_v2())


def test_converted_resnet20_round_trip(tmp_path):
    model = lr.convert("resnet20", rank=0.5).eval()
    lr.save(model, tmp_path / "r20")
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(lr.load(tmp_path / "r20").eval()(x), model(x))
