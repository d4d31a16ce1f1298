"""trace → plan → apply: turning a model's convolutions into low-rank layers."""

from .api import PLAN_ATTR, convert, parse_input_size, plan, summary
from .plan import ConversionPlan, LayerPlan
from .planner import ConvertOptions
from .support import conv_support, dynamic_same_conv, list_conv_handlers, plain_conv, register_conv_handler

__all__ = [
    "convert", "plan", "summary", "parse_input_size", "ConversionPlan", "LayerPlan", "ConvertOptions", "PLAN_ATTR",
    "register_conv_handler", "conv_support", "plain_conv", "dynamic_same_conv", "list_conv_handlers",
]
