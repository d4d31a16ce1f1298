"""Low-rank layers are drop-in for the conv they replace: its attributes, a computed read-only
``weight``, TorchScript, timm's dynamic "same" padding, and meta-device construction."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lowrank_tool import CPConv2d, LowRankError, SVDConv2d, SVDConv3d, Tucker2Conv2d, Tucker2Conv3d
from lowrank_tool.layers import ConvGeometry, SamePadConv2d, SamePadConv3d, pad_same

ATTRS = (
    "in_channels",
    "out_channels",
    "kernel_size",
    "stride",
    "padding",
    "dilation",
    "groups",
    "padding_mode",
    "transposed",
    "output_padding",
)

CASES = [
    (Tucker2Conv2d, lambda: nn.Conv2d(8, 12, 3, stride=2, padding=1, dilation=1)),
    (Tucker2Conv2d, lambda: nn.Conv2d(8, 12, (3, 5), padding="same", dilation=2, padding_mode="reflect", bias=False)),
    (SVDConv2d, lambda: nn.Conv2d(8, 12, 1)),
    (SVDConv2d, lambda: nn.Conv2d(8, 12, 3, stride=(2, 1), padding=(1, 0))),
    (SVDConv2d, lambda: nn.Conv2d(8, 12, 3, padding="valid", padding_mode="reflect")),
    (CPConv2d, lambda: nn.Conv2d(8, 12, 3, padding=1, padding_mode="circular")),
    (Tucker2Conv3d, lambda: nn.Conv3d(8, 12, 3, stride=(1, 2, 2), padding=1)),
    (SVDConv3d, lambda: nn.Conv3d(8, 12, (1, 3, 3), padding=(0, 1, 1))),
]
IDS = [f"{cls.__name__}-{i}" for i, (cls, _) in enumerate(CASES)]


def _full(cls, conv):
    if cls.num_ranks == 2:
        return (conv.in_channels, conv.out_channels)
    if cls is CPConv2d:
        return (24,)
    return (min(conv.out_channels, conv.weight[0].numel()),)


def _input(conv, batch=2):
    return torch.randn(batch, conv.in_channels, *([9] * (conv.weight.dim() - 2)), dtype=conv.weight.dtype)


@pytest.mark.parametrize("cls, make", CASES, ids=IDS)
def test_geometry_attributes_equal_the_dense_convs(cls, make):
    conv = make()
    layer = cls.from_dense(conv, 4)
    for attr in ATTRS:
        assert getattr(layer, attr) == getattr(conv, attr), attr
        assert type(getattr(layer, attr)) is type(getattr(conv, attr)), attr


@pytest.mark.parametrize(
    "cls, make",
    [c for c in CASES if c[0] is not CPConv2d],
    ids=[i for i, c in zip(IDS, CASES, strict=True) if c[0] is not CPConv2d],
)
def test_weight_is_the_reconstructed_kernel(cls, make):
    conv = make().double()
    layer = cls.from_dense(conv, _full(cls, conv), init="decompose")
    assert layer.weight.shape == conv.weight.shape
    torch.testing.assert_close(layer.weight, conv.weight, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(layer.weight, layer.dense_weight())
    layer.weight.sum().backward()  # differentiable into the factors
    assert all(p.grad is not None for n, p in layer.named_parameters() if n.endswith("weight"))


@pytest.mark.parametrize("value", [torch.zeros(1), nn.Parameter(torch.zeros(1)), None])
@pytest.mark.parametrize("attr", ["weight", "bias"])
def test_assigning_weight_or_bias_is_a_clear_error(attr, value):
    layer = Tucker2Conv2d.from_dense(nn.Conv2d(8, 8, 3), 4)
    with pytest.raises(
        AttributeError, match=rf"Tucker2Conv2d.{attr} is computed from the factor convs \(in_proj, core, out_proj\)"
    ):
        setattr(layer, attr, value)
    assert "weight" not in layer._parameters


@pytest.mark.parametrize("cls, make", CASES, ids=IDS)
def test_torch_jit_script_matches_eager(cls, make):
    conv = make()
    layer = cls.from_dense(conv, 4).eval()
    scripted = torch.jit.script(layer)
    x = _input(conv)
    torch.testing.assert_close(scripted(x), layer(x))
    seq = nn.Sequential(layer, nn.ReLU())
    torch.testing.assert_close(torch.jit.script(seq)(x), seq(x))


def test_state_dict_keys_are_unchanged():
    expected = {
        Tucker2Conv2d: ["in_proj.weight", "core.weight", "out_proj.weight", "out_proj.bias"],
        SVDConv2d: ["core.weight", "out_proj.weight", "out_proj.bias"],
        CPConv2d: ["in_proj.weight", "vertical.weight", "horizontal.weight", "out_proj.weight", "out_proj.bias"],
    }
    for cls, keys in expected.items():
        assert list(cls.from_dense(nn.Conv2d(8, 8, 3), 4).state_dict()) == keys


@pytest.mark.parametrize("size", [(7, 9), (8, 8), (11, 6), (1, 1)])
@pytest.mark.parametrize("stride, dilation", [(1, 1), (2, 1), (2, 2), (3, 1)])
@pytest.mark.parametrize("cls", [Tucker2Conv2d, SVDConv2d])
def test_dynamic_same_padding_keeps_the_function(cls, size, stride, dilation):
    conv = nn.Conv2d(6, 10, 3, stride=stride, dilation=dilation).double()
    g = ConvGeometry.of(conv, dynamic_same=True)
    layer = cls.from_dense(conv, _full(cls, conv), init="decompose", geometry=g)
    x = torch.randn(2, 6, *size, dtype=torch.float64)
    ref = F.conv2d(
        pad_same(x, [3, 3], [stride, stride], [dilation, dilation]), conv.weight, conv.bias, stride, 0, dilation
    )
    torch.testing.assert_close(layer(x), ref, rtol=1e-8, atol=1e-10)
    merged = layer.to_dense()
    assert isinstance(merged, SamePadConv2d)
    torch.testing.assert_close(merged(x), ref, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(torch.jit.script(layer)(x), ref, rtol=1e-8, atol=1e-10)
    assert layer.dynamic_same and layer.padding == (0, 0) and "dynamic same" in repr(layer)


@pytest.mark.parametrize("size", [(7, 9), (8, 8)])
@pytest.mark.parametrize("stride", [1, 2])
def test_cp_dynamic_same_equals_its_merged_kernel_padded_the_same(size, stride):
    # CP has no exact full rank; the factor chain must still equal its own merged kernel behind the pad.
    conv = nn.Conv2d(6, 10, (3, 5), stride=stride, dilation=(2, 1)).double()
    layer = CPConv2d.from_dense(conv, 5, geometry=ConvGeometry.of(conv, dynamic_same=True))
    x = torch.randn(2, 6, *size, dtype=torch.float64)
    ref = F.conv2d(pad_same(x, [3, 5], [stride, stride], [2, 1]), layer.weight, layer.bias, stride, 0, (2, 1))
    torch.testing.assert_close(layer(x), ref, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(torch.jit.script(layer)(x), ref, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(layer.to_dense()(x), ref, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("cls", [Tucker2Conv3d, SVDConv3d])
def test_dynamic_same_3d(cls):
    conv = nn.Conv3d(4, 6, 3, stride=(1, 2, 2)).double()
    layer = cls.from_dense(conv, _full(cls, conv), init="decompose", geometry=ConvGeometry.of(conv, dynamic_same=True))
    x = torch.randn(1, 4, 5, 7, 8, dtype=torch.float64)
    ref = F.conv3d(pad_same(x, [3, 3, 3], [1, 2, 2], [1, 1, 1]), conv.weight, conv.bias, (1, 2, 2))
    assert layer(x).shape == (1, 6, 5, 4, 4)  # ceil(size / stride) per dim, as TF's SAME
    torch.testing.assert_close(layer(x), ref, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(torch.jit.script(layer)(x), ref, rtol=1e-8, atol=1e-10)
    merged = layer.to_dense()
    assert isinstance(merged, SamePadConv3d)
    torch.testing.assert_close(merged(x), ref, rtol=1e-8, atol=1e-10)


def test_same_pad_conv_is_scriptable_and_round_trips_its_geometry():
    conv = SamePadConv2d(4, 5, 3, stride=2)
    x = torch.randn(1, 4, 7, 8)
    torch.testing.assert_close(torch.jit.script(conv)(x), conv(x))
    assert conv(x).shape == (1, 5, 4, 4)
    assert ConvGeometry.of(conv).dynamic_same  # merged back and converted again: still dynamic "same"
    assert not ConvGeometry.of(nn.Conv2d(4, 5, 3)).dynamic_same


def test_pad_same_is_timms():
    timm = pytest.importorskip("timm")
    for stride in (1, 2, 3):
        conv = timm.layers.Conv2dSame(4, 5, (3, 5), stride=stride, dilation=(1, 2)).double()
        x = torch.randn(1, 4, 13, 10, dtype=torch.float64)
        ours = F.conv2d(pad_same(x, [3, 5], [stride, stride], [1, 2]), conv.weight, conv.bias, stride, 0, (1, 2))
        torch.testing.assert_close(ours, conv(x), rtol=1e-10, atol=1e-12)


def test_dynamic_same_excludes_a_padding_of_its_own():
    with pytest.raises(LowRankError, match="dynamic 'same' padding replaces"):
        ConvGeometry(4, 4, (3, 3), (1, 1), (1, 1), (1, 1), dynamic_same=True)


@pytest.mark.parametrize("cls", [Tucker2Conv2d, SVDConv2d, CPConv2d])
def test_meta_conv_builds_a_meta_layer_and_reset_parameters_draws_the_init(cls):
    with torch.device("meta"):
        conv = nn.Conv2d(32, 48, 3)
    layer = cls.from_dense(conv, 16)
    assert all(p.is_meta for p in layer.parameters())
    layer.to_empty(device="cpu")
    layer.reset_parameters()
    w = layer.weight.detach()
    # The merged kernel's variance matches PyTorch's default conv init, 1 / (3 fan_in), up to sampling.
    expected = 1.0 / (3 * 32 * 9)
    assert torch.isfinite(w).all() and 0.5 * expected < float(w.var()) < 2.0 * expected


def test_decompose_on_meta_says_why():
    with torch.device("meta"):
        conv = nn.Conv2d(8, 8, 3)
    with pytest.raises(LowRankError, match="needs real weights.*meta device"):
        Tucker2Conv2d.from_dense(conv, 4, init="decompose")


def test_meta_conv_with_init_none_stays_on_meta():
    with torch.device("meta"):
        conv = nn.Conv2d(8, 8, 3)
    layer = SVDConv2d.from_dense(conv, 4, init="none")
    assert all(p.is_meta for p in layer.parameters())


def test_reset_parameters_uses_the_dense_kernels_variance():
    conv = nn.Conv2d(32, 48, 3)
    with torch.no_grad():
        conv.weight.normal_(std=0.2)  # far from PyTorch's default init (variance 1/864)
    layer = Tucker2Conv2d.from_dense(conv, 16)
    layer.reset_parameters()
    assert 0.5 * 0.04 < float(layer.weight.detach().var()) < 2.0 * 0.04
    # Built from a geometry alone (latency probes, plans), the default conv init's scale.
    bare = Tucker2Conv2d.from_geometry(ConvGeometry.of(conv), (16, 16))
    bare.reset_parameters()
    expected = 1.0 / (3 * 32 * 9)
    assert 0.5 * expected < float(bare.weight.detach().var()) < 2.0 * expected
