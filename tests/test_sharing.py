"""Conversion never changes what a model computes, whatever PyTorch idiom the model shares things with.

The property, for every model below (each built in one of the ways PyTorch lets a model share a module or
a parameter): at full rank with ``init="decompose"`` the converted model equals the dense one (relative
error ≤ 1e-5), ``save`` → ``load`` reproduces its outputs exactly, the plan's parameter count equals
``sum(p.numel() for p in model.parameters())`` (each parameter once) before and after, a module shared by
several names is one layer under every name, and tied parameters stay tied. The same property is held
for torchvision's models (test_torchvision_sweep.py) and for timm's and Hugging Face's
(test_foreign_models.py). Bad weights and failed in-place conversions are at the end.
"""

from __future__ import annotations

import copy
import functools
import warnings

import pytest
import torch
from torch import nn

import lowrank_tool as lr
from lowrank_tool.export.merge import merge_factors
from lowrank_tool.io import rebuild
from lowrank_tool.layers import LowRankConv
from lowrank_tool.methods.registry import get_method


def _block(c: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())


class _Base(nn.Module):
    """A stem that stays dense and a head; subclasses put the shared part in ``body``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(self.body(torch.relu(self.stem(x))).mean((2, 3)))


class RepeatedInList(_Base):
    """One conv applied three times: ``nn.ModuleList([conv] * 3)``."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(16, 16, 3, padding=1)] * 3)

    def body(self, x):
        for conv in self.convs:
            x = torch.relu(conv(x))
        return x


class AttributeAlias(_Base):
    """``self.b = self.a``, and a plain conv beside them."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(16, 16, 3, padding=1)
        self.b = self.a
        self.c = nn.Conv2d(16, 16, 1)

    def body(self, x):
        return self.c(self.b(torch.relu(self.a(x))))


class SharedBlock(_Base):
    """A whole block (conv + BN) used twice: the convs inside are shared through their parent."""

    def __init__(self) -> None:
        super().__init__()
        block = _block(16)
        self.blocks = nn.Sequential(block, nn.Conv2d(16, 16, 3, padding=1), block)

    def body(self, x):
        return self.blocks(x)


class SharedButOnlyOneNameUsed(_Base):
    """An alias the forward never calls (a leftover attribute): still one module, still shared."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(16, 16, 3, padding=1)
        self.unused_alias = self.conv

    def body(self, x):
        return self.conv(x)


class TiedWeights(_Base):
    """Two convs, one weight ``Parameter`` (different strides), and a third conv that is converted."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(16, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 16, 3, padding=1, stride=2)
        self.b.weight = self.a.weight
        self.c = nn.Conv2d(16, 16, 3, padding=1)

    def body(self, x):
        return self.c(self.b(torch.relu(self.a(x))))


class TiedBias(_Base):
    """Two convs with their own weights and one bias, and a third conv that is converted."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(16, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 16, 3, padding=1)
        self.b.bias = self.a.bias
        self.c = nn.Conv2d(16, 16, 3, padding=1)

    def body(self, x):
        return self.c(self.b(torch.relu(self.a(x))))


class TiedLinears(_Base):
    """Two linears sharing a weight (the embedding-tying idiom); the convs are ordinary."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(16, 16, 3, padding=1)
        self.proj = nn.Linear(16, 16, bias=False)
        self.back = nn.Linear(16, 16, bias=False)
        self.back.weight = self.proj.weight

    def body(self, x):
        return self.conv(x)

    def forward(self, x):
        h = self.body(torch.relu(self.stem(x))).mean((2, 3))
        return self.head(self.back(torch.relu(self.proj(h))))


class SharedInsideWrapper(nn.Module):
    """A user wrapper holding a model and a second reference to one of its convs."""

    def __init__(self) -> None:
        super().__init__()
        self.net = AttributeAlias()
        self.probe = self.net.c

    def forward(self, x):
        return self.net(x)


MODELS = [
    RepeatedInList,
    AttributeAlias,
    SharedBlock,
    SharedButOnlyOneNameUsed,
    TiedWeights,
    TiedBias,
    TiedLinears,
    SharedInsideWrapper,
]


def _build(cls: type[nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    model = cls().eval()
    for m in model.modules():  # batch-norm statistics that are not the identity
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model


def _unique_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _convert(model: nn.Module, **kwargs) -> nn.Module:
    options = dict(rank=1.0, round_to=1, allow_growth=True, init="decompose", input_size="3x16x16") | kwargs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lr.LowRankWarning)
        return lr.convert(model, **options).eval()


def _names_of(model: nn.Module) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        out.setdefault(id(m), []).append(name)
    return out


@pytest.mark.parametrize("inplace", [False, True], ids=["copy", "inplace"])
@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.__name__)
def test_full_rank_conversion_is_the_same_model(cls, inplace, tmp_path):
    dense = _build(cls)
    reference = copy.deepcopy(dense)
    dense_names = _names_of(dense)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(x)

    converted = _convert(dense, inplace=inplace)
    plan = lr.summary(converted)
    assert plan.converted_layers, [layer.reason for layer in plan.layers]
    with torch.no_grad():
        got = converted(x)
    assert float((got - expected).abs().max() / expected.abs().max()) <= 1e-5

    # each parameter counted once, before and after
    totals = plan.totals()
    assert totals["params_before"] == _unique_params(reference)
    assert totals["params_after"] == _unique_params(converted)
    assert plan.other_params >= 0

    # a shared module is one layer under every one of its names; nothing became an Identity
    assert not any(isinstance(m, nn.Identity) for m in converted.modules())
    for names in dense_names.values():
        if len(names) > 1 and isinstance(reference.get_submodule(names[0]), nn.Conv2d):
            layers = {id(converted.get_submodule(n)) for n in names}
            assert len(layers) == 1, names
    for entry in plan.converted_layers:
        expected_aliases = next(n[1:] for n in dense_names.values() if n[0] == entry.name)
        assert (entry.aliases or []) == expected_aliases

    # a tie survives: the convs stay dense (with the reason) and keep one Parameter
    for name, other in (("a", "b"),):
        if cls in (TiedWeights, TiedBias):
            attr = "weight" if cls is TiedWeights else "bias"
            assert getattr(converted.get_submodule(name), attr) is getattr(converted.get_submodule(other), attr)
            assert "tied" in plan.layer(name).reason and not plan.layer(name).converted
    if cls is TiedLinears:
        assert converted.back.weight is converted.proj.weight

    # save → load gives the same outputs, bit for bit, and keeps the sharing
    lr.save(converted, tmp_path / "art")
    loaded = lr.load(tmp_path / "art", model=cls()).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), got)
    assert lr.summary(loaded).totals() == totals
    for names in dense_names.values():
        assert len({id(loaded.get_submodule(n)) for n in names}) == 1


def test_a_shared_conv_trains_as_one_layer():
    """Gradients from every call reach the one set of factors (what sharing means in training)."""
    model = _convert(_build(RepeatedInList), rank=0.5, init="random").train()
    model(torch.randn(2, 3, 16, 16)).sum().backward()
    layers = {id(m) for m in model.convs}
    assert len(layers) == 1 and isinstance(model.convs[0], LowRankConv)
    assert all(p.grad is not None for p in model.convs[0].parameters())


def test_patterns_may_name_a_shared_conv_under_any_name():
    converted = _convert(_build(AttributeAlias), exclude=["b"])  # "b" is the second name of "a"
    assert not lr.summary(converted).layer("a").converted
    assert converted.a is converted.b and isinstance(converted.a, nn.Conv2d)


def test_different_ranks_for_the_names_of_one_shared_conv_are_refused():
    with pytest.raises(lr.LowRankError, match=r"layer_rank gives the shared conv 'convs.0' \(also convs.1, convs.2\)"):
        lr.convert(_build(RepeatedInList), rank=0.5, input_size="3x16x16", layer_rank={"convs.0": 8, "convs.2": 4})
    same = lr.convert(_build(RepeatedInList), input_size="3x16x16", layer_rank={"convs.0": 8, "convs.2": 8})
    assert lr.summary(same).layer("convs.0").ranks == [8, 8]


def test_a_plan_for_a_shared_model_refuses_a_model_that_does_not_share():
    class Unshared(AttributeAlias):
        def __init__(self) -> None:
            super().__init__()
            self.b = nn.Conv2d(16, 16, 3, padding=1)

    converted = _convert(_build(AttributeAlias), rank=0.5)
    plan = lr.summary(converted)
    with pytest.raises(lr.LowRankError, match=r"the plan does not match the model at 'a'.*shares it as \['b'\]"):
        rebuild(plan, Unshared())


def test_tied_channels_last_weights_save_and_load(tmp_path):
    """Tied 4-D weights kept dense in a channels-last model (safetensors' own helpers cannot measure those)."""
    converted = _convert(_build(TiedWeights), rank=0.5, init="random")
    assert converted.c.in_proj.weight.is_contiguous(memory_format=torch.channels_last)
    assert not converted.a.weight.is_contiguous()
    lr.save(converted, tmp_path / "art")
    loaded = lr.load(tmp_path / "art", model=TiedWeights()).eval()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), converted(x))
    assert loaded.a.weight is loaded.b.weight


def test_frozen_convs_stay_frozen():
    model = _build(AttributeAlias)
    model.a.weight.requires_grad_(False)
    model.a.bias.requires_grad_(False)
    model.c.weight.requires_grad_(False)  # frozen weight, trainable bias
    converted = _convert(model, rank=0.5, init="random")
    assert not any(p.requires_grad for p in converted.a.parameters())
    c = converted.c
    assert isinstance(c, LowRankConv)
    assert [n for n, p in c.named_parameters() if p.requires_grad] == [
        n for n, _ in c.named_parameters() if "bias" in n
    ]


# -- bad weights: one line naming the layer, and the model as it was ---------------------------------------


def _with_weight(fill: str) -> nn.Module:
    model = _build(AttributeAlias)
    with torch.no_grad():
        w = model.a.weight
        if fill == "nan":
            w[0, 0, 0, 0] = float("nan")
        elif fill == "inf":
            w[0, 0, 0, 0] = float("inf")
        elif fill == "zero":
            w.zero_()
    return model


@pytest.mark.parametrize("fill", ["nan", "inf"])
@pytest.mark.parametrize(
    "options",
    [{}, {"init": "decompose"}, {"rank": "energy:0.9"}, {"rank": "erank"}, {"format": "svd", "init": "decompose"}],
    ids=["random", "decompose", "energy", "erank", "svd"],
)
def test_non_finite_weights_are_refused_naming_the_layer(fill, options):
    model = _with_weight(fill)
    with pytest.raises(lr.LowRankError, match=r"the weights of 'a' hold 1 NaN/inf value\(s\).*exclude=") as err:
        lr.convert(model, **({"rank": 0.5, "input_size": "3x16x16"} | options))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("fmt", ["tucker2", "svd", "cp"])
def test_an_all_zero_kernel_decomposes_to_zero(fmt):
    model = _build(AttributeAlias)
    with torch.no_grad():
        model.a.weight.zero_()
    converted = _convert(model, format=fmt, exclude=["c"])
    assert isinstance(converted.a, LowRankConv)
    assert torch.count_nonzero(converted.a.weight) == 0
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(converted(x), model(x), rtol=1e-5, atol=1e-6)


def test_huge_weights_give_a_finite_random_init():
    model = _build(AttributeAlias)
    with torch.no_grad():
        model.a.weight.normal_(0, 1e30)
    converted = _convert(model, rank=0.5, init="random")
    assert all(bool(torch.isfinite(p).all()) for p in converted.a.parameters())
    assert converted.a.weight.double().var().item() == pytest.approx(model.a.weight.double().var().item(), rel=0.5)


class _FailsOnceConverted(_Base):
    """A forward that reads the conv's class: runs dense, fails once the conv is low-rank."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(16, 16, 3, padding=1)
        self.alias = self.conv

    def body(self, x):
        if type(self.conv).__name__ != "Conv2d":
            raise RuntimeError("expected a Conv2d")
        return self.conv(x)


def test_a_failed_inplace_conversion_leaves_the_model_as_it_was():
    model = _build(_FailsOnceConverted)
    modules = dict(model.named_modules(remove_duplicate=False))
    tensors = {name: (t, t.clone()) for name, t in model.state_dict(keep_vars=True).items()}
    with pytest.raises(lr.LowRankError, match="the converted model fails at"):
        lr.convert(model, rank=0.5, input_size="3x16x16", inplace=True)
    assert dict(model.named_modules(remove_duplicate=False)) == modules
    for name, (tensor, values) in tensors.items():
        now = model.state_dict(keep_vars=True)[name]
        assert now is tensor and torch.equal(now, values) and now.is_contiguous(), name
    assert not hasattr(model, "_lowrank_plan")


def test_a_failed_decomposition_is_one_line():
    model = _build(AttributeAlias)
    with torch.no_grad():
        model.a.weight.fill_(1.0)  # rank one: CP-ALS at rank 16 has a singular system
    with pytest.raises(lr.LowRankError, match=r"cannot build the cp layer for 'a' with init='decompose'") as err:
        lr.convert(model, rank=16, round_to=1, format="cp", init="decompose", input_size="3x16x16", exclude=["c"])
    assert "\n" not in str(err.value)


class _OtherConvs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.conv = nn.Conv2d(32, 32, 3, padding=1)
        self.up = nn.ConvTranspose2d(32, 16, 2, stride=2)
        self.seq = nn.Conv1d(16, 16, 3, padding=1)

    def forward(self, x):
        return self.seq(self.up(self.conv(self.stem(x))).flatten(2))


def test_convs_without_a_low_rank_form_are_listed_with_the_reason_and_counted(tmp_path):
    model = _OtherConvs().eval()
    converted = _convert(model, rank=0.5, init="random")
    plan = lr.summary(converted)
    rows = {layer.name: layer for layer in plan.layers}
    assert rows["up"].kind == "ConvTranspose2d" and not rows["up"].converted
    assert rows["seq"].kind == "Conv1d" and "no low-rank form" in rows["seq"].reason
    assert rows["up"].macs_before == 16 * 16 * 32 * 16 * 4  # each of 16x16 inputs meets the whole 32x16x2x2 kernel
    assert rows["seq"].macs_before == 32 * 32 * 16 * 16 * 3
    assert plan.totals()["params_before"] == _unique_params(model)
    assert plan.totals()["params_after"] == _unique_params(converted)
    lr.save(converted, tmp_path / "art")
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(lr.load(tmp_path / "art", model=_OtherConvs()).eval()(x), converted(x))


def test_dense_training_methods_and_merging_keep_a_shared_conv_shared():
    """LRPET/DeepTwist train the planned layers dense and swap them back; export may merge them: every swap
    happens under every name of the shared conv."""
    model = _convert(_build(RepeatedInList), rank=0.5, init="random", format="svd")
    method = get_method("lrpet")
    method.setup(model)
    assert len({id(m) for m in model.convs}) == 1 and type(model.convs[0]) is nn.Conv2d
    method.finalize(model)
    assert len({id(m) for m in model.convs}) == 1 and isinstance(model.convs[0], LowRankConv)
    merge_factors(model, "all")
    assert len({id(m) for m in model.convs}) == 1 and type(model.convs[0]) is nn.Conv2d


class HeldInPlainContainers(_Base):
    """Convs also held by a plain list, a tuple and a dict attribute (not registered as submodules)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(16, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 16, 3, padding=1)
        self.stages = [self.a, self.b]
        self.pair = (self.a, self.b)
        self.by_name = {"first": self.a, "rest": [self.b]}

    def body(self, x):
        for conv in self.stages:
            x = torch.relu(conv(x))
        return self.by_name["rest"][0](self.pair[0](x))


@pytest.mark.parametrize("inplace", [False, True], ids=["copy", "inplace"])
def test_convs_held_in_plain_containers_are_replaced_there_too(inplace, tmp_path):
    dense = _build(HeldInPlainContainers)
    reference = copy.deepcopy(dense)
    x = torch.randn(2, 3, 16, 16)
    converted = _convert(dense, inplace=inplace)
    assert converted.stages[0] is converted.a and converted.pair[1] is converted.b
    assert converted.by_name["first"] is converted.a and converted.by_name["rest"][0] is converted.b
    assert isinstance(converted.a, LowRankConv)
    with torch.no_grad():
        expected, got = reference(x), converted(x)
    assert float((got - expected).abs().max() / expected.abs().max()) <= 1e-5
    lr.save(converted, tmp_path / "art")
    loaded = lr.load(tmp_path / "art", model=HeldInPlainContainers()).eval()
    assert loaded.stages[0] is loaded.a and loaded.by_name["rest"][0] is loaded.b
    with torch.no_grad():
        assert torch.equal(loaded(x), got)


class HeldInAClosure(_Base):
    """A conv the forward reaches only through a closure: conversion cannot reach it to swap it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(16, 16, 3, padding=1)
        conv = self.conv
        self.apply_conv = lambda x: conv(x)

    def body(self, x):
        return self.apply_conv(x)


class _Caller:
    """A plain object holding a conv (not a module, not a container)."""

    def __init__(self, conv: nn.Module) -> None:
        self.conv = conv

    def __call__(self, x):
        return self.conv(x)


class HeldByAnObject(HeldInAClosure):
    def __init__(self) -> None:
        super().__init__()
        self.apply_conv = _Caller(self.conv)


class HeldByAPartial(HeldInAClosure):
    def __init__(self) -> None:
        super().__init__()
        self.apply_conv = functools.partial(self.conv)


class ClosureOnlyInTraining(HeldInAClosure):
    """Eval mode calls the submodule, train mode the closure: the check runs both."""

    def body(self, x):
        return self.apply_conv(x) if self.training else self.conv(x)


@pytest.mark.parametrize("inplace", [False, True], ids=["copy", "inplace"])
@pytest.mark.parametrize(
    "cls", [HeldInAClosure, HeldByAnObject, HeldByAPartial, ClosureOnlyInTraining], ids=lambda c: c.__name__
)
def test_a_conv_called_through_a_closure_is_refused_and_the_model_left_as_it_was(cls, inplace):
    """What neither the swap (submodules, plain containers) nor load can reach is refused, copy or in place,
    so that convert never accepts a model that load would rebuild differently."""
    model = _build(cls)
    conv = model.conv
    with pytest.raises(
        lr.LowRankError, match=r"still calls the dense 'conv' through a reference that is not a submodule"
    ):
        lr.convert(model, rank=0.5, input_size="3x16x16", inplace=inplace)
    assert model.conv is conv and type(conv) is nn.Conv2d


def test_save_refuses_what_load_would_refuse(tmp_path):
    model = _convert(_build(SharedBlock), rank=0.5, init="random")
    with torch.no_grad():
        model.blocks[0][1].running_var[0] = -1.0
    with pytest.raises(lr.LowRankError, match=r"negative batch-norm variance in blocks.0.1.running_var"):
        lr.save(model, tmp_path / "a")
    with torch.no_grad():
        model.blocks[0][1].running_var[0] = 1.0
        model.head.weight[0, 0] = float("nan")
    with pytest.raises(lr.LowRankError, match=r"NaN/inf values \(1 tensors, e.g. head.weight\)"):
        lr.save(model, tmp_path / "a")
    assert not (tmp_path / "a").exists()


def test_a_forward_replaced_on_the_instance_stays_dense():
    model = _build(AttributeAlias)
    forward = model.c.forward
    model.c.forward = lambda x: forward(x) * 2
    converted = _convert(model, rank=0.5, init="random")
    assert "replaced on the instance" in lr.summary(converted).layer("c").reason
    assert type(converted.c) is nn.Conv2d


class _ShallowDeepcopy(AttributeAlias):
    def __deepcopy__(self, memo):
        return copy.copy(self)


def test_a_copy_that_shares_modules_with_the_original_is_refused():
    model = _build(_ShallowDeepcopy)
    conv = model.a
    with pytest.raises(lr.LowRankError, match=r"shares modules with the original .*inplace=True"):
        lr.convert(model, rank=0.5, input_size="3x16x16")
    assert model.a is conv and type(conv) is nn.Conv2d
