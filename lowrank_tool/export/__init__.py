"""Deployment: ONNX export (fp32 / fp16 / int8, optional factor merging), verification, runtimes.

Example:
    >>> import lowrank_tool as lr
    >>> model = lr.convert("resnet18", rank=0.3, input_size="3x64x64")
    >>> result = lr.export_onnx(model, "r18.onnx")        # doctest: +SKIP
    >>> print(result.verification.line())                 # doctest: +SKIP
"""

from ..runtime import DEVICES, make_session, providers_for
from .merge import MERGE_MODES, MergeDecision, merge_factors
from .onnx import (
    DEFAULT_OPSET,
    EXPORTERS,
    PRECISIONS,
    ExportResult,
    export_onnx,
    plan_from_onnx,
    read_metadata,
)
from .quantize import QuantizeReport, quantize_file
from .verify import TOLERANCES, VerificationError, VerifyReport, verify_onnx

__all__ = [
    "export_onnx",
    "ExportResult",
    "read_metadata",
    "plan_from_onnx",
    "DEFAULT_OPSET",
    "EXPORTERS",
    "PRECISIONS",
    "verify_onnx",
    "VerifyReport",
    "VerificationError",
    "TOLERANCES",
    "merge_factors",
    "MergeDecision",
    "MERGE_MODES",
    "quantize_file",
    "QuantizeReport",
    "make_session",
    "providers_for",
    "DEVICES",
]
