"""Which convolutions the converter understands: the conv-class registry.

A layer is converted only when the toolkit knows what its forward computes. That is the case for an
exact ``nn.Conv2d`` / ``nn.Conv3d`` and for a subclass that overrides neither ``forward`` nor
``_conv_forward`` (it only adds attributes or an ``__init__``). Any other class stays dense, with the
reason in the plan, unless a *handler* is registered for it:

* a handler maps the module to the :class:`~lowrank_tool.layers.base.ConvGeometry` the low-rank layer
  must reproduce (timm's ``Conv2dSame`` → the conv with dynamic "same" padding in front), or
* to a string: the reason the class stays dense (weight-standardised convs normalise their kernel on
  every call, which no fixed factorisation keeps).

Classes are registered by their qualified name (``"timm.layers.conv2d_same.Conv2dSame"``), so the
toolkit needs no import of timm or transformers to know their convs. A handler also covers subclasses
that do not override ``forward`` / ``_conv_forward`` again.

Example:
    >>> import lowrank_tool as lr
    >>> class MyConv(torch.nn.Conv2d):            # doctest: +SKIP
    ...     def forward(self, x):                   # same math, extra logging
    ...         return super().forward(x)
    >>> lr.register_conv_handler(MyConv, lr.plain_conv)   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn
from torch.nn.modules.conv import _ConvNd
from torch.nn.utils import parametrize

from ..errors import LowRankError
from ..layers.base import ConvGeometry

__all__ = [
    "ConvHandler",
    "register_conv_handler",
    "conv_support",
    "qualified_name",
    "plain_conv",
    "dynamic_same_conv",
    "list_conv_handlers",
]

#: A handler returns the geometry to convert the module with, or the reason it stays dense.
ConvHandler = Callable[[_ConvNd], "ConvGeometry | str"]

_BASE_CONVS = (nn.Conv2d, nn.Conv3d)
_HANDLERS: dict[str, ConvHandler] = {}


def qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def plain_conv(module: _ConvNd) -> ConvGeometry:
    """Handler: the module computes exactly what ``nn.Conv2d``/``nn.Conv3d`` with its attributes computes."""
    return ConvGeometry.of(module)


def dynamic_same_conv(module: _ConvNd) -> ConvGeometry:
    """Handler: TF-style "same" padding computed from each input's size, then the conv with padding 0.

    This is what timm's ``Conv2dSame`` (and ``Conv2dSameExport``) compute; the low-rank layer pads its
    input the same way before the factor chain (zero padding commutes with the bias-free 1×1 input
    projection, so the function is kept exactly).
    """
    return ConvGeometry.of(module, dynamic_same=True)


def _dense(reason: str) -> ConvHandler:
    def handler(module: nn.Module) -> str:
        return reason

    handler.__doc__ = f"Handler: stays dense ({reason})."
    return handler


def register_conv_handler(cls: type[nn.Module] | str, handler: ConvHandler, *, replace: bool = False) -> None:
    """Tell the converter how to treat a conv class (by class or qualified name ``"pkg.mod.Class"``).

    Args:
        cls: the conv class (a subclass of ``nn.Conv2d``/``nn.Conv3d``) or its qualified name.
        handler: called with the module; returns the :class:`ConvGeometry` the low-rank layer must
            compute (:func:`plain_conv`, :func:`dynamic_same_conv`, or your own), or a string: the
            reason such layers stay dense (shown in the plan and ``lowrank layers``).
        replace: overwrite an existing registration (otherwise a duplicate raises).

    Example:
        >>> register_conv_handler("mypkg.layers.LoggedConv2d", plain_conv)  # doctest: +SKIP
    """
    if not isinstance(cls, str):
        if not (isinstance(cls, type) and issubclass(cls, _BASE_CONVS)):
            raise LowRankError(f"register_conv_handler takes a subclass of nn.Conv2d or nn.Conv3d, got {cls!r}")
        cls = qualified_name(cls)
    if not callable(handler):
        raise LowRankError(f"the handler for {cls} must be callable (module -> ConvGeometry | reason), got {handler!r}")
    if cls in _HANDLERS and not replace:
        raise LowRankError(f"conv class {cls} already has a handler; pass replace=True to overwrite it")
    _HANDLERS[cls] = handler


def list_conv_handlers() -> dict[str, ConvHandler]:
    """The registered conv classes (qualified name → handler)."""
    return dict(_HANDLERS)


def _owner(cls: type, attr: str) -> type | None:
    for klass in cls.__mro__:
        if attr in vars(klass):
            return klass
    return None


def _torch_conv(klass: type | None) -> bool:
    return klass is not None and klass.__module__ == "torch.nn.modules.conv"


def conv_support(module: _ConvNd) -> ConvGeometry | str:
    """How to convert ``module`` (a ``Conv2d``/``Conv3d`` instance): its geometry, or why it stays dense."""
    if parametrize.is_parametrized(module):
        names = ", ".join(sorted(module.parametrizations.keys()))  # type: ignore[union-attr,operator]
        return f"parametrized {names} (torch.nn.utils.parametrize): the kernel is computed on every call"
    hooks = [h for h in ("_forward_pre_hooks", "_forward_hooks") if getattr(module, h, None)]
    if hooks:
        return "has forward hooks (e.g. weight_norm/spectral_norm): converting would drop them"
    patched = [name for name in ("forward", "_conv_forward") if name in vars(module)]
    if patched:
        return f"its {patched[0]} is replaced on the instance: converting would drop the replacement"
    cls = type(module)
    # The most derived class that registers a handler, provided nothing below it changes the forward.
    for klass in cls.__mro__:
        if klass in _BASE_CONVS:
            break
        handler = _HANDLERS.get(qualified_name(klass))
        if handler is not None:
            below = cls.__mro__[: cls.__mro__.index(klass)]
            if not any("forward" in vars(k) or "_conv_forward" in vars(k) for k in below):
                return _call(handler, module)
            break
    if _torch_conv(_owner(cls, "forward")) and _torch_conv(_owner(cls, "_conv_forward")):
        return plain_conv(module)
    which = "forward" if not _torch_conv(_owner(cls, "forward")) else "_conv_forward"
    return (
        f"custom conv class {qualified_name(cls)} overrides {which}; only convs whose forward is known are converted "
        "(lowrank_tool.register_conv_handler teaches a class)"
    )


def _call(handler: ConvHandler, module: _ConvNd) -> ConvGeometry | str:
    result = handler(module)
    if not isinstance(result, (ConvGeometry, str)):
        raise LowRankError(
            f"the conv handler for {qualified_name(type(module))} returned {type(result).__name__}; "
            "a handler returns a ConvGeometry or a reason string"
        )
    return result


_WS = "weight-standardised conv: the kernel is normalised on every call, which a low-rank factorisation cannot keep"
for _name in (
    "timm.layers.std_conv.StdConv2d",
    "timm.layers.std_conv.StdConv2dSame",
    "timm.layers.std_conv.ScaledStdConv2d",
    "timm.layers.std_conv.ScaledStdConv2dSame",
    "transformers.models.bit.modeling_bit.WeightStandardizedConv2d",
):
    register_conv_handler(_name, _dense(_WS))
for _name in (
    "timm.layers.conv2d_same.Conv2dSame",
    "timm.layers.conv2d_same.Conv2dSameExport",
    "lowrank_tool.layers.base.SamePadConv2d",
    "lowrank_tool.layers.base.SamePadConv3d",
):
    register_conv_handler(_name, dynamic_same_conv)
