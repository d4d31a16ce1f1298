"""The trainer: records, checkpoints, exact resume, signals, divergence, recipes, the CLI and DDP."""

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import TinyNet, lowrank
from torch.utils.data import DataLoader, TensorDataset

import lowrank_tool as lr
from lowrank_tool import LowRankError
from lowrank_tool.train.checkpoint import load_train_state
from lowrank_tool.train.config import TrainConfig
from lowrank_tool.train.recipes import load_recipe
from lowrank_tool.train.trainer import Trainer, TrainingDiverged, TrainingInterrupted, lr_factor

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def loaders(n=96, classes=10, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g)
    y = torch.arange(n) % classes
    x += y[:, None, None, None].float() * 0.3  # learnable
    train = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(seed))
    val = DataLoader(TensorDataset(x[:32], y[:32]), batch_size=32)
    return train, val


def make_model(seed=0):
    torch.manual_seed(seed)
    return lr.convert(TinyNet(), rank=0.5, input_size=(3, 16, 16))


def run(epochs, out_dir, resume=False, model=None, stop_at=None, **cfg):
    train, val = loaders()
    config = TrainConfig(epochs=epochs, lr=0.05, data="synthetic", **cfg)
    trainer = Trainer(model or make_model(), train, val, config, out_dir=out_dir, progress=False)
    return trainer, trainer.fit(resume=resume, stop_at=stop_at)


def test_metrics_and_checkpoints_are_written(tmp_path):
    _, result = run(2, tmp_path)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [0, 1]
    assert {"train_loss", "val_top1", "val_top5", "lr", "orth_penalty", "epoch_seconds", "images_per_s"} <= set(
        lines[0]
    )
    assert lines[0]["orth_penalty"] > 0
    assert {"train_state.pt", "model.safetensors", "best.safetensors", "metrics.jsonl"} <= {
        p.name for p in tmp_path.iterdir()
    }
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    state = load_train_state(tmp_path / "train_state.pt")
    assert state["epoch"] == 2 and state["step_in_epoch"] == 0 and state["config"]["epochs"] == 2
    assert result.best_top1 == max(m["val_top1"] for m in lines)


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    full, _ = run(2, tmp_path / "full")
    run(2, tmp_path / "half", stop_at=1)
    resumed, result = run(2, tmp_path / "half", resume=True, model=make_model(seed=123))  # other init: overwritten
    for (name, a), b in zip(full.raw_model.state_dict().items(), resumed.raw_model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert [m["epoch"] for m in result.history] == [0, 1]


def test_sigint_saves_state_mid_epoch_and_resume_finishes(tmp_path):
    train, val = loaders()
    config = TrainConfig(epochs=2, lr=0.05)
    trainer = Trainer(make_model(), train, val, config, out_dir=tmp_path, progress=False)
    original = trainer.method.after_step

    def interrupt(model, step):
        original(model, step)
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    trainer.method.after_step = interrupt
    with pytest.raises(TrainingInterrupted, match="epoch 1, step 3"):
        trainer.fit()
    state = load_train_state(tmp_path / "train_state.pt")
    assert (state["epoch"], state["step_in_epoch"]) == (0, 3)
    again = Trainer(make_model(), train, val, config, out_dir=tmp_path, progress=False)
    result = again.fit(resume=True)
    assert [m["epoch"] for m in result.history] == [0, 1]
    assert again.global_step == 2 * len(train)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    train, val = loaders()
    trainer = Trainer(make_model(), train, val, TrainConfig(epochs=3, lr=0.05), out_dir=tmp_path, progress=False)
    good = {}

    def poison(model):
        if trainer.epoch == 1 and trainer.step_in_epoch == 2:
            return torch.tensor(float("nan"))
        return None

    trainer.method.penalty = poison
    trainer.on_epoch = lambda r: good.update({k: v.clone() for k, v in trainer.raw_model.state_dict().items()})
    with pytest.raises(
        TrainingDiverged, match=r"loss became nan at epoch 2, step 3; the last good checkpoint \(after epoch 1\)"
    ):
        trainer.fit()
    state = load_train_state(tmp_path / "train_state.pt")
    assert state["epoch"] == 1
    assert all(torch.equal(state["model"][k], v) for k, v in good.items())


def test_schedule_shapes():
    cfg = TrainConfig(epochs=10, warmup_epochs=1, schedule="cosine")
    f = [lr_factor(cfg, s, 10) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0) and f[-1] < 0.01
    step = TrainConfig(epochs=10, schedule="step", milestones=[5, 8], gamma=0.1)
    assert [lr_factor(step, s * 10, 10) for s in (0, 5, 8)] == pytest.approx([1, 0.1, 0.01])
    # the default warm-up: 0.1 epoch (here 10 of 100 steps per epoch), then the schedule
    default = TrainConfig(epochs=2, schedule="constant")
    assert default.warmup_epochs == 0.1
    assert [lr_factor(default, s, 100) for s in (0, 4, 9, 10, 150)] == pytest.approx([0.1, 0.5, 1, 1, 1])
    # onecycle ramps over 30 % of the steps whatever the (shorter) warm-up
    onecycle = TrainConfig(epochs=10, schedule="onecycle")
    f = [lr_factor(onecycle, s, 10) for s in range(100)]
    assert f[0] == pytest.approx(1 / 30) and f[29] == pytest.approx(1.0) and f[-1] < 0.01


def test_no_weight_decay_on_bias_and_norm():
    trainer = Trainer(make_model(), *loaders(), TrainConfig(epochs=1), progress=False)
    decayed, plain = trainer.optimizer.param_groups
    assert decayed["weight_decay"] == 5e-4 and plain["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decayed["params"]) and all(p.dim() == 1 for p in plain["params"])


def test_fit_api_on_users_loaders():
    train, val = loaders()
    result = lr.fit(make_model(), train, val, epochs=3, lr=0.05, progress=False)
    assert len(result.history) == 3 and result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_elrt_needs_a_converted_model():
    with pytest.raises(LowRankError, match="convert"):
        lr.fit(TinyNet(), *loaders(), epochs=1, progress=False)
    lr.fit(TinyNet(), *loaders(), epochs=1, method="dense", progress=False)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(epochs=0), "epochs 0 must be a positive integer"),
        (dict(lr=-1), "lr -1 must be a finite number"),
        (dict(optimizer="adam"), "optimizer 'adam' is not known; expected one of sgd, adamw"),
        (dict(orth="l2"), "orth 'l2' is not known"),
        (dict(warmup_epochs=5, epochs=2), "warmup_epochs 5 exceeds epochs 2"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(LowRankError, match=message):
        TrainConfig(**kwargs)


def test_recipes_are_valid_and_typos_are_caught(tmp_path):
    paths = sorted(RECIPES.glob("*.yaml"))
    assert len(paths) >= 5, paths  # the shipped recipes, wherever pytest runs from
    for path in paths:
        recipe = load_recipe(path)
        assert recipe.model and recipe.output and recipe.config().epochs >= 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: resnet20\nepochz: 3\n")
    with pytest.raises(LowRankError, match="unknown key 'epochz' \\(did you mean 'epochs'\\?\\)"):
        load_recipe(bad)
    ok = load_recipe(RECIPES / "quickstart_digits.yaml")
    assert ok.config({"epochs": 2, "lr": None}).epochs == 2 and ok.config({}).epochs == 8


cli = lowrank  # a subprocess: signals, torchrun and the console script need a real process


@pytest.fixture(scope="module")
def r20(tmp_path_factory):
    d = tmp_path_factory.mktemp("r20") / "r20"
    assert cli("convert", "resnet20", "--rank", "0.5", "-o", str(d), "--input-size", "3x16x16").returncode == 0
    return d


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_cli_train_writes_metrics_and_weights(r20, tmp_path):
    d = _copy(r20, tmp_path / "run")
    res = cli("train", str(d), "--data", "synthetic", "--image-size", "16", "--epochs", "2", "--json")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 3 and json.loads(lines[-1])["epochs"] == 2
    assert len((d / "metrics.jsonl").read_text().splitlines()) == 2
    model = lr.load(d)
    assert model(torch.randn(1, 3, 16, 16)).shape == (1, 10)
    again = cli("train", str(d), "--data", "synthetic", "--epochs", "2")
    assert again.returncode == 2 and "--resume" in again.stderr and again.stderr.count("\n") == 1


def test_cli_frobenius_decay_reaches_the_run(r20, tmp_path):
    d = _copy(r20, tmp_path / "run")
    res = cli("train", str(d), "--data", "synthetic", "--image-size", "16", "--epochs", "1", "--frobenius-decay")
    assert res.returncode == 0, res.stderr
    assert load_train_state(d / "train_state.pt")["config"]["frobenius_decay"] is True
    assert "--frobenius-decay" in cli("train", "--help").stdout


def test_cli_sigterm_then_resume(r20, tmp_path):
    d = _copy(r20, tmp_path / "run")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lowrank_tool",
            "train",
            str(d),
            "--data",
            "synthetic",
            "--image-size",
            "16",
            "--epochs",
            "40",
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    first = proc.stdout.readline()  # the first epoch is done and checkpointed
    assert json.loads(first)["epoch"] == 0
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130 and "--resume" in err
    state = load_train_state(d / "train_state.pt")
    assert state["epoch"] >= 1
    res = cli("train", str(d), "--resume", "--epochs", str(state["epoch"] + 1), "--json")
    assert res.returncode == 0, res.stderr
    metrics = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == list(range(state["epoch"] + 1))


def test_cli_recipe_with_overrides(tmp_path):
    res = cli(
        "train", "--recipe", RECIPES / "quickstart_digits.yaml", "-o", str(tmp_path / "q"), "--epochs", "1", "--quiet"
    )
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "q" / "summary.json").read_text())
    metrics = [json.loads(x) for x in (tmp_path / "q" / "metrics.jsonl").read_text().splitlines()]
    assert summary["epochs"] == 1 and summary["data"] == "digits" and len(metrics) == 1
    assert summary["best_top1"] == summary["last_top1"] == metrics[0]["val_top1"]


def test_cli_ddp_two_cpu_processes(r20, tmp_path):
    d = _copy(r20, tmp_path / "ddp")
    res = cli(
        "train",
        str(d),
        "--data",
        "synthetic",
        "--image-size",
        "16",
        "--epochs",
        "2",
        "--nproc",
        "2",
        "--quiet",
        "--workers",
        "0",
    )
    assert res.returncode == 0, res.stderr[-2000:]
    # low-rank on CPU trains channels_last (auto): 1x1 factors must not send DDP down its stride-mismatch copy
    assert "Grad strides do not match bucket view strides" not in res.stderr
    summary = json.loads((d / "summary.json").read_text())
    assert summary["world_size"] == 2
    a, b = summary["rank_checksums"]
    assert a == b
    metrics = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [0, 1]
    assert all(math.isfinite(m["val_top1"]) and math.isfinite(m["train_loss"]) for m in metrics), metrics


def test_cli_demo(tmp_path):
    res = cli("demo", "--epochs", "1", "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    dense, low = data["results"]
    assert low["params"] < 0.5 * dense["params"] and low["macs"] < dense["macs"]
    assert (
        math.isfinite(low["last_top1"])
        and low["best_top1"] >= low["last_top1"]
        and dense["best_top1"] >= dense["last_top1"]
    )
    # the ONNX step: both exports verified within the fp32 tolerance, both timed
    assert dense["onnx_max_rel_error"] < 1e-4 and low["onnx_max_rel_error"] < 1e-4
    assert dense["onnx_ms"] > 0 and low["onnx_ms"] > 0 and dense["onnx_file"] is None


def test_cli_demo_keeps_onnx_files(tmp_path):
    out = tmp_path / "demo"
    res = cli("demo", "--epochs", "1", "-q", "-o", str(out))
    assert res.returncode == 0, res.stderr
    assert (out / "dense.onnx").is_file() and (out / "elrt.onnx").is_file()
    assert "ONNX ms (CPU, batch 1)" in res.stdout and "both exports verified" in res.stdout


def test_demo_that_does_not_finish_leaves_no_output(tmp_path, monkeypatch):
    """The dense model trained and saved, the low-rank one fails: the new output folder is removed again."""
    from lowrank_tool.analysis import compare

    real = compare.train_artifact
    calls = []

    def fail_second(directory, cfg, **kwargs):
        calls.append(cfg.method)
        if len(calls) == 2:
            assert (tmp_path / "demo" / "dense" / "model.safetensors").is_file()  # the first run did write
            raise LowRankError("disk full (simulated)")
        return real(directory, cfg, **kwargs)

    monkeypatch.setattr(compare, "train_artifact", fail_second)
    with pytest.raises(LowRankError, match="simulated"):
        compare.compare_dense_and_lowrank(epochs=1, image_size=8, output=tmp_path / "demo", progress=False)
    assert calls == ["dense", "elrt"] and not (tmp_path / "demo").exists()


def test_bf16_autocast_on_cpu():
    train, val = loaders()
    result = lr.fit(make_model(), train, val, epochs=1, lr=0.05, amp="bf16", progress=False)
    assert math.isfinite(result.history[0]["train_loss"])
    with pytest.raises(LowRankError, match="fp16' needs a CUDA device"):
        lr.fit(make_model(), train, val, epochs=1, amp="fp16", device="cpu", progress=False)


# -- memory format ------------------------------------------------------------------------------------


def test_memory_format_auto_is_channels_last_for_low_rank_on_cpu():
    from lowrank_tool.layers.memory_format import resolve_memory_format

    cpu = torch.device("cpu")
    assert resolve_memory_format("auto", make_model(), cpu) == torch.channels_last
    assert resolve_memory_format("auto", TinyNet(), cpu) == torch.contiguous_format  # dense: unchanged
    assert (
        resolve_memory_format("auto", make_model(), torch.device("cuda")) == torch.contiguous_format
    )  # not measured there
    assert resolve_memory_format("channels_last", TinyNet(), cpu) == torch.channels_last
    assert resolve_memory_format("contiguous", make_model(), cpu) == torch.contiguous_format


def test_channels_last_trains_to_the_same_weights_and_hands_the_model_back_as_it_came(tmp_path):
    layouts = {}
    for fmt in ("channels_last", "contiguous"):
        torch.manual_seed(0)
        model = lr.convert(TinyNet(), rank=0.5, input_size=(3, 16, 16), memory_format="contiguous")
        trainer, result = run(1, tmp_path / fmt, model=model, memory_format=fmt)
        assert trainer.memory_format == (torch.channels_last if fmt == "channels_last" else torch.contiguous_format)
        assert all(p.is_contiguous() for p in trainer.raw_model.parameters())  # the layout it came in
        layouts[fmt] = (trainer.raw_model.state_dict(), result.history[-1]["train_loss"])
    (a, loss_a), (b, loss_b) = layouts.values()
    # Same math, other kernels: 6 SGD steps stay within float32 round-off of each other.
    assert loss_a == pytest.approx(loss_b, rel=1e-4)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-3, atol=1e-4, msg=name)


def test_unknown_memory_format_is_a_clear_error():
    with pytest.raises(
        LowRankError, match="memory_format 'nhwc' is not known; expected one of auto, channels_last, contiguous"
    ):
        TrainConfig(memory_format="nhwc")


_DDP_STRIDES = """
import sys, tempfile, warnings
import torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
import lowrank_tool as lr
from lowrank_tool.train.trainer import match_gradient_strides

dist.init_process_group("gloo", init_method="file://" + tempfile.mktemp(), rank=0, world_size=1)
model = lr.convert("resnet20", rank=0.3, input_size=(3, 16, 16)).to(memory_format=torch.channels_last)
if sys.argv[1] == "hooks":
    match_gradient_strides(model)
ddp = DistributedDataParallel(model)
x = torch.randn(2, 3, 16, 16).contiguous(memory_format=torch.channels_last)
weights = [p for p in model.parameters() if p.dim() == 4]
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    for _ in range(2):  # the convolution's gradient plus a penalty's (as ELRT's orthogonality term adds)
        (ddp(x).sum() + sum((w.flatten(1) @ w.flatten(1).T).sum() for w in weights)).backward()
print(sum("Grad strides do not match" in str(w.message) for w in caught))
"""


@pytest.mark.parametrize("hooks, expected", [("none", "1"), ("hooks", "0")])
def test_ddp_gets_gradients_with_its_bucket_strides_in_channels_last(hooks, expected):
    """1x1 factors in channels_last: without the hooks DDP warns (and copies); with them it does not."""
    res = subprocess.run([sys.executable, "-c", _DDP_STRIDES, hooks], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == expected
