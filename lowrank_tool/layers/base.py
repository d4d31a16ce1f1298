"""Shared machinery of the low-rank convolution layers.

A low-rank layer replaces one dense ``Conv2d``/``Conv3d``. It remembers the geometry of the conv it
replaces (channels, kernel, stride, padding, dilation, padding mode, bias) so that it can be merged back
(:meth:`LowRankConv.to_dense`), report its compression, and be rebuilt from a plan entry. The math of
each format lives in its own module; the swap into a model lives in :mod:`lowrank_tool.convert.apply`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd

from ..choices import INITS, Init
from ..errors import LowRankError

__all__ = [
    "LowRankConv",
    "ConvGeometry",
    "Init",
    "conv_class",
    "dense_conv_params",
    "pad_same",
    "SamePadConv2d",
    "SamePadConv3d",
]

_INITS = (*INITS, "none")


def conv_class(ndim: int) -> Callable[..., _ConvNd]:
    """The dense conv class for a spatial dimensionality (2 or 3)."""
    try:
        return {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[ndim]
    except KeyError:  # pragma: no cover - guarded by callers
        raise LowRankError(f"convolutions with {ndim} spatial dims are not supported; allowed: 2 or 3") from None


def pad_same(x: Tensor, kernel_size: list[int], stride: list[int], dilation: list[int]) -> Tensor:
    """TF-style "SAME" zero padding computed from ``x``'s spatial size (what timm's ``Conv2dSame`` does).

    Per spatial dim: ``total = max((ceil(i/s) - 1)·s + (k-1)·d + 1 - i, 0)``, ``total // 2`` before and
    the rest after. TorchScript-compatible.
    """
    nd = len(kernel_size)
    pads: list[int] = []
    for i in range(nd - 1, -1, -1):  # F.pad lists the last dimension first
        size = x.size(x.dim() - nd + i)
        s = stride[i]
        total = max((size + s - 1) // s * s - s + (kernel_size[i] - 1) * dilation[i] + 1 - size, 0)
        pads.append(total // 2)
        pads.append(total - total // 2)
    return F.pad(x, pads)


class SamePadConv2d(nn.Conv2d):
    """A dense ``Conv2d`` with dynamic "same" padding (:func:`pad_same`, then the conv with padding 0).

    What :meth:`LowRankConv.to_dense` returns for a layer converted from timm's ``Conv2dSame``.
    """

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(
            pad_same(x, list(self.kernel_size), list(self.stride), list(self.dilation)), self.weight, self.bias
        )


class SamePadConv3d(nn.Conv3d):
    """:class:`SamePadConv2d` for 3-D kernels."""

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(
            pad_same(x, list(self.kernel_size), list(self.stride), list(self.dilation)), self.weight, self.bias
        )


def dense_conv_params(conv: _ConvNd) -> int:
    """Parameter count of a dense conv (weight plus bias)."""
    return sum(p.numel() for p in (conv.weight, conv.bias) if p is not None)


class ConvGeometry:
    """The hyper-parameters of a dense conv that a low-rank replacement must keep."""

    __slots__ = (
        "in_channels",
        "out_channels",
        "kernel_size",
        "stride",
        "padding",
        "dilation",
        "padding_mode",
        "bias",
        "ndim",
        "dynamic_same",
    )

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Sequence[int],
        stride: Sequence[int],
        padding: Sequence[int] | str,
        dilation: Sequence[int],
        padding_mode: str = "zeros",
        bias: bool = True,
        *,
        dynamic_same: bool = False,
    ) -> None:
        self.ndim = len(kernel_size)
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = tuple(int(k) for k in kernel_size)
        self.stride = tuple(int(s) for s in stride)
        self.padding = padding if isinstance(padding, str) else tuple(int(p) for p in padding)
        self.dilation = tuple(int(d) for d in dilation)
        self.padding_mode = padding_mode
        self.bias = bool(bias)
        #: TF-style "same" padding from each input's size (:func:`pad_same`), applied before the conv.
        self.dynamic_same = bool(dynamic_same)
        if self.dynamic_same and (isinstance(self.padding, str) or any(self.padding) or padding_mode != "zeros"):
            raise LowRankError(
                f"dynamic 'same' padding replaces the conv's own padding; got padding={padding!r}, padding_mode={padding_mode!r}"
            )

    @classmethod
    def of(cls, conv: _ConvNd, *, dynamic_same: bool | None = None) -> ConvGeometry:
        """The geometry of a dense conv; ``dynamic_same`` defaults to whether it is a :class:`SamePadConv2d`/``3d``."""
        if dynamic_same is None:
            dynamic_same = isinstance(conv, (SamePadConv2d, SamePadConv3d))
        if getattr(conv, "groups", 1) != 1:
            raise LowRankError(
                f"cannot factorise a grouped conv (groups={conv.groups}); low-rank formats need groups=1, "
                "so leave this layer dense (it is excluded by default)"
            )
        return cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.padding_mode,
            conv.bias is not None,
            dynamic_same=dynamic_same,
        )

    @property
    def kernel_numel(self) -> int:
        return math.prod(self.kernel_size)

    @property
    def is_pointwise(self) -> bool:
        return self.kernel_numel == 1

    def dense_params(self) -> int:
        return self.out_channels * self.in_channels * self.kernel_numel + (self.out_channels if self.bias else 0)

    def spatial_kwargs(self) -> dict[str, Any]:
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, padding_mode=self.padding_mode)

    def dense_class(self) -> Callable[..., _ConvNd]:
        """The dense conv class computing this geometry (a :class:`SamePadConv2d` for dynamic "same")."""
        if self.dynamic_same:
            return {2: SamePadConv2d, 3: SamePadConv3d}[self.ndim]
        return conv_class(self.ndim)


class LowRankConv(nn.Module):
    """Base class of the factorised convolutions: a drop-in for the dense conv they replace.

    A layer keeps the dense conv's face: ``in_channels``, ``out_channels``, ``kernel_size``, ``stride``,
    ``padding``, ``dilation``, ``groups`` (1), ``padding_mode``, ``transposed`` and ``output_padding``
    are plain attributes with ``nn.Conv2d``'s types, ``bias`` is the bias parameter (or ``None``), and
    ``weight`` is the dense kernel *computed* from the factors on each access (read-only: assigning to
    it raises). Code written for ``nn.Conv2d`` that reads these keeps working, and the layer compiles
    with ``torch.jit.script``.

    Subclasses set ``format_name`` and implement ``_build``, ``_init_random``, ``_init_decompose``,
    ``dense_weight``, ``factors`` and ``_chain`` (the factor convs, input side first).
    """

    format_name: ClassVar[str] = ""
    #: Number of rank values the format takes (Tucker-2: (r_in, r_out); SVD and CP: (r,)).
    num_ranks: ClassVar[int] = 1
    #: Computed on access in Python; TorchScript must not compile them.
    __jit_unused_properties__ = ["weight", "bias", "compression"]

    def __init__(self, geometry: ConvGeometry, ranks: Sequence[int], *, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        ranks = tuple(int(r) for r in ranks)
        if len(ranks) != self.num_ranks or any(r < 1 for r in ranks):
            raise LowRankError(
                f"{type(self).__name__} takes {self.num_ranks} positive rank(s), got {ranks}; "
                "pass e.g. ranks=(8,) for svd/cp or ranks=(8, 16) for tucker2"
            )
        self.geometry = geometry
        self.ranks = ranks
        # nn.Conv2d's face (what timm, Hugging Face and user code read off a conv).
        self.in_channels = geometry.in_channels
        self.out_channels = geometry.out_channels
        self.kernel_size = geometry.kernel_size
        self.stride = geometry.stride
        self.padding = geometry.padding
        self.dilation = geometry.dilation
        self.groups = 1
        self.padding_mode = geometry.padding_mode
        self.transposed = False
        self.output_padding = (0,) * geometry.ndim
        self.dynamic_same = geometry.dynamic_same
        self._same_args: list[list[int]] = [list(geometry.kernel_size), list(geometry.stride), list(geometry.dilation)]
        #: Variance of the dense kernel the random init matches (see reset_parameters). Until from_dense
        #: records the source kernel's, PyTorch's default conv init: kaiming_uniform(a=sqrt(5)), 1 / (3 fan_in).
        self._init_var = 1.0 / (3.0 * geometry.in_channels * geometry.kernel_numel)
        inner = geometry
        if geometry.dynamic_same:  # the pad happens in front of the chain; the inner convs pad nothing
            inner = ConvGeometry(
                geometry.in_channels,
                geometry.out_channels,
                geometry.kernel_size,
                geometry.stride,
                (0,) * geometry.ndim,
                geometry.dilation,
                "zeros",
                geometry.bias,
            )
        self._build(inner, ranks, dict(device=device, dtype=dtype))

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("weight", "bias") and "_modules" in self.__dict__:
            raise AttributeError(
                f"{type(self).__name__}.{name} is computed from the factor convs ({', '.join(self._modules)}); "
                f"assign to their weights/bias instead, or merge with to_dense() for a dense conv"
            )
        super().__setattr__(name, value)

    def _pad(self, x: Tensor) -> Tensor:
        if self.dynamic_same:
            return pad_same(x, self._same_args[0], self._same_args[1], self._same_args[2])
        return x

    # -- to be implemented by formats -------------------------------------------------------------
    def _build(self, g: ConvGeometry, ranks: tuple[int, ...], factory: dict[str, Any]) -> None:
        raise NotImplementedError

    def _init_random(self, dense_weight_var: float) -> None:
        raise NotImplementedError

    def _init_decompose(self, weight: Tensor) -> None:
        raise NotImplementedError

    def dense_weight(self) -> Tensor:
        """The dense kernel (C_out, C_in, *k) this layer computes."""
        raise NotImplementedError

    def factors(self) -> list[Tensor]:
        """Factor matrices (rows = channels, columns = rank) for the orthogonality regulariser.

        They are views of the 1×1 convs' weights, so a penalty on them back-propagates into the layer.
        """
        raise NotImplementedError

    def kernel_norm_sq(self) -> Tensor:
        """‖W‖²_F of the dense kernel this layer computes, in float32, differentiable (Frobenius decay)."""
        with torch.autocast(next(self.parameters()).device.type, enabled=False):
            return self.dense_weight().float().pow(2).sum()

    # -- shared API ---------------------------------------------------------------------------------
    @property
    def weight(self) -> Tensor:
        """The dense kernel (C_out, C_in, *k), reconstructed from the factors on every access.

        Read-only; differentiable (gradients flow into the factors). For a standing dense conv use
        :meth:`to_dense`.
        """
        return self.dense_weight()

    @property
    def bias(self) -> Tensor | None:
        return self._bias_holder().bias

    def _bias_holder(self) -> _ConvNd:
        raise NotImplementedError

    @classmethod
    def from_geometry(cls, geometry: ConvGeometry, ranks: Sequence[int], **factory: Any) -> LowRankConv:
        return cls(geometry, ranks, **factory)

    @classmethod
    def from_dense(
        cls,
        conv: _ConvNd,
        ranks: Sequence[int] | int,
        init: Init = "random",
        *,
        geometry: ConvGeometry | None = None,
    ) -> LowRankConv:
        """Build the low-rank replacement of a dense conv.

        Args:
            conv: the ``nn.Conv2d`` (or ``nn.Conv3d`` where the format supports it) to replace; it is not
                modified.
            ranks: the format's ranks, e.g. ``(r,)`` for SVD/CP or ``(r_in, r_out)`` for Tucker-2; an int
                means the same rank in every mode.
            init: ``"random"`` initialises the factors for training from scratch (ELRT), with orthonormal
                1×1 factors and a core scaled so that the merged kernel has the dense kernel's
                energy (activations keep the dense network's scale); ``"decompose"`` fits the factors
                to ``conv``'s weights (truncated HOSVD / SVD / CP via tensorly); ``"none"`` leaves them
                uninitialised memory (for loading weights right after). A conv on the ``meta`` device
                gives a layer on ``meta``: materialise it with ``to_empty`` and call
                :meth:`reset_parameters`.
            geometry: what the layer must compute (default ``ConvGeometry.of(conv)``); the converter
                passes the geometry its conv-class handler read, e.g. with ``dynamic_same=True``.

        Example:
            >>> conv = torch.nn.Conv2d(64, 128, 3, padding=1)
            >>> layer = Tucker2Conv2d.from_dense(conv, ranks=(32, 64), init="decompose")
            >>> layer(torch.randn(1, 64, 8, 8)).shape
            torch.Size([1, 128, 8, 8])
        """
        if init not in _INITS:
            raise LowRankError(f"init={init!r} is not known; allowed: {', '.join(_INITS)}")
        geometry = ConvGeometry.of(conv) if geometry is None else geometry
        if isinstance(ranks, int):
            ranks = (ranks,) * cls.num_ranks
        on_meta = conv.weight.is_meta
        if on_meta and init == "decompose":
            raise LowRankError(
                "init='decompose' needs real weights, but the model is on the meta device; materialise it "
                "(model.to_empty(device=...)) and load its weights first, or use init='random'"
            )
        # Built on the meta device and given storage afterwards: nn.Conv2d's own default init would be
        # overwritten below anyway (1.4 s of wasted random draws on regnet_y_128gf). With init="none" the
        # values are uninitialised memory, for loading weights right after.
        layer = cls(geometry, ranks, device="meta", dtype=conv.weight.dtype).to_empty(device=conv.weight.device)
        # A meta conv has no values to measure: the layer keeps PyTorch's default-init variance.
        if not on_meta and conv.weight.numel() > 1:
            layer._init_var = float(conv.weight.detach().double().var())  # float32 overflows past 1e19
        if on_meta:
            return layer
        with torch.no_grad():
            if init == "random":
                layer._init_random(layer._init_var)
            elif init == "decompose":
                layer._init_decompose(conv.weight.detach())
            if geometry.bias and init != "none":
                bias, dense_bias = layer._bias_holder().bias, conv.bias
                assert bias is not None and dense_bias is not None  # geometry.bias says both convs have one
                bias.copy_(dense_bias.detach())
        return layer

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Draw the random (ELRT) init again, matched to the dense kernel's variance recorded at build time.

        The torch idiom after ``model.to_empty(device=...)`` for a model converted on the meta device.
        """
        self._init_random(self._init_var)

    def to_dense(self) -> _ConvNd:
        """Merge the factors back into one dense conv computing the same function."""
        g = self.geometry
        ref = self.dense_weight()
        conv = g.dense_class()(
            g.in_channels,
            g.out_channels,
            g.kernel_size,
            bias=g.bias,
            device=ref.device,
            dtype=ref.dtype,
            **g.spatial_kwargs(),
        )
        with torch.no_grad():
            conv.weight.copy_(ref)
            if conv.bias is not None and self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def compression(self) -> float:
        """Dense parameters divided by this layer's parameters."""
        return self.geometry.dense_params() / max(1, self.num_parameters())

    def extra_repr(self) -> str:
        g = self.geometry
        k = "x".join(map(str, g.kernel_size))
        ranks = ", ".join(map(str, self.ranks))
        same = ", padding=dynamic same" if g.dynamic_same else ""
        return f"{g.in_channels}->{g.out_channels}, kernel={k}, stride={g.stride}{same}, ranks=({ranks}), compression={self.compression:.2f}x"


def orthonormal_(weight: Tensor, gain: float = 1.0) -> Tensor:
    """Fill a conv weight (out, in, 1...) so that its matrix has orthonormal rows or columns."""
    with torch.no_grad():
        flat = torch.empty(weight.shape[0], weight[0].numel(), dtype=torch.float32, device=weight.device)
        nn.init.orthogonal_(flat, gain=gain)
        weight.copy_(flat.view_as(weight))
    return weight
