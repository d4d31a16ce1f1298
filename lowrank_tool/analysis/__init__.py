"""Measurements of models: latency in ONNX Runtime and PyTorch, and the benchmark behind `lowrank bench`."""

from ..runtime import Latency, measure, time_onnx, time_torch

__all__ = ["Latency", "measure", "time_onnx", "time_torch"]
