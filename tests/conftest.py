import pytest
import torch
from helpers import TinyNet, run_cli


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
