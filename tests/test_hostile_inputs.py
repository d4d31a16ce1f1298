"""Hostile and clumsy inputs, one row each: the command, what it gets, the exit code, a fragment the one-line
message must contain, and the files that must not exist afterwards (nothing half-written).

Every row runs the `lowrank` command in-process. The files it reads are built once in ``world``: a good
artifact and its ONNX file, and broken copies of them (a tampered plan.json, an empty or foreign file).
Faults that need a real process (signals, concurrent runs, locks) are in test_hardening.py and test_train.py.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import lowrank_tool as lr

_PLAN_EDITS = {
    "bad_kwargs": lambda d: d["base_model"].update(kwargs={"bogus": 1}),
    "list_kwargs": lambda d: d["base_model"].update(kwargs=[1, 2]),
    "ranks_abc": lambda d: _first_converted(d).update(ranks="abc"),
    "ranks_huge": lambda d: _first_converted(d).update(ranks=[100000, 100000]),
    "ranks_short": lambda d: _first_converted(d).update(ranks=[8]),
    "ranks_zero": lambda d: _first_converted(d).update(ranks=[0, 8]),
    "ranks_missing": lambda d: _first_converted(d).update(ranks=None),
    "kernel_bad": lambda d: _first_converted(d).update(kernel_size="3x3"),
    "channels_float": lambda d: _first_converted(d).update(in_channels=16.5),
    "format_bogus": lambda d: _first_converted(d).update(format="bogus"),
    "input_abc": lambda d: d.update(input_size="abc"),
    "input_neg": lambda d: d.update(input_size=[3, -16, 16]),
    "input_2d": lambda d: d.update(input_size=[16, 16]),
    "schema0": lambda d: d.update(schema_version=0),
    "schema_new": lambda d: d.update(schema_version=99),
    "schema_str": lambda d: d.update(schema_version="1"),
    "schema_bool": lambda d: d.update(schema_version=True),
    "kind_other": lambda d: d.update(kind="something.else"),
    "layers_missing": lambda d: d.pop("layers"),
    "model_unknown": lambda d: d["base_model"].update(name="nosuchnet"),
    "model_factory": lambda d: d["base_model"].update(source="import", name="os:system"),
    "model_download": lambda d: d["base_model"]["kwargs"].update(weights="DEFAULT"),
    "layer_renamed": lambda d: _first_converted(d).update(name="nosuch.layer"),
    "format_int": lambda d: _first_converted(d).update(format=5),
    "padding_int": lambda d: _first_converted(d).update(padding=5),
    "padding_mode_bogus": lambda d: _first_converted(d).update(padding_mode="bogus"),
    "kind_linear": lambda d: _first_converted(d).update(kind="Linear"),
    "bias_str": lambda d: _first_converted(d).update(bias="yes"),
    "params_neg": lambda d: _first_converted(d).update(params_before=-1),
    "macs_str": lambda d: _first_converted(d).update(macs_after="x"),
    "error_str": lambda d: _first_converted(d).update(error="bad"),
    "notes_int": lambda d: d.update(notes=["x", 5]),
    "other_inf": lambda d: d.update(other_params=float("inf")),
    "version_long": lambda d: d.update(toolkit_version="9" * 100_000),
    # accepted (display-only values), but shown as text, never as markup
    "markup": lambda d: (d["trace"].update(path="[/bold]"), d["policy"].update(rank="[/dim]", round_to="8")),
}


class _Evil:
    """Pickles as a call to os.system: what a hostile train_state.pt would carry."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch '{self.path}'",))


def _write_idx(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _first_converted(data):
    return next(entry for entry in data["layers"] if entry["format"] != "dense")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = tmp_path_factory.mktemp("world")
    art = w / "art"
    lr.save(lr.convert("resnet20", rank=0.5, input_size=(3, 16, 16)), art)
    lr.export_onnx(lr.load(art), w / "m.onnx")
    (w / "empty.onnx").write_bytes(b"")
    (w / "garbage.onnx").write_bytes(b"\x00\x01garbage")
    (w / "notonnx.txt").write_text("hello")
    (w / "empty.yaml").write_text("")
    (w / "list.yaml").write_text("- 1\n- 2\n")
    (w / "bad.yaml").write_text("model: [unclosed\n")
    (w / "unknown_key.yaml").write_text("model: resnet20\nepochs: 1\nbogus: 3\n")
    bad_recipes = {
        "convert_int": "convert: 5\n",
        "convert_list": "convert: [1, 2]\n",
        "key_int": "1: 2\n",
        "dense_no": "dense: 'no'\n",
        "output_int": "output: 5\n",
        "exclude_int": "convert:\n  exclude: 5\n",
        "input_int": "convert:\n  input_size: 5\n",
        "input_words": "convert:\n  input_size: [3, a, 16]\n",
        "layer_rank_int": "convert:\n  layer_rank: 5\n",
        "milestones_int": "milestones: 5\n",
        "grad_clip_inf": "grad_clip: .inf\n",
        "deep": "convert: " + "[" * 5000 + "]" * 5000 + "\n",
    }
    for name, body in bad_recipes.items():
        (w / f"r_{name}.yaml").write_text(f"model: resnet20\nepochs: 1\ndata: digits\n{body}")
    (w / "r_latin1.yaml").write_bytes(b"\xff\xfemodel: resnet20\n")
    for name, edit in _PLAN_EDITS.items():
        shutil.copytree(art, w / name)
        data = json.loads((w / name / "plan.json").read_text())
        edit(data)
        (w / name / "plan.json").write_text(json.dumps(data))
    raw_plans = {
        "plan_notjson": "{not json",
        "plan_binary": "\x00\xff\xfe",
        "plan_list": "[]",
        "plan_deep": "[" * 100_000 + "]" * 100_000,
        "plan_bigint": '{"kind": "lowrank_tool.plan", "schema_version": 1' + "0" * 5000 + "}",
    }
    for name, content in raw_plans.items():
        shutil.copytree(art, w / name)
        (w / name / "plan.json").write_text(content, errors="surrogateescape")
    shutil.copytree(art, w / "art_self")  # a copy that the rows writing over their own input would destroy
    shutil.copytree(art, w / "no_weights")
    (w / "no_weights" / "model.safetensors").unlink()
    shutil.copytree(art, w / "bad_weights")
    (w / "bad_weights" / "model.safetensors").write_bytes(b"not safetensors")
    shutil.copytree(art, w / "weights_dir")
    (w / "weights_dir" / "model.safetensors").unlink()
    (w / "weights_dir" / "model.safetensors").mkdir()
    shutil.copytree(art, w / "no_plan")
    (w / "no_plan" / "plan.json").unlink()
    (w / "file_not_dir").write_text("x")
    shutil.copytree(art, w / "pickled_state")
    # a pickle that would run code on load (os.system as its reducer): refused by weights_only, never called
    torch.save({"version": 1, "model": _Evil(w / "PWNED")}, w / "pickled_state" / "train_state.pt")
    shutil.copytree(art, w / "no_nbt")
    tensors = load_file(str(w / "no_nbt" / "model.safetensors"))
    save_file(
        {k: v for k, v in tensors.items() if not k.endswith("num_batches_tracked")}, w / "no_nbt" / "model.safetensors"
    )
    fashion = w / "fashion_counts" / "FashionMNIST" / "raw"
    for split in ("train", "t10k"):
        _write_idx(fashion / f"{split}-images-idx3-ubyte", np.zeros((6, 28, 28)))
        _write_idx(fashion / f"{split}-labels-idx1-ubyte", np.zeros(6 if split == "t10k" else 4))
    import onnx

    proto = onnx.load(str(w / "m.onnx"))
    next(p for p in proto.metadata_props if p.key == "lowrank_tool.plan").value = "{not json"
    onnx.save(proto, str(w / "badmeta.onnx"))
    next(p for p in proto.metadata_props if p.key == "lowrank_tool.plan").value = "[" * 50_000 + "]" * 50_000
    onnx.save(proto, str(w / "deepmeta.onnx"))
    proto = onnx.load(str(w / "m.onnx"))
    next(p for p in proto.metadata_props if p.key == "lowrank_tool.input_size").value = "abc"
    onnx.save(proto, str(w / "badsize.onnx"))
    return w


# (id, argv with {w} for the world directory, exit code, message fragment, paths that must not exist afterwards)
ROWS = [
    # -- convert: model, rank, sizes, patterns ----------------------------------------------------------------
    ("convert-unknown-model", "convert nosuchmodel", 2, "unknown model 'nosuchmodel'", []),
    ("convert-typo-model", "convert resnet2O", 2, "unknown model", []),
    ("convert-rank-0", "convert resnet20 --rank 0", 2, "rank 0 is not positive", []),
    ("convert-rank-neg", "convert resnet20 --rank -1", 2, "not positive", []),
    ("convert-rank-1.5", "convert resnet20 --rank 1.5", 2, "fraction above 1", []),
    ("convert-rank-inf", "convert resnet20 --rank inf", 2, "not a finite number", []),
    ("convert-rank-nan", "convert resnet20 --rank nan", 2, "not a finite number", []),
    ("convert-rank-abc", "convert resnet20 --rank abc", 2, "'abc' is not a number", []),
    ("convert-rank-empty", "convert resnet20 --rank ''", 2, "is not a number", []),
    ("convert-energy-1.5", "convert resnet20 --energy 1.5", 2, "the energy must be a fraction in (0, 1]", []),
    ("convert-energy-no-weights", "convert resnet20 --energy 0.9", 2, "computed from trained weights", []),
    ("convert-energy-and-rank", "convert resnet20 --energy 0.9 --rank 0.3", 2, "exclude each other", []),
    ("convert-erank-no-weights", "convert resnet20 --rank erank", 2, "computed from trained weights", []),
    ("convert-format", "convert resnet20 --format tt", 2, "'tt' is not one of", []),
    ("convert-init", "convert resnet20 --init svd", 2, "'svd' is not one of", []),
    ("convert-policy", "convert resnet20 --policy fast", 2, "'fast' is not one of", []),
    ("convert-latency-engine", "convert resnet20 --policy latency --engine tvm", 2, "'tvm' is not one of", []),
    ("convert-unknown-option", "convert resnet20 --nosuchoption", 2, "No such option: --nosuchoption", []),
    ("convert-missing-model", "convert", 2, "Missing argument", []),
    ("convert-round-to-0", "convert resnet20 --round-to 0", 2, "round_to 0 must be a positive integer", []),
    ("convert-round-to-abc", "convert resnet20 --round-to abc", 2, "should be a valid integer", []),
    ("convert-target-params-2", "convert resnet20 --target-params 2", 2, "must be a fraction in (0, 1)", []),
    ("convert-target-params-0", "convert resnet20 --target-params 0", 2, "must be a fraction in (0, 1)", []),
    ("convert-target-macs-neg", "convert resnet20 --target-macs -0.5", 2, "must be a fraction in (0, 1)", []),
    ("convert-two-budgets", "convert resnet20 --target-params 0.5 --target-macs 0.5", 2, "at most one of", []),
    (
        "convert-budget-and-rank",
        "convert resnet20 --target-params 0.5 --rank 0.3",
        2,
        "give either rank or target_params",
        [],
    ),
    (
        "convert-budget-unreachable",
        "convert resnet20 --target-params 0.001 --input-size 3x16x16",
        2,
        "cannot be met",
        [],
    ),
    ("convert-input-abc", "convert resnet20 --input-size abc", 2, "is malformed", []),
    ("convert-input-zero", "convert resnet20 --input-size 3x0x16", 2, "has a zero dimension", []),
    ("convert-input-2d", "convert resnet20 --input-size 16x16", 2, "is malformed", []),
    ("convert-input-huge", "convert resnet20 --input-size 3x99999x99999", 2, "too large to trace", []),
    ("convert-input-channels", "convert resnet20 --input-size 5x16x16", 2, "does not run on input size 5x16x16", []),
    ("convert-input-fixed-size", "convert vit_b_16 --input-size 3x32x32", 2, "does not run on input size 3x32x32", []),
    (
        "convert-exclude-nothing",
        "convert resnet20 --input-size 3x16x16 --exclude nosuchlayer",
        2,
        "match no convolution",
        [],
    ),
    ("convert-exclude-bad-regex", "convert resnet20 --exclude 're:[unclosed'", 2, "not a valid regular expression", []),
    (
        "convert-exclude-everything",
        "convert resnet20 --input-size 3x16x16 --exclude 're:.*'",
        2,
        "every convertible layer is excluded",
        [],
    ),
    (
        "convert-layer-rank-markup",
        "convert resnet20 --input-size 3x16x16 --layer-rank 're:[/x]=8'",
        2,
        "'re:[/x]' match no convolution",
        [],
    ),
    ("convert-layer-rank-abc", "convert resnet20 --layer-rank layer1.0.conv1=abc", 2, "is not a number", []),
    ("convert-layer-rank-no-eq", "convert resnet20 --layer-rank layer1.0.conv1", 2, "layer-rank", []),
    ("convert-dense-and-rank", "convert resnet20 --dense --rank 0.5", 2, "dense converts nothing", []),
    ("convert-output-exists", "convert resnet20 --input-size 3x16x16 -o {w}/art", 2, "already exists", []),
    (
        "convert-output-is-file",
        "convert resnet20 --input-size 3x16x16 -o {w}/file_not_dir --force",
        2,
        "not a directory",
        [],
    ),
    ("convert-weights-missing", "convert resnet20 --weights {w}/nosuch.pt --init decompose", 2, "do not exist", []),
    (
        "convert-weights-text",
        "convert resnet20 --weights {w}/notonnx.txt --init decompose",
        2,
        "neither a .safetensors file nor a PyTorch checkpoint",
        [],
    ),
    (
        "convert-weights-bad-safetensors",
        "convert resnet20 --weights {w}/bad_weights/model.safetensors --init decompose",
        2,
        "not a readable safetensors file",
        [],
    ),
    (
        "convert-weights-lowrank-dir",
        "convert resnet20 --weights {w}/art --init decompose",
        2,
        "holds a low-rank model",
        [],
    ),
    ("convert-weights-random-init", "convert resnet20 --weights {w}/art", 2, "only used to decompose", []),
    ("convert-num-classes-0", "convert resnet20 --num-classes 0", 2, "num_classes 0 must be a positive integer", []),
    ("convert-model-arg-no-eq", "convert resnet20 --model-arg foo", 2, "is not KEY=VALUE", []),
    ("convert-model-arg-twice", "convert resnet20 --model-arg a=1 --model-arg a=2", 2, "is given twice", []),
    ("convert-model-arg-unknown", "convert resnet20 --model-arg bogus=1", 2, "unexpected keyword argument 'bogus'", []),
    ("convert-model-arg-conflict", "convert resnet20 --num-classes 10 --model-arg num_classes=5", 2, "disagree", []),
    ("convert-factory-needs-arg", "convert os:system", 2, "missing required argument", []),
    ("convert-factory-no-module", "convert :Net", 2, "is not 'package.module:factory'", []),
    ("convert-factory-bad-path", "convert 'os.:x'", 2, "is not 'package.module:factory'", []),
    ("convert-factory-missing", "convert nosuchpkg.mod:make", 2, "cannot import 'nosuchpkg.mod:make'", []),
    ("convert-factory-not-callable", "convert os:sep", 2, "is not callable", []),
    ("convert-factory-not-module", "convert builtins:dict", 2, "returned", []),
    ("convert-timm-spelling", "convert timm:create_model", 2, "timm/NAME", []),
    (
        "convert-speedup-below-1",
        "convert resnet20 --policy latency --target-speedup 0.5",
        2,
        "must be a number above 1",
        [],
    ),
    ("convert-speedup-no-policy", "convert resnet20 --target-speedup 2", 2, "needs --policy latency", []),
    (
        "convert-threads-0",
        "convert resnet20 --policy latency --threads 0",
        2,
        "latency_threads 0 must be a positive integer",
        [],
    ),
    (
        "convert-batch-0",
        "convert resnet20 --policy latency --batch 0",
        2,
        "latency_batch 0 must be a positive integer",
        [],
    ),
    # -- layers and models ---------------------------------------------------------------------------------------
    ("layers-unknown-model", "layers nosuchmodel", 2, "unknown model", []),
    ("layers-input-1d", "layers resnet20 --input-size 1x1", 2, "is malformed", []),
    ("layers-model-arg", "layers resnet20 --model-arg x", 2, "is not KEY=VALUE", []),
    ("models-task", "models --task nosuchtask", 2, "unknown task 'nosuchtask'", []),
    ("models-source", "models --source nosuch", 2, "unknown source 'nosuch'", []),
    ("unknown-command", "nosuchcommand", 2, "No such command 'nosuchcommand'", []),
    # -- inspect: what an artifact directory can hold -----------------------------------------------------------
    ("inspect-missing", "inspect {w}/nosuchdir", 2, "is not a directory", []),
    ("inspect-a-file", "inspect {w}/m.onnx", 2, "is not a directory", []),
    ("inspect-no-plan", "inspect {w}/no_plan", 2, "plan.json does not exist", []),
    ("inspect-no-weights", "inspect {w}/no_weights", 2, "model.safetensors does not exist", []),
    ("inspect-bad-weights", "inspect {w}/bad_weights", 2, "is corrupt or not a safetensors file", []),
    ("inspect-plan-not-json", "inspect {w}/plan_notjson", 2, "is not valid JSON", []),
    ("inspect-plan-binary", "inspect {w}/plan_binary", 2, "is not valid JSON", []),
    ("inspect-plan-list", "inspect {w}/plan_list", 2, "is not a lowrank_tool plan", []),
    ("inspect-kind-other", "inspect {w}/kind_other", 2, "is not a lowrank_tool plan", []),
    ("inspect-schema-0", "inspect {w}/schema0", 2, "schema version 0", []),
    ("inspect-schema-new", "inspect {w}/schema_new", 2, "newer than the 1", []),
    ("inspect-schema-str", "inspect {w}/schema_str", 2, "no integer schema_version", []),
    ("inspect-schema-bool", "inspect {w}/schema_bool", 2, "no integer schema_version", []),
    ("inspect-layers-missing", "inspect {w}/layers_missing", 2, "missing or has a malformed field", []),
    ("inspect-kwargs-bogus", "inspect {w}/bad_kwargs", 2, "unexpected keyword argument 'bogus'", []),
    ("inspect-kwargs-list", "inspect {w}/list_kwargs", 2, "must be a JSON object", []),
    ("inspect-ranks-abc", "inspect {w}/ranks_abc", 2, "ranks 'abc' is not a list of positive integers", []),
    (
        "convert-num-classes-huge",
        "convert resnet20 --input-size 3x16x16 --num-classes 100000000000",
        2,
        "out of memory (an allocation of 23,841.9 GiB failed); use a smaller --batch",
        [],
    ),
    ("bench-threads-huge", "bench {w}/art --threads 99999", 2, "threads 99999 is more than 4x this machine's", []),
    (
        "export-threads-huge",
        "export {w}/art --onnx {w}/t.onnx --merge auto --threads 99999",
        2,
        "threads 99999 is more than 4x",
        ["t.onnx"],
    ),
    (
        "convert-threads-huge",
        "convert resnet20 --policy latency --threads 99999",
        2,
        "latency_threads 99999 is more than 4x",
        [],
    ),
    (
        "export-onto-its-own-plan",
        "export {w}/art_self --onnx {w}/art_self/plan.json --force",
        2,
        "is a file of the artifact in",
        [],
    ),
    (
        "export-onto-its-own-weights",
        "export {w}/art_self --onnx {w}/art_self/../art_self/model.safetensors --force",
        2,
        "is a file of the artifact in",
        [],
    ),
    (
        "convert-weights-inside-output",
        "convert resnet20 --input-size 3x16x16 --weights {w}/art_self --init decompose -o {w}/art_self --force",
        2,
        "is inside the output directory",
        [],
    ),
    ("inspect-weights-dir", "inspect {w}/weights_dir", 2, "model.safetensors is not a file", []),
    ("bench-metadata-size", "bench {w}/badsize.onnx --runs 1 --warmup 0", 2, "badsize.onnx's metadata gives", []),
    ("inspect-plan-deep", "inspect {w}/plan_deep", 2, "is not valid JSON (nested too deeply)", []),
    ("inspect-plan-bigint", "inspect {w}/plan_bigint", 2, "is not valid JSON (a number too long to read)", []),
    ("inspect-format-int", "inspect {w}/format_int", 2, "format 5 is not a string", []),
    ("inspect-padding-int", "inspect {w}/padding_int", 2, "padding 5 is not 'same', 'valid' or a list", []),
    ("inspect-padding-mode", "inspect {w}/padding_mode_bogus", 2, "padding_mode 'bogus' is not one of zeros", []),
    ("export-padding-mode", "export {w}/padding_mode_bogus --onnx {w}/pm.onnx", 2, "padding_mode 'bogus'", ["pm.onnx"]),
    (
        "inspect-kind-linear",
        "inspect {w}/kind_linear",
        2,
        "kind 'Linear' is not Conv1d, Conv2d, Conv3d, ConvTranspose1d",
        [],
    ),
    ("inspect-bias-str", "inspect {w}/bias_str", 2, "bias 'yes' is not true or false", []),
    ("inspect-params-neg", "inspect {w}/params_neg", 2, "params_before -1 is not a non-negative integer", []),
    ("inspect-macs-str", "inspect {w}/macs_str", 2, "macs_after 'x' is not a non-negative integer", []),
    ("inspect-error-str", "inspect {w}/error_str", 2, "error 'bad' is not a finite number", []),
    ("inspect-notes-int", "inspect {w}/notes_int", 2, "notes must be a list of strings", []),
    ("inspect-other-inf", "inspect {w}/other_inf", 2, "other_params inf is not a non-negative integer", []),
    ("inspect-version-long", "inspect {w}/version_long", 2, "toolkit_version is not a version string", []),
    ("inspect-ranks-huge", "inspect {w}/ranks_huge", 2, "ranks [100000, 100000], but that layer takes", []),
    ("inspect-ranks-short", "inspect {w}/ranks_short", 2, "takes 2 rank(s)", []),
    ("inspect-ranks-zero", "inspect {w}/ranks_zero", 2, "is not a list of positive integers", []),
    ("inspect-ranks-missing", "inspect {w}/ranks_missing", 2, "without ranks", []),
    ("inspect-kernel-bad", "inspect {w}/kernel_bad", 2, "kernel_size '3x3' is not a list", []),
    ("inspect-channels-float", "inspect {w}/channels_float", 2, "in_channels 16.5", []),
    ("inspect-format-bogus", "inspect {w}/format_bogus", 2, "unknown format 'bogus'", []),
    ("inspect-input-abc", "inspect {w}/input_abc", 2, "input_size 'abc' is not 3 or 4 positive integers", []),
    ("inspect-input-neg", "inspect {w}/input_neg", 2, "is not 3 or 4 positive integers", []),
    ("inspect-input-2d", "inspect {w}/input_2d", 2, "is not 3 or 4 positive integers", []),
    ("inspect-model-unknown", "inspect {w}/model_unknown", 2, "nosuchnet", []),
    ("inspect-model-factory", "inspect {w}/model_factory", 2, "--trust-code", []),
    ("inspect-model-download", "inspect {w}/model_download", 2, "weights", []),
    ("inspect-layer-renamed", "inspect {w}/layer_renamed", 2, "'nosuch.layer'", []),
    # -- export ----------------------------------------------------------------------------------------------------
    ("export-missing-dir", "export {w}/nosuchdir --onnx {w}/x1.onnx", 2, "is not a directory", ["x1.onnx"]),
    ("export-no-parent", "export {w}/art --onnx {w}/nodir/m.onnx", 2, "does not exist; create it first", ["nodir"]),
    ("export-onto-dir", "export {w}/art --onnx {w}/art", 2, "is a directory", []),
    ("export-opset-99", "export {w}/art --onnx {w}/x2.onnx --opset 99", 2, "opset 99 is not supported", ["x2.onnx"]),
    ("export-opset-abc", "export {w}/art --onnx {w}/x3.onnx --opset abc", 2, "should be a valid integer", ["x3.onnx"]),
    ("export-batch-0", "export {w}/art --onnx {w}/x4.onnx --batch 0", 2, "batch 0 is not valid", ["x4.onnx"]),
    ("export-batch-abc", "export {w}/art --onnx {w}/x5.onnx --batch abc", 2, "batch 'abc' is not valid", ["x5.onnx"]),
    (
        "export-tolerance-neg",
        "export {w}/art --onnx {w}/x6.onnx --tolerance -1",
        2,
        "must be a positive number",
        ["x6.onnx"],
    ),
    (
        "export-tolerance-nan",
        "export {w}/art --onnx {w}/x7.onnx --tolerance nan",
        2,
        "must be a positive number",
        ["x7.onnx"],
    ),
    ("export-int8-no-data", "export {w}/art --onnx {w}/x8.onnx --int8", 2, "needs calibration data", ["x8.onnx"]),
    (
        "export-data-no-int8",
        "export {w}/art --onnx {w}/x9.onnx --calib-data digits",
        2,
        "only used with --int8",
        ["x9.onnx"],
    ),
    (
        "export-int8-fp16",
        "export {w}/art --onnx {w}/x10.onnx --int8 --fp16 --calib-data digits",
        2,
        "exclude each other",
        ["x10.onnx"],
    ),
    ("export-input-abc", "export {w}/art --onnx {w}/x11.onnx --input-size abc", 2, "is malformed", ["x11.onnx"]),
    ("export-merge", "export {w}/art --onnx {w}/x12.onnx --merge some", 2, "'some' is not one of", ["x12.onnx"]),
    ("export-exporter", "export {w}/art --onnx {w}/x13.onnx --exporter tf", 2, "'tf' is not one of", ["x13.onnx"]),
    ("export-device", "export {w}/art --onnx {w}/x14.onnx --device tpu", 2, "'tpu' is not one of", ["x14.onnx"]),
    (
        "export-calib-unknown",
        "export {w}/art --onnx {w}/x15.onnx --int8 --calib-data nosuch",
        2,
        "unknown dataset 'nosuch'",
        ["x15.onnx"],
    ),
    ("export-bad-plan", "export {w}/ranks_huge --onnx {w}/x16.onnx", 2, "that layer takes", ["x16.onnx"]),
    (
        "export-verify-unknown",
        "export {w}/art --onnx {w}/x17.onnx --verify-with nosuch",
        2,
        "engine 'nosuch' is not known; use one of: onnxruntime, openvino",
        ["x17.onnx"],
    ),
    (
        "export-verify-empty",
        "export {w}/art --onnx {w}/x18.onnx --verify-with ,",
        2,
        "--verify-with is empty",
        ["x18.onnx"],
    ),
    # -- bench and analyze: ONNX files and directories -----------------------------------------------------------
    ("bench-missing", "bench {w}/nosuch.onnx", 2, "does not exist", []),
    ("bench-empty", "bench {w}/empty.onnx", 2, "is empty (0 bytes)", []),
    ("bench-garbage", "bench {w}/garbage.onnx", 2, "is not a readable ONNX file", []),
    ("bench-text", "bench {w}/notonnx.txt", 2, "is not a readable ONNX file", []),
    ("bench-batch-0", "bench {w}/art --batch 0", 2, "must be positive integers", []),
    ("bench-batch-abc", "bench {w}/art --batch abc", 2, "is not a list of integers", []),
    ("bench-threads-abc", "bench {w}/art --threads abc", 2, "is not a list of integers", []),
    ("bench-runs-0", "bench {w}/art --runs 0", 2, "runs must be >= 1", []),
    ("bench-warmup-neg", "bench {w}/art --warmup -1", 2, "warmup >= 0", []),
    ("bench-engine", "bench {w}/art --engine foo", 2, "engine 'foo' is not known", []),
    ("bench-repeats-0", "bench {w}/art --repeats 0", 2, "repeats 0 must be an integer from 1 to runs (50)", []),
    ("bench-repeats-over-runs", "bench {w}/art --runs 3 --repeats 4", 2, "repeats 4 must be an integer from 1", []),
    ("bench-bad-plan", "bench {w}/ranks_abc", 2, "ranks 'abc'", []),
    ("bench-factory-plan", "bench {w}/model_factory", 2, "--trust-code", []),
    ("analyze-garbage", "analyze {w}/garbage.onnx", 2, "is not a readable ONNX file", []),
    ("analyze-empty", "analyze {w}/empty.onnx", 2, "is empty (0 bytes)", []),
    ("analyze-rank-abc", "analyze {w}/art --rank abc", 2, "is not a number", []),
    ("analyze-rank-dense", "analyze {w}/art --rank dense", 2, "gives no ranks to analyse", []),
    ("analyze-plot-ext", "analyze {w}/art --plot {w}/out.txt", 2, "has extension '.txt'", ["out.txt"]),
    ("analyze-plot-dir", "analyze {w}/art --plot {w}/art", 2, "has extension '(none)'", []),
    ("analyze-plot-no-parent", "analyze {w}/art --plot {w}/nodir/r.png", 2, "does not exist", ["nodir"]),
    ("analyze-unknown", "analyze nosuchmodel", 2, "no artifact directory or .onnx file", []),
    ("analyze-input-without-rank", "analyze resnet20 --input-size 3x16x16", 2, "add --rank", []),
    ("analyze-input-on-dir", "analyze {w}/art --input-size 3x16x16 --rank 0.3", 2, "applies to a model name", []),
    ("analyze-model-arg-on-dir", "analyze {w}/art --model-arg a=1", 2, "applies to a model name", []),
    ("analyze-a-text-file", "analyze {w}/notonnx.txt", 2, "neither an artifact directory nor an .onnx file", []),
    (
        "analyze-plan-not-json",
        "analyze {w}/badmeta.onnx",
        2,
        "the embedded plan (metadata lowrank_tool.plan) is not JSON",
        [],
    ),
    ("bench-plan-not-json", "bench {w}/badmeta.onnx --runs 1 --warmup 0", 2, "is not JSON", []),
    ("bench-plan-deep", "bench {w}/deepmeta.onnx --runs 1 --warmup 0", 2, "is not JSON (nested too deeply)", []),
    # -- names and paths the file system cannot take ---------------------------------------------------------
    (
        "convert-name-too-long",
        "convert resnet20 --input-size 3x16x16 -o {w}/" + "n" * 300,
        2,
        "over the 255-byte limit",
        [],
    ),
    ("export-name-too-long", "export {w}/art --onnx {w}/" + "n" * 300 + ".onnx", 2, "over the 255-byte limit", []),
    (
        "analyze-plot-name-too-long",
        "analyze {w}/art --plot {w}/" + "n" * 300 + ".png",
        2,
        "over the 255-byte limit",
        [],
    ),
    (
        "convert-path-too-long",
        "convert resnet20 --input-size 3x16x16 -o {w}/" + "/".join(["d" * 200] * 25),
        2,
        "over the 4096-byte limit",
        ["d" * 200],
    ),
    (
        "export-path-too-long",
        "export {w}/art --onnx {w}/" + "/".join(["d" * 200] * 25) + "/m.onnx",
        2,
        "over the 4096-byte limit",
        ["d" * 200],
    ),
    ("inspect-name-too-long", "inspect {w}/" + "n" * 300, 2, "File name too long", []),
    # -- train ---------------------------------------------------------------------------------------------------
    (
        "recipe-convert-int",
        "train --recipe {w}/r_convert_int.yaml -o {w}/rrun",
        2,
        "convert must be a mapping of conversion options",
        ["rrun"],
    ),
    (
        "recipe-convert-list",
        "train --recipe {w}/r_convert_list.yaml -o {w}/rrun",
        2,
        "convert must be a mapping",
        ["rrun"],
    ),
    ("recipe-key-int", "train --recipe {w}/r_key_int.yaml -o {w}/rrun", 2, "key 1 is not a name", ["rrun"]),
    (
        "recipe-dense-no",
        "train --recipe {w}/r_dense_no.yaml -o {w}/rrun",
        2,
        "dense 'no' must be true or false",
        ["rrun"],
    ),
    (
        "recipe-output-int",
        "train --recipe {w}/r_output_int.yaml -o {w}/rrun",
        2,
        "output 5 must be a directory path",
        ["rrun"],
    ),
    (
        "recipe-exclude-int",
        "train --recipe {w}/r_exclude_int.yaml -o {w}/rrun",
        2,
        "exclude 5 must be a layer name or a list",
        ["rrun"],
    ),
    (
        "recipe-input-int",
        "train --recipe {w}/r_input_int.yaml -o {w}/rrun",
        2,
        "input size 5 must be 'CxHxW' or a list of 3 or 4 integers",
        ["rrun"],
    ),
    (
        "recipe-input-words",
        "train --recipe {w}/r_input_words.yaml -o {w}/rrun",
        2,
        "input size [3, 'a', 16] must be 'CxHxW'",
        ["rrun"],
    ),
    (
        "recipe-layer-rank-int",
        "train --recipe {w}/r_layer_rank_int.yaml -o {w}/rrun",
        2,
        "layer_rank 5 must be a list of NAME=RANK items",
        ["rrun"],
    ),
    (
        "recipe-milestones-int",
        "train --recipe {w}/r_milestones_int.yaml -o {w}/rrun",
        2,
        "milestones 5 must be a list of epochs",
        ["rrun"],
    ),
    (
        "recipe-grad-clip-inf",
        "train --recipe {w}/r_grad_clip_inf.yaml -o {w}/rrun",
        2,
        "grad_clip inf must be a finite positive number",
        ["rrun"],
    ),
    ("recipe-deep", "train --recipe {w}/r_deep.yaml -o {w}/rrun", 2, "is nested too deeply", ["rrun"]),
    ("recipe-latin1", "train --recipe {w}/r_latin1.yaml -o {w}/rrun", 2, "is not UTF-8 text", ["rrun"]),
    (
        "train-lr-huge",
        "train {w}/art --data synthetic --lr 1e300",
        2,
        "lr 1e+300 must be a finite number from 0 to 1e+30",
        ["art/metrics.jsonl"],
    ),
    (
        "train-seed-huge",
        "train {w}/art --data synthetic --seed 99999999999",
        2,
        "seed 99999999999 must be an integer from 0 to 4294967295",
        ["art/metrics.jsonl"],
    ),
    ("train-no-target", "train", 2, "give an artifact directory", []),
    ("train-missing-dir", "train {w}/nosuchdir --data synthetic", 2, "is not a directory", ["nosuchdir"]),
    ("train-data-unknown", "train {w}/art --data nosuch", 2, "unknown dataset 'nosuch'", ["art/metrics.jsonl"]),
    ("train-data-typo", "train {w}/art --data fmnist:/x", 2, "did you mean", ["art/metrics.jsonl"]),
    ("train-data-no-path", "train {w}/art --data cifar10", 2, "no PATH was given", ["art/metrics.jsonl"]),
    ("train-data-path-for-digits", "train {w}/art --data digits:/x", 2, "takes no PATH", ["art/metrics.jsonl"]),
    (
        "train-data-missing-folder",
        "train {w}/art --data cifar10:{w}/nodata",
        2,
        "does not exist",
        ["art/metrics.jsonl", "nodata"],
    ),
    (
        "train-data-folder-is-file",
        "train {w}/art --data cifar10:{w}/notonnx.txt",
        2,
        "must be a folder",
        ["art/metrics.jsonl"],
    ),
    ("train-data-empty-folder", "train {w}/art --data mnist:{w}/art", 2, "mnist not found in", ["art/metrics.jsonl"]),
    (
        "train-epochs-0",
        "train {w}/art --data synthetic --epochs 0",
        2,
        "epochs 0 must be a positive integer",
        ["art/metrics.jsonl"],
    ),
    (
        "train-lr-neg",
        "train {w}/art --data synthetic --lr -1",
        2,
        "lr -1.0 must be a finite number from 0 to 1e+30",
        ["art/metrics.jsonl"],
    ),
    (
        "train-lr-nan",
        "train {w}/art --data synthetic --lr nan",
        2,
        "lr nan must be a finite number from 0 to 1e+30",
        ["art/metrics.jsonl"],
    ),
    ("train-batch-0", "train {w}/art --data synthetic --batch-size 0", 2, "batch_size 0", ["art/metrics.jsonl"]),
    (
        "train-method",
        "train {w}/art --data synthetic --method nosuch",
        2,
        "method 'nosuch' is not known",
        ["art/metrics.jsonl"],
    ),
    (
        "train-optimizer",
        "train {w}/art --data synthetic --optimizer nosuch",
        2,
        "'nosuch' is not one of",
        ["art/metrics.jsonl"],
    ),
    (
        "train-warmup-long",
        "train {w}/art --data synthetic --epochs 1 --warmup-epochs 5",
        2,
        "exceeds epochs",
        ["art/metrics.jsonl"],
    ),
    (
        "train-amp-fp16-cpu",
        "train {w}/art --data synthetic --epochs 1 --amp fp16 --device cpu",
        2,
        "needs a CUDA device",
        ["art/train_state.pt"],
    ),
    (
        "train-cuda-missing",
        "train {w}/art --data synthetic --epochs 1 --device cuda",
        2,
        "no CUDA device is available",
        ["art/train_state.pt"],
    ),
    (
        "train-nproc-bad-data",
        "train {w}/art --data cifar10:{w}/nodata --nproc 2",
        2,
        "data folder",
        ["art/metrics.jsonl", "nodata"],
    ),
    ("train-nproc-0", "train {w}/art --data synthetic --nproc 0", 2, "--nproc 0 must be >= 1", ["art/metrics.jsonl"]),
    (
        "train-resume-nothing",
        "train {w}/art --data synthetic --resume",
        2,
        "does not exist; --resume needs a run",
        ["art/metrics.jsonl"],
    ),
    ("train-image-size-4", "train {w}/art --data synthetic --image-size 4", 2, "image_size", ["art/metrics.jsonl"]),
    ("train-recipe-missing", "train --recipe {w}/nosuch.yaml", 2, "does not exist", []),
    ("train-recipe-empty", "train --recipe {w}/empty.yaml", 2, "must be a mapping with at least a 'model' key", []),
    ("train-recipe-list", "train --recipe {w}/list.yaml", 2, "must be a mapping", []),
    ("train-recipe-bad-yaml", "train --recipe {w}/bad.yaml", 2, "is not valid YAML", []),
    ("train-recipe-unknown-key", "train --recipe {w}/unknown_key.yaml -o {w}/r1", 2, "bogus", ["r1"]),
    ("train-bad-plan", "train {w}/ranks_huge --data synthetic", 2, "that layer takes", ["ranks_huge/metrics.jsonl"]),
    ("train-no-weights", "train {w}/no_weights --data synthetic", 2, "does not exist", ["no_weights/metrics.jsonl"]),
    (
        "train-resume-pickled-state",
        "train {w}/pickled_state --data synthetic --resume",
        2,
        "is corrupt or not a lowrank_tool train state (Trying to load unsupported GLOBAL posix.system",
        ["pickled_state/metrics.jsonl", "PWNED"],
    ),
    (
        "train-fashion-label-count",
        "train {w}/art --data fashion-mnist:{w}/fashion_counts --epochs 1",
        2,
        "the train split has 6 images but 4 labels",
        ["art/metrics.jsonl"],
    ),
    (
        "inspect-no-num-batches-tracked",
        "inspect {w}/no_nbt",
        2,
        "it lacks 19 of its tensors (e.g. bn1.num_batches_tracked)",
        [],
    ),
    ("export-existing-onnx", "export {w}/art --onnx {w}/m.onnx", 2, "m.onnx already exists; choose another", []),
    ("export-non-utf8-onnx", "export {w}/art --onnx {w}/m\udcff.onnx", 2, "is not a UTF-8 path", ["m\udcff.onnx"]),
]


def test_the_table_is_large_and_covers_every_command():
    assert len(ROWS) >= 150
    assert len({row[0] for row in ROWS}) == len(ROWS)
    commands = {row[1].split()[0] for row in ROWS}
    assert {"convert", "layers", "models", "inspect", "export", "bench", "analyze", "train"} <= commands


@pytest.mark.parametrize("case, argv, code, fragment, absent", ROWS, ids=[row[0] for row in ROWS])
def test_hostile_input(world, cli, case, argv, code, fragment, absent):
    import shlex

    args = [a.replace("{w}", str(world)) for a in shlex.split(argv)]
    got, out, err = cli(*args)
    assert got == code, f"{case}: exit {got}, stderr: {err[-600:]}"
    assert "Traceback" not in err and "Traceback" not in out
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), f"{case}: not one error line: {err[-600:]}"
    assert fragment and fragment in lines[0], f"{case}: {fragment!r} not in {lines[0]!r}"
    for rel in absent:
        assert not (world / rel).exists(), f"{case}: {rel} was left behind"
    leftovers = [p.name for p in world.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")]
    assert not leftovers, f"{case}: temporary files left: {leftovers}"


def test_an_output_that_is_the_input_leaves_the_input_whole(world, cli, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(world / "art", art)
    before = {name: (art / name).read_bytes() for name in ("plan.json", "model.safetensors")}
    assert cli("export", art, "--onnx", art / "plan.json", "--force")[0] == 2
    assert cli("convert", "resnet20", "--weights", art, "--init", "decompose", "-o", art, "--force")[0] == 2
    assert {name: (art / name).read_bytes() for name in before} == before


def test_lowrank_alone_prints_the_help_and_no_empty_error(cli):
    code, out, err = cli()
    assert code == 2 and "Usage: lowrank" in out + err and "error:" not in err


def test_ctrl_c_during_the_demo_exits_130_without_a_traceback(cli, monkeypatch, tmp_path):
    import lowrank_tool.analysis.compare as compare
    from lowrank_tool.train.trainer import TrainingInterrupted

    def interrupted(*args, **kwargs):
        raise TrainingInterrupted("stopped by signal 2 at epoch 1, step 14")

    monkeypatch.setattr(compare, "compare_dense_and_lowrank", interrupted)
    code, out, err = cli("demo", "--epochs", "1", "-o", str(tmp_path / "demo"))
    assert code == 130 and "Traceback" not in err + out and not (tmp_path / "demo").exists()


def test_text_from_a_plan_is_shown_as_text_not_markup(world, cli):
    code, out, err = cli("inspect", str(world / "markup"))
    assert code == 0 and "Traceback" not in err
    flat = " ".join(out.split())
    assert "traced with [/bold]" in flat and "rank [/dim] = fraction" in flat
    assert "rounded up to multiples" not in flat  # round_to "8" is not a number: no rounding claimed


def test_the_console_script_gives_the_same_line(world):
    """One row through the installed entry point, in a real process: no traceback, exit 2, one line."""
    proc = subprocess.run(
        [sys.executable, "-m", "lowrank_tool", "inspect", str(world / "ranks_huge")], capture_output=True, text=True
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "that layer takes" in proc.stderr


@pytest.mark.parametrize(
    "extra, fragment",
    [(["--data", "bogus"], "bogus"), (["--device", "cuda"], "cuda"), (["--seed", "-1"], "seed")],
    ids=["data", "device", "seed"],
)
def test_a_recipe_run_that_cannot_start_leaves_no_converted_artifact(cli, tmp_path, extra, fragment):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: resnet20\nconvert:\n  rank: 0.5\n  input_size: 3x16x16\nepochs: 1\ndata: digits\n")
    code, out, err = cli("train", "--recipe", recipe, "-o", tmp_path / "run", "-q", *extra)
    assert code == 2 and fragment in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
    # and the same command, fixed, is not told that the directory already exists
    assert "already exists" not in cli("train", "--recipe", recipe, "-o", tmp_path / "run", "--epochs", "0")[2]


@pytest.mark.parametrize(
    "edit, fragment",
    [
        ({"version": "abc"}, "version 'abc' is not an integer"),
        ({"version": None}, "version 'None' is not an integer"),
        ({"config": [1]}, "config '[1]' is not a mapping"),
        ({"epoch": "x"}, "epoch 'x' is not an integer"),
    ],
    ids=["version-str", "version-none", "config-list", "epoch-str"],
)
def test_a_train_state_with_fields_of_the_wrong_type_is_refused_in_one_line(world, cli, tmp_path, edit, fragment):
    art = tmp_path / "art"
    shutil.copytree(world / "art", art)
    torch.save({"version": 1, "model": {}, "epoch": 1, "config": {}} | edit, art / "train_state.pt")
    code, out, err = cli("train", art, "--resume", "--data", "synthetic")
    assert code == 2 and "Traceback" not in err
    assert err.count("\n") == 1 and fragment in err, err
