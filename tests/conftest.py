import atexit
import os
import shutil
import tempfile

import pytest
import torch
from helpers import TinyNet, run_cli

# Under pytest-xdist (pyproject's addopts: one worker per CPU) each worker gets its share of the cores, so the
# workers' PyTorch thread pools do not fight over them. Subprocesses a test starts see the same limit.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _THREADS = max(1, (os.cpu_count() or 1) // _WORKERS)
    torch.set_num_threads(_THREADS)
    os.environ.setdefault("OMP_NUM_THREADS", str(_THREADS))

# What the toolkit caches per machine (measured latencies, the list of model names) goes to a directory of this
# run's own: the suite neither reads a user's cache nor writes into it. Subprocesses inherit it.
os.environ["LOWRANK_CACHE_DIR"] = tempfile.mkdtemp(prefix="lowrank-test-cache-")
atexit.register(shutil.rmtree, os.environ["LOWRANK_CACHE_DIR"], True)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def tiny():
    return TinyNet().eval()


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run the `lowrank` command in-process: ``code, out, err = cli("convert", "resnet18", ...)``."""
    return lambda *argv: run_cli(list(argv), capsys, monkeypatch)
