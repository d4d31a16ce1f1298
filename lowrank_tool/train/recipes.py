"""Recipes: a YAML file that names a model, how to convert it, and how to train it.

```yaml
model: resnet20            # a name from `lowrank models`
num_classes: 10
convert: {rank: 0.5}       # any keyword of lowrank_tool.convert (rank, format, target_macs, exclude...)
output: runs/resnet20-elrt # the artifact directory
data: cifar10:~/data       # every other key is a TrainConfig field
epochs: 200
lr: 0.1
```

Loading validates every key (a typo is an error that suggests the right key). Options given on the
command line override the recipe's values.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..convert.options import ConvertOptions
from ..errors import LowRankError, first_line
from ..model_names import refuse_unknown
from .config import TrainConfig

__all__ = ["Recipe", "load_recipe", "CONVERT_KEYS"]

CONVERT_KEYS = (
    "rank",
    "format",
    "target_params",
    "target_macs",
    "round_to",
    "exclude",
    "layer_rank",
    "input_size",
    "init",
    "allow_growth",
)
_TOP_KEYS = ("model", "num_classes", "convert", "output", "dense")


@dataclass
class Recipe:
    model: str
    num_classes: int | None = None
    convert: dict[str, Any] = field(default_factory=dict)
    output: str | None = None
    #: Train the dense model (no conversion): the baseline of a comparison.
    dense: bool = False
    train: dict[str, Any] = field(default_factory=dict)
    source: str = "recipe"

    def config(self, overrides: dict[str, Any] | None = None) -> TrainConfig:
        merged = {**self.train, **{k: v for k, v in (overrides or {}).items() if v is not None}}
        return TrainConfig.from_dict(merged, source=self.source)


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file."""

    path = Path(path)
    if not path.is_file():
        raise LowRankError(f"recipe {path} does not exist; see recipes/ for examples")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise LowRankError(f"recipe {path} is not valid YAML ({first_line(exc, with_type=False)})") from None
    except UnicodeDecodeError:
        raise LowRankError(f"recipe {path} is not UTF-8 text; save it as UTF-8 YAML") from None
    except RecursionError:
        raise LowRankError(f"recipe {path} is nested too deeply to be a recipe; see recipes/ for examples") from None
    if not isinstance(data, dict) or "model" not in data:
        raise LowRankError(f"recipe {path} must be a mapping with at least a 'model' key (e.g. model: resnet20)")
    known = list(_TOP_KEYS) + TrainConfig.keys()
    for key in data:
        if not isinstance(key, str):
            raise LowRankError(f"recipe {path}: key {repr(key)[:80]} is not a name; allowed: {', '.join(known)}")
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise LowRankError(f"recipe {path}: unknown key {key!r}{hint}; allowed: {', '.join(known)}")
    convert = data.get("convert") or {}
    if not isinstance(convert, dict):
        raise LowRankError(
            f"recipe {path}: convert must be a mapping of conversion options (e.g. convert: {{rank: 0.3}}), got {repr(convert)[:80]}"
        )
    if data.get("output") is not None and not isinstance(data["output"], str):
        raise LowRankError(f"recipe {path}: output {repr(data['output'])[:80]} must be a directory path (a string)")
    if not isinstance(data.get("dense", False), bool):
        raise LowRankError(f"recipe {path}: dense {repr(data['dense'])[:80]} must be true or false")
    for key in convert:
        if key not in CONVERT_KEYS:
            raise LowRankError(f"recipe {path}: unknown convert key {key!r}; allowed: {', '.join(CONVERT_KEYS)}")
    recipe = Recipe(
        model=str(data["model"]),
        num_classes=data.get("num_classes"),
        convert=dict(convert),
        output=data.get("output"),
        dense=data.get("dense", False),
        train={k: v for k, v in data.items() if k in TrainConfig.keys()},
        source=f"recipe {path}",
    )
    recipe.config()  # validate the training keys now, not after the conversion
    try:  # and the conversion's values (what needs the model, such as layer patterns, is checked when it is built)
        refuse_unknown(recipe.model)
        ConvertOptions(**convert, num_classes=recipe.num_classes, dense=recipe.dense)
    except LowRankError as exc:
        raise LowRankError(f"recipe {path}: {exc}") from None
    return recipe
