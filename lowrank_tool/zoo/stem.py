"""The CIFAR-style stem option for torchvision ResNets on small (e.g. 32×32) inputs.

ImageNet ResNets shrink the input 4× before the first block (7×7 stride-2 conv, then a stride-2 max
pool), which leaves 1×1 feature maps in ``layer4`` at 32×32. The CIFAR convention replaces them by a
3×3 stride-1 conv and no pool, so ``layer4`` sees 4×4 maps, as in the CIFAR ResNets of the literature.

Example:
    >>> import torchvision
    >>> model = cifar_stem_(torchvision.models.resnet18(num_classes=10))
    >>> model.conv1
    Conv2d(3, 64, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False)
"""

from __future__ import annotations

from torch import nn
from torchvision.models import ResNet

from ..conversion_plan import plan_of
from ..errors import LowRankError

__all__ = ["cifar_stem_"]

_FAMILIES = "torchvision ResNet-family models (resnet*, resnext*, wide_resnet*)"


def _is_cifar_stem(conv: nn.Conv2d, pool: nn.Module) -> bool:
    return isinstance(pool, nn.Identity) and conv.kernel_size == (3, 3) and conv.stride == (1, 1)


def cifar_stem_(model: nn.Module) -> nn.Module:
    """In place: give a torchvision ResNet / ResNeXt / Wide-ResNet a 3×3 stride-1 stem and no max pool.

    ``conv1`` becomes a fresh 3×3, stride-1, padding-1 conv with the same input and output channels,
    bias setting, device and dtype (Kaiming-normal, fan-out, like torchvision's init); ``maxpool``
    becomes ``nn.Identity()``. Applied to a model that already has this stem, it changes nothing
    (its trained ``conv1`` is kept). Apply it to the dense model, before :func:`lowrank_tool.convert`.

    Args:
        model: a dense ``torchvision.models.ResNet`` (resnet18 … resnet152, resnext*, wide_resnet*).

    Returns:
        The same model object, modified.

    Raises:
        LowRankError: the model is not a torchvision ResNet, is already converted, or its ``conv1``
            is not a plain Conv2d.

    Example:
        >>> model = cifar_stem_(torchvision.models.resnet18(num_classes=10))  # doctest: +SKIP
        >>> model(torch.randn(8, 3, 32, 32)).shape                              # doctest: +SKIP
        torch.Size([8, 10])
    """
    if not isinstance(model, ResNet):
        # isinstance rather than duck typing: other models with a `conv1` (GoogLeNet, Inception) have a
        # different stem, and swapping it silently would build a network nobody asked for.
        raise LowRankError(
            f"the CIFAR stem applies to {_FAMILIES}, not {type(model).__name__}; "
            "build one of those, or use a CIFAR network (resnet20, resnet56, vgg16_cifar)"
        )
    if plan_of(model) is not None:
        # The plan records the 7x7 stem and the input size; changing the stem afterwards would make
        # save/load rebuild a different network than the weights describe.
        raise LowRankError(
            f"this {type(model).__name__} is already converted (it carries a conversion plan); "
            "apply cifar_stem_ to the dense model, then lowrank_tool.convert it with input_size=(3, 32, 32)"
        )
    conv, pool = model.conv1, model.maxpool
    if type(conv) is not nn.Conv2d:
        raise LowRankError(
            f"{type(model).__name__}.conv1 is a {type(conv).__name__}, not a plain Conv2d; "
            "apply cifar_stem_ to the dense model before anything replaces its stem"
        )
    if _is_cifar_stem(conv, pool):
        return model
    weight = conv.weight
    model.conv1 = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        3,
        1,
        1,
        bias=conv.bias is not None,
        device=weight.device,
        dtype=weight.dtype,
    )
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    if model.conv1.bias is not None:
        nn.init.zeros_(model.conv1.bias)
    model.maxpool = nn.Identity()
    return model
