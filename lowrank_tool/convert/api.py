"""The conversion entry points: ``plan`` (decide), ``convert`` (decide and swap), ``summary`` (read back)."""

from __future__ import annotations

import contextlib
import copy
import math
import os
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..conversion_plan import PLAN_ATTR, ConversionPlan, attach_plan, plan_of
from ..errors import LowRankError, LowRankWarning, first_line
from ..layers.memory_format import apply_memory_format, layout_name, memory_format_name, resolve_memory_format
from ..models import (
    DOWNLOAD_KWARGS,
    build_model,
    default_input_size,
    example_input as make_example,
    get_entry,
    parse_input_size,
)
from .apply import build_layers, replace_in_containers, set_submodule
from .latency import apply_latency_policy
from .options import ConvertOptions
from .planner import build_plan
from .sharing import module_names
from .support import qualified_name
from .trace import ForwardFailure, capture, check_forward, train_forward
from .weights import load_weights

__all__ = ["plan", "convert", "summary", "parse_input_size", "PLAN_ATTR"]

_HF_NOTE = (
    "Hugging Face model: save_pretrained/from_pretrained do not know low-rank layers (from_pretrained rebuilds dense convs); "
    "use lowrank_tool.save(model, DIR) and lowrank_tool.load(DIR, model=<fresh dense model>)"
)


def _resolve(
    model: nn.Module | str, num_classes: int | None, model_kwargs: Mapping[str, Any] | None
) -> tuple[nn.Module, dict[str, Any], str, str]:
    """(module, base-model spec, task, name hint for messages)."""
    if model_kwargs is not None and not isinstance(model_kwargs, Mapping):
        raise LowRankError(
            f"model_kwargs must be a mapping of argument names to values, got {type(model_kwargs).__name__}"
        )
    kwargs = dict(model_kwargs or {})
    if isinstance(model, str):
        entry = get_entry(model)
        # Weights fetched at build time are the user's doing; a file never asks for a download again
        # (the artifact carries the weights), so those arguments are kept apart from the kwargs.
        fetched = {
            k: kwargs[k] for k in DOWNLOAD_KWARGS if k in kwargs and kwargs[k] is not None and kwargs[k] is not False
        }
        # before building: a value plan.json cannot hold is refused first
        recorded = _jsonable({k: v for k, v in kwargs.items() if k not in fetched})
        if num_classes is not None and kwargs.get("num_classes", num_classes) != num_classes:
            raise LowRankError(
                f"num_classes={num_classes} and the model argument num_classes={kwargs['num_classes']!r} disagree; give it once"
            )
        num_classes = kwargs.pop("num_classes", num_classes)
        module = build_model(model, num_classes=num_classes, **kwargs)
        if num_classes is not None:
            recorded["num_classes"] = num_classes
        spec: dict[str, Any] = {"source": entry.source, "name": model, "task": entry.task, "kwargs": recorded}
        if fetched:  # for the record only; never read back
            built_with = {}
            for key, value in fetched.items():
                try:
                    built_with.update(_jsonable({key: value}))
                except LowRankError:  # e.g. a torchvision Weights enum
                    built_with[key] = str(value)
            spec["built_with"] = built_with
        return module, spec, entry.task, model
    if not isinstance(model, nn.Module):
        raise LowRankError(f"model must be a model name or a torch.nn.Module, got {type(model).__name__}")
    if num_classes is not None:
        raise LowRankError("num_classes applies to a model given by name; build your module with the classes you want")
    if kwargs:
        raise LowRankError("model_kwargs apply to a model given by name; build your module with the arguments you want")
    cls = type(model)
    task = _task_of_class(cls)
    spec = {
        "source": "custom",
        "name": None,
        "task": task,
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "kwargs": {},
    }
    return model, spec, task, "MODEL"


def _size_of_module(module: nn.Module) -> tuple[int, ...]:
    """A custom module's input size: timm models say theirs (``pretrained_cfg``); else 3x224x224."""
    cfg = getattr(module, "pretrained_cfg", None)
    size = cfg.get("input_size") if isinstance(cfg, dict) else None
    if isinstance(size, (tuple, list)) and len(size) == 3 and all(isinstance(d, int) and d > 0 for d in size):
        return tuple(size)
    return (3, 224, 224)


def _task_of_class(cls: type) -> str:
    """A torchvision model instance keeps its input convention (a list of images for detection...)."""
    module = cls.__module__
    for task in ("detection", "segmentation", "video", "optical_flow"):
        if module.startswith(f"torchvision.models.{task}"):
            return task
    return "classification"


def _jsonable(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Model arguments as plan.json records them: plain JSON values (tuples become lists), the values
    :func:`lowrank_tool.models.build_from_spec` accepts back from a file."""

    def plain(value: Any) -> Any:
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        raise TypeError

    out = {}
    for key, value in kwargs.items():
        try:
            out[str(key)] = plain(value)
        except TypeError:
            raise LowRankError(
                f"model argument {key}={value!r} cannot be recorded in plan.json; pass plain values (numbers, strings, lists of them)"
            ) from None
    return out


def _plan(model: nn.Module | str, opts: ConvertOptions, example_input: Any = None) -> _Planned:
    module, spec, task, hint = _resolve(model, opts.num_classes, opts.model_kwargs)
    weights = opts.weights
    if weights is not None:
        if module is model:  # never change the caller's module
            module = copy.deepcopy(module)
        load_weights(module, weights)
        spec["weights"] = str(weights)
    size = parse_input_size(opts.input_size)
    if size is None:
        size = default_input_size(spec["name"], spec["kwargs"]) if spec["name"] else _size_of_module(module)
    if task == "video" and len(size) != 4:
        raise LowRankError(
            f"video models take CxTxHxW input, got input size {'x'.join(map(str, size))}; write e.g. 3x16x112x112"
        )
    if task != "video" and len(size) != 3 and example_input is None:
        raise LowRankError(f"input size {'x'.join(map(str, size))} must be CxHxW for a {task} model, e.g. 3x224x224")
    ref = next((p for p in module.parameters() if p.is_floating_point()), None)
    device, dtype = (ref.device, ref.dtype) if ref is not None else (torch.device("cpu"), torch.float32)
    if example_input is None:
        if device.type != "meta":
            _check_fits(size)
        example = _to(make_example(task, size, batch=1), device, dtype)
        train_example = _to(make_example(task, size, batch=2), device, dtype)
    else:
        example, train_example = example_input, None
    try:
        cap = capture(module, example, train_example=train_example)
    except LowRankError:
        raise
    except Exception as exc:
        msg = first_line(exc, with_type=False)
        raise LowRankError(
            f"the model does not run on input size {'x'.join(map(str, size))} ({msg}); pass the size it expects with --input-size"
        ) from None
    plan = build_plan(
        module, cap, opts, base_model=spec, input_size=size, model_hint=hint, image_shape=_image_shape(example)
    )
    if device.type == "meta":
        plan.notes.append(
            "the model is on the meta device: its low-rank layers are too; materialise with model.to_empty(device=...) "
            "and call reset_parameters() on each layer (init='random' draws)"
        )
    if _is_hugging_face(module):
        plan.notes.append(_HF_NOTE)
    if opts.policy == "latency":
        if task not in ("classification", "segmentation"):
            raise LowRankError(
                f"policy 'latency' measures models with one image input; this is a {task} model, use the rank policy"
            )
        apply_latency_policy(module, plan, opts)
    return _Planned(module, plan, example, cap.meta or device.type == "meta", train_example)


def _check_fits(size: tuple[int, ...]) -> None:
    """Refuse an input size whose trace cannot fit in memory, before allocating it (one line, not an OOM)."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: let the allocator decide
        return
    per_sample = math.prod(size) * 4  # float32
    # three samples are built (a batch of 1 and one of 2), and activations take many times the input
    if 3 * per_sample > memory // 4:
        raise LowRankError(
            f"input size {'x'.join(map(str, size))} is {per_sample / 2**30:.1f} GiB per image as float32, too large to trace "
            f"on this machine ({memory / 2**30:.0f} GiB of memory); pass the size the model is used at with --input-size"
        )


@dataclass
class _Planned:
    module: nn.Module  # the model the plan was made from (the user's, unless built by name or weights loaded)
    plan: ConversionPlan
    example: Any  # the input it was traced with
    meta: bool  # whether a forward on meta stand-ins is enough to run it
    train_example: Any = None  # a batch of 2 for a train-mode pass (None: the user gave example_input)


def _image_shape(example: Any) -> tuple[int, ...] | None:
    """One sample of the image input (C, H, W / C, T, H, W): the first tensor of a batch, list or tuple."""
    if isinstance(example, torch.Tensor):
        return tuple(example.shape[1:]) if example.dim() >= 4 else None
    if isinstance(example, list) and example and isinstance(example[0], torch.Tensor):  # detection: unbatched images
        return tuple(example[0].shape)
    if isinstance(example, tuple) and example:
        return _image_shape(example[0])
    return None


def _is_hugging_face(module: nn.Module) -> bool:
    return any(qualified_name(k) == "transformers.modeling_utils.PreTrainedModel" for k in type(module).__mro__)


def _forward_failure(model: nn.Module, planned: _Planned, *, real: bool = False) -> ForwardFailure | None:
    """Run the converted model once; where and why it fails, or None.

    On meta stand-ins when the plan was made on them and ``real`` is False; on real tensors otherwise, and
    when the stand-ins fail (they may fail where real tensors do not). ``real=True`` is for a check that
    depends on how the kernels lay out their results (channels-last), which meta tensors do not reproduce.
    """
    on_meta = planned.meta and not real
    failure = check_forward(model, planned.example, meta=on_meta)
    if failure is not None and on_meta and next(model.parameters(), torch.empty(0)).device.type != "meta":
        failure = check_forward(model, planned.example, meta=False)
    return failure


def _check_runs(model: nn.Module, planned: _Planned, hint: str) -> None:
    """Run the converted model once; a model it cannot run is an error naming the failing layer."""
    failure = _forward_failure(model, planned)
    if failure is None:
        return
    converted = [e.name for e in planned.plan.converted_layers]
    inside = [n for n in converted if failure.module == "" or n == failure.module or n.startswith(failure.module + ".")]
    where = failure.module or type(model).__name__
    if inside and len(inside) <= 3:
        fix = "keep " + ", ".join(inside) + " dense with --exclude (exclude=[...] in Python)"
    elif inside and failure.module:
        fix = f"keep the converted layers under {where} dense with --exclude 're:{where}\\..*'"
    else:
        fix = f"keep the layers it reads dense with --exclude (list them with `lowrank layers {hint}`)"
    raise LowRankError(f"the converted model fails at {where!r} ({failure.error}), which the dense model ran; {fix}")


def _to(x: Any, device: torch.device, dtype: torch.dtype) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device, dtype)
    if isinstance(x, (list, tuple)):
        return type(x)(_to(v, device, dtype) for v in x)
    return x


def plan(
    model: nn.Module | str,
    rank: float | int | str | None = None,
    *,
    options: ConvertOptions | None = None,
    example_input: Any = None,
    **kwargs: Any,
) -> ConversionPlan:
    """Decide what :func:`convert` would do, without changing anything. Same arguments as ``convert``.

    ``model_kwargs`` are the builder's keyword arguments for a model given by name (``--model-arg`` on
    the CLI), e.g. ``plan("timm/resnet50", model_kwargs={"num_classes": 10, "drop_rate": 0.1})``; they
    are recorded in ``plan.base_model["kwargs"]`` (plain values only). ``num_classes`` may be given
    there or as ``num_classes=`` (the same value in both is fine; different values are an error).

    Example:
        >>> p = plan("resnet18", rank=0.3)
        >>> round(p.totals()["params_ratio"], 2) < 1
        True
    """
    return _plan(model, _options(options, rank, kwargs), example_input).plan


def _options(options: ConvertOptions | None, rank: Any, kwargs: dict[str, Any]) -> ConvertOptions:
    if rank is not None:
        kwargs = {"rank": rank, **kwargs}
    return ConvertOptions.from_kwargs(options, **kwargs)


def convert(
    model: nn.Module | str,
    rank: float | int | str | None = None,
    *,
    options: ConvertOptions | None = None,
    example_input: Any = None,
    inplace: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Convert a model's convolutions into low-rank layers (ELRT: Tucker-2 at initialisation).

    Traces the model with torch.fx (forward hooks where fx cannot trace it), builds the conversion
    plan and swaps each planned ``Conv2d``/``Conv3d`` for its low-rank layer. The returned model keeps
    its class and carries the plan (:func:`summary` reads it back). Its 4-D weights are channels-last
    when it has low-rank layers (``memory_format="auto"``: the layout those train fastest in on the CPU;
    the plan records it and :func:`~lowrank_tool.load` restores it).

    Args:
        model: an ``nn.Module`` or a model name (``lowrank models`` lists them; built with random weights).
        rank: fraction of channels kept in each factorised mode, in (0, 1] (Tucker-2: r_in = ⌈rank·C_in⌉,
            r_out = ⌈rank·C_out⌉), an integer absolute rank, ``"energy:0.9"`` or ``"erank"``; see
            :class:`ConvertOptions` and docs/ranks.md. Default 0.3 when no budget is given.
        options: a :class:`ConvertOptions`; keyword arguments override its fields.
        example_input: a ready input for the forward pass (instead of ``input_size``), for custom models
            with unusual signatures.
        inplace: modify ``model`` itself (a conversion that fails puts it back as it was); by default a deep
            copy is converted and ``model`` is untouched.
        progress: called as ``progress(done, total, layer_name)`` after each layer is swapped.
        **kwargs: any :class:`ConvertOptions` field — ``format``, ``target_params``, ``target_macs``,
            ``round_to``, ``exclude``, ``layer_rank``, ``allow_growth``, ``dense``, ``policy``,
            ``target_speedup``, ``latency_threads``, ``latency_batch``, ``latency_engine``, ``latency_precision``,
            ``input_size``, ``num_classes``,
            ``model_kwargs``, ``weights``, ``init``, ``memory_format`` — each documented there (``option_help(name)``).

    Returns:
        The converted model.

    Example:
        >>> import torchvision, lowrank_tool as lr
        >>> model = lr.convert(torchvision.models.resnet18(), rank=0.3)
        >>> lr.summary(model).totals()["converted"]
        19
    """
    opts = _options(options, rank, kwargs)
    planned = _plan(model, opts, example_input)
    module, p = planned.module, planned.plan
    init = opts.init
    p.policy["init"] = init
    if _is_hugging_face(module):
        warnings.warn(_HF_NOTE, LowRankWarning, stacklevel=2)
    source = module
    # the dense convs being replaced: the converted model must never call one (see _stale_calls)
    replaced = {e.name: source.get_submodule(e.name) for e in p.converted_layers}
    built = build_layers(source, p, init=init, progress=progress)  # changes nothing yet
    if isinstance(model, nn.Module) and not inplace:
        # Copy everything but the convs about to be replaced (their weights would be cloned for nothing:
        # 2.5 GB on regnet_y_128gf); the copy's references to them are swapped below exactly as load swaps
        # them on a fresh model, so what convert accepts, load rebuilds. The user's model is untouched.
        memo: dict[int, Any] = {id(conv): conv for conv in replaced.values()}
        module = copy.deepcopy(source, memo)
        originals = {id(m) for m in source.modules()} - {id(conv) for conv in replaced.values()}
        if any(id(m) in originals for m in module.modules()):
            raise LowRankError(
                f"copy.deepcopy of the {type(source).__name__} shares modules with the original (its __deepcopy__?), "
                "so converting a copy would change your model; convert with inplace=True (on a copy you make)"
            )
    undo = _undo_record(module, p) if module is model else None  # inplace: a failure puts the model back
    undo_containers: list[Callable[[], None]] = []
    try:
        for names, layer in built:
            for name in names:
                set_submodule(module, name, layer)
        undo_containers = replace_in_containers(module, {id(replaced[n[0]]): layer for n, layer in built})
        device = next((t.device for t in module.parameters()), torch.device("cpu"))
        wanted = resolve_memory_format(opts.memory_format, module, device)
        if opts.memory_format == "auto" and wanted == torch.contiguous_format:
            layout = memory_format_name(module)  # nothing to gain: the model stays in the layout it came in
        else:
            layout = layout_name(wanted)
            apply_memory_format(module, wanted)
        if p.converted_layers:
            with _stale_calls(replaced):
                layout = _check_runs_in(
                    module, planned, layout, opts.memory_format, hint=model if isinstance(model, str) else "MODEL"
                )
                _train_pass(module, planned)
    except BaseException:
        for step in reversed(undo_containers):
            step()
        if undo is not None:
            undo()
        raise
    p.policy["memory_format"] = layout
    return attach_plan(module, p)


@contextlib.contextmanager
def _stale_calls(replaced: dict[str, nn.Module]) -> Iterator[None]:
    """Refuse a converted model that still calls a replaced dense conv: one it reaches through a reference
    that is neither a submodule nor in a plain list, tuple or dict attribute (a closure, a bound method, an
    object of its own), which would keep computing with the dense weights the plan says are gone."""
    called: list[str] = []

    def hook(name: str) -> Callable[..., None]:
        def record(module: nn.Module, args: Any) -> None:
            called.append(name)
            raise _StaleCall(name)

        return record

    handles = [conv.register_forward_pre_hook(hook(name)) for name, conv in replaced.items()]
    try:
        yield
    except LowRankError:
        if not called:
            raise
    finally:
        for handle in handles:
            handle.remove()
    if called:
        raise LowRankError(
            f"the converted model still calls the dense {called[0]!r} through a reference that is not a submodule "
            "(a closure, a bound method or an object of its own), so it would not compute with the low-rank layer; "
            "hold the conv as a submodule (an attribute, nn.ModuleList or nn.ModuleDict), or keep it dense with exclude=[...]"
        )


def _train_pass(model: nn.Module, planned: _Planned) -> None:
    """One forward in train mode, for the stale-call check of the paths only training takes (nothing changes;
    a failure here is not the conversion's to report: the eval-mode check ran the model)."""
    example = planned.train_example if planned.train_example is not None else planned.example
    try:
        train_forward(model, example)
    except Exception:
        pass


class _StaleCall(RuntimeError):
    """Raised inside the converted model's check run when it calls a replaced dense conv."""


def _undo_record(model: nn.Module, plan: ConversionPlan) -> Callable[[], None]:
    """What puts ``model`` back as it is now after an in-place conversion failed: the convs under every name
    the plan converts, and each parameter's and buffer's tensor (a layout change replaces them)."""
    names = module_names(model)
    convs = {
        name: conv
        for entry in plan.converted_layers
        for conv in [model.get_submodule(entry.name)]
        for name in names[id(conv)]
    }
    params = [(param, param.data) for param in model.parameters()]
    buffers = [(m, key, buf) for m in model.modules() for key, buf in m._buffers.items()]

    def undo() -> None:
        for name, conv in convs.items():
            set_submodule(model, name, conv)
        for param, data in params:
            param.data = data
        for m, key, buf in buffers:
            m._buffers[key] = buf

    return undo


def _check_runs_in(module: nn.Module, planned: _Planned, layout: str, asked: str, hint: str) -> str:
    """Check the converted model runs in ``layout``; the layout it runs in (``auto`` falls back to contiguous)."""
    if layout != "channels_last":
        _check_runs(module, planned, hint)
        return layout
    # a .view() that channels-last breaks passes on meta stand-ins: check on real tensors
    failure = _forward_failure(module, planned, real=True)
    if failure is None:
        return layout
    apply_memory_format(module, torch.contiguous_format)
    _check_runs(module, planned, hint)  # contiguous fails too: the conversion's own error
    reason = f"at {failure.module or type(module).__name__!r}: {failure.error}"
    if asked == "channels_last":
        raise LowRankError(
            f"the converted model runs in the default layout but not channels-last ({reason}); "
            "use --memory-format contiguous (memory_format='contiguous' in Python) or auto"
        )
    # auto: code in the model that needs the default layout (a .view() of a feature map)
    planned.plan.notes.append(f"kept PyTorch's default memory layout: the model does not run channels-last ({reason})")
    return "contiguous"


def summary(model: nn.Module) -> ConversionPlan:
    """The conversion plan a converted model carries.

    Example:
        >>> plan = summary(convert("resnet18", rank=0.5))
        >>> plan.totals()["compression"] > 1
        True
    """
    p = plan_of(model)
    if p is None:
        raise LowRankError(
            "this model carries no conversion plan; convert it with lowrank_tool.convert (or load it with lowrank_tool.load)"
        )
    return p
