"""Models no one here wrote: timm architectures and Hugging Face CNNs built from config (no downloads).

For every model: at full rank with ``init="decompose"`` the converted model computes what the dense one
computes (relative max error <= 1e-4; every layer that would break that stays dense with a reason), and
at rank 0.5 the converted model runs and its ONNX export verifies against PyTorch. The sweep is marked
``foreign`` (deselect locally with ``-m "not foreign"``; CI runs it).
"""

from __future__ import annotations

import warnings

import pytest
import timm
import torch
import transformers as hf
from torch import nn

import lowrank_tool as lr
from lowrank_tool.layers import LowRankConv

#: name → (kwargs, per-sample input). At least 40 architectures: plain and deep CNNs, weight-standardised
#: convs (BiT, NF-nets), TF "same" padding (tf_*), re-parameterisable nets, hybrid conv/attention nets.
TIMM = {
    "resnet18": ({}, 64),
    "resnet26d": ({}, 64),
    "seresnext26d_32x4d": ({}, 64),
    "resnet50d": ({}, 64),
    "resnetv2_50x1_bit": ({}, 64),
    "nf_resnet26": ({}, 64),
    "nfnet_l0": ({}, 64),
    "dm_nfnet_f0": ({}, 64),
    "regnetx_002": ({}, 64),
    "regnety_002": ({}, 64),
    "dla34": ({}, 64),
    "densenet121": ({}, 64),
    "hrnet_w18_small": ({}, 64),
    "cspresnet50": ({}, 64),
    "cs3darknet_focus_s": ({}, 64),
    "darknet53": ({}, 64),
    "ghostnet_100": ({}, 64),
    "ghostnetv2_100": ({}, 64),
    "mobilenetv3_small_050": ({}, 64),
    "mnasnet_small": ({}, 64),
    "mobilenetv2_050": ({}, 64),
    "mobilenetv4_conv_small": ({}, 64),
    "efficientnet_b0": ({}, 64),
    "tf_efficientnet_b0": ({}, 64),
    "tf_mobilenetv3_small_100": ({}, 64),
    "tf_mixnet_s": ({}, 66),
    "mixnet_s": ({}, 64),
    "tf_efficientnetv2_b0": ({}, 66),
    "convnext_atto": ({}, 64),
    "convnextv2_atto": ({}, 64),
    "res2net50_14w_8s": ({}, 64),
    "resnest14d": ({}, 64),
    "rexnet_100": ({}, 64),
    "lcnet_050": ({}, 64),
    "tinynet_e": ({}, 64),
    "hardcorenas_a": ({}, 64),
    "fbnetc_100": ({}, 64),
    "selecsls42b": ({}, 64),
    "ese_vovnet19b_dw": ({}, 64),
    "gernet_s": ({}, 64),
    "repvgg_a0": ({}, 64),
    "mobileone_s0": ({}, 64),
    "fastvit_t8": ({}, 64),
    "repghostnet_050": ({}, 64),
    "repvit_m1": ({}, 64),
    "edgenext_xx_small": ({}, 64),
    "mobilevit_xxs": ({}, 64),
    "mobilevitv2_050": ({}, 64),
    "efficientformer_l1": ({}, 224),
    "poolformer_s12": ({}, 64),
    "coatnet_0_rw_224": ({}, 224),
    "efficientvit_b0": ({}, 64),
    "xception41": ({}, 64),
    "dpn48b": ({}, 64),
    "hgnetv2_b0": ({}, 64),
    "inception_v3": ({}, 96),
    "fasternet_t0": ({}, 64),
    "tresnet_m": ({}, 64),
}
#: Weight-standardised convs (StdConv2d, ScaledStdConv2d[Same]): each stays dense with that reason.
STANDARDISED = {"resnetv2_50x1_bit", "nf_resnet26", "nfnet_l0", "dm_nfnet_f0"}
#: ... and nf_resnet26 has nothing else (no SE): nothing converts, and the sweep says so.
NOTHING_TO_CONVERT = {"nf_resnet26"}
#: Dynamic "same" padding convs (timm's Conv2dSame) that are converted, the pad in front of the chain.
#: (In tf_efficientnet/tf_mobilenetv3/tf_mixnet every Conv2dSame is depthwise or the stem: dense.)
SAME_PADDING = {"tf_efficientnetv2_b0"}
#: Their dense export already differs from PyTorch in ONNX Runtime (4 % relative, TorchScript and
#: dynamo alike; a single StdConv2d exports exactly): not a conversion matter, checked to stay so.
DENSE_EXPORT_DIFFERS = {"resnetv2_50x1_bit"}
HEAVY = {"coatnet_0_rw_224", "efficientformer_l1", "darknet53", "tresnet_m"}


def _hf_cases() -> dict[str, nn.Module]:
    """Small Hugging Face CNNs built from their configs (random weights, logits only)."""
    common = {"num_labels": 10}
    return {
        "hf-resnet": hf.ResNetForImageClassification(
            hf.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], **common)
        ),
        "hf-convnext": hf.ConvNextForImageClassification(
            hf.ConvNextConfig(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], **common)
        ),
        "hf-regnet": hf.RegNetForImageClassification(
            hf.RegNetConfig(
                embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], groups_width=8, **common
            )
        ),
        "hf-mobilenet_v2": hf.MobileNetV2ForImageClassification(hf.MobileNetV2Config(depth_multiplier=0.35, **common)),
        "hf-efficientnet": hf.EfficientNetForImageClassification(
            hf.EfficientNetConfig(
                width_coefficient=0.25, depth_coefficient=0.2, image_size=64, hidden_dim=320, **common
            )
        ),
        "hf-bit": hf.BitForImageClassification(
            hf.BitConfig(embedding_size=16, num_groups=8, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], **common)
        ),
    }


def _timm(name: str) -> tuple[nn.Module, int]:
    kwargs, size = TIMM[name]
    return timm.create_model(name, pretrained=False, **kwargs).eval(), size


def _logits(out):
    if hasattr(out, "logits"):  # a Hugging Face ModelOutput
        return out.logits
    return out[0] if isinstance(out, (tuple, list)) else out


def rel_max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))


def _full_rank_matches(model: nn.Module, size: int, name: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lr.LowRankWarning)
        converted = lr.convert(
            model, rank=1.0, round_to=1, allow_growth=True, init="decompose", input_size=(3, size, size)
        ).eval()
    plan = lr.summary(converted)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, got = _logits(model(x)), _logits(converted(x))
    assert rel_max_error(ref, got) <= 1e-4, (name, rel_max_error(ref, got))
    assert all(layer.converted or layer.reason for layer in plan.layers)
    # each parameter counted once, before and after (shared modules and tied weights included)
    assert plan.totals()["params_before"] == sum(p.numel() for p in model.parameters()), name
    assert plan.totals()["params_after"] == sum(p.numel() for p in converted.parameters()), name
    return converted, plan


def _reloads_exactly(converted: nn.Module, fresh: nn.Module, size: int, directory) -> None:
    """save → load on a freshly built dense model gives the converted model's outputs bit for bit."""
    lr.save(converted, directory)
    loaded = lr.load(directory, model=fresh).eval()
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(_logits(loaded(x)), _logits(converted(x)))


def _params(names, heavy=()):
    return [pytest.param(n, id=n, marks=[pytest.mark.heavy] if n in heavy else []) for n in names]


def test_the_sweep_is_wide():
    assert len(TIMM) >= 40
    assert STANDARDISED <= set(TIMM) and SAME_PADDING <= set(TIMM)


@pytest.mark.foreign
@pytest.mark.parametrize("name", _params(TIMM, HEAVY))
def test_timm_full_rank_decomposition_equals_dense(name, tmp_path):
    model, size = _timm(name)
    converted, plan = _full_rank_matches(model, size, name)
    if plan.converted_layers:
        _reloads_exactly(converted, _timm(name)[0], size, tmp_path / "art")
    assert bool(plan.converted_layers) == (name not in NOTHING_TO_CONVERT), [layer.reason for layer in plan.layers]
    standardised = [layer for layer in plan.layers if "StdConv2d" in (layer.conv_class or "")]
    assert bool(standardised) == (name in STANDARDISED)
    assert all(
        not layer.converted and layer.reason.startswith(("weight-standardised", "grouped")) for layer in standardised
    )
    assert any(layer.reason.startswith("weight-standardised") for layer in standardised) == (name in STANDARDISED)
    same = [layer for layer in plan.converted_layers if layer.dynamic_same]
    assert bool(same) == (name in SAME_PADDING)
    assert all(layer.conv_class == "timm.layers.conv2d_same.Conv2dSame" for layer in same)


@pytest.mark.foreign
@pytest.mark.parametrize(
    "name", _params(TIMM, HEAVY | {"hrnet_w18_small", "res2net50_14w_8s", "densenet121", "inception_v3"})
)
def test_timm_rank_half_runs_and_exports(name, tmp_path):
    model, size = _timm(name)
    converted = lr.convert(model, rank=0.5, input_size=(3, size, size)).eval()
    with torch.no_grad():
        out = converted(torch.randn(1, 3, size, size))
    assert torch.isfinite(_logits(out)).all()
    if name in NOTHING_TO_CONVERT:
        return
    assert lr.summary(converted).converted_layers
    if name in DENSE_EXPORT_DIFFERS:
        with pytest.raises(lr.VerificationError):
            lr.export_onnx(
                lr.convert(model, dense=True, input_size=(3, size, size)),
                tmp_path / "d.onnx",
                input_size=(3, size, size),
            )
        return
    result = lr.export_onnx(converted, tmp_path / "m.onnx", input_size=(3, size, size))
    assert result.verification.passed, result.verification


@pytest.mark.foreign
@pytest.mark.parametrize("name", list(_hf_cases()))
def test_hugging_face_full_rank_equals_dense_and_rank_half_exports(name, tmp_path):
    model = _hf_cases()[name].eval()
    converted, plan = _full_rank_matches(model, 64, name)
    with pytest.warns(lr.LowRankWarning, match="save_pretrained"):
        half = lr.convert(model, rank=0.5, input_size=(3, 64, 64)).eval()
    if name == "hf-bit":  # every conv is weight-standardised: all stay dense, with that reason
        assert all("weight-standardised" in layer.reason for layer in plan.layers if not layer.converted and layer.kind)
        assert not lr.summary(half).converted_layers
        return
    assert lr.summary(half).converted_layers
    result = lr.export_onnx(half, tmp_path / "m.onnx", input_size=(3, 64, 64))
    assert result.verification.passed
    # The supported round trip: lowrank_tool.save / load with a fresh dense model of the same config.
    lr.save(half, tmp_path / "art")
    fresh = _hf_cases()[name]
    loaded = lr.load(tmp_path / "art", model=fresh).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(_logits(loaded(x)), _logits(half(x)), rtol=1e-5, atol=1e-6)


@pytest.mark.foreign
def test_timm_reset_classifier_on_converted_models():
    for name in ("resnet18", "efficientnet_b0", "mobilenetv3_small_050", "ghostnet_100", "convnext_atto"):
        converted = lr.convert(timm.create_model(name), rank=0.5, input_size=(3, 64, 64)).eval()
        converted.reset_classifier(7)
        with torch.no_grad():
            assert converted(torch.randn(1, 3, 64, 64)).shape == (1, 7), name


@pytest.mark.foreign
@pytest.mark.parametrize("name", ["repvgg_a0", "mobileone_s0", "fastvit_t8", "repghostnet_050"])
def test_timm_reparameterize_model_on_converted_model(name):
    """Reparameterisation reads the converted convs' weight/kernel_size and fuses them into a dense conv."""
    from timm.utils.model import reparameterize_model

    converted = lr.convert(timm.create_model(name), rank=0.5, input_size=(3, 64, 64)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = converted(x)
        fused = reparameterize_model(converted)
        after = fused(x)
    assert rel_max_error(before, after) <= 1e-4


@pytest.mark.foreign
def test_timm_features_only_converts_and_matches_at_full_rank():
    model = timm.create_model("resnet18", features_only=True, out_indices=(1, 2, 3, 4)).eval()
    converted = lr.convert(
        model, rank=1.0, round_to=1, allow_growth=True, init="decompose", input_size=(3, 64, 64)
    ).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref, got = model(x), converted(x)
    assert [t.shape for t in got] == [t.shape for t in ref]
    assert max(rel_max_error(a, b) for a, b in zip(ref, got, strict=True)) <= 1e-4
    assert any(isinstance(m, LowRankConv) for m in converted.modules())


@pytest.mark.foreign
def test_edgenext_reads_the_converted_weight_in_its_forward():
    """timm's positional encoding reads ``token_projection.weight.device`` on every call."""
    converted = lr.convert(timm.create_model("edgenext_xx_small"), rank=0.5, input_size=(3, 64, 64)).eval()
    with torch.no_grad():
        assert converted(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
