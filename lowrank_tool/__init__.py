"""lowrank_tool: ELRT low-rank CNNs at initialisation, from any torchvision model or your own.

Example:
    >>> import torchvision, lowrank_tool as lr
    >>> model = lr.convert(torchvision.models.resnet50(), rank=0.3)   # Tucker-2 / SVD layers
    >>> plan = lr.summary(model)                                       # what was converted, and why
    >>> lr.save(model, "r50")                                           # doctest: +SKIP
    >>> lr.export_onnx(model, "r50.onnx").verification.passed          # doctest: +SKIP
    True
"""

from . import zoo as _zoo  # noqa: E402,F401 - registers the CIFAR networks (resnet20, ..., vgg16_cifar)
from ._version import __version__
from .analysis.bench import bench
from .analysis.spectrum import analyze
from .convert import (
    ConversionPlan,
    ConvertOptions,
    LayerPlan,
    convert,
    dynamic_same_conv,
    parse_input_size,
    plain_conv,
    plan,
    register_conv_handler,
    summary,
)
from .errors import LowRankError, LowRankWarning, VerificationError
from .export import (
    export_onnx,
    merge_factors,
    plan_from_onnx,
    read_metadata,
    verify_onnx,
)
from .io import load, save
from .layers import (
    CPConv2d,
    LowRankConv,
    SVDConv2d,
    SVDConv3d,
    Tucker2Conv2d,
    Tucker2Conv3d,
    list_formats,
    register_format,
)
from .methods import get_method, list_methods, orthogonality_penalty, register_method
from .models import build_model, list_models, register_model
from .train.config import TrainConfig
from .train.run import fit
from .train.trainer import Trainer, TrainResult

__all__ = [
    "__version__",
    "convert", "plan", "summary", "save", "load",
    "ConversionPlan", "LayerPlan", "ConvertOptions", "parse_input_size",
    "register_conv_handler", "plain_conv", "dynamic_same_conv",
    "LowRankConv", "Tucker2Conv2d", "Tucker2Conv3d", "SVDConv2d", "SVDConv3d", "CPConv2d",
    "list_formats", "register_format",
    "build_model", "list_models", "register_model",
    "fit", "Trainer", "TrainConfig", "TrainResult", "orthogonality_penalty", "get_method", "list_methods", "register_method",
    "export_onnx", "verify_onnx", "read_metadata", "plan_from_onnx", "merge_factors", "bench", "analyze",
    "LowRankError", "LowRankWarning", "VerificationError",
]
