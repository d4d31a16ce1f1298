"""Every writer of an artifact directory takes its lock; a mid-epoch stop resumes exactly on augmented data;
a full disk says what was written; DDP failures and Ctrl-C end in one line; `--method dense` is not silently
applied to a low-rank model."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from helpers import TinyNet
from safetensors.torch import load_file
from torch.utils.data import DataLoader, TensorDataset

import lowrank_tool as lr
import lowrank_tool.train.trainer as trainer_module
from lowrank_tool.artifact import LOCK_FILE, DirectoryLock, atomic_file
from lowrank_tool.data import build_loaders
from lowrank_tool.errors import LowRankError
from lowrank_tool.methods.elrt import ELRT
from lowrank_tool.train import distributed
from lowrank_tool.train.checkpoint import load_train_state
from lowrank_tool.train.config import TrainConfig
from lowrank_tool.train.run import train_artifact
from lowrank_tool.train.trainer import Trainer

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "quickstart_digits.yaml"
SYNTHETIC = ("--data", "synthetic", "--image-size", "16", "--quiet")


@pytest.fixture(scope="module")
def r20(tmp_path_factory):
    d = tmp_path_factory.mktemp("lock") / "r20"
    lr.save(lr.convert("resnet20", rank=0.5, input_size=(3, 16, 16)), d)
    return d


def _files(directory: Path) -> dict[str, str]:
    """Every file under ``directory`` (hidden ones included) and its SHA-256: the directory as it is."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def _one_error(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# -- 1. the lock: every writer takes it ------------------------------------------------------------------------
@pytest.fixture
def held(r20, tmp_path):
    """A copy of the artifact whose lock another process (a stand-in for a running trainer) holds."""
    d = tmp_path / "run"
    shutil.copytree(r20, d)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom lowrank_tool.artifact import DirectoryLock\n"
         "DirectoryLock(sys.argv[1]).__enter__(); print('locked', flush=True); time.sleep(300)", str(d)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield d, holder.pid
    finally:
        holder.kill()
        holder.wait()


def test_replacing_a_directory_another_run_trains_is_refused_and_changes_nothing(held, cli):
    d, pid = held
    before = _files(d)
    code, _, err = cli("convert", "resnet20", "--input-size", "3x16x16", "-o", d, "--force")
    line = _one_error(err)
    assert code == 2 and f"{d} is being trained by another run (pid {pid} on " in line and "wait for it" in line
    code, _, err = cli("train", "--recipe", RECIPE, "-o", d, "--force", "--epochs", "1", "--quiet")
    line = _one_error(err)
    assert code == 2 and f"is being trained by another run (pid {pid} on " in line
    with pytest.raises(LowRankError, match=rf"is being trained by another run \(pid {pid} on .*cannot be replaced"):
        lr.save(lr.convert("resnet20", rank=0.3, input_size=(3, 16, 16)), d, overwrite=True)
    assert _files(d) == before
    assert [p.name for p in d.parent.iterdir()] == ["run"]  # no temporary or .old directory left beside it


@pytest.mark.parametrize("name", ["metrics.jsonl", "train_state.pt", LOCK_FILE, "new.onnx", "sub/new.onnx"])
def test_export_never_writes_into_a_directory_another_run_trains(held, cli, name):
    d, pid = held
    (d / "metrics.jsonl").write_text('{"epoch": 0}\n')
    (d / "sub").mkdir()
    before = _files(d)
    code, _, err = cli("export", d, "--onnx", d / name, "--force", "--no-verify")
    line = _one_error(err)
    assert code == 2, err
    if name.endswith("new.onnx"):
        assert f"is being trained by another run (pid {pid} on " in line and "nothing is written into it" in line
    else:
        assert "is a file of the artifact in" in line and "write the ONNX file under another name" in line
    assert _files(d) == before


def test_export_never_replaces_another_artifacts_files(r20, tmp_path, cli):
    other = tmp_path / "other"
    shutil.copytree(r20, other)
    before = _files(other)
    for name in ("plan.json", "model.safetensors", "summary.json"):
        code, _, err = cli("export", r20, "--onnx", other / name, "--force", "--no-verify")
        assert code == 2 and "is a file of the artifact in" in _one_error(err)
    assert _files(other) == before


def test_a_directory_this_process_trains_is_not_replaced(r20, tmp_path):
    d = tmp_path / "run"
    shutil.copytree(r20, d)
    with DirectoryLock(d):  # as train_artifact holds it
        with pytest.raises(LowRankError, match=r"is being trained by this process"):
            lr.save(lr.load(d), d, overwrite=True)
    lr.save(lr.load(d), d, overwrite=True)  # released: replaced as before
    assert not (d / LOCK_FILE).exists() and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_replacement_holds_the_lock_while_it_swaps_the_directory(r20, tmp_path, monkeypatch):
    """A trainer that starts during a replacement is refused; one that starts after it locks the new directory."""
    d = tmp_path / "run"
    shutil.copytree(r20, d)
    seen = []
    real_replace = os.replace

    def replace(src, dst):  # the moment between the two renames of the replacement
        if str(dst).endswith(".old-" + str(os.getpid())):
            probe = subprocess.run(
                [sys.executable, "-c", "import sys\nfrom lowrank_tool.artifact import DirectoryLock\n"
                 "try:\n    DirectoryLock(sys.argv[1]).__enter__()\nexcept Exception as e:\n    print(e)", str(d)],
                capture_output=True, text=True,
            )  # fmt: skip
            seen.append(probe.stdout)
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    lr.save(lr.load(d), d, overwrite=True)
    assert len(seen) == 1 and f"{d} is being replaced by another run (pid {os.getpid()} on " in seen[0]
    with DirectoryLock(d) as lock:  # the new directory: no stale record of the writer
        assert lock.stale is None


# -- 2. a mid-epoch stop resumes exactly on augmented data ---------------------------------------------------------
def _interrupt_at(step_to_stop: int, monkeypatch):
    """SIGINT (as Ctrl-C) right after the training step ``step_to_stop`` (counted from 0) of ELRT runs."""
    original = ELRT.after_step

    def after_step(self, model, step):
        original(self, model, step)
        if step == step_to_stop:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(ELRT, "after_step", after_step)


def test_a_mid_epoch_stop_on_augmented_digits_resumes_to_identical_weights(tmp_path, cli, monkeypatch):
    """The issue's case, end to end: `lowrank train B --data digits --epochs 1`, Ctrl-C mid-epoch, `--resume`
    (a small registered model, at the digits' native 8x8: 6 steps of 256, stopped after 3)."""
    import lowrank_tool.models as models

    monkeypatch.setitem(models._EXTRA, "tinynet_test", models.ModelEntry("tinynet_test", "classification",
                                                                       "lowrank_tool", TinyNet, (3, 8, 8)))  # fmt: skip
    args = ("--data", "digits", "--image-size", "8", "--epochs", "1", "--seed", "0", "--batch-size", "256", "--quiet")
    full, stopped = tmp_path / "full", tmp_path / "stopped"
    lr.save(lr.convert("tinynet_test", rank=0.5, input_size=(3, 8, 8)), full)
    shutil.copytree(full, stopped)
    assert cli("train", full, *args)[0] == 0

    with monkeypatch.context() as m:
        _interrupt_at(2, m)
        code, _, err = cli("train", stopped, *args)
    assert code == 130 and "--resume" in err
    state = load_train_state(stopped / "train_state.pt")
    assert (state["epoch"], state["step_in_epoch"]) == (0, 3)

    loaded = []
    import lowrank_tool.data as data_module

    original = data_module._ImageTensors.__getitem__

    def counted(self, index):
        if self.augment is not None:  # the training split
            loaded.append(index)
        return original(self, index)

    monkeypatch.setattr(data_module._ImageTensors, "__getitem__", counted)
    code, _, err = cli("train", stopped, *args[:-1], "--resume", "--quiet")
    assert code == 0, err

    a, b = load_file(full / "model.safetensors"), load_file(stopped / "model.safetensors")
    assert a.keys() == b.keys()
    differ = [name for name in a if not torch.equal(a[name], b[name])]
    assert not differ, f"{len(differ)} of {len(a)} tensors differ, e.g. {differ[0]}"
    state_a, state_b = load_train_state(full / "train_state.pt"), load_train_state(stopped / "train_state.pt")
    for name, tensor in state_a["model"].items():
        assert torch.equal(tensor, state_b["model"][name]), name
    assert len(loaded) == 1437 - 3 * 256  # the 3 batches done before the stop were skipped, not loaded


def test_augmentation_depends_on_seed_epoch_and_sample_only(monkeypatch):
    train, _, _ = build_loaders("digits", batch_size=100, image_size=8, workers=0, seed=3)
    assert train.dataset.augment is not None  # the digits' random affine is on

    def epoch(loader, number, skip=0):
        loader.sampler.set_epoch(number)
        loader.sampler.skip_next(skip)
        return [images for images, _ in loader]

    first = epoch(train, 1)
    torch.manual_seed(1234)  # the global generator plays no part, and is left as it was
    state = torch.get_rng_state()
    assert all(torch.equal(x, y) for x, y in zip(first, epoch(train, 1), strict=True))
    assert torch.equal(state, torch.get_rng_state())
    assert all(torch.equal(x, y) for x, y in zip(first[3:], epoch(train, 1, skip=300), strict=True))
    assert not torch.equal(first[0], epoch(train, 2)[0])  # another epoch: another order and augmentation
    with_workers, _, _ = build_loaders("digits", batch_size=100, image_size=8, workers=2, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(first, epoch(with_workers, 1), strict=True))
    plain, _, _ = build_loaders("digits", batch_size=100, image_size=8, workers=0, seed=3)
    passes = [next(iter(plain))[0] for _ in range(2)]  # a loop that never calls set_epoch: each pass a new epoch
    assert not torch.equal(passes[0], passes[1])


# -- 3. a full disk says what was written ------------------------------------------------------------------------
def _small_run(tmp_path, on_epoch=None, epochs=2):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 3, 16, 16, generator=g), torch.arange(64) % 10
    train = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))
    val = DataLoader(TensorDataset(x[:16], y[:16]), batch_size=16)
    torch.manual_seed(0)
    model = lr.convert(TinyNet(), rank=0.5, input_size=(3, 16, 16))
    trainer = Trainer(model, train, val, TrainConfig(epochs=epochs, lr=0.05), out_dir=tmp_path, progress=False,
                      on_epoch=on_epoch)  # fmt: skip
    return trainer.fit()


def _disk_full(path):
    with atomic_file(path):
        raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("stage", ["train state", "weights"])
def test_a_full_disk_at_a_checkpoint_says_which_files_hold_the_epoch(tmp_path, monkeypatch, stage):
    def fill_disk(record):  # after epoch 1 was saved, the disk is full
        if stage == "train state":
            monkeypatch.setattr(trainer_module, "save_train_state", lambda path, state: _disk_full(path))
        else:
            monkeypatch.setattr(trainer_module, "atomic_save_weights", lambda model, path: _disk_full(path))

    with pytest.raises(LowRankError) as info:
        _small_run(tmp_path, on_epoch=fill_disk)
    message = str(info.value)
    assert "No space left on device" in message and "\n" not in message and "nothing was written" not in message
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0]  # the metrics line of epoch 2 is not written before its checkpoint
    saved = load_train_state(tmp_path / "train_state.pt")["epoch"]
    if stage == "train state":
        assert message.startswith(f"cannot write {tmp_path / 'train_state.pt'} (No space left on device)")
        assert f"nothing of epoch 2 was saved; {tmp_path} keeps its previous checkpoint" in message and saved == 1
    else:
        assert message.startswith(f"cannot write {tmp_path / 'model.safetensors'} (No space left on device)")
        assert "of epoch 2, train_state.pt was saved (a resume continues from it), model.safetensors" in message
        assert "metrics.jsonl" in message.split("were not")[0] and saved == 2
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_run_started_anew_replaces_the_earlier_runs_metrics(tmp_path):
    """`lowrank train DIR --force` (a new run, not --resume) must not add its records to the earlier run's."""
    _small_run(tmp_path, epochs=1)
    _small_run(tmp_path, epochs=1)
    assert [json.loads(x)["epoch"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [0]


# -- 4. DDP: a killed worker and Ctrl-C are one line ---------------------------------------------------------------
#: What torchrun and the ranks print when rank 1 of `lowrank train ... --nproc 2` is killed with SIGKILL
#: (recorded with torch 2.14 and LOWRANK_DEBUG=1; long lines shortened, repeated frames left out).
KILLED = """
*****************************************
Setting OMP_NUM_THREADS environment variable for each process to be 1 in default, to avoid your system being overloaded
*****************************************
[rank0]: Traceback (most recent call last):
[rank0]:   File "<frozen runpy>", line 198, in _run_module_as_main
[rank0]:   File "/work/main/lowrank_tool/train/trainer.py", line 471, in _train_epoch
[rank0]:     self.scaler.scale(total).backward()
[rank0]:     return Variable._execution_engine.run_backward(  # Calls into the C++ engine to run the backward pass
[rank0]:            ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
invoke(sub_ctx))
[rank0]: RuntimeError: [third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:2761: Connection reset by peer.
W1208 00:09:15.903000 12630 site-packages/torch/distributed/elastic/multiprocessing/api.py:1028] Sending process 12636 closing signal SIGTERM
E1208 00:09:16.068000 12630 site-packages/torch/distributed/elastic/multiprocessing/api.py:1002] failed (exitcode: -9) local_rank: 1 (pid: 12637) of binary: python
Traceback (most recent call last):
  File "<frozen runpy>", line 198, in _run_module_as_main
  File "site-packages/torch/distributed/launcher/api.py", line 386, in launch_agent
    raise ChildFailedError(
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
=======================================================
lowrank_tool FAILED
-------------------------------------------------------
Failures:
[1]:
  time      : 2026-12-08_00:09:16
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 12636)  (SIGTERM)
  error_file: <N/A>
  traceback : Signal 15 (SIGTERM) received by PID 12636
-------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-12-08_00:09:15
  host      : localhost
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 12637)  (SIGKILL)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 12637
=======================================================
"""

#: ... and when the run is stopped with Ctrl-C (torchrun passes SIGINT on to the ranks, rank 0 saves and says so).
STOPPED = """
*****************************************
W1208 00:05:05.296000 10754 site-packages/torch/distributed/elastic/agent/server/api.py:753] Received 2 death signal, shutting down workers
W1208 00:05:05.297000 10754 site-packages/torch/distributed/elastic/multiprocessing/api.py:1028] Sending process 10777 closing signal SIGINT
interrupted: stopped by signal 2 at epoch 2, step 1; state saved in RUN; continue with `lowrank train RUN --resume`
Traceback (most recent call last):
  File "site-packages/torch/distributed/elastic/agent/server/api.py", line 923, in _invoke_run
    time.sleep(monitor_interval)
torch.distributed.elastic.multiprocessing.api.SignalException: Process 10754 got signal: 2
"""


class _Out:
    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> None:
        self.text += text

    def writelines(self, lines) -> None:
        self.text += "".join(lines)

    def flush(self) -> None:
        pass


def _relay(text: str, code: int, **kwargs) -> tuple[int, str]:
    out = _Out()
    result = distributed._relay(iter(text.splitlines(keepends=True)), lambda: code, out, **kwargs)
    return result, out.text


def test_a_killed_ddp_worker_is_one_line_with_the_resume_hint(tmp_path):
    (tmp_path / "train_state.pt").write_bytes(b"")
    code, text = _relay("epoch 1/30  loss 2.2\n" + KILLED, 1, directory=tmp_path)
    assert code == 1
    assert text == (
        "epoch 1/30  loss 2.2\nerror: training process rank 1 was killed (SIGKILL), so the run stopped; continue from "
        f"the last checkpoint with `lowrank train {tmp_path} --resume`\n"
    )
    code, text = _relay(KILLED, 1, directory=tmp_path / "new")  # killed before its first checkpoint
    assert code == 1 and text.count("\n") == 1 and "no checkpoint was saved yet" in text
    code, text = _relay(KILLED, 1, directory=tmp_path, debug=True)  # LOWRANK_DEBUG=1 / --debug: everything
    assert code == 1 and text == KILLED


def test_ctrl_c_on_a_ddp_run_is_130_and_one_line(tmp_path):
    code, text = _relay(STOPPED, 1, directory=tmp_path, stopped=lambda: signal.SIGINT)
    assert code == 130 and text.splitlines() == [STOPPED.splitlines()[4]]
    # stopped before rank 0 could say where it saved (e.g. while the ranks were starting): the launcher says it
    code, text = _relay("*****\n", 1, directory=tmp_path, stopped=lambda: signal.SIGINT)
    assert (
        code == 130
        and text
        == f"interrupted: stopped by SIGINT; no checkpoint was saved yet, so {tmp_path} is as it was: start the run again\n"
    )


def test_ddp_usage_errors_are_said_once_and_unexplained_failures_keep_their_traceback():
    ranks = "error: bad data\nerror: bad data\n" + KILLED.split("W1208")[0]
    code, text = _relay(ranks, 1)
    assert code == 2 and text.count("error: bad data") == 1 and "Traceback" not in text
    crash = "Traceback (most recent call last):\n  File x\nZeroDivisionError: division by zero\n"
    code, text = _relay(crash, 1)
    assert code == 1 and "ZeroDivisionError" in text


#: A stand-in for torchrun: says when it is ready, then, on SIGINT, what rank 0 says and exits as torchrun does.
FAKE_TORCHRUN = """
import os, signal, sys, time
got = []
signal.signal(signal.SIGINT, lambda *a: got.append(1))
open(sys.argv[1], "w").write(str(os.getsid(0)))
deadline = time.time() + 60
while not got and time.time() < deadline:
    time.sleep(0.05)
time.sleep(0.3)  # a second SIGINT (the terminal's) would arrive meanwhile
sys.stderr.write(f"interrupted: stopped by signal 2 ({len(got)} received); continue with `lowrank train RUN --resume`\\n")
sys.exit(1)
"""


def test_the_launcher_passes_ctrl_c_on_once_and_reports_130(tmp_path, monkeypatch, capsys):
    ready = tmp_path / "ready"
    monkeypatch.setattr(distributed, "_torchrun", lambda nproc, argv: [sys.executable, "-c", FAKE_TORCHRUN, str(ready)])

    def press_ctrl_c():
        deadline = time.time() + 60
        while not ready.exists() or not ready.read_text():
            if time.time() > deadline:
                return
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    before = signal.getsignal(signal.SIGINT)
    threading.Thread(target=press_ctrl_c, daemon=True).start()
    code = distributed.launch(2, ["train", "RUN"], directory=tmp_path)
    err = capsys.readouterr().err
    assert (
        code == 130
        and err == "interrupted: stopped by signal 2 (1 received); continue with `lowrank train RUN --resume`\n"
    )
    assert int(ready.read_text()) != os.getsid(
        0
    )  # torchrun runs in its own session: a terminal's Ctrl-C reaches it once
    assert signal.getsignal(signal.SIGINT) is before  # the launcher's handler is gone again


# -- 5. --method dense on a low-rank model is refused ----------------------------------------------------------------
def test_method_dense_on_a_converted_directory_is_refused_and_changes_nothing(r20, tmp_path, cli):
    d = tmp_path / "run"
    shutil.copytree(r20, d)
    before = _files(d)
    code, _, err = cli("train", d, *SYNTHETIC, "--epochs", "1", "--method", "dense")
    line = _one_error(err)
    assert code == 2 and f"{d} holds a low-rank model (" in line
    assert "`lowrank convert resnet20 --dense -o NEW_DIR`" in line
    with pytest.raises(LowRankError, match=r"convert\('resnet20', dense=True\)") as info:
        train_artifact(d, TrainConfig(method="dense", data="synthetic", image_size=16, epochs=1), progress=False)
    assert "--" not in str(info.value)
    assert _files(d) == before

    code, _, err = cli("train", "--recipe", RECIPE, "-o", tmp_path / "new", "--method", "dense", "--epochs", "1")
    assert code == 2 and "add `dense: true` to the recipe" in _one_error(err) and not (tmp_path / "new").exists()


def test_method_dense_on_a_low_rank_model_in_python_names_the_argument():
    g = torch.Generator().manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(8, 3, 16, 16, generator=g), torch.arange(8) % 10), batch_size=4)
    model = lr.convert(TinyNet(), rank=0.5, input_size=(3, 16, 16))
    with pytest.raises(
        LowRankError, match=r"method='dense' trains the dense baseline, but this model has \d+ low-rank"
    ) as info:
        lr.fit(model, data, epochs=1, method="dense", progress=False)
    assert "convert(model, dense=True)" in str(info.value) and "--" not in str(info.value)
    dense = lr.convert(TinyNet(), dense=True, input_size=(3, 16, 16))
    assert lr.fit(dense, data, epochs=1, method="dense", progress=False).history  # the baseline trains
