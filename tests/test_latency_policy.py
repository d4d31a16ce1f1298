"""Latency-aware conversion: candidates, choices, the speed target, the per-machine cache, errors."""

import dataclasses
import json

import pytest
import torch

import lowrank_tool as lr
from lowrank_tool.convert import latency
from lowrank_tool.errors import LowRankError
from lowrank_tool.runtime.machine import cpu_description, parse_cpuinfo


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWRANK_CACHE_DIR", str(tmp_path / "cache"))


def fake_measure(overhead_per_conv=0.01):
    """Time = MACs (in millions) / 100 + a fixed cost per conv launched: a caricature of a CPU."""
    calls = []

    def measure(g, fmt, ranks, shape, *, threads, runs=20, warmup=5, engine="onnxruntime", precision="fp32"):
        calls.append((fmt, ranks))
        hw = shape[2] * shape[3]
        k = g.kernel_numel
        if fmt == "dense":
            return g.in_channels * g.out_channels * k * hw / 1e8 + overhead_per_conv
        r_in, r_out = ranks if fmt == "tucker2" else (ranks[0], ranks[0])
        if fmt == "tucker2":
            macs = hw * (g.in_channels * r_in + r_in * r_out * k + r_out * g.out_channels)
            return macs / 1e8 + 3 * overhead_per_conv
        return hw * (g.in_channels * k * r_in + r_in * g.out_channels) / 1e8 + 2 * overhead_per_conv

    return measure, calls


def test_rank_mode_picks_the_fastest_form_and_records_times(monkeypatch):
    measure, calls = fake_measure()
    monkeypatch.setattr(latency, "measure_form", measure)
    model = lr.convert("resnet18", rank=0.3, input_size="3x64x64", policy="latency")
    plan = lr.summary(model)
    assert plan.policy["policy"] == "latency" and plan.policy["latency_measured"] == len(calls) > 0
    for entry in plan.layers[1:]:
        assert entry.latency_ms is not None and entry.latency_ms <= entry.dense_latency_ms
        assert entry.reason.startswith("latency:")
        if entry.converted:
            # the requested ranks or those rounded up to 8/16: never below the request
            requested = lr.plan("resnet18", rank=0.3, input_size="3x64x64").layer(entry.name).ranks
            assert all(r >= q for r, q in zip(entry.ranks, requested, strict=True))
    # the caricature makes every rounded candidate slower than the exact ranks (more MACs, same launches)
    conv = plan.layer("layer1.0.conv1")
    assert conv.ranks == [24, 24] and conv.format == "tucker2"
    x = torch.randn(1, 3, 64, 64)
    assert model(x).shape == (1, 1000)


def test_layer_stays_dense_when_factorising_does_not_pay(monkeypatch):
    measure, _ = fake_measure(overhead_per_conv=10.0)  # launches dominate: three convs never win
    monkeypatch.setattr(latency, "measure_form", measure)
    plan = lr.plan("resnet18", rank=0.3, input_size="3x64x64", policy="latency")
    assert not plan.converted_layers
    assert all("is the fastest form measured" in e.reason for e in plan.layers[1:])


def test_measurements_are_cached_per_machine(monkeypatch, tmp_path):
    measure, calls = fake_measure()
    monkeypatch.setattr(latency, "measure_form", measure)
    first = lr.plan("resnet20", rank=0.5, input_size="3x32x32", policy="latency")
    n = len(calls)
    assert n > 0 and first.policy["latency_measured"] == n
    cache_files = list((tmp_path / "cache").glob("latency-*.json"))
    assert len(cache_files) == 1 and len(json.loads(cache_files[0].read_text())) == n
    second = lr.plan("resnet20", rank=0.5, input_size="3x32x32", policy="latency")
    assert len(calls) == n and second.policy["latency_measured"] == 0 and second.policy["latency_cache_hits"] >= n
    assert [e.ranks for e in second.layers] == [e.ranks for e in first.layers]

    # Another CPU behind the same (VM-masked) model name: its timings are not these, so it measures anew.
    here = latency.cpu_description()
    other = dataclasses.replace(here, isa="AVX512" if here.isa != "AVX512" else "AVX2")
    monkeypatch.setattr(latency, "cpu_description", lambda: other)
    third = lr.plan("resnet20", rank=0.5, input_size="3x32x32", policy="latency")
    assert len(calls) == 2 * n and third.policy["latency_measured"] == n
    assert len(list((tmp_path / "cache").glob("latency-*.json"))) == 2


@pytest.mark.parametrize(
    "content",
    [b"[1, 2]", b"\xff\xfe", b"[" * 100_000 + b"]" * 100_000, b'{"k": "fast"}', b"not json"],
    ids=["list", "not-utf8", "deep", "string-values", "text"],
)
def test_a_corrupt_cache_is_measured_again(monkeypatch, tmp_path, content):
    measure, calls = fake_measure()
    monkeypatch.setattr(latency, "measure_form", measure)
    cache = latency.LatencyCache()
    cache.path.parent.mkdir(parents=True, exist_ok=True)
    cache.path.write_bytes(content)
    plan = lr.plan("resnet20", rank=0.5, input_size="3x32x32", policy="latency")
    assert plan.policy["latency_measured"] == len(calls) > 0


def test_a_cached_time_that_is_not_a_positive_finite_number_is_measured_again(monkeypatch, tmp_path):
    measure, calls = fake_measure()
    monkeypatch.setattr(latency, "measure_form", measure)
    lr.plan("resnet20", rank=0.5, input_size="3x32x32", policy="latency")
    n = len(calls)
    path = latency.LatencyCache().path
    data = json.loads(path.read_text())
    keys = sorted(data)
    data[keys[0]], data[keys[1]], data[keys[2]] = float("nan"), -1.0, True
    path.write_text(json.dumps(data))
    again = lr.plan("resnet20", rank=0.5, input_size="3x32x32", policy="latency")
    assert again.policy["latency_measured"] == 3 and len(calls) == n + 3


def test_cpu_is_told_apart_by_its_instruction_set_not_only_its_name():
    avx2 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2 fma\n\nprocessor\t: 1\nflags\t: avx512f\n"
    avx512 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 fma avx512f avx512bw avx512_vnni\n"
    assert parse_cpuinfo(avx2) == ("AMD EPYC", ("avx2", "fma"))  # the first processor's block only
    assert parse_cpuinfo(avx512) == ("AMD EPYC", ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni"))
    assert parse_cpuinfo("Features\t: fp asimd\nCPU part\t: 0xd0c\n") == (None, ())  # ARM: none of ours
    cpu = cpu_description()
    assert cpu.label == f"{cpu.name}, {cpu.isa}, {cpu.cpus} CPUs" and cpu.isa == torch.backends.cpu.get_cpu_capability()


def test_target_speedup_reached_or_said_clearly(monkeypatch):
    from lowrank_tool.layers import LowRankConv

    measure, _ = fake_measure()
    monkeypatch.setattr(latency, "measure_form", measure)

    def model_ms(model, plan, batch, threads, engine, precision):
        """The caricature for a whole model: its convs' times plus a fixed 20% for everything else."""
        total = 0.0
        for e in plan.layers:
            if not e.input_size or e.in_channels <= 3:
                continue
            m = model.get_submodule(e.name)
            fmt, ranks = (m.format_name, m.ranks) if isinstance(m, LowRankConv) else ("dense", None)
            total += measure(e.geometry(), fmt, ranks, (1, e.in_channels, *e.input_size), threads=1)
        return total + 0.2 * dense_layers(plan)

    def dense_layers(plan):
        return sum(
            measure(e.geometry(), "dense", None, (1, e.in_channels, *e.input_size), threads=1)
            for e in plan.layers
            if e.input_size and e.in_channels > 3
        )

    monkeypatch.setattr(latency, "_model_ms", model_ms)
    plan = lr.plan("resnet18", input_size="3x64x64", policy="latency", target_speedup=2.0)
    pred = plan.policy["latency_prediction"]
    assert pred["reached"] and pred["measured_speedup"] >= 2.0 and plan.converted_layers
    assert any("target speedup 2: measured" in n for n in plan.notes)
    impossible = lr.plan("resnet18", input_size="3x64x64", policy="latency", target_speedup=100.0)
    assert not impossible.policy["latency_prediction"]["reached"]
    assert any("cannot reach 100x with the candidate ranks on this machine" in n for n in impossible.notes)


def test_real_measurement_on_a_small_model(tmp_path):
    model = lr.convert("resnet20", rank=0.5, input_size="3x16x16", policy="latency", latency_threads=1)
    plan = lr.summary(model)
    assert all(e.latency_ms > 0 and e.dense_latency_ms > 0 for e in plan.layers[1:])
    lr.save(model, tmp_path / "r20")
    again = lr.summary(lr.load(tmp_path / "r20"))
    assert again.layer("layer1.0.conv1").latency_ms == plan.layer("layer1.0.conv1").latency_ms


def test_measured_in_the_engine_the_user_deploys_with(tmp_path):
    model = lr.convert(
        "resnet20", rank=0.5, input_size="3x16x16", policy="latency", latency_threads=1, latency_engine="openvino"
    )
    plan = lr.summary(model)
    assert plan.policy["latency_engine"] == "openvino"
    assert all(e.latency_ms > 0 and e.dense_latency_ms > 0 for e in plan.layers[1:])
    (cache,) = (tmp_path / "cache").glob("latency-*.json")
    keys = [json.loads(k) for k in json.loads(cache.read_text())]
    assert keys and all(k[0].startswith("openvino-2") for k in keys)  # never mixed with ONNX Runtime's timings


def test_timed_in_the_precision_the_user_deploys_in(tmp_path):
    import onnx

    from lowrank_tool.runtime.int8 import int8_bytes
    from lowrank_tool.runtime.probe import onnx_bytes

    model = lr.convert(
        "resnet20", rank=0.5, input_size="3x16x16", policy="latency", latency_threads=1, latency_precision="int8"
    )
    plan = lr.summary(model)
    assert plan.policy["latency_precision"] == "int8"
    assert all(e.latency_ms > 0 and e.dense_latency_ms > 0 for e in plan.layers[1:])
    (cache,) = (tmp_path / "cache").glob("latency-*.json")
    keys = [json.loads(k) for k in json.loads(cache.read_text())]
    assert keys and all(k[0] == "int8" for k in keys)  # never mixed with the fp32 timings of the same forms
    # what is timed is the exporter's int8 form: every conv a quantized one
    conv = torch.nn.Conv2d(16, 16, 3, padding=1)
    graph = onnx.load_from_string(int8_bytes(onnx_bytes(conv.eval(), (1, 16, 8, 8)), (1, 16, 8, 8))).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    weights = [n for n in graph.node if n.op_type == "DequantizeLinear" and "weight" in n.input[0]]
    assert weights  # the weight is stored in int8 and dequantized (QDQ), per channel


def test_the_int8_probe_and_the_exporter_quantize_alike(tmp_path):
    import onnx

    from lowrank_tool.export import export_onnx
    from lowrank_tool.runtime.int8 import int8_bytes
    from lowrank_tool.runtime.probe import onnx_bytes

    conv = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1)).eval()
    probe = onnx.load_from_string(int8_bytes(onnx_bytes(conv, (1, 8, 8, 8)), (1, 8, 8, 8)))
    export_onnx(conv, tmp_path / "c.onnx", input_size=(8, 8, 8), precision="int8", calib_data=[torch.randn(4, 8, 8, 8)])
    exported = onnx.load(str(tmp_path / "c.onnx"))

    def quantized(proto):  # the ops and the stored types (int8 weights, uint8 activations' zero points, ...)
        return sorted(n.op_type for n in proto.graph.node), sorted(t.data_type for t in proto.graph.initializer)

    assert quantized(probe) == quantized(exported)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (
            {"policy": "latency", "latency_precision": "int4"},
            "latency precision 'int4' is not known; use one of: fp32, int8",
        ),
        (
            {"latency_precision": "int8"},
            "a latency precision needs policy 'latency' (CLI: --policy latency --latency-precision int8)",
        ),
        (
            {"policy": "latency", "latency_engine": "tvm"},
            "latency engine 'tvm' is not known; use one of: onnxruntime, openvino",
        ),
        (
            {"latency_engine": "openvino"},
            "a latency engine needs policy 'latency' (CLI: --policy latency --engine NAME)",
        ),
        ({"target_speedup": 2.0}, "target_speedup needs policy 'latency'"),
        ({"policy": "latency", "target_speedup": 0.5}, "must be a number above 1"),
        ({"policy": "latency", "target_speedup": 2.0, "rank": 0.3}, "give either a target speedup or a rank/budget"),
        ({"policy": "fastest"}, "policy 'fastest' is not known"),
    ],
)
def test_policy_errors(kwargs, message):
    with pytest.raises(LowRankError, match=message.replace("(", "\\(").replace(")", "\\)")):
        lr.plan("resnet18", input_size="3x32x32", **kwargs)


def test_latency_policy_refuses_detection_models():
    with pytest.raises(LowRankError, match="policy 'latency' measures models with one image input"):
        lr.plan("ssdlite320_mobilenet_v3_large", input_size="3x320x320", policy="latency")
