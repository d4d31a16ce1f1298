"""Model sources: the names a user can pass to ``lowrank convert``, and what a file may name.

Sources: torchvision's models, the toolkit's zoo and names registered in-process with
:func:`register_model`, timm's architectures as ``timm/NAME`` (when timm is installed), and — typed by
the user, never read from a file without consent — ``package.module:factory``.

``build_model`` builds a model by name with random weights (ELRT trains from scratch; users with
internet can still pass ``weights=...`` / ``pretrained=True``); :func:`build_from_spec` rebuilds the
base model that a plan or ONNX metadata names, which is *data*: only registered names, plain JSON
arguments, no download, and no import of code unless the caller trusts the file
(:func:`check_file_model` is that name check alone, for a recipe's ``model:``).
``example_input`` knows what each task's forward takes (an image batch, a list of images for detection,
a clip for video, two frames for optical flow); ``default_input_size`` follows the model family's
standard evaluation resolution.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import torch
import torchvision
from torch import nn

from .choices import SOURCES, TASK_NAMES
from .errors import LowRankError, first_line
from .input_size import parse_input_size
from .model_names import TIMM_PREFIX, TYPED_FACTORIES, is_factory, remember, unknown_model
from .zoo.cifar import CIFAR_MODELS

__all__ = [
    "ModelEntry",
    "register_model",
    "list_models",
    "get_entry",
    "build_model",
    "build_from_spec",
    "default_input_size",
    "example_input",
    "parse_input_size",
    "TASKS",
    "SOURCES",
    "TIMM_PREFIX",
    "DOWNLOAD_KWARGS",
    "check_file_kwargs",
    "check_file_model",
    "is_factory",
]

#: Where model names come from (``lowrank models --source``).
#: timm architectures are spelled ``timm/NAME``, the way the Hugging Face Hub names timm's models.
#: Builder arguments that fetch weights from the network: never taken from a file.
DOWNLOAD_KWARGS = (
    "weights",
    "weights_backbone",
    "pretrained",
    "pretrained_cfg",
    "pretrained_cfg_overlay",
    "checkpoint_path",
)

#: Task name → the torchvision module whose ``list_models`` enumerates it.
TASKS: dict[str, Any] = dict(
    zip(
        TASK_NAMES,
        (
            torchvision.models,
            torchvision.models.quantization,
            torchvision.models.segmentation,
            torchvision.models.detection,
            torchvision.models.video,
            torchvision.models.optical_flow,
        ),
        strict=True,
    )
)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    task: str
    source: str  # "torchvision", "lowrank_tool", "timm" or "import"
    builder: Callable[..., nn.Module] | None = None
    input_size: tuple[int, ...] | None = None


_EXTRA: dict[str, ModelEntry] = {}


def register_model(
    name: str,
    builder: Callable[..., nn.Module],
    task: str = "classification",
    input_size: tuple[int, ...] = (3, 32, 32),
) -> None:
    """Make ``name`` buildable by ``build_model`` / ``lowrank convert`` (a duplicate name raises)."""
    if name in _EXTRA or name in _torchvision_names():
        raise ValueError(f"model name {name!r} is already registered")
    _EXTRA[name] = ModelEntry(name, task, "lowrank_tool", builder, tuple(input_size))


_TV_CACHE: dict[str, str] = {}


def _torchvision_names() -> dict[str, str]:
    if not _TV_CACHE:
        for task, module in TASKS.items():
            for name in torchvision.models.list_models(module=module):
                _TV_CACHE.setdefault(name, task)
        remember([*_TV_CACHE, *CIFAR_MODELS])  # lets the CLI refuse a typo before importing torch next time
    return _TV_CACHE


def _timm() -> Any:
    try:
        import timm
    except ImportError:
        raise LowRankError("timm models need timm: pip install 'lowrank-tool[timm]'") from None
    return timm


def _timm_entry(name: str) -> ModelEntry:
    arch = name[len(TIMM_PREFIX) :]
    if ":" in arch:  # timm's hf-hub:/local-dir: names fetch or read a config: not a registered architecture
        raise LowRankError(
            f"{name!r}: timm's hf-hub:/local-dir: names are not a source here (they download or read files); "
            f"name the architecture as timm/NAME, e.g. timm/resnet50 (list them with `lowrank models --source timm`)"
        )
    try:
        import timm
    except ImportError:
        raise LowRankError(f"{name} needs timm: pip install 'lowrank-tool[timm]'") from None
    if not arch or not timm.is_model(arch.split(".")[0]):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(TIMM_PREFIX + c for c in close)}? " if close else ""
        raise LowRankError(f"unknown timm model {name!r}; {hint}run `lowrank models --source timm` for the list")

    def build(**kwargs: Any) -> nn.Module:
        return timm.create_model(arch, pretrained=bool(kwargs.pop("pretrained", False)), **kwargs)

    return ModelEntry(name, "classification", "timm", build)


def list_models(task: str | None = None, source: str | None = None) -> list[ModelEntry]:
    """Every model name ``lowrank convert`` accepts, optionally for one task and/or one source.

    timm's names (``timm/NAME``) are listed only when ``source="timm"`` is asked for (there are over a
    thousand, and timm is an optional extra).
    """
    if source is not None and source not in (*SOURCES, "all"):
        raise LowRankError(f"unknown source {source!r}; expected one of {', '.join(SOURCES)}, all")
    entries: list[ModelEntry] = []
    if source in (None, "all", "torchvision"):
        entries += [ModelEntry(n, t, "torchvision") for n, t in _torchvision_names().items()]
    if source in (None, "all", "lowrank_tool"):
        entries += list(_EXTRA.values())
    if source in ("timm", "all"):
        entries += [ModelEntry(TIMM_PREFIX + n, "classification", "timm") for n in _timm().list_models()]
    if task is not None:
        if task not in TASKS:
            raise LowRankError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
        entries = [e for e in entries if e.task == task]
    order = list(TASKS)
    return sorted(entries, key=lambda e: (order.index(e.task) if e.task in order else len(order), e.name))


def _import_factory(spec: str) -> ModelEntry:
    """``package.module:factory`` → an entry that calls ``factory(**kwargs)`` (the user's own code)."""
    module_name, _, attr = spec.partition(":")
    if not all(part.isidentifier() for part in module_name.split(".")) or not attr.isidentifier():
        raise LowRankError(
            f"{spec!r} is not 'package.module:factory'; write e.g. 'mypkg.nets:make_net' (a module path, a colon, a name)"
        )
    if module_name == "timm":
        raise LowRankError(
            f"{spec!r}: timm's models are spelled timm/NAME, e.g. timm/resnet50 (list them with `lowrank models --source timm`)"
        )
    module = _import_module(spec, module_name)
    try:
        factory = getattr(module, attr)
    except AttributeError:
        raise LowRankError(
            f"cannot import {spec!r} (module {module_name!r} has no attribute {attr!r}); write 'package.module:factory' "
            "with a name the module defines"
        ) from None
    if not callable(factory):
        raise LowRankError(f"{spec!r} is not callable; point to a class or function that returns an nn.Module")
    return ModelEntry(spec, "classification", "import", factory)


def _in_working_directory(module_name: str) -> bool:
    """Whether the top package of ``module_name`` is a package or module in the working directory that is
    not on the import path (the console script, unlike ``python -m``, does not put the directory there)."""
    top = module_name.split(".")[0]
    cwd = os.getcwd()
    on_path = {os.path.abspath(p or os.curdir) for p in sys.path if isinstance(p, str)}
    return cwd not in on_path and (
        os.path.isdir(os.path.join(cwd, top)) or os.path.isfile(os.path.join(cwd, f"{top}.py"))
    )


def _import_module(spec: str, module_name: str) -> Any:
    """Import the module of a factory spec; every failure is one line naming the spec and the exception.

    A module in the working directory is found for a spec the user typed on the command line
    (:data:`~lowrank_tool.model_names.TYPED_FACTORIES`), never for one read from a file.
    """
    here = _in_working_directory(module_name)
    typed = here and spec in TYPED_FACTORIES
    if typed:
        sys.path.append(os.getcwd())  # last: an installed package of the same name still wins
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        missing = getattr(exc, "name", None)
        if missing and not (module_name == missing or module_name.startswith(missing + ".")):
            raise LowRankError(  # the module was found; something it imports was not
                f"importing {module_name!r} for the model factory {spec!r} raised {first_line(exc)}; install the "
                "missing package or fix the module"
            ) from exc
        hint = (
            f"{module_name.split('.')[0]!r} is in the working directory, which is not on the import path here: run "
            "with PYTHONPATH=. (or `python -m lowrank_tool`), or add the directory to sys.path"
            if here and not typed
            else "write 'package.module:factory' with the package importable (on PYTHONPATH)"
        )
        raise LowRankError(f"cannot import {spec!r} ({first_line(exc)}); {hint}") from None
    except Exception as exc:  # the module's own code failed while it was imported
        raise LowRankError(
            f"importing {module_name!r} for the model factory {spec!r} raised {first_line(exc)}; fix the module"
        ) from exc
    finally:
        if typed:
            sys.path.remove(os.getcwd())


def get_entry(name: str) -> ModelEntry:
    """The entry of a model name (torchvision, zoo/registered, ``timm/NAME``, or ``package.module:factory``).

    A ``module:factory`` spec is imported here: only call this with names the user typed. Names read
    from a file go through :func:`build_from_spec`.
    """
    if not isinstance(name, str) or not name:
        raise LowRankError(f"model name {name!r} must be a non-empty string; run `lowrank models` for the list")
    if name.startswith(TIMM_PREFIX):
        return _timm_entry(name)
    if is_factory(name):
        return _import_factory(name)
    if name in _EXTRA:
        return _EXTRA[name]
    tv = _torchvision_names()
    if name in tv:
        return ModelEntry(name, tv[name], "torchvision")
    raise unknown_model(name, [*tv, *_EXTRA])


#: What builders raise for an argument they do not take or a value they reject.
_BAD_ARGUMENT = (TypeError, ValueError, KeyError, AssertionError)


def _fetch_failed(name: str, kwargs: dict[str, Any], exc: OSError) -> NoReturn:
    """A download the user asked for (``weights=``, ``pretrained=True``) failed: one line, not a traceback."""
    asked = {k: v for k, v in kwargs.items() if k in DOWNLOAD_KWARGS and v is not None and v is not False}
    if not asked:
        raise exc
    raise LowRankError(
        f"cannot fetch the weights for {name!r} ({', '.join(f'{k}={v!r}' for k, v in asked.items())}): {type(exc).__name__}: "
        f"{first_line(exc, with_type=False)}; check the internet connection, or drop {'/'.join(asked)} to start from random weights"
    ) from None


def build_model(name: str, num_classes: int | None = None, **kwargs: Any) -> nn.Module:
    """Build a model by name with random initial weights.

    ``name`` is trusted (typed by the user): a ``package.module:factory`` is imported. For a name read
    from a file use :func:`build_from_spec`.

    Args:
        name: a torchvision model name (``torchvision.models.list_models()``), a toolkit / registered model,
            ``timm/NAME`` (``timm.create_model(NAME, pretrained=False, **kwargs)``) or ``package.module:factory``.
        num_classes: output classes (``None`` keeps the architecture's default); may also come in ``kwargs``
            (the same value twice is fine, two different values are an error).
        **kwargs: forwarded to the builder (e.g. ``weights="DEFAULT"`` or, for timm, ``pretrained=True``
            where you have internet).

    Example:
        >>> model = build_model("resnet18", num_classes=10)
        >>> model = build_model("timm/resnet18", drop_rate=0.1)  # doctest: +SKIP
    """
    entry = get_entry(name)
    if num_classes is not None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise LowRankError(f"num_classes must be a positive integer, got {num_classes!r}")
        if kwargs.get("num_classes", num_classes) != num_classes:
            raise LowRankError(
                f"num_classes={num_classes} and the model argument num_classes={kwargs['num_classes']!r} disagree; give it once"
            )
        kwargs["num_classes"] = num_classes
    if entry.source == "torchvision":
        given = dict(kwargs)
        kwargs.setdefault("weights", None)
        if entry.task == "quantization":
            kwargs.setdefault("quantize", False)
        if entry.task in ("segmentation", "detection"):
            kwargs.setdefault("weights_backbone", None)
        try:
            return torchvision.models.get_model(name, **kwargs)
        except OSError as exc:
            _fetch_failed(name, given, exc)
        except _BAD_ARGUMENT as exc:
            raise LowRankError(
                f"cannot build {name!r} with arguments {given}: {first_line(exc, with_type=False)}"
            ) from None
    assert entry.builder is not None
    if entry.source == "import":
        model = _call_factory(name, entry.builder, kwargs)
    else:
        try:
            model = entry.builder(**kwargs)
        except OSError as exc:
            _fetch_failed(name, kwargs, exc)
        except _BAD_ARGUMENT as exc:  # a registered builder (zoo, timm) says "bad argument" in several ways
            raise LowRankError(
                f"cannot build {name!r} with arguments {kwargs}: {first_line(exc, with_type=False)}"
            ) from None
    if not isinstance(model, nn.Module):
        raise LowRankError(f"{name!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _call_factory(name: str, factory: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    """Call a user's ``module:factory``: an exception it raises is one line naming the factory and the exception
    (its traceback stays on the error's ``__cause__``)."""
    try:
        return factory(**kwargs)
    except Exception as exc:
        takes = _named_parameters(factory, var_keyword=True)
        unknown = [key for key in kwargs if not takes(key)]
        if isinstance(exc, TypeError) and unknown:
            raise LowRankError(
                f"cannot build {name!r} with arguments {kwargs}: it takes no argument {unknown[0]!r}; drop it, "
                "or give the factory that parameter"
            ) from None
        called = f"{name}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"
        raise LowRankError(f"the model factory {called} raised {first_line(exc)}; fix the factory") from exc


#: How to go on when a plan or ONNX metadata names a factory (the refusal names both ways).
LOAD_INSTEAD = (
    "pass the model (load(DIR, model=...)) or, if you trust this file, --trust-code (load(DIR, trust_code=True))"
)


def check_file_model(name: Any, *, where: str, trust_code: bool = False, instead: str = LOAD_INSTEAD) -> str:
    """The model name a file (plan.json, ONNX metadata, a recipe) gives, checked before anything is imported.

    A ``package.module:factory`` is refused unless ``trust_code`` (importing the module already runs
    its code); ``instead`` says how to go on. Returns the name.
    """
    if not isinstance(name, str) or not name:
        raise LowRankError(
            f"{where}: model name {name!r} must be a non-empty string; the file is corrupt, re-create it"
        )
    if is_factory(name) and not trust_code:
        raise LowRankError(
            f"{where} names the factory {name!r} (code); loading never imports code named by a file: {instead}"
        )
    return name


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    return isinstance(value, list) and all(_plain(v) for v in value)


def check_file_kwargs(kwargs: Any, where: str) -> dict[str, Any]:
    """Model arguments read from a file: plain JSON values, and nothing that downloads."""
    if not isinstance(kwargs, dict):
        raise LowRankError(
            f"{where}: model kwargs must be a JSON object of plain values, got {type(kwargs).__name__}; re-create the file"
        )
    for key, value in kwargs.items():
        if not _plain(value):
            raise LowRankError(
                f"{where}: model argument {key}={value!r} is not a plain JSON value (null, bool, number, string or a list of them)"
            )
        if key in DOWNLOAD_KWARGS and value is not None and value is not False:
            raise LowRankError(
                f"{where}: model argument {key}={value!r} would download weights; loading never downloads "
                f"(the weights come from model.safetensors / the ONNX file): remove {key!r} from the file"
            )
    return dict(kwargs)


def _named_parameters(fn: Callable[..., Any], var_keyword: bool) -> Callable[[str], bool]:
    """Whether ``fn`` takes a keyword by name (or, with ``var_keyword``, through ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # no signature to read: pass the argument as written
        return lambda key: True
    takes_any = var_keyword and any(p.kind is p.VAR_KEYWORD for p in params.values())
    return lambda key: takes_any or (key in params and params[key].kind is not params[key].VAR_KEYWORD)


def _without_noop_downloads(entry: ModelEntry, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``weights: null`` / ``pretrained: false`` from a file mean "no download": pass them only to a builder
    that names them (``weights=False`` as torchvision's ``None``), drop them elsewhere, so they never
    fail a build. Every registered build is already download-free (:func:`build_model`)."""
    noop = [k for k in DOWNLOAD_KWARGS if k in kwargs and (kwargs[k] is None or kwargs[k] is False)]
    if not noop:
        return kwargs
    if entry.source == "torchvision":  # its **kwargs go to the model class, which takes none of these
        takes = _named_parameters(torchvision.models.get_model_builder(entry.name), var_keyword=False)
    elif entry.source == "timm":  # create_model names pretrained, pretrained_cfg(_overlay) and checkpoint_path
        takes = _named_parameters(_timm().create_model, var_keyword=False)
    else:
        assert entry.builder is not None
        takes = _named_parameters(entry.builder, var_keyword=True)
    out = dict(kwargs)
    for key in noop:
        if not takes(key):
            del out[key]
        elif entry.source == "torchvision" and key in ("weights", "weights_backbone"):
            out[key] = None
    return out


def build_from_spec(spec: Any, *, where: str, trust_code: bool = False) -> nn.Module:
    """Rebuild the base model that a file (plan.json, ONNX metadata) names: the one resolver for files.

    A file is data: only registered names (torchvision, the zoo, :func:`register_model`, ``timm/NAME``)
    with plain JSON arguments are built, and nothing is downloaded (``weights``, ``pretrained``, ... are
    refused unless null/false). A ``package.module:factory`` is imported only with ``trust_code=True``
    (the CLI's ``--trust-code``); otherwise the one-line error says how to pass the model instead. Every
    failure is a :class:`~lowrank_tool.errors.LowRankError` naming ``where``.

    Args:
        spec: the ``base_model`` record: ``{"source", "name", "task", "kwargs"}``.
        where: the file, for messages.
        trust_code: allow importing a ``module:factory`` the file names.

    Example:
        >>> build_from_spec({"source": "torchvision", "name": "resnet18", "kwargs": {"num_classes": 10}}, where="plan.json")  # doctest: +SKIP
    """
    if not isinstance(spec, dict):
        raise LowRankError(f"{where}: base_model must be a JSON object; the file is corrupt, re-create it")
    name = spec.get("name")
    if spec.get("source") == "custom" or name is None:
        raise LowRankError(
            f"{where} describes a custom model ({spec.get('class', '?')}); pass a dense instance: load(DIR, model=MyNet())"
        )
    name = check_file_model(name, where=where, trust_code=trust_code)  # before importing anything
    kwargs = check_file_kwargs(spec.get("kwargs") or {}, where)
    try:
        entry = get_entry(name)
        kwargs = _without_noop_downloads(entry, kwargs)
        return build_model(name, **kwargs)
    except LowRankError as exc:
        raise LowRankError(f"{where}: {exc}") from None
    except Exception as exc:
        first = f"{type(exc).__name__}: {first_line(exc, with_type=False)}"
        raise LowRankError(
            f"{where}: cannot build {name!r} with arguments {kwargs} ({first}); fix or remove them, or re-create the file"
        ) from None


def default_input_size(name: str, kwargs: dict[str, Any] | None = None) -> tuple[int, ...]:
    """The family's standard input, per sample: (C, H, W), or (C, T, H, W) for video models."""
    entry = get_entry(name)
    kwargs = kwargs or {}
    if entry.input_size is not None:
        return entry.input_size
    if entry.source == "timm":
        size = kwargs.get("img_size")
        if isinstance(size, int):
            return (int(kwargs.get("in_chans", 3)), size, size)
        cfg = _timm().models.get_pretrained_cfg(name[len(TIMM_PREFIX) :].split(".")[0])
        shape = tuple(getattr(cfg, "input_size", None) or (3, 224, 224))
        return (int(kwargs.get("in_chans", shape[0])), *shape[1:])
    if entry.task == "detection":
        return (3, 800, 800)
    if entry.task == "optical_flow":
        return (3, 368, 496)
    if entry.task == "segmentation":
        return (3, 520, 520)
    if name.startswith("vit_"):  # fixed-size model; built without weights at image_size=224
        size = int(kwargs.get("image_size", 224))
        return (3, size, size)
    size = 224
    try:
        transforms = torchvision.models.get_model_weights(name).DEFAULT.transforms()
        crop = getattr(transforms, "crop_size", None)
        if crop:
            size = int(crop[0])
    except Exception:
        pass
    if entry.task == "video":
        return (3, 16, size, size)
    return (3, size, size)


def example_input(task: str, input_size: tuple[int, ...], batch: int = 1, seed: int = 0) -> Any:
    """A random input of the right structure for a task's forward."""
    gen = torch.Generator().manual_seed(seed)
    if task == "detection":
        return [torch.rand(input_size, generator=gen) for _ in range(batch)]
    if task == "optical_flow":
        return (torch.rand(batch, *input_size, generator=gen), torch.rand(batch, *input_size, generator=gen))
    return torch.randn(batch, *input_size, generator=gen)


for _name, _builder in CIFAR_MODELS.items():  # the toolkit's own networks, beside torchvision's names
    register_model(_name, _builder, task="classification", input_size=(3, 32, 32))
