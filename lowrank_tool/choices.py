"""The values each option accepts: one tuple per choice, read by the library's validation and the CLI alike.

This module imports nothing but ``typing`` (not even torch), so that ``lowrank --help`` and ``lowrank CMD --help`` can
list the choices at once. The modules that own a choice re-export it under the same name
(``lowrank_tool.export.PRECISIONS`` is ``PRECISIONS`` here).
"""

from __future__ import annotations

from typing import Literal

# -- convert -------------------------------------------------------------------------------------------
#: Low-rank formats: ``auto`` = SVD for 1×1 convs, Tucker-2 (ELRT) otherwise.
FORMAT_CHOICES = ("auto", "tucker2", "svd", "cp")
#: Ranks are rounded up to a multiple of 8 by default: ONNX Runtime's blocked (NCHWc) CPU convolutions and
#: GPU tensor cores want channel counts in multiples of 8. Measured on ResNet-50 at rank 0.3, 2 CPU
#: threads, batch 1: 2.59x faster than dense with rounding to 8 against 2.10x without (docs/performance.md);
#: ``round_to=1`` gives the exact ``⌈ρ·C⌉`` ranks.
DEFAULT_ROUND_TO = 8
#: ``rank``: ranks as requested; ``latency``: each layer's form chosen by measuring it.
POLICIES = ("rank", "latency")
#: The precisions the latency policy times layer forms in (int8: as ``lowrank export --int8`` writes them).
LATENCY_PRECISIONS = ("fp32", "int8")
#: How converted layers start: fresh factors (ELRT) or fitted to the model's weights.
INITS = ("random", "decompose")
#: ... and, inside the toolkit, ``none``: uninitialised memory, for loading saved weights right after.
Init = Literal["random", "decompose", "none"]

# -- models --------------------------------------------------------------------------------------------
#: Where model names come from (``lowrank models --source``).
SOURCES = ("torchvision", "lowrank_tool", "timm")
#: torchvision's model tasks (``lowrank models --task``).
TASK_NAMES = ("classification", "quantization", "segmentation", "detection", "video", "optical_flow")

# -- train ---------------------------------------------------------------------------------------------
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step", "onecycle", "constant")
AMP_MODES = ("auto", "off", "fp16", "bf16")
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")
#: ELRT's orthogonality regularisers.
ORTH_KINDS = ("so", "dso", "srip", "none")
#: Chosen by measurement on the digits dataset (benchmarks/orth_weight_sweep.py; docs/training.md).
DEFAULT_ORTH_WEIGHT = 0.1
#: How LRPET/DeepTwist lower a kernel to a matrix before truncating it.
LOWERINGS = ("out", "spatial", "tiled")
DEEPTWIST_LOWERINGS = ("format", *LOWERINGS)

# -- export and run ------------------------------------------------------------------------------------
#: Devices for training, ONNX Runtime verification and benchmarks: ``auto`` takes CUDA when present.
DEVICES = ("auto", "cpu", "cuda")
#: Devices of the ONNX runtimes: also ``tensorrt`` (ONNX Runtime's TensorRT provider, CUDA behind it).
RUNTIME_DEVICES = (*DEVICES, "tensorrt")
EXPORTERS = ("auto", "torchscript", "dynamo")
PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_OPSET = 17
#: Opsets the export accepts: from the first with every op torchvision's models need, to the newest the
#: TorchScript exporter writes (the dynamo exporter writes at least 18 whatever is asked).
MIN_OPSET, MAX_OPSET = 13, 20
#: Merging factor chains back into dense convs at export: none, all, or per layer by measurement.
MERGE_MODES = ("none", "all", "auto")
#: Default verification tolerance (max relative error) per precision.
TOLERANCES = {"fp32": 1e-4, "fp16": 1e-2, "int8": 0.1}
#: Runtimes that run the exported ONNX file (``lowrank_tool.runtime.engines``); OpenVINO is an optional extra.
RUNTIME_ENGINES = ("onnxruntime", "openvino")
#: What ``lowrank bench`` times: the ONNX runtimes and PyTorch eager.
ENGINES = (*RUNTIME_ENGINES, "torch")
#: The default engines of ``lowrank bench``.
DEFAULT_BENCH_ENGINES = ("onnxruntime", "torch")
