"""The CIFAR networks of the low-rank papers: ResNet-20/32/56/110 (He et al. 2016) and VGG-16 (BN).

These are the networks ELRT and LRPET report on CIFAR-10/100. ResNets use the paper's "option A"
shortcut by default — a strided identity with zero-padded channels, no parameters — so every conv but
the stem is a 3×3 in a basic block and gets a Tucker-2 layer; ``shortcut="B"`` uses 1×1 conv + BN
projections instead. Parameter counts (10 classes): 269,722 / 464,154 / 853,018 / 1,727,962
(the paper's 0.27M / 0.46M / 0.85M / 1.7M); VGG-16: 14,724,042 (14.7M).

Example:
    >>> model = resnet56(num_classes=100)
    >>> model(torch.randn(2, 3, 32, 32)).shape
    torch.Size([2, 100])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from ..errors import LowRankError

__all__ = [
    "BasicBlock",
    "CifarResNet",
    "CifarVGG",
    "Shortcut",
    "resnet20",
    "resnet32",
    "resnet56",
    "resnet110",
    "vgg16_cifar",
    "CIFAR_MODELS",
]

#: ``"A"``: strided identity + zero channel padding (parameter-free); ``"B"``: 1×1 conv + BN projection.
Shortcut = Literal["A", "B"]

#: VGG-16 for CIFAR as in the pruning / low-rank literature: integers are 3×3 conv widths, "M" a 2×2 max
#: pool. No pool after the last block: the feature map is 2×2 there and the global average pool follows.
VGG16_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)


def _check_num_classes(num_classes: int) -> None:
    # bool is an int subclass and nn.Linear(64, 0) builds silently: catch both here, with the fix.
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise LowRankError(
            f"num_classes must be a positive integer, got {num_classes!r}; pass e.g. num_classes=10 for CIFAR-10"
        )


def _check_shortcut(shortcut: str) -> None:
    if shortcut not in ("A", "B"):
        raise LowRankError(
            f"shortcut {shortcut!r} is not supported; use shortcut='A' (zero-padding identity, the paper's default) "
            "or shortcut='B' (1x1 conv + BN projection)"
        )


def _kaiming_(model: nn.Module) -> None:
    """He et al.'s normal initialisation of every conv (fan-out, ReLU gain), as torchvision's ResNets do.

    With a BN after every conv, fan-out versus the reference CIFAR code's fan-in only changes the initial
    scale of convs whose widths differ (the stem, the first conv of stages 2 and 3), which BN normalises
    away; fan-out is kept so that seeded runs (``lowrank demo``) repeat.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


class _PadShortcut(nn.Module):
    """Option A: subsample by ``stride`` and zero-pad ``extra`` new channels (half before, half after).

    Written as a module with plain slicing and ``F.pad`` (not a lambda) so ``torch.fx.symbolic_trace``
    records it as two ordinary ops and the converter's fx pass sees through it.
    """

    def __init__(self, stride: int, extra: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra = extra

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        # Pad spec runs from the last dim backwards: (W, W, H, H, C_before, C_after).
        return nn.functional.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, extra_channels={self.extra}"


class BasicBlock(nn.Module):
    """Two 3×3 conv + BN layers and a shortcut: identity, option A (zero pad) or option B (projection).

    Example:
        >>> block = BasicBlock(16, 32, stride=2, shortcut="A")
        >>> block(torch.randn(1, 16, 32, 32)).shape
        torch.Size([1, 32, 16, 16])
    """

    def __init__(self, cin: int, cout: int, stride: int, shortcut: Shortcut = "A") -> None:
        super().__init__()
        _check_shortcut(shortcut)
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
    """CIFAR ResNet of depth 6n+2: a 3×3 stem, three stages of n basic blocks (16, 32, 64 channels).

    Args:
        depth: 6n + 2 (20, 32, 44, 56, 110, ...).
        num_classes: outputs of the final linear layer.
        shortcut: ``"A"`` (zero-padding identity, the paper's CIFAR choice) or ``"B"`` (1×1 projection).

    Example:
        >>> model = CifarResNet(44, num_classes=10)
        >>> model(torch.randn(1, 3, 32, 32)).shape
        torch.Size([1, 10])
    """

    def __init__(self, depth: int, num_classes: int = 10, shortcut: Shortcut = "A") -> None:
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6 != 0:
            raise LowRankError(f"CIFAR ResNet depth {depth!r} is not 6n+2 with n >= 1; use 20, 32, 44, 56 or 110")
        _check_num_classes(num_classes)
        _check_shortcut(shortcut)
        n = (depth - 2) // 6
        self.depth = depth
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stages: list[nn.Sequential] = []
        cin = 16
        for i, cout in enumerate((16, 32, 64)):
            blocks = []
            for j in range(n):
                # Stages 2 and 3 halve the resolution in their first block: 32 → 16 → 8.
                blocks.append(BasicBlock(cin, cout, 2 if (i > 0 and j == 0) else 1, shortcut))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        _kaiming_(self)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet20(num_classes: int = 10, *, shortcut: Shortcut = "A") -> CifarResNet:
    """ResNet-20 for 32×32 inputs: 3 blocks per stage, 269,722 parameters (0.27M) with option A.

    Args:
        num_classes: outputs of the final linear layer.
        shortcut: ``"A"`` (zero-padding identity) or ``"B"`` (1×1 conv + BN projection).

    Example:
        >>> resnet20(num_classes=100)(torch.randn(1, 3, 32, 32)).shape
        torch.Size([1, 100])
    """
    return CifarResNet(20, num_classes, shortcut)


def resnet32(num_classes: int = 10, *, shortcut: Shortcut = "A") -> CifarResNet:
    """ResNet-32 for 32×32 inputs: 5 blocks per stage, 464,154 parameters (0.46M) with option A.

    Args:
        num_classes: outputs of the final linear layer.
        shortcut: ``"A"`` (zero-padding identity) or ``"B"`` (1×1 conv + BN projection).

    Example:
        >>> resnet32()(torch.randn(1, 3, 32, 32)).shape
        torch.Size([1, 10])
    """
    return CifarResNet(32, num_classes, shortcut)


def resnet56(num_classes: int = 10, *, shortcut: Shortcut = "A") -> CifarResNet:
    """ResNet-56 for 32×32 inputs: 9 blocks per stage, 853,018 parameters (0.85M) with option A.

    Args:
        num_classes: outputs of the final linear layer.
        shortcut: ``"A"`` (zero-padding identity) or ``"B"`` (1×1 conv + BN projection).

    Example:
        >>> resnet56()(torch.randn(1, 3, 32, 32)).shape
        torch.Size([1, 10])
    """
    return CifarResNet(56, num_classes, shortcut)


def resnet110(num_classes: int = 10, *, shortcut: Shortcut = "A") -> CifarResNet:
    """ResNet-110 for 32×32 inputs: 18 blocks per stage, 1,727,962 parameters (1.7M) with option A.

    Args:
        num_classes: outputs of the final linear layer.
        shortcut: ``"A"`` (zero-padding identity) or ``"B"`` (1×1 conv + BN projection).

    Example:
        >>> resnet110()(torch.randn(1, 3, 32, 32)).shape
        torch.Size([1, 10])
    """
    return CifarResNet(110, num_classes, shortcut)


class CifarVGG(nn.Module):
    """VGG with batch norm for 32×32 inputs: 3×3 conv-BN-ReLU stages, global average pool, one linear.

    Args:
        num_classes: outputs of the final linear layer.
        cfg: conv widths and ``"M"`` (2×2 max pool); the default is VGG-16's 13 convs.

    Example:
        >>> CifarVGG(num_classes=10)(torch.randn(1, 3, 32, 32)).shape
        torch.Size([1, 10])
    """

    def __init__(self, num_classes: int = 10, cfg: tuple[int | str, ...] = VGG16_CFG) -> None:
        super().__init__()
        _check_num_classes(num_classes)
        layers: list[nn.Module] = []
        cin, convs = 3, 0
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            elif isinstance(v, int) and not isinstance(v, bool) and v > 0:
                # No conv bias: the BN right after it has its own shift, so a bias would be a redundant parameter.
                layers += [nn.Conv2d(cin, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                cin, convs = v, convs + 1
            else:
                raise LowRankError(
                    f"VGG cfg entry {v!r} is neither a positive conv width nor 'M'; write e.g. (64, 'M', 128)"
                )
        if convs == 0:
            raise LowRankError("VGG cfg has no conv layer; give at least one conv width, e.g. (64, 'M', 128)")
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)
        _kaiming_(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def vgg16_cifar(num_classes: int = 10) -> CifarVGG:
    """VGG-16 (BN) for 32×32 inputs: 13 3×3 convs and Linear(512, num_classes), 14,724,042 parameters.

    Args:
        num_classes: outputs of the final linear layer.

    Example:
        >>> vgg16_cifar(num_classes=100)(torch.randn(1, 3, 32, 32)).shape
        torch.Size([1, 100])
    """
    return CifarVGG(num_classes)


#: Name → builder of every network here; :mod:`lowrank_tool.models` registers them beside torchvision's names.
CIFAR_MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet56": resnet56,
    "resnet110": resnet110,
    "vgg16_cifar": vgg16_cifar,
}
