"""The benchmark scripts stay runnable: each on a tiny setting, checking what it writes."""

from __future__ import annotations

import errno
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from lowrank_tool.errors import LowRankError
from lowrank_tool.runtime.machine import machine_label

ROOT = Path(__file__).resolve().parents[1]


def _accuracy(out, *argv):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "accuracy.py"), "--data", "synthetic", "--image-size", "16"]
    return subprocess.run(
        [*cmd, "--seeds", "0", "--epochs", "1", "--out", str(out), *argv], capture_output=True, text=True
    )


def test_accuracy_benchmark_writes_a_table_and_does_not_repeat_runs(tmp_path):
    out = tmp_path / "my runs [v2]" / "acc"  # a space and brackets: the recorded command must still replay
    out.parent.mkdir()
    res = _accuracy(out, "--arms", "dense", "elrt:orth=none,lr=0.05", "--ranks", "0.5")
    assert res.returncode == 0, res.stderr[-2000:]
    data = json.loads(out.with_suffix(".json").read_text())
    assert [(r["arm"], r["rank"]) for r in data["runs"]] == [("dense", None), ("elrt:orth=none,lr=0.05", "0.5")]
    dense, low = data["runs"]
    assert low["params"] < dense["params"] == low["dense_params"] and len(low["curve"]) == 1
    assert low["curve"][0]["epoch_seconds"] > 0 and low["curve"][0]["orth_penalty"] == 0  # orth=none
    assert dense["machine"] == low["machine"] == machine_label()  # the CPU the seeds' numbers belong to
    row = next(r for r in data["summary"] if r["arm"] != "dense")
    assert row["vs_dense"] == low["last_top1"] - dense["last_top1"] and row["n"] == 1
    assert row["train_loss_mean"] == low["curve"][-1]["train_loss"] > 0  # the under-fit measure, per arm
    table = out.with_suffix(".md").read_text()
    assert "| resnet20 | synthetic | 1 | elrt:orth=none,lr=0.05 | 0.5 | 1 |" in table
    assert f"| {row['train_loss_mean']:.4f} | {low['params'] / 1e3:.1f}k |" in table
    command = shlex.split(table.splitlines()[0].strip("`"))
    assert (
        command[command.index("--out") + 1] == str(out)
        and command[command.index("--arms") + 2] == "elrt:orth=none,lr=0.05"
    )
    again = _accuracy(out, "--arms", "dense", "elrt:orth=none,lr=0.05", "--ranks", "0.5")
    assert again.returncode == 0 and len(json.loads(out.with_suffix(".json").read_text())["runs"]) == 2


def test_accuracy_benchmark_records_a_diverged_run_and_goes_on(tmp_path):
    out = tmp_path / "acc"
    res = _accuracy(out, "--arms", "elrt:lr=1e12", "dense", "--ranks", "0.5")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "DIVERGED (loss became" in res.stdout
    data = json.loads(out.with_suffix(".json").read_text())
    bad, dense = data["runs"]  # the sweep went on to the dense arm after the diverged one
    assert bad["last_top1"] is None and "loss became" in bad["diverged"] and bad["params"] < bad["dense_params"]
    assert dense["last_top1"] is not None and "diverged" not in dense
    row = next(r for r in data["summary"] if r["arm"] == "elrt:lr=1e12")
    assert row["diverged"] == 1 and row["top1_mean"] is None and row["vs_dense"] is None
    assert "| — (1 of 1 diverged) | — |" in out.with_suffix(".md").read_text()


def test_accuracy_benchmark_refuses_an_unknown_option_before_training(tmp_path):
    res = _accuracy(tmp_path / "acc", "--arms", "elrt:nosuch=1")
    assert res.returncode != 0 and "'nosuch=1' is not KEY=VALUE" in res.stderr
    assert not (tmp_path / "acc.json").exists()


def test_accuracy_benchmark_equal_time_arm_is_compared_with_dense_at_its_budget(tmp_path):
    out = tmp_path / "acc"
    res = _accuracy(out, "--arms", "dense", "elrt", "--equal-time")
    assert res.returncode == 0, res.stderr[-2000:]
    data = json.loads(out.with_suffix(".json").read_text())
    timed = [r for r in data["runs"] if r["arm"] == "elrt @dense-time"]
    assert len(timed) == 1 and timed[0]["equal_time_of"] == 1 and timed[0]["epochs"] >= 1
    dense = next(r for r in data["runs"] if r["arm"] == "dense")
    row = next(r for r in data["summary"] if r["arm"] == "elrt @dense-time")
    assert row["vs_dense"] == timed[0]["last_top1"] - dense["last_top1"]


def test_accuracy_benchmark_runs_every_method(tmp_path):
    out = tmp_path / "acc"
    res = _accuracy(out, "--arms", "decompose", "lrpet", "deeptwist", "--ranks", "0.5")
    assert res.returncode == 0, res.stderr[-2000:]
    runs = {r["arm"]: r for r in json.loads(out.with_suffix(".json").read_text())["runs"]}
    assert set(runs) == {"decompose", "lrpet", "deeptwist"}
    assert all(r["params"] < r["dense_params"] for r in runs.values())


def test_inference_latency_reports_the_median_ratio_of_interleaved_rounds_with_its_range(tmp_path):
    out = tmp_path / "lat"
    script = ROOT / "benchmarks" / "inference_latency.py"
    argv = ["--models", "resnet20", "--ranks", "0.5", "--batches", "1", "--threads", "1", "--runs", "6"]
    argv += ["--repeats", "6", "--warmup", "1", "--engines", "onnxruntime", "openvino", "--out", str(out)]
    res = subprocess.run([sys.executable, str(script), *argv], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    (result,) = json.loads(out.with_suffix(".json").read_text())["results"]
    assert [c["engine"] for c in result["comparisons"]] == ["onnxruntime", "openvino"]
    for c in result["comparisons"]:
        assert c["rounds"] == 6 and c["speedup_min"] <= c["speedup"] <= c["speedup_max"]
        assert [c["speedup_min"], c["speedup_max"]] == c["speedup_ci"]  # 6 rounds: the interval is min-max (96.9 %)
    table = out.with_suffix(".md").read_text()
    assert "| model | rank | engine | batch | threads | low-rank ms | dense ms | speedup | range | 95 % CI |" in table
    assert "| resnet20 | 0.5 | openvino (CPU f32) | 1 | 1 |" in table


def test_gpu_check_refuses_without_a_gpu_and_runs_every_step_on_cpu_stand_ins(tmp_path):
    script = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--out", str(tmp_path / "gpu")]
    refused = subprocess.run(script, capture_output=True, text=True, cwd=ROOT)
    assert refused.returncode == 2 and "gpu_check needs an NVIDIA GPU with CUDA" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and not list(tmp_path.iterdir())
    smoke = subprocess.run([*script, "--smoke-on-cpu"], capture_output=True, text=True, cwd=ROOT)
    assert smoke.returncode == 0, smoke.stdout + smoke.stderr[-2000:]
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert report["smoke"] is True
    status = {name: step["status"] for name, step in report["steps"].items()}
    assert status == {
        "environment": "ok",
        "export_cuda": "ok",
        "verify_tensorrt": "skipped",
        "inference_fp16": "ok",
        "train_step_amp": "ok",
        "ddp_nccl": "ok",
    }
    steps = report["steps"]
    assert steps["export_cuda"]["reports"]["fp32"]["passed"] and steps["ddp_nccl"]["grads_synced"]
    assert steps["train_step_amp"]["lowrank_over_dense"] > 0 and steps["ddp_nccl"]["backend"] == "gloo"
    assert {c["batch"] for c in steps["inference_fp16"]["benches"]["cpu"]["comparisons"]} == {1, 2}


def test_int8_lowrank_times_the_four_files_interleaved_and_scores_int8_on_digits(tmp_path):
    out = tmp_path / "i8"
    argv = ["--models", "resnet20", "--input-size", "3x32x32", "--batches", "1", "--runs", "4", "--repeats", "2"]
    argv += ["--warmup", "1", "--accuracy-epochs", "1", "--accuracy-size", "16", "--calib-samples", "16"]
    argv += ["--threads", "1", "--engines", "onnxruntime", "--out", str(out)]
    res = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "int8_lowrank.py"), *argv], capture_output=True, text=True, cwd=ROOT
    )
    assert res.returncode == 0, res.stderr[-2000:]
    data = json.loads(out.with_suffix(".json").read_text())
    (row,) = data["latency"]
    assert set(row["median_ms"]) == {"dense-fp32", "dense-int8", "lowrank-fp32", "lowrank-int8"}
    pair = row["ratios"]["lowrank int8 vs dense int8"]
    assert pair["min"] <= pair["speedup"] <= pair["max"]
    assert pair["ci"] is None  # 2 rounds: too few for an interval of the median
    (acc,) = data["accuracy"]
    assert all(acc[k]["eval_samples"] == 360 and 0 <= acc[k]["int8_top1"] <= 100 for k in ("dense", "lowrank"))
    assert acc["grad_clip"] == 5.0  # the accuracy runs clip by default: ResNet-50 at 32x32 diverges without
    table = out.with_suffix(".md").read_text()
    assert "| resnet20 r0.3 | onnxruntime (CPU) | 1 |" in table
    assert "| resnet20 r0.3 | digits, 1 epochs at 3x16x16, gradient norm clipped at 5 |" in table


def test_int8_lowrank_converts_with_the_latency_policy_timed_in_int8(tmp_path):
    out = tmp_path / "i8"
    argv = ["--models", "resnet20", "--input-size", "3x32x32", "--batches", "1", "--runs", "2", "--repeats", "1"]
    argv += ["--warmup", "0", "--accuracy-epochs", "0", "--calib-samples", "16", "--threads", "1"]
    argv += ["--engines", "onnxruntime", "--policy", "latency", "--out", str(out)]
    res = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "int8_lowrank.py"), *argv], capture_output=True, text=True, cwd=ROOT
    )
    assert res.returncode == 0, res.stderr[-2000:]
    (row,) = json.loads(out.with_suffix(".json").read_text())["latency"]
    assert row["policy"] == "latency (int8)" and len(row["median_ms"]) == 4
    assert "| resnet20 r0.3, latency (int8) | onnxruntime (CPU) | 1 |" in out.with_suffix(".md").read_text()


def test_int8_lowrank_accuracy_only_at_exact_ranks_without_clipping(tmp_path):
    out = tmp_path / "i8"
    argv = ["--models", "resnet20", "--no-latency", "--round-to", "1", "--accuracy-grad-clip", "0"]
    argv += ["--accuracy-epochs", "1", "--accuracy-size", "16", "--calib-samples", "16", "--out", str(out)]
    res = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "int8_lowrank.py"), *argv], capture_output=True, text=True, cwd=ROOT
    )
    assert res.returncode == 0, res.stderr[-2000:]
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["latency"] == []
    (acc,) = data["accuracy"]
    assert acc["grad_clip"] is None and acc["round_to"] == 1 and acc["lowrank"]["eval_samples"] == 360
    assert acc["lowrank"]["params"] < acc["dense"]["params"]
    assert "digits, 1 epochs at 3x16x16 |" in out.with_suffix(".md").read_text()


def test_train_speed_times_the_user_loop_recipes_beside_the_trainer_layouts(tmp_path):
    out = tmp_path / "ts.json"
    argv = ["--models", "resnet20", "--batch", "4", "--size", "16", "--steps", "1", "--user-loop", "--json", str(out)]
    res = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "train_speed.py"), *argv], capture_output=True, text=True, cwd=ROOT
    )
    assert res.returncode == 0, res.stderr[-2000:]
    (row,) = json.loads(out.read_text())["rows"]
    assert set(row["lowrank"]["step_s"]) == {"contiguous", "channels_last", "weights_channels_last"}
    assert row["lowrank"]["user_loop_best"] in row["lowrank"]["step_s"]
    assert row["time_ratio_weights_channels_last"] > 0 and row["time_ratio_user_loop_best"] > 0
    # the as-converted ratio: convert's layout (channels-last for a low-rank model) against dense NCHW
    assert row["lowrank"]["as_converted_layout"] == "channels_last"
    steps = row["lowrank"]["step_s"]["weights_channels_last"], row["dense"]["step_s"]["contiguous"]
    assert row["time_ratio_as_converted"] == pytest.approx(steps[0] / steps[1])
    assert set(row["paired"]) == {"trainer_default", "as_converted"}
    for pair in row["paired"].values():
        assert pair["steps"] == 1 and pair["min"] <= pair["ratio"] <= pair["max"]
        assert pair["ci"] is None  # one step: no interval of the median


def _benchmark_module(name):
    """A benchmark script (or a helper it shares) imported as a module, its folder on the path as when it runs."""
    import importlib

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_accuracy_compares_an_arm_with_the_dense_arm_trained_alike():
    acc = _benchmark_module("accuracy")
    arms = {"dense", "dense:warmup_epochs=0", "dense:warmup_epochs=0,lr=0.05", "elrt", "elrt @dense-time"}
    assert acc.dense_reference("elrt", arms) == "dense"
    assert acc.dense_reference("elrt:warmup_epochs=0", arms) == "dense:warmup_epochs=0"
    assert acc.dense_reference("elrt:warmup_epochs=0,orth=none", arms) == "dense:warmup_epochs=0"  # orth: no dense twin
    assert acc.dense_reference("elrt:lr=0.05,warmup_epochs=0", arms) == "dense:warmup_epochs=0,lr=0.05"
    assert acc.dense_reference("elrt:warmup_epochs=0.1", arms) == "dense"  # not run: the plain one
    assert acc.dense_reference("elrt:warmup_epochs=0 @dense-time", arms) == "dense:warmup_epochs=0"
    assert acc.dense_reference("dense:warmup_epochs=0", arms) == "dense"

    def run(arm, top1, seed=0, rank="0.5"):
        return {
            "model": "m",
            "data": "d",
            "epochs": 2,
            "arm": arm,
            "rank": rank,
            "seed": seed,
            "last_top1": top1,
            "params": 1,
            "dense_params": 2,
            "train_seconds": 1.0,
        }

    runs = [
        run("dense", 90.0, rank=None),
        run("dense:warmup_epochs=0", 88.0, rank=None),
        run("elrt:warmup_epochs=0", 87.5),
        run("elrt", 89.0),
    ]
    rows = {r["arm"]: r for r in acc.summarise(runs)}
    assert rows["elrt:warmup_epochs=0"]["vs_dense"] == pytest.approx(-0.5)
    assert rows["elrt:warmup_epochs=0"]["dense_arm"] == "dense:warmup_epochs=0"
    assert rows["elrt"]["vs_dense"] == pytest.approx(-1.0) and rows["dense"]["vs_dense"] is None
    assert rows["dense:warmup_epochs=0"]["vs_dense"] == pytest.approx(-2.0)
    table = acc.markdown(list(rows.values()), "cmd")
    assert "| -0.50 (vs dense:warmup_epochs=0) |" in table and "| -1.00 |" in table
    assert "machines)" not in table  # one machine (here: none recorded) is not flagged

    # a seed that ran on another CPU is not the same experiment: the row says the arm mixes machines
    other = run("elrt", 88.0, seed=1) | {"machine": "AMD EPYC, AVX2, 2 CPUs"}
    rows = {r["arm"]: r for r in acc.summarise([*runs, other])}
    assert rows["elrt"]["machines"] == ["AMD EPYC, AVX2, 2 CPUs", "unrecorded"]
    assert "| elrt | 0.5 | 2 (2 machines) | 88.50 ± 0.71 |" in acc.markdown(list(rows.values()), "cmd")


def test_openvino_profile_sums_node_times_per_kernel_for_the_four_files(tmp_path):
    out = tmp_path / "ovp"
    argv = ["--model", "resnet18", "--input-size", "3x32x32", "--runs", "2", "--warmup", "1"]
    argv += ["--calib-samples", "16", "--threads", "1", "--out", str(out)]
    res = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "openvino_profile.py"), *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    profiles = json.loads(out.with_suffix(".json").read_text())["profiles"]
    assert list(profiles) == ["dense-fp32", "lowrank-fp32", "dense-int8", "lowrank-int8"]
    for profile in profiles.values():
        assert profile["total_ms"] == pytest.approx(sum(k["ms"] for k in profile["kernels"].values()))
    convs = {
        f: sum(v["nodes"] for k, v in p["kernels"].items() if k.startswith("Convolution /"))
        for f, p in profiles.items()
    }
    assert convs["lowrank-fp32"] > convs["dense-fp32"]  # factorised layers are chains of convolutions
    assert any(k.endswith("I8") or "i8" in k.lower() for k in profiles["dense-int8"]["kernels"])  # int8 kernels ran
    assert "| **all nodes** |" in out.with_suffix(".md").read_text()


def test_int8_merge_times_each_distinct_layer_factorised_and_merged_in_int8(tmp_path):
    out = tmp_path / "i8m"
    argv = ["--model", "resnet20", "--rank", "0.5", "--input-size", "3x16x16", "--engines", "onnxruntime"]
    argv += ["--threads", "1", "--runs", "2", "--rounds", "2", "--out", str(out)]
    res = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "int8_merge.py"), *argv], capture_output=True, text=True, cwd=ROOT
    )
    assert res.returncode == 0, res.stderr[-2000:]
    data = json.loads(out.with_suffix(".json").read_text())
    layers = data["layers"]
    assert len(layers) == 18  # every convolution of ResNet-20 but the stem is low-rank at rank 0.5
    distinct = {(x["layer"].split(": ", 1)[1], tuple(x["shape"])) for x in layers}
    assert data["meta"]["distinct_layers"] == len(distinct) < len(layers)  # identical blocks are timed once
    for x in layers:
        times = x["times"]["onnxruntime"]
        assert times["factorised"] > 0 and times["merged"] > 0
    table = out.with_suffix(".md").read_text()
    assert "| layer | input | onnxruntime factorised ms | onnxruntime merged ms |" in table
    assert f"of {len(distinct)} distinct layers." in table


def test_spin_window_times_a_runner_right_after_another_at_each_gap(tmp_path):
    out = tmp_path / "spin"
    argv = ["--model", "resnet20", "--rank", "0.5", "--input-size", "3x16x16", "--threads", "2"]
    argv += ["--gaps-ms", "0", "5", "--rest-ms", "5", "--rounds", "2", "--out", str(out)]
    res = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "spin_window.py"), *argv], capture_output=True, text=True, cwd=ROOT
    )
    assert res.returncode == 0, res.stderr[-2000:]
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["meta"]["threads"] == 2 and data["meta"]["cpu"]["cpus"] >= 1
    rows = {row["engine"]: row for row in data["rows"]}
    assert set(rows) == {"onnxruntime", "openvino"}
    assert rows["onnxruntime"]["idle_spin_s"] > 0 and rows["openvino"]["idle_spin_s"] == 0  # what interleave waits
    for row in rows.values():
        assert set(row["after_other_ms"]) == {"0.0", "5.0"}
        assert all(ms > 0 for ms in [*row["after_other_ms"].values(), row["after_idle_ms"], row["back_to_back_ms"]])
    assert "ms per call right after the other runner's, by gap: 0.0 ms:" in res.stdout


def test_two_sessions_times_a_two_model_request_under_each_thread_pool_setup(tmp_path):
    out = tmp_path / "two"
    argv = ["--models", "resnet20", "resnet20", "--input-size", "3x16x16", "--calls", "3", "--repeats", "1"]
    res = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "two_sessions.py"), *argv, "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    data = json.loads(out.with_suffix(".json").read_text())
    assert [row["setup"] for row in data["rows"]] == ["per-session", "shared", "no-spin"]
    for row in data["rows"]:
        assert len(row["processes"]) == 1  # each set-up in its own process (a global pool is per process)
        assert 0 < row["a_in_pipeline_ms"] < row["pipeline_ms"] and row["a_alone_ms"] > 0
    assert data["meta"]["models"] == ["resnet20", "resnet20"] and "shared" in res.stdout


@pytest.mark.parametrize(
    ("script", "argv", "message"),
    [
        ("two_sessions.py", ["--repeats", "0"], "argument --repeats: 0 is below 1"),
        ("spin_window.py", ["--gaps-ms", "-5"], "argument --gaps-ms: -5 is below 0"),
        ("int8_lowrank.py", ["--repeats", "0"], "argument --repeats: 0 is below 1"),  # was a ZeroDivisionError
        ("int8_lowrank.py", ["--threads", "0"], "argument --threads: 0 is below 1"),  # was run as the default
        ("openvino_profile.py", ["--runs", "0"], "argument --runs: 0 is below 1"),  # wrote a table of 0 runs
        ("train_speed.py", ["--steps", "0", "--json", "{out}.json"], "argument --steps: 0 is below 1"),
        ("convert_speed.py", ["--repeat", "0", "--json", "{out}.json"], "argument --repeat: 0 is below 1"),
        ("cli_startup.py", ["--repeat", "1", "--json", "{out}.json"], "argument --repeat: 1 is below 2"),
        ("inference_latency.py", ["--warmup", "-1"], "argument --warmup: -1 is below 0"),
    ],
)
def test_the_benchmarks_refuse_counts_out_of_range(tmp_path, script, argv, message):
    out = tmp_path / "out"
    argv = [a.format(out=out) for a in argv]
    res = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *argv, *([] if "--json" in argv else ["--out", str(out)])],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert res.returncode == 2 and res.stderr.strip().splitlines()[-1].endswith(message)
    assert "Traceback" not in res.stderr and not list(tmp_path.iterdir())


def test_every_result_records_the_command_to_run_it_again_and_the_machine(monkeypatch):
    results = _benchmark_module("_results")
    monkeypatch.setattr(sys, "argv", ["x.py", "--out", "results/a b[1]", "--runs", "3"])
    meta = results.run_meta("inference_latency.py", threads=2, torch="replaced")
    assert meta["command"] == "python benchmarks/inference_latency.py --out 'results/a b[1]' --runs 3"
    assert shlex.split(meta["command"])[2:] == sys.argv[1:]  # pastes back into a shell as it ran
    assert meta["cpu"]["cpus"] >= 1 and meta["cpus"] >= 1 and meta["python"].count(".") == 2
    assert meta["threads"] == 2 and meta["torch"] == "replaced"  # a script's own fields come last and win
    import onnxruntime

    assert meta["onnxruntime"] == onnxruntime.__version__
    monkeypatch.setitem(results.PACKAGES, "not-installed", ("no-such-distribution-xyz",))
    assert "not-installed" not in results.package_versions()  # left out, not an error


def test_a_result_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    results = _benchmark_module("_results")
    path = tmp_path / "new dir" / "ü[1].json"
    assert results.write_result(path, {"meta": {"a": 1}, "rows": [1.5]}) == path
    assert json.loads(path.read_text()) == {"meta": {"a": 1}, "rows": [1.5]}
    real_write = Path.write_text

    def disk_full(self, text, *args, **kwargs):  # half the document reaches the disk, then ENOSPC
        real_write(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", disk_full)
    with pytest.raises(LowRankError, match="No space left"):
        results.write_result(path, {"meta": {"a": 2}, "rows": [2.5]})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"meta": {"a": 1}, "rows": [1.5]}
    assert sorted(p.name for p in path.parent.iterdir()) == ["ü[1].json"]
    assert results.write_text(tmp_path / "t.md", "| a |\n").read_text() == "| a |\n"


def test_every_benchmark_script_records_its_command_and_machine_the_shared_way():
    scripts = sorted(p for p in (ROOT / "benchmarks").glob("*.py") if not p.name.startswith("_"))
    assert len(scripts) >= 15
    own_format = {"accuracy.py"}  # its rows carry the machine per seed run, to resume across machines
    for script in scripts:
        text = script.read_text()
        if script.name in own_format:
            assert '"command": command' in text and "atomic_write_text" in text
            continue
        assert "run_meta(" in text or "command_line(" in text, f"{script.name} writes results without run_meta"
        assert ".write_text(json.dumps" not in text, f"{script.name} writes JSON non-atomically"
    for script in scripts:  # a mistake ends in one line, not a traceback; counts are checked by argparse
        text = script.read_text()
        assert text.rstrip().endswith('if __name__ == "__main__":\n    run_main(main)'), script.name
        plain_ints = [line.strip() for line in text.splitlines() if "type=int" in line and '"--seeds"' not in line]
        assert plain_ints == [], f"{script.name}: a count without at_least"  # seeds may be any integer
    documented = (ROOT / "docs" / "contributing.md").read_text()
    assert [s.name for s in scripts if f"| `{s.name}` |" not in documented] == []


@pytest.mark.parametrize(
    ("script", "argv", "message"),
    [
        ("inference_latency.py", ["--models", "resnet5O"], "error: unknown model 'resnet5O'"),
        ("int8_lowrank.py", ["--models", "resnet5O"], "error: unknown model 'resnet5O'"),
        ("spin_window.py", ["--model", "resnet5O"], "error: unknown model 'resnet5O'"),
        (
            "compare_methods.py",
            ["--recipe", "no such [recipe].yaml"],
            "error: recipe no such [recipe].yaml does not exist",
        ),
    ],
)
def test_a_benchmark_refuses_a_mistake_in_one_line_and_writes_nothing(tmp_path, script, argv, message):
    out = tmp_path / "out"
    res = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *argv, "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.strip().startswith(message) and len(res.stderr.strip().splitlines()) == 1
    assert "Traceback" not in res.stderr and list(tmp_path.iterdir()) == []


def test_inference_latency_holds_several_fresh_runs_against_a_target(tmp_path):
    out = tmp_path / "runs [1]"
    argv = ["--models", "resnet20", "--ranks", "0.5", "--batches", "1", "--threads", "1", "--runs", "12"]
    argv += ["--repeats", "6", "--engines", "onnxruntime", "openvino", "--processes", "2", "--gap-s", "0"]
    argv += ["--target", "onnxruntime=0.1", "--target", "openvino=100", "--out", str(out)]
    res = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "inference_latency.py"), *argv], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr[-2000:]
    data = json.loads(out.with_suffix(".json").read_text())
    assert len(data["runs"]) == 2 and data["meta"]["targets"] == {"onnxruntime": 0.1, "openvino": 100.0}
    rows = {row["engine"]: row for row in data["summary"]}
    assert [len(row["runs"]) for row in rows.values()] == [2, 2]  # one entry per fresh process
    assert rows["onnxruntime"]["verdict"] == "met in every run" and rows["openvino"]["verdict"] == "missed in every run"
    assert all(run["results"][0]["comparisons"][0]["verdict"] for run in data["runs"])  # each run held on its own
    assert "| resnet20 | 0.5 | openvino | 1 | 1 |" in out.with_suffix(".md").read_text()


def test_a_target_held_in_some_runs_only_is_at_its_edge():
    bench_module = _benchmark_module("inference_latency")

    def run(verdict):
        comparison = {"model": "m", "rank": 0.3, "engine": "onnxruntime", "batch": 1, "threads": 2, "speedup": 2.4}
        return {
            "results": [{"comparisons": [comparison | {"speedup_ci": [2.3, 2.5], "verdict": verdict, "target": 2.4}]}]
        }

    (row,) = bench_module._across_runs([run("met"), run("undecided"), run("met")])
    assert row["verdict"] == "at its edge (met 2, undecided 1 of 3)"
    (row,) = bench_module._across_runs([run("missed"), run("missed")])
    assert row["verdict"] == "missed in every run"
    assert bench_module._without(
        ["--out", "x", "--processes=3", "--runs", "5", "--gap-s", "1"], {"--out": 1, "--processes": 1, "--gap-s": 1}
    ) == ["--runs", "5"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--target", "onnxruntime"], "argument --target: 'onnxruntime' is not ENGINE=SPEEDUP, e.g. onnxruntime=2.4"),
        (["--target", "openvino=2.5"], "--target names 'openvino', which is not among --engines (onnxruntime)"),
        (
            ["--target", "onnxruntime=nan"],
            "argument --target: 'onnxruntime=nan' is not ENGINE=SPEEDUP, e.g. onnxruntime=2.4",
        ),
        (["--processes", "0"], "argument --processes: 0 is below 1"),
    ],
)
def test_inference_latency_refuses_a_bad_target_in_one_line(tmp_path, argv, message):
    res = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "inference_latency.py"), *argv, "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2 and res.stderr.strip().splitlines()[-1].endswith(message)
    assert "Traceback" not in res.stderr and not list(tmp_path.iterdir())
