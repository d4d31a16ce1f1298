"""Deployment: ONNX export (fp32 / fp16 / int8, optional factor merging), verification, runtimes.

Example:
    >>> import lowrank_tool as lr
    >>> model = lr.convert("resnet18", rank=0.3, input_size="3x64x64")
    >>> result = lr.export_onnx(model, "r18.onnx")        # doctest: +SKIP
    >>> print(result.verification.line())                 # doctest: +SKIP

The names below are loaded on first use, so that ``lowrank_tool.export.options`` (the CLI's checks of its
arguments) does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {
    "DEVICES": "..runtime",
    "make_session": "..runtime",
    "providers_for": "..runtime",
    "MERGE_MODES": ".merge",
    "MergeDecision": ".merge",
    "merge_factors": ".merge",
    "DEFAULT_OPSET": ".onnx",
    "EXPORTERS": ".onnx",
    "PRECISIONS": ".onnx",
    "ExportResult": ".onnx",
    "export_onnx": ".onnx",
    "plan_from_onnx": ".onnx",
    "read_metadata": ".onnx",
    "QuantizeReport": ".quantize",
    "quantize_file": ".quantize",
    "TOLERANCES": ".verify",
    "VerificationError": ".verify",
    "VerifyReport": ".verify",
    "verify_onnx": ".verify",
    "parse_batch": ".options",
    "check_output_path": ".options",
    "check_onnx_file": ".options",
    "WEIGHT_BITS": ".options",
    "check_weight_bits": ".options",
}

# The same names for type checkers and IDEs (`as`: re-exported); a test keeps them equal to _EXPORTS.
if TYPE_CHECKING:
    from ..runtime import DEVICES as DEVICES, make_session as make_session, providers_for as providers_for
    from .merge import MERGE_MODES as MERGE_MODES, MergeDecision as MergeDecision, merge_factors as merge_factors
    from .onnx import (
        DEFAULT_OPSET as DEFAULT_OPSET,
        EXPORTERS as EXPORTERS,
        PRECISIONS as PRECISIONS,
        ExportResult as ExportResult,
        export_onnx as export_onnx,
        plan_from_onnx as plan_from_onnx,
        read_metadata as read_metadata,
    )
    from .options import (
        WEIGHT_BITS as WEIGHT_BITS,
        check_onnx_file as check_onnx_file,
        check_output_path as check_output_path,
        check_weight_bits as check_weight_bits,
        parse_batch as parse_batch,
    )
    from .quantize import QuantizeReport as QuantizeReport, quantize_file as quantize_file
    from .verify import (
        TOLERANCES as TOLERANCES,
        VerificationError as VerificationError,
        VerifyReport as VerifyReport,
        verify_onnx as verify_onnx,
    )

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
