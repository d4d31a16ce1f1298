"""The layout `convert` hands a model back in (``memory_format``), what the plan records, load restores and the
trainer keeps; models whose code needs the default layout, and video models whose 5-D kernels have none."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import TinyNet, run_cli
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lowrank_tool as lr
from lowrank_tool import LowRankError
from lowrank_tool.layers.memory_format import apply_memory_format, memory_format_name, resolve_memory_format


def _is_channels_last(model: nn.Module) -> bool:
    return memory_format_name(model) == "channels_last"


def test_convert_hands_a_low_rank_model_back_channels_last_and_the_same_function():
    torch.manual_seed(0)
    fast = lr.convert("resnet20", rank=0.5, input_size="3x16x16").eval()
    torch.manual_seed(0)
    plain = lr.convert("resnet20", rank=0.5, input_size="3x16x16", memory_format="contiguous").eval()
    assert _is_channels_last(fast) and lr.summary(fast).policy["memory_format"] == "channels_last"
    assert not _is_channels_last(plain) and lr.summary(plain).policy["memory_format"] == "contiguous"
    assert all(p.is_contiguous() for p in plain.parameters())
    x = torch.randn(4, 3, 16, 16)  # NCHW images: a channels-last model takes them as they are
    with torch.no_grad():
        torch.testing.assert_close(fast(x), plain(x), rtol=1e-4, atol=1e-5)  # other kernels, float round-off


def test_auto_keeps_dense_and_video_models_in_the_default_layout():
    dense = lr.convert("resnet20", dense=True, input_size="3x16x16")
    assert lr.summary(dense).policy["memory_format"] == "contiguous"
    assert all(p.is_contiguous() for p in dense.parameters())
    video = lr.convert("r3d_18", rank=0.3, input_size="3x4x32x32", num_classes=4)
    assert lr.summary(video).policy["memory_format"] == "contiguous"
    # asked for explicitly, channels-last lays out the 4-D tensors only (Module.to would raise on 5-D ones)
    apply_memory_format(video, torch.channels_last)
    assert all(p.is_contiguous() for p in video.parameters() if p.dim() != 4)
    assert resolve_memory_format("auto", video) == torch.contiguous_format
    with pytest.raises(LowRankError, match="memory format 'nhwc' is not known"):
        resolve_memory_format("nhwc", video)


def test_auto_leaves_a_model_it_does_not_make_channels_last_in_the_layout_it_came_in():
    torch.manual_seed(0)
    users = lr.build_model("resnet20").to(memory_format=torch.channels_last)
    dense = lr.convert(users, dense=True, input_size="3x16x16")
    assert memory_format_name(dense) == "channels_last" == lr.summary(dense).policy["memory_format"]
    forced = lr.convert(users, dense=True, input_size="3x16x16", memory_format="contiguous")
    assert all(p.is_contiguous() for p in forced.parameters())
    assert memory_format_name(users) == "channels_last"  # convert did not touch its input


class ViewsAFeatureMap(nn.Module):
    """Flattens a feature map with .view(), as older model code does: that needs the default layout."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(torch.relu(self.conv1(x)))
        return self.fc(x.view(x.size(0), -1))


def test_a_model_that_needs_the_default_layout_falls_back_under_auto_and_is_an_error_when_asked():
    model = lr.convert(ViewsAFeatureMap(), rank=0.5, input_size=(3, 8, 8))
    assert lr.summary(model).policy["memory_format"] == "contiguous"
    (note,) = [n for n in lr.summary(model).notes if "memory layout" in n]
    assert "does not run channels-last" in note and "view size is not compatible" in note
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 10)
    with pytest.raises(
        LowRankError, match="runs in the default layout but not channels-last .*use --memory-format contiguous"
    ):
        lr.convert(ViewsAFeatureMap(), rank=0.5, input_size=(3, 8, 8), memory_format="channels_last")
    with pytest.raises(LowRankError, match="memory format 'nhwc' is not known; use one of: auto, channels_last"):
        lr.convert(TinyNet(), rank=0.5, input_size=(3, 16, 16), memory_format="nhwc")


def test_save_and_load_restore_the_recorded_layout(tmp_path):
    for layout in ("channels_last", "contiguous"):
        model = lr.convert("resnet20", rank=0.5, input_size="3x16x16", memory_format=layout)
        lr.save(model, tmp_path / layout)
        assert json.loads((tmp_path / layout / "plan.json").read_text())["policy"]["memory_format"] == layout
        assert memory_format_name(lr.load(tmp_path / layout)) == layout


@pytest.mark.parametrize("value", ["bogus", ["channels_last"], 3])
def test_a_plan_with_a_bad_layout_is_refused_in_one_line(tmp_path, value):
    lr.save(lr.convert("resnet20", rank=0.5, input_size="3x16x16"), tmp_path / "a")
    plan = tmp_path / "a" / "plan.json"
    data = json.loads(plan.read_text())
    data["policy"]["memory_format"] = value
    plan.write_text(json.dumps(data))
    with pytest.raises(
        LowRankError, match=r"policy.memory_format .* is not a layout; it must be one of: channels_last"
    ):
        lr.load(tmp_path / "a")


def test_a_plan_without_a_layout_loads_in_the_default_one(tmp_path):
    lr.save(lr.convert("resnet20", rank=0.5, input_size="3x16x16"), tmp_path / "a")
    plan = tmp_path / "a" / "plan.json"
    data = json.loads(plan.read_text())
    del data["policy"]["memory_format"]  # written before the option existed
    plan.write_text(json.dumps(data))
    assert all(p.is_contiguous() for p in lr.load(tmp_path / "a").parameters())


def test_the_trainer_hands_the_model_back_in_the_layout_it_came_in():
    x, y = torch.randn(32, 3, 16, 16), torch.arange(32) % 10
    train = DataLoader(TensorDataset(x, y), batch_size=16)
    for layout in ("channels_last", "contiguous"):
        model = lr.convert(TinyNet(), rank=0.5, input_size=(3, 16, 16), memory_format=layout)
        lr.fit(model, train, train, epochs=1, memory_format="contiguous", progress=False)
        assert memory_format_name(model) == layout


def test_a_converted_video_model_trains_on_the_cpu_with_the_default_layout():
    """Module.to(memory_format=channels_last) raises on 5-D kernels; auto picked it for any low-rank model."""
    model = nn.Sequential(
        nn.Conv3d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv3d(16, 16, 3, padding=1), nn.AdaptiveAvgPool3d(1),
        nn.Flatten(), nn.Linear(16, 4),
    )  # fmt: skip
    model = lr.convert(model, rank=0.5, example_input=torch.randn(1, 3, 4, 8, 8))
    x, y = torch.randn(8, 3, 4, 8, 8), torch.arange(8) % 4
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    result = lr.fit(model, loader, loader, epochs=1, progress=False)
    assert len(result.history) == 1 and result.history[0]["train_loss"] > 0


@pytest.mark.parametrize("name", ["resnet18", "convnext_atto", "efficientnet_b0"])
def test_timm_models_convert_channels_last_and_compute_the_same(name):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    base = timm.create_model(name, pretrained=False, num_classes=10).eval()
    fast = lr.convert(base, rank=0.5, input_size=(3, 64, 64)).eval()
    torch.manual_seed(0)
    plain = lr.convert(base, rank=0.5, input_size=(3, 64, 64), memory_format="contiguous").eval()
    plain.load_state_dict(fast.state_dict())
    assert lr.summary(fast).policy["memory_format"] == "channels_last" and _is_channels_last(fast)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), plain(x), rtol=1e-3, atol=1e-4)


@pytest.mark.filterwarnings("ignore::lowrank_tool.LowRankWarning")
def test_hugging_face_models_convert_channels_last_and_compute_the_same():
    hf = pytest.importorskip("transformers")
    config = hf.ConvNextConfig(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], num_labels=10)
    base = hf.ConvNextForImageClassification(config).eval()
    fast = lr.convert(base, rank=0.5, input_size=(3, 64, 64)).eval()
    plain = lr.convert(base, rank=0.5, input_size=(3, 64, 64), memory_format="contiguous").eval()
    plain.load_state_dict(fast.state_dict())
    assert lr.summary(fast).policy["memory_format"] == "channels_last" and _is_channels_last(fast)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fast(x).logits, plain(x).logits, rtol=1e-3, atol=1e-4)


def test_cli_memory_format_reaches_the_plan_and_a_bad_value_is_one_line(tmp_path, capsys, monkeypatch):
    out = tmp_path / "a [1] ü"
    code, _, err = run_cli(
        ["convert", "resnet20", "-r", "0.5", "--memory-format", "contiguous", "-o", out], capsys, monkeypatch
    )
    assert code == 0, err
    assert json.loads((out / "plan.json").read_text())["policy"]["memory_format"] == "contiguous"
    code, out_text, err = run_cli(
        ["convert", "resnet20", "--memory-format", "nhwc", "-o", tmp_path / "b"], capsys, monkeypatch
    )
    assert code == 2 and "'nhwc' is not one of" in err and "Traceback" not in out_text + err
    assert not (tmp_path / "b").exists()


def test_layout_name_inverts_the_names():
    from lowrank_tool.layers.memory_format import MEMORY_FORMAT_NAMES, layout_name

    for name, fmt in MEMORY_FORMAT_NAMES.items():
        assert layout_name(fmt) == name
    assert layout_name(torch.preserve_format) == "contiguous"
