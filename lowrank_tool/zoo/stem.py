"""The CIFAR-style stem for torchvision ResNets on small (32×32) inputs.

ImageNet ResNets shrink the input 4× before the first block (7×7 stride-2 conv, stride-2 max pool),
leaving 1×1 feature maps at 32×32. The CIFAR convention replaces them by a 3×3 stride-1 conv and no pool.
"""

from __future__ import annotations

from torch import nn

from ..errors import LowRankError

__all__ = ["cifar_stem_"]


def cifar_stem_(model: nn.Module) -> nn.Module:
    """In place: give a torchvision ResNet / ResNeXt / Wide-ResNet a 3×3 stride-1 stem and no max pool.

    Example:
        >>> model = cifar_stem_(torchvision.models.resnet18(num_classes=10))  # for 32x32 images
    """
    conv = getattr(model, "conv1", None)
    if not (isinstance(conv, nn.Conv2d) and isinstance(getattr(model, "maxpool", None), nn.Module) and hasattr(model, "layer4")):
        raise LowRankError(
            f"the CIFAR stem applies to torchvision ResNet-family models (resnet*, resnext*, wide_resnet*), not {type(model).__name__}; "
            "use a CIFAR network (resnet20, resnet56, vgg16_cifar) instead"
        )
    model.conv1 = nn.Conv2d(conv.in_channels, conv.out_channels, 3, 1, 1, bias=conv.bias is not None)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    return model
