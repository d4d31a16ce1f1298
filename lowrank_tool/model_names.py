"""The model names the toolkit knows, remembered on disk: a mistyped name is refused before torch is imported.

torchvision's names are known only once torchvision (and so torch) is imported, 4–9 s on a 2-core machine.
The first time the full list is built (:mod:`lowrank_tool.models`), it is written to
``~/.cache/lowrank_tool/model-names-<key>.json`` (``LOWRANK_CACHE_DIR`` overrides the directory); the key
covers the toolkit's and torchvision's versions and the source files that define the toolkit's own models, so
an upgrade or an edit starts a new list. The CLI then checks a typed name against that list first
(:func:`refuse_unknown`). The list only ever refuses: a name it lacks is refused with the message the full
lookup gives; a name it holds, or any name when there is no list (or an unreadable one), goes on to the full
lookup. timm names and ``package.module:factory`` specs are never checked here.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from ._version import __version__
from .artifact import atomic_write_text
from .errors import LowRankError

__all__ = [
    "TIMM_PREFIX",
    "TYPED_FACTORIES",
    "cache_dir",
    "is_factory",
    "names_file",
    "refuse_unknown",
    "remember",
    "unknown_model",
]

TIMM_PREFIX = "timm/"
#: The ``package.module:factory`` specs typed on this process's command line (the CLI records them): only
#: their modules are also looked for in the working directory, as ``python -m lowrank_tool`` finds them.
TYPED_FACTORIES: set[str] = set()
#: The modules whose edits change the toolkit's own model names (part of the list's key).
_DEFINING = ("models.py", "zoo")


def cache_dir() -> Path:
    """Where the toolkit keeps what it measured or listed on this machine (``LOWRANK_CACHE_DIR`` overrides)."""
    return Path(os.environ.get("LOWRANK_CACHE_DIR") or Path.home() / ".cache" / "lowrank_tool")


def is_factory(name: str) -> bool:
    """Whether a model name is a ``package.module:factory`` spec (code), not a registered name."""
    return ":" in name and not name.startswith(TIMM_PREFIX)


def _key() -> str:
    try:
        torchvision = version("torchvision")
    except PackageNotFoundError:
        torchvision = "none"
    root = Path(__file__).parent
    stamps = []
    for entry in _DEFINING:
        path = root / entry
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            try:
                st = file.stat()
            except OSError:
                continue
            stamps.append(f"{file.relative_to(root)}:{st.st_mtime_ns}:{st.st_size}")
    text = "|".join([__version__, torchvision, *stamps])
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def names_file() -> Path:
    """This installation's list of model names."""
    return cache_dir() / f"model-names-{_key()}.json"


def remember(names: Iterable[str]) -> None:
    """Write the full list of names (quietly does nothing where the cache cannot be written)."""
    listed = sorted(set(names))
    path = names_file()
    if _remembered(path) == listed:
        return  # every command looks the names up once: write only what changed
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(listed))
    except (OSError, LowRankError):
        pass  # read-only home, a full disk, a cache path that is a file: the list is only a shortcut


def _remembered(path: Path) -> list[str] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # unreadable, not UTF-8 / JSON, or nested past Python's limit
        return None
    if not isinstance(data, list) or not data or not all(isinstance(n, str) for n in data):
        return None  # not a list this module wrote: ignore it
    return data


def unknown_model(name: str, known: Iterable[str]) -> LowRankError:
    """The error for a model name that is not in ``known``, with the closest names."""
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return LowRankError(f"unknown model {name!r}; {hint}run `lowrank models` for the list")


def refuse_unknown(name: str) -> None:
    """Refuse ``name`` at once if the remembered list exists and lacks it; otherwise leave it to the full lookup."""
    if not name or name.startswith(TIMM_PREFIX) or is_factory(name):
        return
    known = _remembered(names_file())
    if known is not None and name not in known:
        raise unknown_model(name, known)
