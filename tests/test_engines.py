"""The runtime layer: every engine behind one interface, verification and bench on each, clear refusals."""

import importlib.util
import io
import json

import numpy as np
import pytest
import torch
from helpers import TinyNet

import lowrank_tool as lr
from lowrank_tool import LowRankError
from lowrank_tool.analysis.bench import bench
from lowrank_tool.export import export_onnx
from lowrank_tool.runtime import get_engine, installed_engines, parse_engines
from lowrank_tool.runtime.openvino_engine import OpenVINOEngine, _reason

ENGINES = ["onnxruntime", "openvino"]


def _onnx(model, shape, dynamic=True):
    buf = io.BytesIO()
    torch.onnx.export(
        model.eval(),
        (torch.randn(shape),),
        buf,
        dynamo=False,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "b"}, "y": {0: "b"}} if dynamic else None,
    )
    return buf.getvalue()


def test_the_dev_install_has_every_engine():
    assert installed_engines() == ENGINES  # `pip install -e .[dev]` brings OpenVINO: CI tests it


@pytest.mark.parametrize("name", ENGINES)
def test_each_engine_runs_a_converted_model_like_pytorch_at_any_batch(name):
    torch.manual_seed(0)
    model = lr.convert(TinyNet(), rank=0.5, input_size=(3, 16, 16)).eval()
    runner = get_engine(name).load(_onnx(model, (2, 3, 16, 16)), device="cpu", threads=1)
    assert runner.engine == name and runner.output_names == ["y"]
    assert [(s.name, s.dtype, s.shape) for s in runner.inputs] == [("x", np.dtype("float32"), (None, 3, 16, 16))]
    x = torch.randn(5, 3, 16, 16)
    (y,) = runner.run({"x": x.numpy()})
    with torch.no_grad():
        ref = model(x).numpy()
    assert y.shape == (5, 10) and np.abs(y - ref).max() <= 1e-4 * np.abs(ref).max()
    fixed = get_engine(name).load(_onnx(model, (4, 3, 16, 16), dynamic=False))
    assert fixed.inputs[0].shape == (4, 3, 16, 16)
    # compiled for one batch (what a deployment serving batch 5 runs): OpenVINO fixes the shape, ONNX Runtime
    # keeps it (a static shape bought it nothing); the numbers are the dynamic runner's either way
    static = get_engine(name).load(_onnx(model, (2, 3, 16, 16)), device="cpu", threads=1, batch=5)
    assert static.inputs[0].shape == ((5, 3, 16, 16) if name == "openvino" else (None, 3, 16, 16))
    (y_static,) = static.run({"x": x.numpy()})
    assert np.abs(y_static - y).max() <= 1e-5 * np.abs(ref).max()
    for bad in (0, -1, 1.5, True):
        with pytest.raises(LowRankError, match=rf"batch must be an integer >= 1, got {bad!r}"):
            get_engine(name).load(_onnx(model, (2, 3, 16, 16)), batch=bad)


def test_openvino_names_the_precision_it_computes_in():
    data = _onnx(torch.nn.Conv2d(3, 4, 3), (1, 3, 8, 8))
    assert get_engine("openvino").load(data).backend == "CPU f32"  # verification must not run in bf16
    assert OpenVINOEngine("default").load(data).backend.startswith("CPU ")  # the plugin's own choice, named
    with pytest.raises(LowRankError, match="OpenVINO precision 'f8' is not known; use one of: f32, bf16, f16, default"):
        OpenVINOEngine("f8")
    with pytest.raises(LowRankError, match="the openvino engine runs on the CPU here, not on 'cuda'"):
        get_engine("openvino").load(data, device="cuda")
    with pytest.raises(LowRankError, match=r"OpenVINO cannot run the ONNX model \(.+\); check the file"):
        get_engine("openvino").load(b"not an onnx model")


def test_openvino_errors_are_reduced_to_their_reason():
    exc = RuntimeError(
        "Exception from src/inference/src/cpp/core.cpp:117:\nException from src/inference/src/dev/plugin.cpp:54:\n"
        "Check 'x' failed at eltwise.hpp:26:\nWhile validating node 'opset1::Subtract S (...)' with friendly_name "
        "'Subtract_1379':\nArgument shapes are inconsistent.\n\n"
    )
    assert _reason(exc) == "Argument shapes are inconsistent at node Subtract_1379"


def test_unknown_and_missing_engines_are_one_line_naming_the_fix(monkeypatch):
    with pytest.raises(LowRankError, match="engine 'tvm' is not known; use one of: onnxruntime, openvino"):
        get_engine("tvm")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    with pytest.raises(LowRankError, match=r"needs the 'openvino' package.+pip install 'lowrank-tool\[openvino\]'"):
        get_engine("openvino")
    assert installed_engines() == ["onnxruntime"] and parse_engines("auto") == ["onnxruntime"]
    with pytest.raises(LowRankError, match="needs the 'openvino' package"):  # refused before any export starts
        parse_engines("onnxruntime,openvino")
    monkeypatch.undo()
    assert parse_engines("openvino, onnxruntime,openvino") == ["openvino", "onnxruntime"]
    with pytest.raises(LowRankError, match="--verify-with is empty"):
        parse_engines(" , ")


def test_export_verifies_on_every_installed_engine(tmp_path):
    model = lr.convert("resnet20", rank=0.5, input_size="3x16x16")
    result = export_onnx(model, tmp_path / "m.onnx")
    assert [v.provider for v in result.verifications] == ["onnxruntime CPU", "openvino CPU f32"]
    assert all(v.passed and v.max_rel < 1e-4 for v in result.verifications)
    assert result.verification is result.verifications[0]
    assert [v["provider"] for v in result.to_dict()["verifications"]] == ["onnxruntime CPU", "openvino CPU f32"]
    only = export_onnx(model, tmp_path / "ov.onnx", verify_with="openvino", precision="fp16")
    assert [v.provider for v in only.verifications] == ["openvino CPU f32"] and only.verification.max_rel < 1e-2


def test_an_engine_that_cannot_load_the_file_is_a_note_under_auto_and_an_error_when_named(tmp_path, monkeypatch):
    def refuse(self, model, **kwargs):
        raise LowRankError(f"OpenVINO cannot run {model} (an operator it lacks); deploy it with ONNX Runtime")

    monkeypatch.setattr(OpenVINOEngine, "load", refuse)
    model = lr.convert("resnet20", rank=0.5, input_size="3x16x16")
    result = export_onnx(model, tmp_path / "m.onnx")
    assert [v.provider for v in result.verifications] == ["onnxruntime CPU"]
    assert result.verification.notes == [
        f"not verified on openvino: OpenVINO cannot run {tmp_path / 'm.onnx'} (an operator it lacks); "
        "deploy it with ONNX Runtime"
    ]  # the file's own name, not the temporary's
    with pytest.raises(LowRankError, match=r"OpenVINO cannot run .*named\.onnx \(an operator it lacks\)"):
        export_onnx(model, tmp_path / "named.onnx", verify_with="onnxruntime,openvino")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # nothing half-written


def test_int8_export_with_a_fixed_batch_calibrates_and_evaluates_in_that_batch(tmp_path):
    model = lr.convert("resnet20", rank=0.5, input_size="3x16x16")
    result = export_onnx(
        model,
        tmp_path / "b3.onnx",
        batch=3,
        precision="int8",
        calib_data="digits",
        calib_samples=40,
        verify_with="onnxruntime",
    )
    q = result.quantization
    assert result.verification.passed and result.verification.input_shapes == [[3, 3, 16, 16]]
    assert q.calib_samples == 40 and q.eval_samples == 360 and q.int8_top1 is not None  # 360 = 120 batches of 3


def test_bench_times_openvino_beside_onnxruntime(tmp_path):
    lr.save(lr.convert("resnet20", rank=0.5, input_size="3x16x16"), tmp_path / "art")
    report = bench(tmp_path / "art", vs_dense=True, engines=["onnxruntime", "openvino"], threads=[1], runs=2, warmup=1)
    rows = {(r.model, r.engine, r.provider) for r in report.rows}
    assert rows == {
        ("low-rank", "onnxruntime", "CPU"),
        ("dense", "onnxruntime", "CPU"),
        ("low-rank", "openvino", "CPU f32"),
        ("dense", "openvino", "CPU f32"),
    }
    assert {c["engine"] for c in report.comparisons()} == {"onnxruntime", "openvino"}
    json.dumps(report.to_dict())


def test_bench_compiles_each_model_for_the_batch_it_times(tmp_path, monkeypatch):
    loads = []
    real = OpenVINOEngine.load

    def recording(self, model, **kwargs):
        runner = real(self, model, **kwargs)
        loads.append((kwargs.get("batch"), runner.inputs[0].shape[0]))
        return runner

    monkeypatch.setattr(OpenVINOEngine, "load", recording)
    lr.save(lr.convert("resnet20", rank=0.5, input_size="3x16x16"), tmp_path / "art")
    report = bench(tmp_path / "art", vs_dense=True, engines=["openvino"], batches=[1, 3], threads=[1], runs=2, warmup=1)
    assert loads == [(1, 1), (1, 1), (3, 3), (3, 3)]  # low-rank and dense, one static compile per batch
    assert sorted((r.model, r.batch) for r in report.rows) == [
        ("dense", 1),
        ("dense", 3),
        ("low-rank", 1),
        ("low-rank", 3),
    ]


def test_the_speedup_is_the_median_of_paired_rounds_with_its_range():
    from lowrank_tool.analysis.bench import BenchReport, BenchRow

    def row(model, medians, macs):
        return BenchRow(model, "onnxruntime", "CPU", 1, 2, 1, macs, float(np.median(medians)), 0.0, 10, medians)

    report = BenchReport("x", [3, 8, 8])
    # the machine slows down in round 3: both models' times rise, their ratio barely moves
    report.rows = [row("low-rank", [1.0, 1.0, 2.0, 1.0], 10), row("dense", [2.0, 2.1, 4.0, 2.2], 30)]
    (c,) = report.comparisons()
    assert c["speedup"] == pytest.approx(2.05) and (c["speedup_min"], c["speedup_max"]) == (2.0, 2.2)
    assert c["rounds"] == 4 and c["spread"] == pytest.approx(0.2 / 2.05) and c["stable"]
    assert c["efficiency"] == pytest.approx(2.05 / 3)
    assert c["speedup_ci"] is None  # 4 rounds: too few for a 95 % interval of the median
    report.rows[1].round_medians = [2.0, 3.0, 4.0, 2.2]  # one round 1.5x, another 3x: not a number to claim
    assert not report.comparisons()[0]["stable"]
    # ten rounds, one disturbed: the range flags it, the median's interval (2nd to 9th ratio) stays tight
    report.rows = [row("low-rank", [1.0] * 9 + [2.0], 10), row("dense", [2.4, 2.5] * 4 + [2.5, 2.5], 30)]
    (c,) = report.comparisons()
    assert not c["stable"] and c["speedup_ci"] == [pytest.approx(2.4), pytest.approx(2.5)]
    from lowrank_tool.cli.bench import _speedup_cell

    assert _speedup_cell(c) == "2.45x (1.25–2.50, 95% 2.40–2.50)"


def test_paired_speedup_pairs_rounds_and_says_when_it_is_too_noisy():
    from lowrank_tool.runtime import STABLE_SPREAD, paired_speedup

    p = paired_speedup([2.0, 4.2, 2.0], [1.0, 2.0, 1.0])  # the machine slowed in round 2
    assert (p.speedup, p.low, p.high, p.rounds) == (2.0, 2.0, 2.1, 3)
    assert p.spread == pytest.approx(0.05) and p.stable and STABLE_SPREAD == 0.10
    assert not paired_speedup([2.0, 3.0], [1.0, 1.0]).stable  # 2x and 3x rounds: not a claim
    assert not paired_speedup([2.0], [1.0]).stable  # one round has no spread to judge
    assert paired_speedup([2.0, 0.0], [1.0, 1.0]).rounds == 1  # a zero time is left out, not divided by
    assert paired_speedup([], []).rounds == 0
    with pytest.raises(ValueError, match="same number of rounds, got 2 and 1"):
        paired_speedup([1.0, 2.0], [1.0])


def test_median_interval_is_the_sign_test_interval_with_the_coverage_it_claims():
    import math
    import random

    from lowrank_tool.runtime import median_interval

    assert median_interval(range(5)) is None  # 2 * (1/2)^5 = 6.25 % > 5 %: no pair of order statistics covers 95 %
    assert median_interval(range(6)) == (0, 5)  # min and max: 1 - 2/64 = 96.9 %
    assert median_interval(list(reversed(range(10)))) == (1, 8)  # 2nd and 9th of 10, sorted first
    assert median_interval(range(40)) == (13, 26)  # 14th and 27th of 40
    assert median_interval(range(10), confidence=0.5) == (3, 6)
    for n in (6, 10, 17, 40, 101):  # the coverage the pair guarantees, computed independently
        lo, _ = median_interval(range(n))
        k = lo + 1
        miss = 2 * sum(math.comb(n, i) for i in range(k)) / 2**n
        miss_next = 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n
        assert miss <= 0.05 < miss_next  # the narrowest pair that still covers 95 %
    rng = random.Random(0)  # and empirically: skewed noise, the true median is 1.0
    draws = 2000
    covered = 0
    for _ in range(draws):
        values = [math.exp(rng.gauss(0.0, 0.3)) for _ in range(10)]
        lo, hi = median_interval(values)
        covered += lo <= 1.0 <= hi
    assert covered / draws >= 0.96  # 97.9 % in theory; 2000 draws put 96 % about 4 standard errors below
    with pytest.raises(ValueError, match="confidence must be between 0 and 1, got 1.5"):
        median_interval(range(10), confidence=1.5)


def test_paired_speedup_verdict_comes_from_the_interval_not_from_one_bad_round():
    from lowrank_tool.runtime import paired_speedup

    dense = [40.0] * 10
    lowrank = [16.0] * 9 + [30.0]  # nine rounds at 2.5x, one disturbed round at 1.33x
    p = paired_speedup(dense, lowrank)
    assert p.speedup == 2.5 and p.low == pytest.approx(40 / 30) and p.rounds == 10
    assert not p.stable  # the range flags the disturbed round ...
    assert (p.ci_low, p.ci_high) == (2.5, 2.5)  # ... which the interval of the median does not depend on
    assert p.verdict(2.4) == "met" and p.verdict(2.6) == "missed"
    wide = paired_speedup([40.0] * 10, [16.0, 17.0, 18.0, 19.0, 20.0, 16.0, 17.0, 18.0, 19.0, 20.0])
    assert wide.ci_low == pytest.approx(2.0) and wide.ci_high == pytest.approx(40 / 16)
    assert wide.verdict(2.2) == "undecided"  # the target lies inside the interval
    few = paired_speedup([40.0] * 5, [16.0] * 5)
    assert few.ci_low is None and few.verdict(2.0) == "undecided"  # 5 rounds cannot give a 95 % interval


def test_torch_threads_restores_the_thread_count_even_on_error():
    from lowrank_tool.runtime import torch_threads

    before = torch.get_num_threads()
    with pytest.raises(RuntimeError), torch_threads(1):
        assert torch.get_num_threads() == 1
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before


def test_onnxruntime_refuses_an_input_type_it_cannot_feed(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["s"], ["y"])],
        "g",
        [helper.make_tensor_value_info("s", TensorProto.STRING, [1])],
        [helper.make_tensor_value_info("y", TensorProto.STRING, [1])],
    )
    path = tmp_path / "strings.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    with pytest.raises(LowRankError, match=r"input 's' has type tensor\(string\), which the toolkit cannot feed"):
        get_engine("onnxruntime").load(path, device="cpu")


def test_bench_interleaves_rounds_and_refuses_bad_repeats(tmp_path):
    lr.save(lr.convert("resnet20", rank=0.5, input_size="3x16x16"), tmp_path / "art")
    report = bench(tmp_path / "art", vs_dense=True, engines=["onnxruntime"], threads=[1], runs=6, repeats=3, warmup=1)
    assert [(r.model, r.runs, len(r.round_medians)) for r in report.rows] == [("low-rank", 6, 3), ("dense", 6, 3)]
    (c,) = report.comparisons()
    assert c["rounds"] == 3 and c["speedup_min"] <= c["speedup"] <= c["speedup_max"]
    assert all(("too noisy" in n) == (not c["stable"]) for n in report.notes if "rounds" in n)
    with pytest.raises(LowRankError, match="repeats 7 must be an integer from 1 to runs .6."):
        bench(tmp_path / "art", engines=["onnxruntime"], runs=6, repeats=7)


def test_interleave_rotates_the_models_and_waits_out_the_previous_ones_spinning_threads(monkeypatch):
    from lowrank_tool.runtime import timing

    log = []
    monkeypatch.setattr(timing.time, "sleep", lambda s: log.append(("sleep", s)))
    calls = {k: (lambda k=k: log.append(k)) for k in "abc"}
    out = timing.interleave(
        calls, rounds=3, runs=2, warmup=1, round_warmup=0, idle_spin_s={"a": 0.2, "b": 0.0, "c": 0.1}
    )
    assert {k: len(v) for k, v in out.items()} == {"a": 3, "b": 3, "c": 3}
    assert all(lat.runs == 2 and len(lat.samples) == 2 for v in out.values() for lat in v)
    # round 0 starts at a (one warm-up call each), round 1 at b, round 2 at c (no warm-up); after a the next
    # model waits 0.2 s, after c 0.1 s, after b (no spinning threads) nothing, and a model never waits for itself
    assert log == (
        ["a"] * 3 + [("sleep", 0.2)] + ["b"] * 3 + ["c"] * 3
        + [("sleep", 0.1)] + ["b"] * 2 + ["c"] * 2 + [("sleep", 0.1)] + ["a"] * 2
        + [("sleep", 0.2)] + ["c"] * 2 + [("sleep", 0.1)] + ["a"] * 2 + [("sleep", 0.2)] + ["b"] * 2
    )  # fmt: skip
    with pytest.raises(ValueError, match="rounds and runs must be >= 1"):
        timing.interleave(calls, rounds=0, runs=1)


def test_onnxruntime_sessions_with_worker_threads_say_how_long_they_spin():
    from lowrank_tool.runtime.onnxruntime_engine import ORT_IDLE_SPIN_S

    model = _onnx(TinyNet(), (1, 3, 8, 8))
    ort_engine = get_engine("onnxruntime")
    assert ort_engine.load(model, device="cpu", threads=2).idle_spin_s == ORT_IDLE_SPIN_S > 0
    assert ort_engine.load(model, device="cpu", threads=1).idle_spin_s == 0.0  # the caller's thread does the work
    assert get_engine("openvino").load(model, device="cpu", threads=2).idle_spin_s == 0.0  # measured: no effect
    import onnxruntime as ort

    from lowrank_tool.runtime.onnxruntime_engine import OnnxRuntimeRunner

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # a session told not to spin
    session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    assert OnnxRuntimeRunner(session).idle_spin_s == 0.0


def test_bench_waits_out_onnxruntime_spinning_threads_between_models(tmp_path, monkeypatch):
    from lowrank_tool.runtime import timing

    sleeps = []
    monkeypatch.setattr(timing.time, "sleep", sleeps.append)
    lr.save(lr.convert("resnet20", rank=0.5, input_size="3x16x16"), tmp_path / "art")
    bench(tmp_path / "art", vs_dense=True, engines=["onnxruntime"], threads=[2], runs=4, repeats=4, warmup=1)
    # rounds low-rank,dense | dense,low-rank | ...: one switch inside each round, none across (the same model)
    assert sleeps == [0.2] * 4
    sleeps.clear()
    bench(tmp_path / "art", vs_dense=True, engines=["onnxruntime"], threads=[1], runs=4, repeats=4, warmup=1)
    assert sleeps == []  # one thread: no worker threads, nothing to wait for
    bench(tmp_path / "art", vs_dense=True, engines=["onnxruntime"], threads=[2, 1], runs=4, repeats=4, warmup=1)
    assert sleeps == [0.2] * 4  # the 2-thread sessions are freed (their threads joined) before the 1-thread ones load


def test_bench_frees_each_configurations_sessions_before_loading_the_next(tmp_path, monkeypatch):
    import weakref

    from lowrank_tool.runtime.onnxruntime_engine import OnnxRuntimeEngine

    real = OnnxRuntimeEngine.load
    loaded = []

    def recording(self, model, **kwargs):
        alive = sum(ref() is not None for ref in loaded)
        runner = real(self, model, **kwargs)
        loaded.append(weakref.ref(runner))
        live.append(alive)
        return runner

    live: list[int] = []
    monkeypatch.setattr(OnnxRuntimeEngine, "load", recording)
    lr.save(lr.convert("resnet20", rank=0.5, input_size="3x16x16"), tmp_path / "art")
    report = bench(
        tmp_path / "art", vs_dense=True, engines=["onnxruntime"], batches=[1, 2], threads=[1, 2], runs=2, warmup=1
    )
    # 4 configurations x (low-rank, dense): each configuration's first load finds no runner alive (no garbage
    # collection forced: reference counting frees them)
    assert live == [0, 1] * 4
    assert all(ref() is None for ref in loaded) and len(report.rows) == 8


def test_bench_fp16_exports_both_models_in_half_precision(tmp_path, monkeypatch):
    import lowrank_tool.analysis.bench as bench_module

    lr.save(lr.convert("resnet20", rank=0.5, input_size="3x16x16"), tmp_path / "art")
    seen = []
    real = bench_module.export_onnx
    monkeypatch.setattr(bench_module, "export_onnx", lambda *a, **k: seen.append(k["precision"]) or real(*a, **k))
    report = bench(tmp_path / "art", vs_dense=True, engines=["onnxruntime"], precision="fp16", runs=2, warmup=0)
    assert seen == ["fp16", "fp16"] and {r.model for r in report.rows} == {"low-rank", "dense"}
    with pytest.raises(LowRankError, match="bench precision 'int8' is not known; use fp32 or fp16"):
        bench(tmp_path / "art", precision="int8")


SHARED_POOL_CHILD = r"""
import sys

import numpy as np

from lowrank_tool import LowRankError
from lowrank_tool.runtime import make_session
from lowrank_tool.runtime.onnxruntime_engine import OnnxRuntimeEngine

path = sys.argv[1]
before = OnnxRuntimeEngine().load(path, device="cpu", threads=2)  # a pool of its own, made before the shared one
try:
    make_session(path, device="npu", threads=5, shared_pool=True)
except LowRankError:  # refused before the pool is made: it does not get 5 threads
    pass
first = make_session(path, device="cpu", threads=2, shared_pool=True)  # makes the process's pool
second = OnnxRuntimeEngine(shared_pool=True).load(path, device="cpu", threads=2)
after = OnnxRuntimeEngine().load(path, device="cpu", threads=2)  # ONNX Runtime allows no other pool now: joins
assert before.session.get_session_options().use_per_session_threads and before.idle_spin_s > 0
for runner in (second, after):
    assert not runner.session.get_session_options().use_per_session_threads
    assert runner.idle_spin_s == 0.0  # one pool: nothing to wait out between its sessions
x = np.random.default_rng(0).standard_normal((3, 3, 8, 8)).astype(np.float32)
y = first.run(None, {"x": x})[0]
for runner in (before, second, after):
    np.testing.assert_allclose(runner.run({"x": x})[0], y, rtol=1e-5, atol=1e-6)
assert make_session(path, device="cpu", shared_pool=True) is not None  # None: whatever size the pool has
try:
    make_session(path, device="cpu", threads=3, shared_pool=True)
except LowRankError as exc:
    print("refused:", exc)
"""


def _in_a_fresh_process(tmp_path, source, onnx_name="tiny.onnx"):
    """Run ``source`` on a tiny ONNX file (its path in ``sys.argv[1]``) in a fresh interpreter, and return its
    output: ONNX Runtime's global thread pool is made once per process and would outlive a test in pytest's."""
    import subprocess
    import sys

    path = tmp_path / onnx_name
    path.write_bytes(_onnx(TinyNet(), (1, 3, 8, 8)))
    script = tmp_path / "child.py"
    script.write_text(source)
    res = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout.strip()


def test_sessions_can_share_one_thread_pool_whose_size_the_first_one_sets(tmp_path):
    assert _in_a_fresh_process(tmp_path, SHARED_POOL_CHILD, "tiny [1].onnx") == (
        "refused: this process's shared ONNX Runtime thread pool has 2 threads and cannot be resized to 3; "
        "pass threads=2 or threads=None, or shared_pool=False for a pool of its own"
    )


USER_POOL_CHILD = r"""
import sys

import onnxruntime as ort

from lowrank_tool.runtime import make_session

ort.set_global_thread_pool_sizes(2, 1)  # the user's own set-up, before the toolkit's first session
session = make_session(sys.argv[1], device="cpu")  # joins it instead of failing in ONNX Runtime
assert not session.get_session_options().use_per_session_threads
print(session.run(None, {"x": __import__("numpy").zeros((1, 3, 8, 8), "float32")})[0].shape)
"""


def test_a_process_that_made_onnxruntime_global_pools_itself_gets_sessions_on_them(tmp_path):
    # and no "EP Error" banner from ONNX Runtime's provider fallback on the way
    assert _in_a_fresh_process(tmp_path, USER_POOL_CHILD) == "(1, 10)"


def test_make_session_refuses_a_thread_count_that_is_not_a_positive_integer():
    from lowrank_tool.runtime import make_session

    model = _onnx(TinyNet(), (1, 3, 8, 8))
    for bad in (0, -1, 1.5, True):
        with pytest.raises(LowRankError, match=f"threads {bad!r} must be a positive integer"):
            make_session(model, device="cpu", threads=bad)


class _GpuThatFails:
    """onnxruntime as on a GPU machine whose CUDA provider fails to start (a driver mismatch, say)."""

    def __init__(self):
        import onnxruntime

        self._ort = onnxruntime
        self.fallbacks = []

    def __getattr__(self, name):
        return getattr(self._ort, name)

    def get_available_providers(self):
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]

    def InferenceSession(self, source, *, sess_options, providers, enable_fallback):
        self.fallbacks.append(enable_fallback)
        if "CUDAExecutionProvider" in providers:
            raise RuntimeError("CUDA failure 100: no CUDA-capable device is detected\nmore lines")
        return self._ort.InferenceSession(source, sess_options=sess_options, providers=providers)


@pytest.fixture
def gpu_that_fails(monkeypatch):
    from lowrank_tool.runtime import session

    fake = _GpuThatFails()
    monkeypatch.setattr(session, "_ort", lambda: fake)
    monkeypatch.setattr(session, "_gpu_present", lambda: True)
    return fake


def test_auto_falls_back_to_the_cpu_with_one_warning_and_no_banner(gpu_that_fails, capfd):
    from lowrank_tool.errors import LowRankWarning
    from lowrank_tool.runtime import make_session

    model = _onnx(TinyNet(), (1, 3, 8, 8))
    with pytest.warns(LowRankWarning) as caught:
        sess = make_session(model, device="auto", threads=1)
    assert sess.get_providers() == ["CPUExecutionProvider"]
    assert [str(w.message) for w in caught if w.category is LowRankWarning] == [
        "ONNX Runtime could not start its CUDA provider for the ONNX model (CUDA failure 100: no CUDA-capable "
        "device is detected); running on the CPU"
    ]
    assert gpu_that_fails.fallbacks == [0, 0]  # ONNX Runtime's own retry (and its stdout banner) never used
    assert capfd.readouterr().out == ""


def test_a_named_gpu_device_that_cannot_start_is_an_error_naming_why(gpu_that_fails):
    from lowrank_tool.runtime import make_session

    with pytest.raises(LowRankError) as info:
        make_session(_onnx(TinyNet(), (1, 3, 8, 8)), device="cuda", threads=1)
    assert str(info.value) == (
        "ONNX Runtime could not start its CUDA provider for the ONNX model (CUDA failure 100: no CUDA-capable "
        "device is detected); check the CUDA installation or use --device cpu"
    )


def test_a_broken_file_on_a_failing_gpu_is_named_as_the_file(gpu_that_fails, tmp_path):
    from lowrank_tool.runtime import make_session

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(
        LowRankError, match=r"ONNX Runtime cannot load .*bad\.onnx .*re-export it with `lowrank export`"
    ):
        make_session(bad, device="auto")


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_every_engine_refuses_a_thread_count_far_above_the_cpus(engine):
    from lowrank_tool.threads import max_threads

    with pytest.raises(LowRankError, match=f"threads {max_threads() + 1} is more than 4x this machine's"):
        get_engine(engine).load(_onnx(TinyNet(), (1, 3, 8, 8)), device="cpu", threads=max_threads() + 1)
