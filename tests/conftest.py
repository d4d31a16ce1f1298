import pytest
import torch
from torch import nn


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


class TinyNet(nn.Module):
    """A user's own model: plain convs, a grouped conv, a functional conv and a 1x1 conv."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.body = nn.Sequential(
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1, groups=4), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, 1), nn.ReLU(),
        )
        self.extra = nn.Parameter(torch.randn(64, 64, 3, 3) * 0.01)
        self.head = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.body(torch.relu(self.stem(x)))
        x = torch.nn.functional.conv2d(x, self.extra, padding=1)
        return self.head(x.mean((2, 3)))


@pytest.fixture
def tiny():
    return TinyNet().eval()


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run the `lowrank` command in-process: ``code, out, err = cli("convert", "resnet18", ...)``."""
    import sys

    from lowrank_tool.cli import main

    def run(*argv):
        monkeypatch.setattr(sys, "argv", ["lowrank", *map(str, argv)])
        with pytest.raises(SystemExit) as info:
            main()
            raise SystemExit(0)
        out, err = capsys.readouterr()
        return info.value.code or 0, out, err

    return run
