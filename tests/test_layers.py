"""Numerics of the low-rank layers: exact full-rank reconstruction, geometry, init scale, factors."""

import itertools

import pytest
import torch
import torchvision
from torch import nn

import lowrank_tool as lr
from lowrank_tool import CPConv2d, LowRankError, SVDConv2d, SVDConv3d, Tucker2Conv2d, Tucker2Conv3d

GEOMETRIES = [
    dict(kernel_size=k, stride=s, padding=p, dilation=d, padding_mode=m, bias=b)
    for k, s, p, d, m, b in itertools.product(
        (1, 3, (3, 5)), (1, 2), (0, 1, "same"), (1, 2), ("zeros", "reflect", "circular"), (True, False)
    )
    if not (p == "same" and s != 1)
]


def _full_ranks(cls, conv):
    if cls.num_ranks == 2:
        return (conv.in_channels, conv.out_channels)
    return (min(conv.out_channels, conv.in_channels * conv.weight[0, 0].numel()),)


@pytest.mark.parametrize("geom", GEOMETRIES, ids=lambda g: "-".join(str(v) for v in g.values()))
@pytest.mark.parametrize("cls", [Tucker2Conv2d, SVDConv2d])
def test_full_rank_decompose_reproduces_dense(cls, geom):
    conv = nn.Conv2d(6, 10, **geom).double()
    layer = cls.from_dense(conv, _full_ranks(cls, conv), init="decompose")
    x = torch.randn(2, 6, 11, 12, dtype=torch.float64)
    ref = conv(x)
    out = layer(x)
    assert out.shape == ref.shape  # same geometry for every stride/padding/dilation/padding_mode
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(layer.to_dense()(x), ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("cls", [Tucker2Conv2d, SVDConv2d, CPConv2d])
def test_float32_full_rank_within_1e5(cls):
    conv = nn.Conv2d(16, 24, 3, padding=1)
    ranks = (8,) if cls is CPConv2d else _full_ranks(cls, conv)
    if cls is CPConv2d:  # CP has no practical "full rank": make the kernel exactly CP-rank 8
        with torch.no_grad():
            a, b, h, w = (torch.randn(n, 8) for n in (24, 16, 3, 3))
            conv.weight.copy_(torch.einsum("or,ir,hr,wr->oihw", a, b, h, w) * 0.05)
    layer = cls.from_dense(conv, ranks, init="decompose")
    x = torch.randn(2, 16, 9, 9)
    err = (layer(x) - conv(x)).abs().max().item()
    tol = 1e-5 * max(1.0, conv(x).abs().max().item())
    assert err < tol, err


@pytest.mark.parametrize("stride,padding,dilation", [(1, 1, 1), (2, 0, 1), ((1, 2), (2, 1), (2, 1)), (1, "same", 2)])
def test_cp_geometry_matches_dense(stride, padding, dilation):
    conv = nn.Conv2d(8, 12, (3, 3), stride=stride, padding=padding, dilation=dilation)
    layer = CPConv2d.from_dense(conv, 6)
    x = torch.randn(1, 8, 13, 14)
    assert layer(x).shape == conv(x).shape
    torch.testing.assert_close(layer.to_dense()(x), layer(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cls", [Tucker2Conv3d, SVDConv3d])
def test_conv3d_full_rank(cls):
    conv = nn.Conv3d(4, 6, (3, 3, 3), stride=(1, 2, 2), padding=1).double()
    layer = cls.from_dense(conv, _full_ranks(cls, conv), init="decompose")
    x = torch.randn(1, 4, 5, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(layer(x), conv(x), rtol=0, atol=1e-10)


def test_truncated_error_decreases_with_rank():
    conv = nn.Conv2d(32, 32, 3, padding=1)
    errors = []
    for r in (4, 8, 16, 32):
        w = Tucker2Conv2d.from_dense(conv, (r, r), init="decompose").dense_weight()
        errors.append(((w - conv.weight).norm() / conv.weight.norm()).item())
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < 1e-5 and errors[0] > 0.3


def test_svd_truncation_is_optimal():
    """The rank-r SVD layer reaches the Eckart–Young error: the tail of the singular values."""
    conv = nn.Conv2d(16, 20, 3).double()
    layer = SVDConv2d.from_dense(conv, 5, init="decompose")
    s = torch.linalg.svdvals(conv.weight.reshape(20, -1))
    err = (layer.dense_weight() - conv.weight).norm()
    torch.testing.assert_close(err, s[5:].norm(), rtol=1e-8, atol=0)


@pytest.mark.parametrize("cls,ranks", [(Tucker2Conv2d, (8, 12)), (SVDConv2d, (10,)), (CPConv2d, (8,))])
def test_factors_are_orthonormal_views_at_random_init(cls, ranks):
    layer = cls.from_dense(nn.Conv2d(24, 32, 3, padding=1), ranks)
    for u in layer.factors():
        eye = torch.eye(u.shape[1])
        torch.testing.assert_close(u.T @ u, eye, atol=1e-5, rtol=0)
    # the factors are views of the parameters: a penalty on them reaches the weights
    sum(((u.T @ u) ** 2).sum() for u in layer.factors()).backward()
    assert all(
        p.grad is not None
        for p in layer.parameters()
        if p.dim() == 4 and p.shape[-1] == 1 and p.shape[-2] == 1 and p.shape[1] != 1
    )


def test_random_init_matches_dense_kernel_energy():
    conv = nn.Conv2d(64, 128, 3, padding=1)
    norms = [Tucker2Conv2d.from_dense(conv, (16, 32)).dense_weight().norm().item() for _ in range(5)]
    ratio = sum(norms) / len(norms) / conv.weight.norm().item()
    assert 0.9 < ratio < 1.1


def _vgg_features_std(model, x):
    with torch.no_grad():
        return model.features(x).std().item()


def test_random_init_keeps_activation_scale_on_a_deep_model():
    """VGG-16 has 13 convs and no batch norm: a bad init compounds through depth."""
    dense = torchvision.models.vgg16().eval()
    x = torch.randn(4, 3, 64, 64)
    converted = lr.convert(dense, rank=0.3, input_size=(3, 64, 64)).eval()
    ratio = _vgg_features_std(converted, x) / _vgg_features_std(dense, x)
    assert 0.5 < ratio < 2.0, ratio
    # The test can fail: PyTorch's default init of the factor convs shrinks activations ~5x.
    for m in converted.modules():
        if isinstance(m, lr.LowRankConv):
            for sub in m.children():
                sub.reset_parameters()
    naive = _vgg_features_std(converted, x) / _vgg_features_std(dense, x)
    assert not 0.5 < naive < 2.0


def test_bias_kept_and_merged():
    conv = nn.Conv2d(8, 8, 3, padding=1)
    layer = Tucker2Conv2d.from_dense(conv, (8, 8), init="decompose")
    torch.testing.assert_close(layer.bias, conv.bias)
    torch.testing.assert_close(layer.to_dense().bias, conv.bias)


def test_extra_repr_shows_ranks_and_compression():
    text = repr(Tucker2Conv2d.from_dense(nn.Conv2d(64, 64, 3), (16, 16)))
    assert "ranks=(16, 16)" in text and "compression=" in text


def test_grouped_conv_is_refused_with_a_clear_error():
    with pytest.raises(LowRankError, match="groups=4"):
        Tucker2Conv2d.from_dense(nn.Conv2d(8, 8, 3, groups=4), (4, 4))


def test_wrong_number_of_ranks():
    with pytest.raises(LowRankError, match="2 positive rank"):
        Tucker2Conv2d.from_dense(nn.Conv2d(8, 8, 3), (4, 4, 4))


def test_unknown_init():
    with pytest.raises(LowRankError, match="init='svd'"):
        SVDConv2d.from_dense(nn.Conv2d(8, 8, 3), 4, init="svd")


def test_format_registry_rejects_duplicates_and_unknown_names():
    with pytest.raises(ValueError, match="already registered"):
        lr.register_format("tucker2", Tucker2Conv2d, 2)
    from lowrank_tool.layers import get_format

    with pytest.raises(LowRankError, match="did you mean 'tucker2'"):
        get_format("tuker2")
    with pytest.raises(LowRankError, match="2-D"):
        get_format("cp", 3)


@pytest.mark.parametrize("init", ["random", "decompose"])
@pytest.mark.parametrize("cls, ranks", [(Tucker2Conv2d, (5, 7)), (SVDConv2d, (6,)), (CPConv2d, (6,))])
def test_from_dense_writes_every_parameter(cls, ranks, init):
    # The factors are allocated uninitialised (no wasted default init): every value must be written.
    conv = nn.Conv2d(12, 16, 3, padding=1, bias=True)
    torch.manual_seed(0)
    a = cls.from_dense(conv, ranks, init=init)
    torch.manual_seed(0)
    b = cls.from_dense(conv, ranks, init=init)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.isfinite(pa).all(), name
        assert torch.equal(pa, pb), name  # seeded: identical, so nothing comes from leftover memory
    torch.testing.assert_close(a.bias, conv.bias, rtol=0, atol=0)
