"""trace → plan → apply: turning a model's convolutions into low-rank layers."""

from .api import PLAN_ATTR, convert, parse_input_size, plan, summary
from .plan import ConversionPlan, LayerPlan
from .planner import ConvertOptions

__all__ = ["convert", "plan", "summary", "parse_input_size", "ConversionPlan", "LayerPlan", "ConvertOptions", "PLAN_ATTR"]
