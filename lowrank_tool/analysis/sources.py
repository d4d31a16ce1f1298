"""What ``lowrank analyze`` reads: a model name, an artifact directory or an exported ONNX file, as spectra.

:func:`spectra_of` resolves the target and returns one :class:`~.spectrum.LayerSpectrum` per conv, with
notes on how the numbers were read (random weights, batch norm folded into ONNX weights, ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..conversion_plan import attach_plan
from ..convert.api import plan
from ..convert.options import RankSpec
from ..errors import LowRankError, first_line
from ..export.onnx import load_onnx, plan_from_onnx
from ..io import load
from ..models import build_model, default_input_size, get_entry
from .settings import analysis_target
from .spectrum import LayerSpectrum, analyze

__all__ = ["spectra_of"]


def spectra_of(
    target: str,
    rank: str | None = None,
    *,
    input_size: str | None = None,
    trust_code: bool = False,
    model_kwargs: dict[str, Any] | None = None,
) -> tuple[list[LayerSpectrum], list[str]]:
    """The spectra of a model name, artifact directory or .onnx file, and notes about how they were read.

    Args:
        target: a model name (built with random weights), an artifact directory or an ``.onnx`` file.
        rank: ranks for layers that have none, as ``lowrank convert --rank`` computes them.
        input_size: with a model name and ``rank``: where the converter's plan is traced.
        trust_code: let an artifact's plan name a ``package.module:factory``.
        model_kwargs: the builder's arguments for a model name.
    """
    resolved = analysis_target(target, rank, input_size=input_size, model_kwargs=model_kwargs)
    if resolved.kind == "onnx":
        return _onnx_spectra(resolved.path, resolved.rank)
    if resolved.kind == "artifact":
        return analyze(load(resolved.path, trust_code=trust_code), rank=resolved.rank), []
    return _model_spectra(target, resolved.rank, input_size, model_kwargs or {})


def _model_spectra(
    name: str, spec: RankSpec | None, input_size: str | None, model_kwargs: dict[str, Any]
) -> tuple[list[LayerSpectrum], list[str]]:
    """A model by name, with random weights; with a rank, the converter's plan gives the ranks."""
    try:
        get_entry(name)
    except LowRankError as exc:
        raise LowRankError(f"{exc}; no artifact directory or .onnx file named {name!r} exists either") from None
    model = build_model(name, **model_kwargs)
    notes = ["random weights (the model is built untrained): spectra show initialisation, not a trained model"]
    if spec is None:
        return analyze(model), notes
    attach_plan(
        model, plan(model, rank=spec.to_json(), input_size=input_size or default_input_size(name, model_kwargs))
    )
    notes.append(
        f"ranks are those `lowrank convert {name} --rank {spec}` would choose; layers it keeps dense have none"
    )
    return analyze(model), notes


def _module_path(node_name: str) -> str:
    """``/layer1/layer1.0/conv1/core/Conv`` (TorchScript exporter scopes) → ``layer1.0.conv1.core``."""
    path = ""
    for part in node_name.strip("/").split("/")[:-1]:
        path = part if not path or part.startswith(path + ".") else f"{path}.{part}"
    return path


def _onnx_spectra(path: Path, spec: RankSpec | None) -> tuple[list[LayerSpectrum], list[str]]:
    """Every group-1 Conv node of an ONNX file whose weight is an initializer, named after the plan where it can."""
    from onnx import numpy_helper

    proto = load_onnx(path)
    plan_ = plan_from_onnx(path)
    entries = {entry.name: entry for entry in plan_.layers} if plan_ is not None else {}
    inits = {init.name: init for init in proto.graph.initializer}
    spectra: list[LayerSpectrum] = []
    computed = factors = 0
    for index, node in enumerate(n for n in proto.graph.node if n.op_type == "Conv"):
        if next((a.i for a in node.attribute if a.name == "group"), 1) != 1:
            continue
        if len(node.input) < 2:
            raise LowRankError(
                f"{path}: Conv node {node.name or index!r} has no weight input; the file is not a valid ONNX model, "
                "re-export it with `lowrank export`"
            )
        init = inits.get(node.input[1])
        if init is None:
            computed += 1
            continue
        if len(init.dims) not in (4, 5):  # Conv1d: not a 2-D/3-D kernel
            continue
        try:
            weight = torch.from_numpy(numpy_helper.to_array(init).astype("float64"))
        except (ValueError, TypeError) as exc:  # dims that do not match the data, a weight stored as strings
            raise LowRankError(
                f"{path}: the weight {init.name[:80]!r} cannot be read ({first_line(exc, with_type=False, limit=120)}); "
                "re-export the model with `lowrank export`"
            ) from None
        name = _module_path(node.name) or (
            init.name.removesuffix(".weight") if not init.name.startswith("onnx::") else node.name or f"Conv_{index}"
        )
        entry = entries.get(name)
        owner = next((e for n, e in entries.items() if e.converted and name.startswith(n + ".")), None)
        if entry is not None and entry.converted:
            spectra.append(
                LayerSpectrum.from_weight(
                    name, weight, format=entry.format, ranks=entry.ranks, note="factor chain merged into one Conv"
                )
            )
        elif owner is not None:
            factors += 1
            ranks = ",".join(map(str, owner.ranks or []))
            spectra.append(
                LayerSpectrum.from_weight(name, weight, note=f"factor conv of {owner.name} ({owner.format} {ranks})")
            )
        else:
            spectra.append(
                LayerSpectrum.from_weight(name, weight, rank=spec, note=entry.reason if entry is not None else None)
            )
    notes = [
        "ONNX Conv weights have batch norm folded in (each output channel scaled by γ/√(var+ε)): spectra differ from the PyTorch model's"
    ]
    if plan_ is None:
        notes.append(
            f"{path} carries no conversion plan (exported without lowrank_tool metadata): layer names come from the graph"
        )
    if factors:
        notes.append(
            f"{factors} Conv nodes are factors of low-rank layers, stored as separate convs (1x1 → kxk → 1x1); each is analysed as a "
            "dense conv — analyse the artifact directory for the merged kernels and the factors' orthogonality"
        )
    if computed:
        notes.append(
            f"{computed} Conv nodes compute their weights (quantized or cast) instead of storing them; they are not analysed"
        )
    return spectra, notes
