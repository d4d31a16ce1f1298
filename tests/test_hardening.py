"""Faults that must end cleanly: concurrent runs, resumes with changed options, divergence, markup in user values."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import lowrank_tool as lr
from lowrank_tool.artifact import LOCK_FILE, DirectoryLock
from lowrank_tool.errors import LowRankError, LowRankWarning
from lowrank_tool.train.checkpoint import load_train_state
from lowrank_tool.train.config import TrainConfig
from lowrank_tool.train.trainer import Trainer, TrainingDiverged


@pytest.fixture(scope="module")
def r20(tmp_path_factory):
    d = tmp_path_factory.mktemp("hard") / "r20"
    lr.save(lr.convert("resnet20", rank=0.5, input_size=(3, 16, 16)), d)
    return d


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


TRAIN = ("--data", "synthetic", "--image-size", "16", "--quiet")


# -- one run per directory -----------------------------------------------------------------------------------
def test_a_second_run_on_a_locked_directory_is_refused_and_writes_nothing(r20, tmp_path, cli):
    d = _copy(r20, tmp_path / "run")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom lowrank_tool.artifact import DirectoryLock\n"
         "DirectoryLock(sys.argv[1]).__enter__(); print('locked', flush=True); time.sleep(120)", str(d)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, _, err = cli("train", d, *TRAIN, "--epochs", "1")
        assert code == 2 and f"pid {holder.pid}" in err and "being trained by another run" in err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert not (d / "metrics.jsonl").exists() and not (d / "train_state.pt").exists()
    finally:
        holder.kill()  # SIGKILL: the holder cannot clear its record
        holder.wait()
    assert f"pid {holder.pid}" in (d / LOCK_FILE).read_text()
    code, _, err = cli("train", d, *TRAIN, "--epochs", "1")
    assert code == 0, err
    assert "note:" in err and "ended without releasing its lock" in err and f"pid {holder.pid}" in err
    assert (d / LOCK_FILE).read_text() == ""  # released cleanly: nothing stale for the next run
    assert load_train_state(d / "train_state.pt")["epoch"] == 1


def test_the_lock_is_reentrant_within_a_process_and_released(tmp_path):
    with DirectoryLock(tmp_path) as outer:
        with DirectoryLock(tmp_path):
            assert "pid" in (tmp_path / LOCK_FILE).read_text()
        assert outer.stale is None and (tmp_path / LOCK_FILE).read_text() != ""
    assert (tmp_path / LOCK_FILE).read_text() == ""
    with DirectoryLock(tmp_path) as again:  # a cleanly released lock is not "stale"
        assert again.stale is None


def test_a_lock_on_an_unwritable_directory_is_one_line(tmp_path):
    with pytest.raises(LowRankError, match="cannot create"):
        DirectoryLock(tmp_path / "missing" / "dir").__enter__()


# -- resume ------------------------------------------------------------------------------------------------
def test_resume_refuses_changed_hyper_parameters_and_keeps_the_state(r20, tmp_path, cli):
    d = _copy(r20, tmp_path / "run")
    assert cli("train", d, *TRAIN, "--epochs", "1", "--lr", "0.05")[0] == 0
    before = _digest(d / "train_state.pt")
    code, _, err = cli("train", d, *TRAIN, "--epochs", "3", "--resume", "--lr", "1e6")
    assert code == 2 and "lr 0.05 → 1000000.0" in err and "--force" in err and len(err.strip().splitlines()) == 1
    assert _digest(d / "train_state.pt") == before
    code, _, err = cli("train", d, *TRAIN, "--epochs", "3", "--resume", "--optimizer", "adamw", "--seed", "5")
    assert code == 2 and "optimizer 'sgd' → 'adamw'" in err and "seed 0 → 5" in err


def test_resume_with_more_epochs_says_the_schedule_changed(r20, tmp_path, cli):
    d = _copy(r20, tmp_path / "run")
    assert cli("train", d, *TRAIN, "--epochs", "1")[0] == 0
    code, _, err = cli("train", d, *TRAIN, "--epochs", "2", "--resume")
    assert code == 0, err
    assert "note:" in err and "--epochs 2 instead of the saved run's 1" in err
    state = load_train_state(d / "train_state.pt")
    assert state["epoch"] == 2 and state["config"]["epochs"] == 2


def test_resume_of_a_finished_run_with_no_more_epochs_is_refused(r20, tmp_path, cli):
    d = _copy(r20, tmp_path / "run")
    assert cli("train", d, *TRAIN, "--epochs", "2")[0] == 0
    for epochs in ("2", "1"):
        code, _, err = cli("train", d, *TRAIN, "--epochs", epochs, "--resume")
        assert code == 2 and "already trained 2 epochs" in err and "greater than 2" in err


# -- divergence --------------------------------------------------------------------------------------------
def _loaders():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 16, 16, generator=g)
    y = torch.arange(64) % 10
    return DataLoader(TensorDataset(x, y), batch_size=16), DataLoader(TensorDataset(x[:16], y[:16]), batch_size=16)


def _poisoning_trainer(out_dir, poison_epoch):
    model = lr.convert("resnet20", rank=0.5, input_size=(3, 16, 16))
    train, val = _loaders()
    trainer = Trainer(model, train, val, TrainConfig(epochs=3, lr=0.05), out_dir=out_dir, progress=False)
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    original = trainer.method.after_epoch

    def after_epoch(m, epoch):  # a finite loss, but a buffer blew up (what --lr 1e4 does to running_var)
        original(m, epoch)
        if epoch == poison_epoch:
            bn.running_var.fill_(float("inf"))

    trainer.method.after_epoch = after_epoch
    return trainer


def test_non_finite_buffers_in_the_first_epoch_write_no_checkpoint(tmp_path):
    trainer = _poisoning_trainer(tmp_path, poison_epoch=0)
    with pytest.raises(
        TrainingDiverged, match=r"NaN/inf in epoch 1 \(1 tensors, e.g. .*running_var\); no epoch finished"
    ):
        trainer.fit()
    assert not (tmp_path / "train_state.pt").exists() and not (tmp_path / "model.safetensors").exists()


def test_non_finite_buffers_later_keep_the_previous_good_checkpoint(tmp_path):
    trainer = _poisoning_trainer(tmp_path, poison_epoch=1)
    with pytest.raises(
        TrainingDiverged, match=r"NaN/inf in epoch 2 .*the last good checkpoint \(after epoch 1\) is kept"
    ):
        trainer.fit()
    state = load_train_state(tmp_path / "train_state.pt")
    assert state["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


# -- markup in user values -------------------------------------------------------------------------------------
def test_paths_and_patterns_with_markup_are_printed_as_text(tmp_path, cli):
    out = tmp_path / "hp[/lr]" / "run [bold]"
    code, stdout, err = cli("convert", "resnet20", "--rank", "0.5", "--input-size", "3x16x16", "-o", out)
    assert code == 0, err
    assert (out / "plan.json").is_file() and str(out) in stdout.replace("\n", "")
    code, stdout, err = cli("inspect", out)
    assert code == 0 and str(out) in stdout.replace("\n", "")
    code, _, err = cli("convert", "resnet20", "--input-size", "3x16x16", "--layer-rank", "re:[/x]=8")
    assert code == 2 and "re:[/x]" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_lock_left_by_a_dead_run_is_taken_over_with_a_warning(tmp_path):
    (tmp_path / LOCK_FILE).write_text("pid 1 on elsewhere, since then")
    with pytest.warns(LowRankWarning, match=r"\(pid 1 on elsewhere, since then\) ended without releasing its lock"):
        with DirectoryLock(tmp_path) as lock:
            assert lock.stale == "pid 1 on elsewhere, since then"


# -- disk full, damaged state, bad data ----------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs (root only, where the machine allows mounting): a disk that really fills up."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)]).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)])  # lazy: a file the test process still holds does not keep it mounted


def _fill(disk, leave):
    (disk / "filler").write_bytes(b"\0" * max(0, shutil.disk_usage(disk).free - leave))


def test_a_full_disk_is_one_line_and_leaves_nothing(r20, small_disk, cli):
    _fill(small_disk, 16 * 1024)
    code, _, err = cli("convert", "resnet20", "--input-size", "3x16x16", "-o", small_disk / "r20")
    assert code == 2 and "No space left on device" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli("export", r20, "--onnx", small_disk / "m.onnx")
    assert code == 2 and "No space left on device" in err and len(err.strip().splitlines()) == 1
    assert [p.name for p in small_disk.iterdir()] == ["filler"]


def test_a_disk_that_fills_up_during_training_is_one_line(r20, small_disk, cli):
    d = small_disk / "run"
    shutil.copytree(r20, d, ignore=shutil.ignore_patterns("*.lock"))
    _fill(small_disk, 64 * 1024)  # less room than a checkpoint needs
    code, _, err = cli("train", d, *TRAIN, "--epochs", "1")
    assert code == 2 and "No space left on device" in err and len(err.strip().splitlines()) == 1
    assert not [p for p in d.iterdir() if p.name.endswith(".tmp")]
    assert not (d / "train_state.pt").exists()


def test_save_on_a_full_disk_is_a_lowrank_error(monkeypatch, tmp_path):
    import lowrank_tool.io as lio

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(lio, "save_state", full)
    with pytest.raises(LowRankError, match=r"cannot write .*out \(No space left on device\)"):
        lr.save(lr.convert("resnet20", rank=0.5, input_size=(3, 16, 16)), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_a_damaged_train_state_is_one_line(r20, tmp_path, cli):
    d = _copy(r20, tmp_path / "run")
    assert cli("train", d, *TRAIN, "--epochs", "1")[0] == 0
    state = torch.load(d / "train_state.pt", weights_only=True)
    state["optimizer"]["param_groups"] = state["optimizer"]["param_groups"][:0]
    torch.save(state, d / "train_state.pt")
    code, _, err = cli("train", d, *TRAIN, "--epochs", "2", "--resume")
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "damaged or not from this run" in errors[0] and "Traceback" not in err


def test_a_cut_metrics_line_does_not_stop_a_resume(r20, tmp_path, cli):
    d = _copy(r20, tmp_path / "run")
    assert cli("train", d, *TRAIN, "--epochs", "1")[0] == 0
    with open(d / "metrics.jsonl", "a") as fh:
        fh.write('{"epoch": 1, "train_lo')  # a crash mid-write, and a foreign line
        fh.write("\nnot json at all\n[1, 2]\n")
    code, _, err = cli("train", d, *TRAIN, "--epochs", "2", "--resume")
    assert code == 0, err
    records = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]


def test_labels_the_model_cannot_predict_are_one_line(tmp_path):
    model = lr.convert("resnet20", rank=0.5, input_size=(3, 16, 16))  # 10 classes
    x, y = torch.randn(32, 3, 16, 16), torch.full((32,), 12)
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    trainer = Trainer(model, loader, None, TrainConfig(epochs=1), out_dir=tmp_path, progress=False)
    with pytest.raises(LowRankError, match=r"label 12, outside 0..9"):
        trainer.fit()
    assert not (tmp_path / "train_state.pt").exists()


def test_a_corrupt_image_in_an_image_folder_is_named(r20, tmp_path, cli):
    from PIL import Image

    root = tmp_path / "imgs"
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (20, 20), (i * 40, 0, 0)).save(root / split / cls / f"{i}.png")
    (root / "train" / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    d = tmp_path / "run"
    lr.save(lr.convert("resnet20", rank=0.5, num_classes=2, input_size=(3, 16, 16)), d)
    code, _, err = cli("train", d, "--data", f"imagefolder:{root}", "--image-size", "16", "--epochs", "1", "--quiet",
                       "--batch-size", "4", "--workers", "1")  # fmt: skip
    assert code == 2 and "broken.png is not a readable image" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    # int8 calibration reads the same folder: the same line, and no .onnx
    code, _, err = cli("export", d, "--onnx", tmp_path / "q.onnx", "--int8", "--calib-data", f"imagefolder:{root}",
                       "--calib-samples", "16", "--input-size", "3x16x16")  # fmt: skip
    assert code == 2 and "broken.png is not a readable image" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "q.onnx").exists()


def test_weights_with_nan_are_refused_at_load(r20, tmp_path):
    from safetensors.torch import load_file, save_file

    d = _copy(r20, tmp_path / "run")
    tensors = load_file(d / "model.safetensors")
    name = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, d / "model.safetensors")
    with pytest.raises(LowRankError, match=rf"holds NaN/inf values \(1 tensors, e.g. {name}\)"):
        lr.load(d)


def test_weights_of_another_shape_name_the_tensor(r20, tmp_path):
    other = tmp_path / "r25"
    lr.save(lr.convert("resnet20", rank=0.25, input_size=(3, 16, 16), round_to=1), other)
    d = _copy(r20, tmp_path / "run")
    shutil.copy(other / "model.safetensors", d / "model.safetensors")
    with pytest.raises(LowRankError, match="does not match the model rebuilt from the plan") as info:
        lr.load(d)
    assert "Error(s) in loading" not in str(info.value)


def test_sigterm_during_export_leaves_no_temporary_file(tmp_path):
    src = tmp_path / "r50"
    lr.save(lr.convert("resnet50", rank=0.3), src)
    proc = subprocess.Popen([sys.executable, "-m", "lowrank_tool", "export", str(src), "--onnx", str(tmp_path / "m.onnx")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(tmp_path.glob(".m.onnx.*")):
        time.sleep(0.05)
    assert list(tmp_path.glob(".m.onnx.*")), "the export never started writing"
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == 143
    assert not list(tmp_path.glob(".m.onnx.*")) and not (tmp_path / "m.onnx").exists()


def test_artifacts_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        lr.save(lr.convert("resnet20", rank=0.5, input_size=(3, 16, 16)), tmp_path / "a")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "a" / "plan.json").stat().st_mode) == 0o644


def test_an_epoch_resumed_mid_way_is_marked(tmp_path):
    model = lr.convert("resnet20", rank=0.5, input_size=(3, 16, 16))
    train, val = _loaders()
    cfg = TrainConfig(epochs=2, lr=0.05)
    trainer = Trainer(model, train, val, cfg, out_dir=tmp_path, progress=False)
    original = trainer.method.after_step

    def interrupt(m, step):
        original(m, step)
        if step == 1:
            os.kill(os.getpid(), signal.SIGINT)

    trainer.method.after_step = interrupt
    with pytest.raises(Exception, match="stopped by signal"):
        trainer.fit()
    again = Trainer(lr.convert("resnet20", rank=0.5, input_size=(3, 16, 16)), train, val, cfg, out_dir=tmp_path,
                    progress=False)  # fmt: skip
    result = again.fit(resume=True)
    assert result.history[0]["resumed_at_step"] == 2 and "resumed_at_step" not in result.history[1]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["resumed_at_step"] == 2


def test_a_data_set_with_one_class_is_a_warning():
    from lowrank_tool.train.run import _check_classes

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 1))
    loader = DataLoader(TensorDataset(torch.randn(4, 3, 16, 16), torch.zeros(4, dtype=torch.long)), batch_size=2)
    with pytest.warns(LowRankWarning, match="the data has 1 class: every prediction is right"):
        _check_classes(model, loader, 1, torch.device("cpu"), "DIR")


def test_integer_values_for_float_weights_are_refused(r20, tmp_path):
    from safetensors.torch import load_file, save_file

    d = _copy(r20, tmp_path / "run")
    tensors = load_file(d / "model.safetensors")
    name = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors[name] = torch.ones_like(tensors[name], dtype=torch.int64)
    save_file(tensors, d / "model.safetensors")
    with pytest.raises(LowRankError, match=rf"stores {name} as I64, but it is a floating-point tensor"):
        lr.load(d)


# -- what a killed writer leaves behind ---------------------------------------------------------------------------
_KILLED_WRITER = """
import os, signal, sys
from lowrank_tool.artifact import atomic_directory, atomic_file
target = sys.argv[2]
if sys.argv[1] == "file":
    with atomic_file(target) as tmp:
        tmp.write_text("half")
        os.kill(os.getpid(), signal.SIGKILL)
with atomic_directory(target, overwrite=True) as tmp:
    (tmp / "plan.json").write_text("new")
    os.replace(target, os.path.join(os.path.dirname(target), "." + os.path.basename(target) + ".old-%d" % os.getpid()))
    os.kill(os.getpid(), signal.SIGKILL)  # between the two renames of a replacement
"""


def _killed_writer(kind, target):
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, kind, str(target)])
    assert proc.wait(timeout=120) == -signal.SIGKILL
    return proc.pid


def test_a_temporary_left_by_sigkill_is_removed_by_the_next_write_with_a_note(r20, tmp_path, cli):
    out = tmp_path / "m[1] é.onnx"
    pid = _killed_writer("file", out)
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(f".{out.name}.{pid}-") and left[0].endswith(".tmp")
    code, _, err = cli("export", r20, "--onnx", out, "--no-verify")
    assert code == 0, err
    assert f"note: {out}: removed 1 temporary file(s) left by an interrupted write (the writer was killed)" in err
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


def test_a_live_writers_temporary_is_left_alone(tmp_path):
    from lowrank_tool.artifact import sweep_stale

    live = tmp_path / f".m.onnx.{os.getppid()}-abcdefgh.tmp"  # the parent process: alive
    live.write_text("being written")
    assert sweep_stale(tmp_path / "m.onnx") == [] and live.exists()


def test_a_directory_replacement_killed_between_its_renames_is_put_back(r20, tmp_path):
    from lowrank_tool.artifact import sweep_stale

    target = _copy(r20, tmp_path / "art")
    pid = _killed_writer("directory", target)
    assert not target.exists() and (tmp_path / f".art.old-{pid}").is_dir()
    with pytest.warns(LowRankWarning, match=r"put back the previous art from \.art\.old-\d+; removed|removed 1"):
        sweep_stale(target)
    assert lr.load(target) is not None and sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_an_artifact_directory_whose_name_is_not_utf8(tmp_path):
    """Byte names (an old file system, a tar) work end to end, printed as their bytes even where the
    locale makes Python's streams strict UTF-8 (PYTHONIOENCODING=utf-8 here)."""
    d = os.path.join(os.fsencode(tmp_path), b"run-\xff")
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}

    def lowrank(*argv):
        cmd = [os.fsencode(sys.executable), b"-m", b"lowrank_tool", *(os.fsencode(a) for a in argv)]
        return subprocess.run(cmd, capture_output=True, env=env, timeout=300)

    res = lowrank("convert", "resnet20", "--rank", "0.5", "--input-size", "3x16x16", "-o", d)
    assert res.returncode == 0 and b"wrote " + d + b"/plan.json" in res.stdout, res.stderr
    res = lowrank("inspect", d)
    assert res.returncode == 0 and b"loaded resnet20" in res.stdout, res.stderr
    res = lowrank("train", d, *TRAIN, "--epochs", "1")
    assert res.returncode == 0 and os.path.isfile(os.path.join(d, b"best.safetensors")), res.stderr
    res = lowrank("export", d, "--onnx", os.path.join(d, b"m.onnx"))
    assert res.returncode == 2 and b"is not a UTF-8 path" in res.stderr and b"Traceback" not in res.stderr
    assert not os.path.exists(os.path.join(d, b"m.onnx"))
    res = lowrank("export", d, "--onnx", tmp_path / "m.onnx")
    assert res.returncode == 0 and (tmp_path / "m.onnx").is_file(), res.stderr
