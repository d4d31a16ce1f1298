"""Frobenius decay: weight decay on the kernel a low-rank layer computes instead of on each factor."""

import pytest
import torch
from helpers import TinyNet
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lowrank_tool as lr
from lowrank_tool import LowRankError
from lowrank_tool.layers import CPConv2d, LowRankConv, SVDConv2d, Tucker2Conv2d
from lowrank_tool.train.config import TrainConfig
from lowrank_tool.train.decay import frobenius_penalty, param_groups
from lowrank_tool.train.trainer import Trainer


def _layer(cls, ranks):
    torch.manual_seed(0)
    return cls.from_dense(nn.Conv2d(12, 20, 3, padding=1, bias=True), ranks)


@pytest.mark.parametrize("cls,ranks", [(SVDConv2d, (6,)), (Tucker2Conv2d, (5, 7)), (CPConv2d, (9,))])
def test_kernel_norm_is_the_reconstructed_kernels_with_its_gradient(cls, ranks):
    layer = _layer(cls, ranks)
    value = layer.kernel_norm_sq()
    grads = torch.autograd.grad(value, list(layer.parameters()), allow_unused=True)
    reference = layer.weight.pow(2).sum()
    ref_grads = torch.autograd.grad(reference, list(layer.parameters()), allow_unused=True)
    assert value.item() == pytest.approx(reference.item(), rel=1e-5)
    for g, r in zip(grads, ref_grads, strict=True):
        assert (g is None) == (r is None)
        if g is not None:
            torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)


def test_penalty_is_half_the_decay_times_every_low_rank_kernels_squared_norm():
    model = lr.convert("resnet20", rank=0.5, input_size=(3, 16, 16))
    layers = [m for m in model.modules() if isinstance(m, LowRankConv)]
    expected = 0.5 * 1e-3 * sum(m.weight.pow(2).sum().item() for m in layers)
    assert len(layers) == 18 and frobenius_penalty(model, 1e-3).item() == pytest.approx(expected, rel=1e-5)
    assert frobenius_penalty(model, 0.0) is None
    assert frobenius_penalty(lr.convert("resnet20", dense=True), 1e-3) is None  # nothing low-rank: no term


def test_frobenius_groups_leave_the_factors_undecayed_and_everything_else_as_before():
    model = lr.convert(TinyNet(), rank=0.5, input_size=(3, 16, 16))
    factors = {id(p) for m in model.modules() if isinstance(m, LowRankConv) for p in m.parameters() if p.dim() >= 2}
    plain_decay, plain_none = param_groups(model, 5e-4)
    decay, none = param_groups(model, 5e-4, frobenius=True)
    assert factors and factors <= {id(p) for p in plain_decay["params"]}  # the default decays the factors
    assert {id(p) for p in decay["params"]} == {id(p) for p in plain_decay["params"]} - factors
    assert {id(p) for p in none["params"]} == {id(p) for p in plain_none["params"]} | factors
    assert decay["params"] and all(p.dim() >= 2 for p in decay["params"])  # dense convs and the classifier
    assert (decay["weight_decay"], none["weight_decay"]) == (5e-4, 0.0)


def _kernel_energy(model):
    return sum(m.weight.pow(2).sum().item() for m in model.modules() if isinstance(m, LowRankConv))


def test_training_with_frobenius_decay_shrinks_the_kernels_and_only_then():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 3, 16, 16, generator=g), torch.arange(64) % 10
    train = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))
    val = DataLoader(TensorDataset(x[:16], y[:16]), batch_size=16)

    def trained(**cfg):
        torch.manual_seed(0)
        model = lr.convert(TinyNet(), rank=0.5, input_size=(3, 16, 16))
        config = TrainConfig(epochs=3, lr=0.05, data="synthetic", orth="none", schedule="constant", **cfg)
        Trainer(model, train, val, config, progress=False).fit()
        return model

    free = _kernel_energy(trained(weight_decay=0.0))
    decayed = _kernel_energy(trained(weight_decay=0.05, frobenius_decay=True))
    # a strong decay (0.05 over 12 steps) pulls the kernels' energy well below the undecayed run's (13.7 vs 31.0)
    assert decayed < free * 0.99, (free, decayed)
    # With no decay the flag changes nothing: the same weights bit for bit.
    a = trained(weight_decay=0.0, frobenius_decay=True).state_dict()
    b = trained(weight_decay=0.0).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_frobenius_decay_must_be_a_boolean():
    with pytest.raises(LowRankError, match="frobenius_decay 'yes' must be true or false"):
        TrainConfig(frobenius_decay="yes")
