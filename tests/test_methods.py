"""ELRT's orthogonality regulariser (batched) and the method registry."""

import pytest
import torch

import lowrank_tool as lr
from lowrank_tool import LowRankError
from lowrank_tool.methods import ELRT, get_method, orthogonality_penalty, register_method
from lowrank_tool.methods.elrt import _groups


@pytest.fixture(scope="module")
def converted():
    return lr.convert("resnet18", rank=0.3, input_size="3x32x32")


def perturbed(model, scale=0.3):
    model = __import__("copy").deepcopy(model)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, lr.LowRankConv):
                for u in m.factors():
                    u.add_(scale * torch.randn_like(u) / u.shape[0] ** 0.5)
    return model


def naive(model, kind):
    total = 0.0
    for m in model.modules():
        if isinstance(m, lr.LowRankConv):
            for u in m.factors():
                g = u.T @ u - torch.eye(u.shape[1])
                if kind == "so":
                    total += (g**2).sum()
                elif kind == "dso":
                    total += (g**2).sum() + ((u @ u.T - torch.eye(u.shape[0])) ** 2).sum()
                else:
                    total += torch.linalg.matrix_norm(g, ord=2)
    return total


def test_zero_at_orthonormal_init(converted):
    assert orthogonality_penalty(converted, "so").item() < 1e-5
    assert orthogonality_penalty(converted, "srip").item() < 1e-4  # sum of ~40 float32 round-off norms


@pytest.mark.parametrize("kind,rtol", [("so", 1e-5), ("dso", 1e-5), ("srip", 1e-2)])
def test_batched_equals_the_per_factor_definition(converted, kind, rtol):
    model = perturbed(converted)
    torch.testing.assert_close(orthogonality_penalty(model, kind), naive(model, kind), rtol=rtol, atol=0)


@pytest.mark.parametrize("kind", ["so", "dso"])
def test_closed_form_gradient_equals_autograd_of_the_definition(converted, kind):
    model = perturbed(converted)
    params = list(model.parameters())
    orthogonality_penalty(model, kind, 0.7).backward()
    fast = [None if p.grad is None else p.grad.clone() for p in params]
    model.zero_grad(set_to_none=True)
    (0.7 * naive(model, kind)).backward()
    assert sum(g is not None for g in fast) == 35  # 16 Tucker-2 layers x 2 factors + 3 SVD layers x 1
    for p, g in zip(params, fast, strict=True):
        if g is None:
            assert p.grad is None
        else:
            torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", ["so", "dso"])
def test_wide_factor_rank_above_channels(kind):
    # A rank larger than the channel count (allowed with allow_growth) gives a wide factor: same identities.
    layer = lr.Tucker2Conv2d.from_dense(torch.nn.Conv2d(6, 8, 3), ranks=(10, 4)).double()
    with torch.no_grad():
        for u in layer.factors():
            u.add_(0.2 * torch.randn_like(u))
    model = torch.nn.Sequential(layer)
    got = orthogonality_penalty(model, kind)
    torch.testing.assert_close(got.double(), naive(model.float(), kind).double(), rtol=1e-5, atol=1e-6)


def test_weight_scales_linearly_and_none_is_zero(converted):
    model = perturbed(converted)
    torch.testing.assert_close(orthogonality_penalty(model, "so", 0.5), 0.5 * orthogonality_penalty(model, "so"))
    assert orthogonality_penalty(model, "none").item() == 0
    assert orthogonality_penalty(torch.nn.Linear(3, 3)).item() == 0  # no low-rank layer


def test_gradient_reaches_the_factors_and_descent_reduces_it(converted):
    model = perturbed(converted)
    params = [p for m in model.modules() if isinstance(m, lr.LowRankConv) for p in m.parameters()]
    opt = torch.optim.SGD(params, lr=0.01)
    first = None
    for _ in range(20):
        loss = orthogonality_penalty(model, "so")
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert orthogonality_penalty(model, "so").item() < 0.5 * first


def test_batching_groups_factors_by_shape():
    model = lr.convert("resnet50", rank=0.3)
    n_factors = sum(len(m.factors()) for m in model.modules() if isinstance(m, lr.LowRankConv))
    groups = _groups(model)
    assert sum(g.shape[0] for g in groups) == n_factors and len(groups) < n_factors / 4


@pytest.mark.parametrize(
    "kind,weight,message", [("l2", 1.0, "unknown orthogonality penalty 'l2'"), ("so", -1.0, "must be a number >= 0")]
)
def test_bad_arguments(converted, kind, weight, message):
    with pytest.raises(LowRankError, match=message):
        orthogonality_penalty(converted, kind, weight)


def test_registry():
    assert isinstance(get_method("elrt", orth="dso", orth_weight=1e-3), ELRT)
    with pytest.raises(LowRankError, match="unknown method 'elrtt' \\(did you mean 'elrt'\\?\\)"):
        get_method("elrtt")
    with pytest.raises(ValueError, match="already registered"):
        register_method("elrt", ELRT)


def test_elrt_refuses_a_dense_model():
    with pytest.raises(LowRankError, match="no low-rank layer"):
        ELRT().setup(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3)))
