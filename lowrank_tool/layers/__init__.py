"""Low-rank convolution layers and the registry of formats.

A *format* is a name (``"tucker2"``, ``"svd"``, ``"cp"``) mapped to one layer class per spatial
dimensionality. The converter looks formats up here instead of branching on names, so a new format is
one ``register_format`` call.
"""

from __future__ import annotations

import difflib

from ..errors import LowRankError
from .base import ConvGeometry, LowRankConv, SamePadConv2d, SamePadConv3d, pad_same
from .cp import CPConv2d
from .svd import SVDConv2d, SVDConv3d
from .tucker2 import Tucker2Conv2d, Tucker2Conv3d

__all__ = [
    "LowRankConv",
    "ConvGeometry",
    "Tucker2Conv2d",
    "Tucker2Conv3d",
    "SVDConv2d",
    "SVDConv3d",
    "CPConv2d",
    "SamePadConv2d",
    "SamePadConv3d",
    "pad_same",
    "register_format",
    "get_format",
    "list_formats",
    "is_low_rank",
]

_FORMATS: dict[str, dict[int, type[LowRankConv]]] = {}


def register_format(name: str, cls: type[LowRankConv], spatial_dims: int = 2) -> None:
    """Register ``cls`` as format ``name`` for convs with ``spatial_dims`` spatial dimensions."""
    slot = _FORMATS.setdefault(name, {})
    if spatial_dims in slot:
        raise ValueError(
            f"format {name!r} is already registered for {spatial_dims}-D convs ({slot[spatial_dims].__name__})"
        )
    slot[spatial_dims] = cls


def list_formats() -> list[str]:
    return sorted(_FORMATS)


def get_format(name: str, spatial_dims: int = 2) -> type[LowRankConv]:
    """The layer class of a format; a clear error for unknown names or dimensionalities."""
    if name not in _FORMATS:
        close = difflib.get_close_matches(name, list(_FORMATS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise LowRankError(f"unknown format {name!r}{hint}; expected one of {', '.join(list_formats())} or auto")
    try:
        return _FORMATS[name][spatial_dims]
    except KeyError:
        dims = ", ".join(f"{d}-D" for d in sorted(_FORMATS[name]))
        raise LowRankError(
            f"format {name!r} supports {dims} convs, not {spatial_dims}-D; use --format tucker2 or svd"
        ) from None


def supports(name: str, spatial_dims: int) -> bool:
    return spatial_dims in _FORMATS.get(name, {})


def is_low_rank(module: object) -> bool:
    return isinstance(module, LowRankConv)


register_format("tucker2", Tucker2Conv2d, 2)
register_format("tucker2", Tucker2Conv3d, 3)
register_format("svd", SVDConv2d, 2)
register_format("svd", SVDConv3d, 3)
register_format("cp", CPConv2d, 2)
