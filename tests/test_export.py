"""ONNX export: verified against PyTorch across the zoo, dynamic batch, fp16, int8, merging, metadata, errors."""

import json

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from helpers import run_cli
from torch import nn

import lowrank_tool as lr
from lowrank_tool.errors import LowRankError, VerificationError
from lowrank_tool.export import (
    export_onnx,
    make_session,
    merge_factors,
    plan_from_onnx,
    providers_for,
    read_metadata,
    verify_onnx,
)
from lowrank_tool.export.verify import _compare_detection
from lowrank_tool.layers import LowRankConv

FP32 = 1e-4  # the fp32 bound on max|onnx - torch| / max|torch|


run = run_cli  # (argv, capsys, monkeypatch) -> (code, out, err)


def onnx_ops(path):
    return [n.op_type for n in onnx.load(str(path)).graph.node]


# -- the zoo ---------------------------------------------------------------------------------------------
ZOO = [
    ("resnet18", "3x64x64", ["logits"]),
    ("resnet50", "3x64x64", ["logits"]),
    ("mobilenet_v2", "3x64x64", ["logits"]),
    ("efficientnet_b0", "3x64x64", ["logits"]),
    ("resnet20", "3x32x32", ["logits"]),
    ("r3d_18", "3x4x32x32", ["output"]),  # video: Tucker2Conv3d
    ("lraspp_mobilenet_v3_large", "3x96x96", ["out"]),
    ("fcn_resnet50", "3x96x96", ["out"]),
]


@pytest.mark.parametrize("name,size,outputs", ZOO, ids=[z[0] for z in ZOO])
def test_zoo_exports_and_matches_pytorch_at_another_batch(name, size, outputs, tmp_path):
    model = lr.convert(name, rank=0.3, input_size=size)
    result = export_onnx(model, tmp_path / "m.onnx")
    report = result.verification
    assert report.passed and report.max_rel < FP32, report.line()
    assert report.input_shapes[0][0] == 3  # traced at batch 2, verified at batch 3
    assert result.output_names == outputs and result.input_names == ["input"]
    assert result.exporter == "torchscript" and result.opset == 17
    # the batch axis is symbolic: batch 5 runs too
    session = make_session(tmp_path / "m.onnx")
    x = np.random.default_rng(0).standard_normal((5, *map(int, size.split("x")))).astype(np.float32)
    assert session.run(None, {"input": x})[0].shape[0] == 5
    assert not list(tmp_path.glob(".*"))  # no temporary left behind


def test_custom_model_exports_with_plan_metadata(tiny, tmp_path):
    model = lr.convert(tiny, rank=0.5, input_size="3x16x16")
    result = export_onnx(model, tmp_path / "tiny.onnx")
    assert result.verification.max_rel < FP32
    meta = read_metadata(tmp_path / "tiny.onnx")
    plan = lr.summary(model)
    assert meta["version"] == lr.__version__ and meta["task"] == "classification" and meta["input_size"] == "3x16x16"
    assert json.loads(meta["ranks"]) == {layer.name: layer.ranks for layer in plan.converted_layers}
    assert "convs low-rank" in meta["summary"] and meta["precision"] == "fp32" and meta["exporter"] == "torchscript"
    assert plan_from_onnx(tmp_path / "tiny.onnx").to_dict() == plan.to_dict()


def test_graph_is_clean_for_inference(tmp_path):
    model = lr.convert("vgg11_bn", rank=0.3, input_size="3x32x32")  # batch norms and dropout
    model.train()  # export must still produce the eval-mode graph
    export_onnx(model, tmp_path / "v.onnx", example_input=torch.randn(2, 3, 224, 224), verify=False)
    ops = set(onnx_ops(tmp_path / "v.onnx"))
    assert not ops & {"BatchNormalization", "Dropout", "Identity"}, ops
    assert model.training  # the caller's model is untouched


def test_detection_and_segmentation(tmp_path):
    det = lr.convert("ssdlite320_mobilenet_v3_large", rank=0.3, input_size="3x320x320")
    result = export_onnx(det, tmp_path / "det.onnx")
    assert result.input_names == ["image"] and result.output_names == ["boxes", "scores", "labels"]
    assert result.verification.passed
    # an untrained detector ties its scores; the report says boxes were not compared
    assert any("tied scores" in n for n in result.verification.notes)


def test_detection_comparison_sorts_by_score_and_flags_ties():
    names = ["boxes", "scores", "labels"]
    boxes = np.arange(12, dtype=np.float32).reshape(3, 4)
    scores = np.array([0.9, 0.5, 0.7], dtype=np.float32)
    labels = np.array([1, 2, 3])
    perm = [2, 0, 1]
    notes = []
    out = _compare_detection(names, [boxes[perm], scores[perm], labels[perm]], [boxes, scores, labels], 1e-4, notes)
    assert out["boxes"]["max_abs"] == 0 and out["labels"]["max_abs"] == 0 and not notes
    wrong = boxes.copy()
    wrong[0, 0] += 1
    out = _compare_detection(names, [wrong, scores, labels], [boxes, scores, labels], 1e-4, notes)
    assert out["boxes"]["max_abs"] == 1
    tied = np.array([0.5, 0.5, 0.5], dtype=np.float32)
    out = _compare_detection(names, [wrong, tied, labels], [boxes, tied, labels], 1e-4, notes)
    assert "boxes" not in out and "tied scores" in notes[0]
    notes = []
    out = _compare_detection(names, [boxes[:2], scores[:2], labels[:2]], [boxes, scores, labels], 1e-4, notes)
    assert out["scores"]["max_rel"] == float("inf") and "differ in number" in notes[0]


# -- batch, precision --------------------------------------------------------------------------------
def test_fixed_batch(tmp_path):
    model = lr.convert("resnet18", rank=0.3, input_size="3x32x32")
    result = export_onnx(model, tmp_path / "b4.onnx", batch=4)
    assert result.input_shapes == [[4, 3, 32, 32]] and result.verification.input_shapes == [[4, 3, 32, 32]]
    session = make_session(tmp_path / "b4.onnx")
    assert session.get_inputs()[0].shape == [4, 3, 32, 32]


def test_fp16_close_to_fp32_and_half_the_size(tmp_path):
    model = lr.convert("resnet18", rank=0.3, input_size="3x64x64")
    fp32 = export_onnx(model, tmp_path / "fp32.onnx")
    fp16 = export_onnx(model, tmp_path / "fp16.onnx", precision="fp16")
    assert fp16.verification.passed and fp16.verification.max_rel < 1e-2 and fp16.verification.top1_agreement == 1.0
    assert 0.45 < fp16.size_bytes / fp32.size_bytes < 0.55
    session = make_session(tmp_path / "fp16.onnx")
    assert session.get_inputs()[0].type == "tensor(float16)"
    x = np.random.default_rng(1).standard_normal((2, 3, 64, 64)).astype(np.float32)
    a = make_session(tmp_path / "fp32.onnx").run(None, {"input": x})[0]
    b = session.run(None, {"input": x.astype(np.float16)})[0].astype(np.float32)
    assert np.abs(a - b).max() / np.abs(a).max() < 1e-2


@pytest.fixture(scope="module")
def trained_digits(tmp_path_factory):
    """ResNet-20 at rank 0.5 trained 4 epochs on the embedded digits (about 10 s on 2 cores)."""
    from lowrank_tool.train.config import TrainConfig
    from lowrank_tool.train.run import train_artifact

    directory = tmp_path_factory.mktemp("digits") / "r20"
    torch.manual_seed(0)
    lr.save(lr.convert("resnet20", rank=0.5, num_classes=10, input_size="3x16x16"), directory)
    cfg = TrainConfig(
        data="digits", epochs=4, batch_size=64, lr=0.05, weight_decay=5e-4, warmup_epochs=1, image_size=16, seed=0
    )
    _, summary = train_artifact(directory, cfg, progress=False)
    assert summary["last_top1"] > 90, summary  # the model learned something worth quantizing
    return directory


def test_int8_keeps_digits_accuracy_within_two_points(trained_digits, tmp_path):
    model = lr.load(trained_digits)
    fp32 = export_onnx(model, tmp_path / "fp32.onnx")
    result = export_onnx(model, tmp_path / "int8.onnx", precision="int8", calib_data="digits", calib_samples=128)
    q = result.quantization
    assert q.calib_samples == 128 and q.eval_samples == 360
    assert q.fp32_top1 > 90 and abs(q.int8_top1 - q.fp32_top1) <= 2.0, q
    assert result.verification.passed and result.verification.max_rel < 0.1
    ops = set(onnx_ops(tmp_path / "int8.onnx"))
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert result.size_bytes < 0.6 * fp32.size_bytes
    assert read_metadata(tmp_path / "int8.onnx")["precision"] == "int8"


def test_int8_cli_reports_accuracy(trained_digits, tmp_path, capsys, monkeypatch):
    out_file = tmp_path / "q.onnx"
    code, out, err = run(
        ["export", str(trained_digits), "--onnx", str(out_file), "--int8", "--calib-data", "digits"],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    assert (
        "int8 accuracy on digits val (360 images): fp32" in out and "verification passed" in out and out_file.is_file()
    )


def test_int8_with_tensor_batches(tmp_path):
    model = lr.convert("resnet20", rank=0.5, input_size="3x16x16")
    batches = [torch.randn(8, 3, 16, 16) for _ in range(4)]
    result = export_onnx(
        model, tmp_path / "q.onnx", precision="int8", calib_data=batches, calib_samples=32, verify=False
    )
    assert result.quantization.calib_samples == 32 and result.quantization.fp32_top1 is None


def test_int8_runs_integer_kernels_throughout_on_onnxruntime_cpu(tmp_path):
    """U8S8: every conv of a residual network fuses into QLinearConv, every residual Add into QLinearAdd.

    With signed activations ONNX Runtime's x86 provider left the convs that read a block's input as float
    Conv behind run-time DequantizeLinear nodes: the graph ONNX Runtime optimises is what this checks.
    """
    import onnxruntime as ort

    model = lr.convert("resnet18", rank=0.3, input_size="3x32x32")
    batches = [torch.randn(8, 3, 32, 32) for _ in range(2)]
    export_onnx(model, tmp_path / "q.onnx", precision="int8", calib_data=batches, calib_samples=16, verify=False)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(str(tmp_path / "q.onnx"), options, providers=["CPUExecutionProvider"])
    ops = onnx_ops(tmp_path / "optimised.onnx")
    n_convs = onnx_ops(tmp_path / "q.onnx").count("Conv")
    assert ops.count("QLinearConv") == n_convs > 20 and "Conv" not in ops, sorted(set(ops))
    assert ops.count("QLinearAdd") == 8 and "Add" not in ops
    assert ops.count("DequantizeLinear") <= 1  # at most the logits' (QGemm's output); no weight dequantised per run


def test_int8_weights_fit_in_seven_bits_so_no_x86_cpu_saturates(tmp_path):
    """x86 CPUs without VNNI multiply u8 activations by s8 weights with VPMADDUBSW, which sums pairs into
    16 bits with saturation: 255 * 127 * 2 overflows, 255 * 64 * 2 does not. With full-range weights a
    digits-trained ResNet-20 at rank 0.5 lost 2.2 points in int8 on an AVX2 machine (0.41 relative logit
    error); with 7-bit weights 0.55 (0.04). The file must be safe wherever it is deployed."""
    from onnx import numpy_helper

    model = lr.convert("resnet20", rank=0.5, input_size="3x16x16")
    batches = [torch.randn(8, 3, 16, 16) for _ in range(2)]
    export_onnx(model, tmp_path / "q.onnx", precision="int8", calib_data=batches, calib_samples=16, verify=False)
    proto = onnx.load(str(tmp_path / "q.onnx"))
    weights = [numpy_helper.to_array(t) for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    weights = [w for w in weights if w.size > 1]  # not the scalar zero points
    assert len(weights) >= len(lr.summary(model).converted_layers) * 2  # every factor conv is quantised
    assert max(int(abs(w.astype(int)).max()) for w in weights) <= 64
    assert read_metadata(tmp_path / "q.onnx")["int8_weight_bits"] == "7"


def test_int8_full_range_weights_on_request_and_a_hint_where_they_saturate(tmp_path, monkeypatch):
    """8-bit weights (for VNNI, ARM, GPU targets) use the full [-127, 127]; where the verifying CPU saturates
    them (x86 without VNNI), a verification failure says so and names the 7-bit way out."""
    import dataclasses

    from onnx import numpy_helper

    import lowrank_tool.export.onnx as onnx_export
    from lowrank_tool.runtime.machine import cpu_description

    model = lr.convert("resnet20", rank=0.5, input_size="3x16x16")
    batches = [torch.randn(8, 3, 16, 16) for _ in range(2)]
    export_onnx(
        model,
        tmp_path / "q8.onnx",
        precision="int8",
        calib_data=batches,
        calib_samples=16,
        int8_weight_bits=8,
        verify=False,
    )
    proto = onnx.load(str(tmp_path / "q8.onnx"))
    weights = [numpy_helper.to_array(t) for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert max(int(abs(w.astype(int)).max()) for w in weights if w.size > 1) == 127  # per channel: each max is 127
    assert read_metadata(tmp_path / "q8.onnx")["int8_weight_bits"] == "8"
    with pytest.raises(LowRankError, match=r"int8 weight bits 16 must be 7 \(the default, safe on every CPU\) or 8"):
        export_onnx(model, tmp_path / "x.onnx", precision="int8", calib_data=batches, int8_weight_bits=16)
    assert not (tmp_path / "x.onnx").exists()

    def differs(*args, mismatch_hint=None, **kwargs):  # verify_onnx appends the hint to a numeric mismatch
        hint = f"; {mismatch_hint}" if mismatch_hint else ""
        raise VerificationError(f"q.onnx: onnxruntime (CPU) differs from PyTorch by 0.41 relative{hint}")

    monkeypatch.setattr(onnx_export, "verify_onnx", differs)
    avx2 = dataclasses.replace(cpu_description(), flags=("avx2", "fma"))
    vnni = dataclasses.replace(cpu_description(), flags=("avx2", "fma", "avx512f", "avx512_vnni"))
    assert avx2.saturates_int8 and not vnni.saturates_int8
    assert not dataclasses.replace(avx2, flags=()).saturates_int8  # ARM: its kernels do not saturate
    for cpu, bits, hint in ((avx2, 8, True), (avx2, 7, False), (vnni, 8, False)):
        monkeypatch.setattr(onnx_export, "cpu_description", lambda cpu=cpu: cpu)
        with pytest.raises(VerificationError) as info:
            export_onnx(
                model,
                tmp_path / "v.onnx",
                precision="int8",
                calib_data=batches,
                calib_samples=16,
                int8_weight_bits=bits,
            )
        assert str(info.value).startswith("q.onnx: onnxruntime (CPU) differs from PyTorch by 0.41 relative")
        assert ("this CPU has no VNNI" in str(info.value)) == hint, (cpu.flags, bits)
        assert ("export with --int8-weight-bits 7 (runs everywhere)" in str(info.value)) == hint
        assert not (tmp_path / "v.onnx").exists()


# -- merging -------------------------------------------------------------------------------------------
def test_merge_all_restores_dense_conv_count(tmp_path):
    model = lr.convert("resnet18", rank=0.3, input_size="3x32x32")
    merged = export_onnx(model, tmp_path / "merged.onnx", merge="all")
    export_onnx(model, tmp_path / "fact.onnx")
    assert merged.verification.max_rel < FP32
    layers = lr.summary(model).converted_layers
    n_lowrank = len(layers)
    extra_convs = {"tucker2": 2, "svd": 1}  # a Tucker-2 layer is 3 convs, an SVD layer 2
    assert {layer.format for layer in layers} == {"tucker2", "svd"}
    expected = sum(extra_convs[layer.format] for layer in layers)
    assert onnx_ops(tmp_path / "fact.onnx").count("Conv") - onnx_ops(tmp_path / "merged.onnx").count("Conv") == expected
    assert (
        len(merged.merged) == n_lowrank
        and json.loads(read_metadata(tmp_path / "merged.onnx")["merged"]) == merged.merged
    )


def test_merge_auto_decides_by_measured_latency():
    model = lr.convert("resnet18", rank=0.3, input_size="3x32x32").eval()
    decisions = merge_factors(model, "auto", threads=1, runs=5, warmup=1)
    assert len(decisions) == 19
    for d in decisions:
        assert d.factorised_ms > 0 and d.dense_ms > 0 and d.merged == (d.dense_ms < d.factorised_ms)
    remaining = {name for name, m in model.named_modules() if isinstance(m, LowRankConv)}
    assert remaining == {d.name for d in decisions if not d.merged}


def test_an_int8_export_decides_its_merges_on_int8_timings(tmp_path, monkeypatch):
    import lowrank_tool.export.merge as merge_module

    timed = []

    def fake_time_module(module, shape, *, precision="fp32", **kwargs):
        timed.append(precision)
        return 1.0 if isinstance(module, LowRankConv) else 2.0  # factorised always wins: nothing merged

    monkeypatch.setattr(merge_module, "time_module", fake_time_module)
    model = lr.convert("resnet20", rank=0.5, input_size="3x16x16")
    export_onnx(model, tmp_path / "i8.onnx", merge="auto", precision="int8", calib_data=[torch.randn(8, 3, 16, 16)])
    assert timed and set(timed) == {"int8"}
    timed.clear()
    export_onnx(model, tmp_path / "f32.onnx", merge="auto", verify=False)
    assert timed and set(timed) == {"fp32"}


def test_merge_auto_without_input_sizes_keeps_factors():
    plan_less = lr.convert("resnet18", rank=0.3, input_size="3x32x32")
    delattr(plan_less, "_lowrank_plan")
    decisions = merge_factors(plan_less, "auto")
    assert decisions and not any(d.merged for d in decisions) and "no recorded input size" in decisions[0].reason


# -- exporters -----------------------------------------------------------------------------------------
class _OddPool(nn.Module):
    """An adaptive pool whose output is not a factor of its input: the TorchScript exporter refuses it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(3)
        self.fc = nn.Linear(72, 4)

    def forward(self, x):
        return self.fc(self.pool(self.conv(x)).flatten(1))


def test_auto_exporter_falls_back_to_dynamo(tmp_path):
    model = _OddPool().eval()
    with pytest.raises(LowRankError, match="ONNX export failed \\(torchscript: .*adaptive_avg_pool2d"):
        export_onnx(model, tmp_path / "ts.onnx", input_size="3x4x4", exporter="torchscript")
    assert not list(tmp_path.iterdir())
    result = export_onnx(model, tmp_path / "auto.onnx", input_size="3x4x4")
    assert result.exporter == "dynamo" and result.opset >= 18 and result.verification.max_rel < FP32


def test_dynamo_exporter_on_a_converted_model(tmp_path):
    model = lr.convert("resnet20", rank=0.5, input_size="3x16x16")
    result = export_onnx(model, tmp_path / "d.onnx", exporter="dynamo")
    assert result.exporter == "dynamo" and result.verification.max_rel < FP32


# -- verification and runtime -------------------------------------------------------------------------
def test_verification_failure_raises_and_writes_nothing(tmp_path):
    model = lr.convert("resnet20", rank=0.5, input_size="3x16x16")
    with pytest.raises(VerificationError, match="above the fp32 tolerance 1e-12; the file was not written"):
        export_onnx(model, tmp_path / "m.onnx", tolerance=1e-12)
    assert not list(tmp_path.iterdir())


def test_verify_catches_a_wrong_model(tmp_path):
    model = lr.convert("resnet20", rank=0.5, input_size="3x16x16").eval()
    result = export_onnx(model, tmp_path / "m.onnx")
    other = lr.convert("resnet20", rank=0.5, input_size="3x16x16").eval()  # different random weights
    report = verify_onnx(tmp_path / "m.onnx", other, example_input=result.example_input)
    assert not report.passed and report.max_rel > 1e-2


def test_providers_cpu_without_gpu_and_cuda_with_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert providers_for("auto") == ["CPUExecutionProvider"]
    with pytest.raises(LowRankError, match="device 'cuda' is not usable here"):
        providers_for("cuda")
    import onnxruntime

    monkeypatch.setattr(
        onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert providers_for("auto") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert providers_for("cpu") == ["CPUExecutionProvider"]
    with pytest.raises(
        LowRankError, match="device 'tensorrt' is not usable here: this onnxruntime build has no TensorRT"
    ):
        providers_for("tensorrt")
    monkeypatch.setattr(
        onnxruntime,
        "get_available_providers",
        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
    )
    assert providers_for("tensorrt") == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_a_provider_asked_for_by_name_that_does_not_start_is_an_error(monkeypatch):
    """ONNX Runtime falls back to the CPU quietly when CUDA or TensorRT libraries are missing: refuse instead."""
    import onnxruntime

    from lowrank_tool.runtime import make_session

    monkeypatch.setattr(
        onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    class FellBack:
        def __init__(self, *args, **kwargs):
            pass

        def get_providers(self):
            return ["CPUExecutionProvider"]

    monkeypatch.setattr(onnxruntime, "InferenceSession", FellBack)
    with pytest.raises(LowRankError, match="could not start its CUDA provider for m.onnx .it fell back to CPU."):
        make_session("m.onnx", device="cuda")
    assert make_session("m.onnx", device="auto").get_providers() == ["CPUExecutionProvider"]  # auto may fall back


# -- the CLI --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def r18_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("art") / "r18"
    lr.save(lr.convert("resnet18", rank=0.3, input_size="3x32x32"), directory)
    return directory


def test_cli_export_prints_verification(r18_dir, tmp_path, capsys, monkeypatch):
    code, out, err = run(["export", str(r18_dir), "--onnx", str(tmp_path / "m.onnx")], capsys, monkeypatch)
    assert code == 0, err
    assert "torchscript exporter, opset 17; inputs input batchx3x32x32 → outputs logits" in out
    assert "verification passed on onnxruntime CPU: input 3x3x32x32" in out and "tolerance 0.0001, fp32" in out
    assert "verification passed on openvino CPU f32: input 3x3x32x32" in out  # every installed engine (auto)
    before = (tmp_path / "m.onnx").read_bytes()
    code, out, err = run(
        ["export", str(r18_dir), "--onnx", str(tmp_path / "m.onnx"), "--batch", "2"], capsys, monkeypatch
    )
    assert code == 2 and "m.onnx already exists; choose another --onnx file or pass --force" in err
    assert (tmp_path / "m.onnx").read_bytes() == before  # untouched
    code, out, _ = run(
        ["export", str(r18_dir), "--onnx", str(tmp_path / "m.onnx"), "--json", "--batch", "2", "--force"],
        capsys,
        monkeypatch,
    )
    data = json.loads(out)
    assert (
        code == 0 and data["batch"] == 2 and data["verification"]["passed"] and data["verification"]["max_rel"] < FP32
    )


def test_cli_export_no_verify(r18_dir, tmp_path, capsys, monkeypatch):
    code, out, _ = run(["export", str(r18_dir), "--onnx", str(tmp_path / "m.onnx"), "--no-verify"], capsys, monkeypatch)
    assert code == 0 and "not verified" in out


def test_cli_verification_failure_exits_1(r18_dir, tmp_path, capsys, monkeypatch):
    code, out, err = run(
        ["export", str(r18_dir), "--onnx", str(tmp_path / "m.onnx"), "--tolerance", "1e-12"], capsys, monkeypatch
    )
    assert code == 1 and "above the fp32 tolerance" in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


BAD_EXPORT = [
    (
        ["export", "{missing}", "--onnx", "{out}"],
        "is not a directory; point to a directory written by `lowrank convert -o DIR`",
    ),
    (
        ["export", "{art}", "--onnx", "{tmp}/no/such/dir/m.onnx"],
        "directory {tmp}/no/such/dir does not exist; create it first",
    ),
    (["export", "{art}", "--onnx", "{tmp}"], "is a directory; give a file name"),
    (
        ["export", "{art}", "--onnx", "{out}", "--opset", "9"],
        "opset 9 is not supported; use an opset from 13 to 20 (default 17)",
    ),
    (["export", "{art}", "--onnx", "{out}", "--opset", "25"], "opset 25 is not supported"),
    (
        ["export", "{art}", "--onnx", "{out}", "--batch", "zero"],
        "batch 'zero' is not valid; use 'dynamic' or a positive integer",
    ),
    (["export", "{art}", "--onnx", "{out}", "--int8"], "--int8 needs calibration data; add --calib-data digits"),
    (
        ["export", "{art}", "--onnx", "{out}", "--fp16", "--int8", "--calib-data", "digits"],
        "--fp16 and --int8 exclude each other",
    ),
    (["export", "{art}", "--onnx", "{out}", "--calib-data", "digits"], "--calib-data is only used with --int8"),
    (
        ["export", "{art}", "--onnx", "{out}", "--int8", "--calib-data", "cifar10:{tmp}/none"],
        "data folder {tmp}/none does not exist",
    ),
    (
        ["export", "{art}", "--onnx", "{out}", "--int8-weight-bits", "8"],
        "--int8-weight-bits is only used with --int8; add --int8 or drop --int8-weight-bits",
    ),
    (
        ["export", "{art}", "--onnx", "{out}", "--int8", "--calib-data", "digits", "--int8-weight-bits", "4"],
        "int8 weight bits 4 must be 7 (the default, safe on every CPU) or 8",
    ),
    (["export", "{art}", "--onnx", "{out}", "--input-size", "3x32"], "input size '3x32' is malformed"),
    (["bench", "{missing}"], "does not exist; point to a directory from `lowrank convert -o DIR` or an .onnx file"),
    (["bench", "{art}", "--batch", "0"], "batch '0' must be positive integers"),
    (["bench", "{art}", "--engine", "tensorflow"], "engine 'tensorflow' is not known"),
    (
        ["export", "{art}", "--onnx", "{out}", "--verify-with", "tvm"],
        "engine 'tvm' is not known; use one of: onnxruntime, openvino",
    ),
    (["export", "{art}", "--onnx", "{out}", "--verify-with", ","], "--verify-with is empty"),
    (
        ["export", "{art}", "--onnx", "{out}", "--verify-with", "openvino", "--device", "cuda"],
        "the openvino engine runs on the CPU here, not on 'cuda'",
    ),
    (["export", "{art}", "--onnx", "{out}", "--device", "tensorrt"], "device 'tensorrt' is not usable here"),
]


@pytest.mark.parametrize("argv,message", BAD_EXPORT, ids=[" ".join(a[2:]) for a, _ in BAD_EXPORT])
def test_cli_bad_input_one_line_exit_2_nothing_written(argv, message, r18_dir, tmp_path, capsys, monkeypatch):
    fill = {
        "missing": str(tmp_path / "missing"),
        "out": str(tmp_path / "m.onnx"),
        "art": str(r18_dir),
        "tmp": str(tmp_path),
    }
    code, out, err = run([a.format(**fill) for a in argv], capsys, monkeypatch)
    assert code == 2
    assert message.format(**fill) in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not list(tmp_path.iterdir())


def test_cli_bench_vs_dense_json(r18_dir, capsys, monkeypatch):
    code, out, err = run(
        ["bench", str(r18_dir), "--vs-dense", "--runs", "3", "--warmup", "1", "--threads", "1", "--json"],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    data = json.loads(out)
    rows = {(r["model"], r["engine"]) for r in data["rows"]}
    assert rows == {("low-rank", "onnxruntime"), ("dense", "onnxruntime"), ("low-rank", "torch"), ("dense", "torch")}
    totals = lr.summary(lr.load(r18_dir)).totals()
    for c in data["comparisons"]:
        assert c["mac_reduction"] == pytest.approx(totals["mac_reduction"])
        assert c["efficiency"] == pytest.approx(c["speedup"] / c["mac_reduction"])
    dense = next(r for r in data["rows"] if r["model"] == "dense")
    assert (
        dense["params"] == totals["params_before"] and dense["median_ms"] > 0 and dense["p90_ms"] >= dense["median_ms"]
    )
    # the machine and software the timings belong to: the ISA picks the kernels
    from lowrank_tool.runtime.machine import cpu_description

    assert data["cpu"] == cpu_description().to_dict() and data["cpu"]["isa"] == torch.backends.cpu.get_cpu_capability()
    assert data["versions"] == {"onnxruntime": onnxruntime.__version__, "torch": torch.__version__}


def test_cli_bench_table_and_onnx_file(r18_dir, tmp_path, capsys, monkeypatch):
    code, out, _ = run(
        ["bench", str(r18_dir), "--vs-dense", "--runs", "3", "--warmup", "1", "--engine", "onnxruntime"],
        capsys,
        monkeypatch,
    )
    assert code == 0 and "low-rank" in out and "dense" in out and "speedup" in out and "efficiency" in out
    run(["export", str(r18_dir), "--onnx", str(tmp_path / "m.onnx"), "--no-verify"], capsys, monkeypatch)
    code, out, err = run(
        ["bench", str(tmp_path / "m.onnx"), "--runs", "3", "--warmup", "1", "--json", "--vs-dense"], capsys, monkeypatch
    )
    assert code == 0, err
    data = json.loads(out)
    assert data["input_size"] == [3, 32, 32] and {r["model"] for r in data["rows"]} == {"low-rank", "dense"}


def test_bench_custom_model_vs_dense_is_a_clear_error(tiny, tmp_path):
    from lowrank_tool.analysis.bench import bench

    lr.save(lr.convert(tiny, rank=0.5, input_size="3x16x16"), tmp_path / "tiny")
    with pytest.raises(LowRankError):
        bench(tmp_path / "tiny", vs_dense=True, runs=1, warmup=0)


def test_measure_counts_runs_and_orders_percentiles():
    from lowrank_tool.runtime import measure

    calls = []
    lat = measure(lambda: calls.append(1), runs=7, warmup=3)
    assert len(calls) == 10 and lat.runs == 7 and lat.min_ms <= lat.median_ms <= lat.p90_ms
    with pytest.raises(ValueError):
        measure(lambda: None, runs=0)


def test_int8_cifar_resnet_verifies_on_openvino(tmp_path):
    """OpenVINO refused the S8S8 file of a CIFAR ResNet (zero-padded shortcut); the U8S8 file loads and agrees."""
    pytest.importorskip("openvino")
    model = lr.convert("resnet20", rank=0.5, input_size="3x32x32")
    batches = [torch.randn(8, 3, 32, 32) for _ in range(2)]
    result = export_onnx(
        model,
        tmp_path / "q.onnx",
        precision="int8",
        calib_data=batches,
        calib_samples=16,
        verify_with="onnxruntime,openvino",
        tolerance=1.0,  # random weights and inputs: the check is that OpenVINO loads and runs the file
    )
    assert [v.provider for v in result.verifications] == ["onnxruntime CPU", "openvino CPU f32"]
    assert all(v.passed and not v.notes for v in result.verifications)
