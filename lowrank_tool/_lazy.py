"""Lazy re-exports for a package ``__init__`` (PEP 562): a name's module is imported on first use."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, namespace: dict[str, Any], exports: dict[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``, whose public ``name`` lives in ``exports[name]``
    (a module path relative to the package). A loaded name is cached in ``namespace`` (the package's globals).

    Example:
        >>> __getattr__, __dir__ = lazy_exports(__name__, globals(), {"convert": ".convert.api"})  # doctest: +SKIP
    """

    def getattr_(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name], package), name)
        namespace[name] = value
        return value

    def dir_() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return getattr_, dir_
