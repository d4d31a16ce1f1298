"""The CIFAR networks of the low-rank papers: ResNet-20/32/56/110 (He et al. 2016) and VGG-16 (BN).

ResNets use the paper's "option A" shortcut by default — a strided identity with zero-padded channels,
no parameters — so every conv is a 3×3 in a basic block; ``shortcut="B"`` uses 1×1 conv + BN
projections instead. Parameter counts (10 classes): 0.27M, 0.46M, 0.85M, 1.73M; VGG-16: 14.7M.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

__all__ = ["CifarResNet", "resnet20", "resnet32", "resnet56", "resnet110", "vgg16_cifar", "CifarVGG"]


def _kaiming_(model: nn.Module) -> None:
    """He et al.'s initialisation of every conv (fan-out, ReLU gain), as in the reference CIFAR code."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


class _PadShortcut(nn.Module):
    """Option A: subsample spatially and zero-pad the new channels (fx-traceable, parameter-free)."""

    def __init__(self, stride: int, extra: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra = extra

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return nn.functional.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, shortcut: Literal["A", "B"]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            if shortcut == "A":
                self.shortcut = _PadShortcut(stride, cout - cin)
            else:
                self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet of depth 6n+2: a 3×3 stem, three stages of n basic blocks (16, 32, 64 channels)."""

    def __init__(self, depth: int, num_classes: int = 10, shortcut: Literal["A", "B"] = "A") -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"depth {depth} must be 6n+2 (20, 32, 44, 56, 110...)")
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut {shortcut!r} must be 'A' (zero-padding identity) or 'B' (1x1 projection)")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, cin = [], 16
        for i, cout in enumerate((16, 32, 64)):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(cin, cout, 2 if (i > 0 and j == 0) else 1, shortcut))
                cin = cout
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        _kaiming_(self)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet20(num_classes: int = 10, shortcut: Literal["A", "B"] = "A") -> CifarResNet:
    """ResNet-20 for 32×32 inputs (0.27M parameters)."""
    return CifarResNet(20, num_classes, shortcut)


def resnet32(num_classes: int = 10, shortcut: Literal["A", "B"] = "A") -> CifarResNet:
    """ResNet-32 for 32×32 inputs (0.46M parameters)."""
    return CifarResNet(32, num_classes, shortcut)


def resnet56(num_classes: int = 10, shortcut: Literal["A", "B"] = "A") -> CifarResNet:
    """ResNet-56 for 32×32 inputs (0.85M parameters)."""
    return CifarResNet(56, num_classes, shortcut)


def resnet110(num_classes: int = 10, shortcut: Literal["A", "B"] = "A") -> CifarResNet:
    """ResNet-110 for 32×32 inputs (1.73M parameters)."""
    return CifarResNet(110, num_classes, shortcut)


_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)


class CifarVGG(nn.Module):
    """VGG-16 with batch norm for 32×32 inputs: 13 3×3 convs, global average pool, one linear layer."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in _VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(cin, int(v), 3, padding=1, bias=False), nn.BatchNorm2d(int(v)), nn.ReLU(inplace=True)]
                cin = int(v)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(512, num_classes)
        _kaiming_(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def vgg16_cifar(num_classes: int = 10) -> CifarVGG:
    """VGG-16 (BN) for 32×32 inputs (14.7M parameters)."""
    return CifarVGG(num_classes)
