"""Deprecated alias: the data sets moved to :mod:`lowrank_tool.data` (training and int8 calibration share them)."""

import warnings

from ..data import *  # noqa: F403
from ..data import __all__  # noqa: F401

warnings.warn(
    "lowrank_tool.train.data moved to lowrank_tool.data; import it from there", DeprecationWarning, stacklevel=2
)
