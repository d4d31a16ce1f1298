"""trace → options → rank → planner → latency → apply: turning a model's convolutions into low-rank layers.

The names below are loaded on first use, so that ``lowrank_tool.convert.options`` (imported by the CLI
to print ``--help``) does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {
    "convert": ".api",
    "plan": ".api",
    "summary": ".api",
    "ConvertOptions": ".options",
    "RankSpec": ".options",
    "option_help": ".options",
    "register_conv_handler": ".support",
    "conv_support": ".support",
    "plain_conv": ".support",
    "dynamic_same_conv": ".support",
    "list_conv_handlers": ".support",
    "parse_input_size": "..models",
    "ConversionPlan": "..conversion_plan",
    "LayerPlan": "..conversion_plan",
    "PLAN_ATTR": "..conversion_plan",
    "plan_of": "..conversion_plan",
    "attach_plan": "..conversion_plan",
}

# The same names for type checkers and IDEs (`as`: re-exported); a test keeps them equal to _EXPORTS.
if TYPE_CHECKING:
    from ..conversion_plan import (
        PLAN_ATTR as PLAN_ATTR,
        ConversionPlan as ConversionPlan,
        LayerPlan as LayerPlan,
        attach_plan as attach_plan,
        plan_of as plan_of,
    )
    from ..models import parse_input_size as parse_input_size
    from .api import convert as convert, plan as plan, summary as summary
    from .options import ConvertOptions as ConvertOptions, RankSpec as RankSpec, option_help as option_help
    from .support import (
        conv_support as conv_support,
        dynamic_same_conv as dynamic_same_conv,
        list_conv_handlers as list_conv_handlers,
        plain_conv as plain_conv,
        register_conv_handler as register_conv_handler,
    )

__all__ = list(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
