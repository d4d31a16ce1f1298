"""The toolkit's own networks, registered beside torchvision's names (``lowrank models``).

:mod:`lowrank_tool.models` registers ``resnet20``, ``resnet32``, ``resnet56``, ``resnet110`` and
``vgg16_cifar`` (from :data:`CIFAR_MODELS`) as classification models with a 3×32×32 default input, so
``lowrank convert resnet56 --rank 0.5`` and ``build_model("resnet20", num_classes=100)`` work.
:func:`cifar_stem_` adapts a torchvision ResNet to 32×32 inputs.

Example:
    >>> import lowrank_tool as lr
    >>> model = lr.build_model("resnet20", num_classes=100, shortcut="B")
    >>> model.fc
    Linear(in_features=64, out_features=100, bias=True)
"""

from .cifar import (
    CIFAR_MODELS,
    BasicBlock,
    CifarResNet,
    CifarVGG,
    Shortcut,
    resnet20,
    resnet32,
    resnet56,
    resnet110,
    vgg16_cifar,
)
from .stem import cifar_stem_

__all__ = [
    "BasicBlock", "CifarResNet", "CifarVGG", "Shortcut", "resnet20", "resnet32", "resnet56", "resnet110", "vgg16_cifar",
    "CIFAR_MODELS", "cifar_stem_",
]  # fmt: skip
