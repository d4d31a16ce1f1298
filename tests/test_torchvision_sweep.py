"""Every torchvision model converts and still runs, with outputs of the same structure.

Inputs are kept small (fixed-size models such as ViT and MViT need their 224); the heaviest models are
marked ``heavy`` (deselect locally with ``-m "not heavy"``; CI runs them).
"""

import pytest
import torch

import lowrank_tool as lr
from lowrank_tool.models import build_model, example_input, list_models

HEAVY = {
    "vit_h_14",
    "vit_l_16",
    "vit_l_32",
    "regnet_y_128gf",
    "regnet_y_32gf",
    "regnet_x_32gf",
    "convnext_large",
    "efficientnet_v2_l",
    "fasterrcnn_resnet50_fpn_v2",
    "maskrcnn_resnet50_fpn_v2",
    "keypointrcnn_resnet50_fpn",
    "mvit_v1_b",
    "mvit_v2_s",
    "swin3d_b",
    "raft_large",
    "s3d",
}
#: Models torch.fx cannot trace whole (data-dependent control flow, fx-unfriendly ops): forward hooks.
HOOKS_PATH = ("swin3d_", "raft_")
#: Families with no eligible convolution (only the patch-embedding stem reads the image).
NOTHING_TO_CONVERT = ("vit_", "swin_", "swin_v2", "mvit_", "swin3d_")


def small_size(name: str, task: str) -> tuple[int, ...]:
    if task in ("classification", "quantization"):
        if name.startswith(("vit_", "maxvit")):
            return (3, 224, 224)
        return (3, 128, 128) if "inception" in name else (3, 64, 64)
    if task == "detection":
        return (3, 128, 128)
    if task == "video":
        return (3, 16, 224, 224) if name.startswith(("mvit", "s3d")) else (3, 4, 64, 64)
    return (3, 128, 128) if task == "optical_flow" else (3, 64, 64)


def structure(out):
    if isinstance(out, torch.Tensor):
        return ("tensor", tuple(out.shape[:1]) + tuple(out.shape[1:]) if out.dim() else ())
    if isinstance(out, dict):
        return {k: structure(v) for k, v in out.items()}
    if isinstance(out, (list, tuple)):
        return [structure(v) for v in out]
    return type(out).__name__


ENTRIES = list_models()
PARAMS = [
    pytest.param(e, id=e.name, marks=[pytest.mark.heavy] if e.name in HEAVY else [])
    for e in ENTRIES
    if e.source == "torchvision"
]


def test_sweep_covers_all_tasks():
    assert len(PARAMS) == 121
    counts = {}
    for e in (e for e in ENTRIES if e.source == "torchvision"):
        counts[e.task] = counts.get(e.task, 0) + 1
    assert counts["classification"] == 80 and counts["segmentation"] == 6 and counts["detection"] == 12


@pytest.mark.parametrize("entry", PARAMS)
def test_model_converts_and_runs(entry):
    kwargs = (
        {"min_size": 128, "max_size": 128} if entry.task == "detection" and not entry.name.startswith("ssd") else {}
    )
    model = build_model(entry.name, **kwargs).eval()
    size = small_size(entry.name, entry.task)
    converted = lr.convert(model, rank=0.3, input_size=size).eval()
    plan = lr.summary(converted)
    x = example_input(entry.task, size, batch=1, seed=1)
    with torch.no_grad():
        out_dense = model(*x) if isinstance(x, tuple) else model(x)
        out_low = converted(*x) if isinstance(x, tuple) else converted(x)
    if entry.task != "detection":  # detections: the number of boxes depends on the weights
        assert structure(out_low) == structure(out_dense)
    else:
        assert [set(d) for d in out_low] == [set(d) for d in out_dense]
    expected = "hooks" if entry.task == "detection" or entry.name.startswith(HOOKS_PATH) else "fx"
    assert plan.trace["path"] == expected, plan.trace
    if entry.name.startswith(NOTHING_TO_CONVERT):
        assert not plan.converted_layers and any("nothing was converted" in n for n in plan.notes), plan.notes
    else:
        assert plan.converted_layers, plan.notes
        # each parameter counted once (a shared module or a tied weight is one)
        assert plan.totals()["params_before"] == sum(p.numel() for p in model.parameters())
        assert plan.totals()["params_after"] == sum(p.numel() for p in converted.parameters())
