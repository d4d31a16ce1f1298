"""The toolkit's own networks, registered beside torchvision's names (``lowrank models``)."""

from __future__ import annotations

from ..models import register_model
from .cifar import CifarResNet, CifarVGG, resnet20, resnet32, resnet56, resnet110, vgg16_cifar
from .stem import cifar_stem_

__all__ = ["CifarResNet", "CifarVGG", "resnet20", "resnet32", "resnet56", "resnet110", "vgg16_cifar", "cifar_stem_"]

for _name, _builder in (("resnet20", resnet20), ("resnet32", resnet32), ("resnet56", resnet56), ("resnet110", resnet110),
                        ("vgg16_cifar", vgg16_cifar)):
    register_model(_name, _builder, task="classification", input_size=(3, 32, 32))
