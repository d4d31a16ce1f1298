"""lowrank_tool: ELRT low-rank CNNs at initialisation, from any torchvision model or your own.

Example:
    >>> import torchvision, lowrank_tool as lr
    >>> model = lr.convert(torchvision.models.resnet50(), rank=0.3)   # Tucker-2 / SVD layers
    >>> plan = lr.summary(model)                                       # what was converted, and why
    >>> lr.save(model, "r50")                                           # doctest: +SKIP
    >>> lr.export_onnx(model, "r50.onnx").verification.passed          # doctest: +SKIP
    True

The names below are loaded on first use (PEP 562): ``import lowrank_tool`` costs nothing until a
name is used, which keeps ``lowrank --help`` instant. ``docs/architecture.md`` maps each name to the
module that owns it.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

from ._lazy import lazy_exports
from ._version import __version__

#: Public name → the module that defines it.
_EXPORTS = {
    "convert": ".convert.api",
    "plan": ".convert.api",
    "summary": ".convert.api",
    "ConvertOptions": ".convert.options",
    "option_help": ".convert.options",
    "register_conv_handler": ".convert.support",
    "plain_conv": ".convert.support",
    "dynamic_same_conv": ".convert.support",
    "ConversionPlan": ".conversion_plan",
    "LayerPlan": ".conversion_plan",
    "plan_of": ".conversion_plan",
    "attach_plan": ".conversion_plan",
    "save": ".io",
    "load": ".io",
    "LowRankConv": ".layers",
    "Tucker2Conv2d": ".layers",
    "Tucker2Conv3d": ".layers",
    "SVDConv2d": ".layers",
    "SVDConv3d": ".layers",
    "CPConv2d": ".layers",
    "list_formats": ".layers",
    "register_format": ".layers",
    "build_model": ".models",
    "list_models": ".models",
    "register_model": ".models",
    "parse_input_size": ".models",
    "fit": ".train.run",
    "Trainer": ".train.trainer",
    "TrainResult": ".train.trainer",
    "TrainConfig": ".train.config",
    "orthogonality_penalty": ".methods",
    "get_method": ".methods",
    "list_methods": ".methods",
    "register_method": ".methods",
    "export_onnx": ".export",
    "verify_onnx": ".export",
    "read_metadata": ".export",
    "plan_from_onnx": ".export",
    "merge_factors": ".export",
    "bench": ".analysis.bench",
    "analyze": ".analysis.spectrum",
    "LowRankError": ".errors",
    "LowRankWarning": ".errors",
    "VerificationError": ".errors",
}

# The same names for type checkers and IDEs (`as`: re-exported); a test keeps them equal to _EXPORTS.
if TYPE_CHECKING:
    from .analysis.bench import bench as bench
    from .analysis.spectrum import analyze as analyze
    from .conversion_plan import (
        ConversionPlan as ConversionPlan,
        LayerPlan as LayerPlan,
        attach_plan as attach_plan,
        plan_of as plan_of,
    )
    from .convert.api import convert as convert, plan as plan, summary as summary
    from .convert.options import ConvertOptions as ConvertOptions, option_help as option_help
    from .convert.support import (
        dynamic_same_conv as dynamic_same_conv,
        plain_conv as plain_conv,
        register_conv_handler as register_conv_handler,
    )
    from .errors import (
        LowRankError as LowRankError,
        LowRankWarning as LowRankWarning,
        VerificationError as VerificationError,
    )
    from .export import (
        export_onnx as export_onnx,
        merge_factors as merge_factors,
        plan_from_onnx as plan_from_onnx,
        read_metadata as read_metadata,
        verify_onnx as verify_onnx,
    )
    from .io import load as load, save as save
    from .layers import (
        CPConv2d as CPConv2d,
        LowRankConv as LowRankConv,
        SVDConv2d as SVDConv2d,
        SVDConv3d as SVDConv3d,
        Tucker2Conv2d as Tucker2Conv2d,
        Tucker2Conv3d as Tucker2Conv3d,
        list_formats as list_formats,
        register_format as register_format,
    )
    from .methods import (
        get_method as get_method,
        list_methods as list_methods,
        orthogonality_penalty as orthogonality_penalty,
        register_method as register_method,
    )
    from .models import (
        build_model as build_model,
        list_models as list_models,
        parse_input_size as parse_input_size,
        register_model as register_model,
    )
    from .train.config import TrainConfig as TrainConfig
    from .train.run import fit as fit
    from .train.trainer import Trainer as Trainer, TrainResult as TrainResult

__all__ = ["__version__", *_EXPORTS]


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)


class _Package(types.ModuleType):
    """``lowrank_tool.convert`` is the main function and also a subpackage. Loading the subpackage makes
    the import system set the package's attribute to it; this keeps the attribute the function (the
    subpackage stays importable by its dotted name)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
