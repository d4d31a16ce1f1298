"""Datasets by spec, ``NAME[:PATH]``, with each dataset's standard augmentation.

* ``digits`` — real handwritten digits shipped with scikit-learn (1,797 grey 8×8 images, 10 classes):
  the embedded default, nothing to download. Upscaled (bilinear) to ``image_size`` (default 32) and split
  80/20, stratified, with a fixed seed. Kept in memory.
* ``synthetic`` — generated and learnable: each class is a fixed random template plus noise.
* ``cifar10``, ``cifar100``, ``mnist``, ``fashion-mnist``, ``svhn`` — torchvision datasets read from PATH
  (``--download`` lets torchvision fetch them there).
* ``imagefolder`` — ``PATH/train/<class>/*`` and ``PATH/val/<class>/*`` (ImageNet layout).

Grey images (digits, MNIST, Fashion-MNIST) are fed to 3-channel models by repeating the grey channel
three times, so every network of the zoo and of torchvision takes them unchanged. For small inputs with
a torchvision ResNet, see :func:`lowrank_tool.zoo.cifar_stem_`.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ..errors import LowRankError

__all__ = ["DataSpec", "DataInfo", "DATASETS", "build_datasets", "build_loaders"]

DATASETS = ("digits", "synthetic", "cifar10", "cifar100", "mnist", "fashion-mnist", "svhn", "imagefolder")
_FOLDER = {"cifar10", "cifar100", "mnist", "fashion-mnist", "svhn", "imagefolder"}
_NATIVE = {"digits": 32, "synthetic": 32, "cifar10": 32, "cifar100": 32, "svhn": 32, "mnist": 28, "fashion-mnist": 28, "imagefolder": 224}
_CIFAR_MEAN, _CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DataSpec:
    """A dataset name and, for folder datasets, where it lives."""

    name: str
    path: str | None = None

    @classmethod
    def parse(cls, text: "DataSpec | str") -> "DataSpec":
        """``"cifar10:~/data"`` → ``DataSpec("cifar10", "/home/me/data")``."""
        if isinstance(text, DataSpec):
            return text
        name, _, path = str(text).partition(":")
        name = name.strip().lower()
        if name not in DATASETS:
            close = difflib.get_close_matches(name, DATASETS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise LowRankError(f"unknown dataset {name!r}{hint}; expected one of {', '.join(DATASETS)}, written NAME[:PATH]")
        if name in _FOLDER and not path:
            raise LowRankError(f"dataset {name!r} is read from a folder; write {name}:PATH (e.g. {name}:~/data)")
        return cls(name, os.path.expanduser(path) if path else None)


@dataclass
class DataInfo:
    name: str
    num_classes: int
    in_channels: int
    image_size: int
    train_size: int
    val_size: int
    grey: bool


def _digits(image_size: int, seed: int, augment: bool) -> tuple[Dataset, Dataset, int]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32)[:, None] / 16.0  # (N, 1, 8, 8) in [0, 1]
    y = torch.tensor(bunch.target, dtype=torch.long)
    x = torch.nn.functional.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = ((x - 0.5) / 0.5).repeat(1, 3, 1, 1)  # grey → 3 channels
    g = torch.Generator().manual_seed(seed)
    train_idx, val_idx = [], []
    for c in range(10):  # stratified 80/20 split
        idx = (y == c).nonzero().squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=g)]
        cut = int(round(0.8 * len(idx)))
        train_idx.append(idx[:cut])
        val_idx.append(idx[cut:])
    tr, va = torch.cat(train_idx), torch.cat(val_idx)
    train: Dataset = _Shift(x[tr], y[tr], max_shift=max(1, image_size // 16)) if augment else TensorDataset(x[tr], y[tr])
    return train, TensorDataset(x[va], y[va]), 10


def _synthetic(image_size: int, seed: int, n_train: int = 1024, n_val: int = 256, classes: int = 10) -> tuple[Dataset, Dataset, int]:
    g = torch.Generator().manual_seed(seed)
    templates = torch.randn(classes, 3, image_size, image_size, generator=g)
    def make(n: int) -> TensorDataset:
        y = torch.arange(n) % classes
        y = y[torch.randperm(n, generator=g)]
        return TensorDataset(templates[y] + 1.5 * torch.randn(n, 3, image_size, image_size, generator=g), y)
    return make(n_train), make(n_val), classes


class _Shift(Dataset):
    """In-memory images with random translation (digits: no flips — a flipped 2 is not a 2)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, max_shift: int) -> None:
        self.x, self.y, self.max_shift = x, y, max_shift

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.max_shift
        dx, dy = torch.randint(-s, s + 1, (2,)).tolist()
        img = torch.roll(self.x[i], shifts=(dy, dx), dims=(1, 2))
        return img, self.y[i]


def _torchvision(spec: DataSpec, image_size: int, download: bool, augment: bool) -> tuple[Dataset, Dataset, int, bool]:
    import torchvision.datasets as D
    import torchvision.transforms as T

    root = spec.path or "."
    if not download and not Path(root).exists():
        raise LowRankError(f"data folder {root} does not exist; point {spec.name}:PATH at the dataset or add --download")
    grey = spec.name in ("mnist", "fashion-mnist")
    if spec.name == "imagefolder":
        norm = T.Normalize(_IMAGENET_MEAN, _IMAGENET_STD)
        train_t = T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.ToTensor(), norm]) if augment else \
            T.Compose([T.Resize(int(image_size * 256 / 224)), T.CenterCrop(image_size), T.ToTensor(), norm])
        val_t = T.Compose([T.Resize(int(image_size * 256 / 224)), T.CenterCrop(image_size), T.ToTensor(), norm])
        for split in ("train", "val"):
            if not (Path(root) / split).is_dir():
                raise LowRankError(f"imagefolder expects {Path(root) / split}/<class>/<images>; create train/ and val/ class folders")
        train, val = D.ImageFolder(str(Path(root) / "train"), train_t), D.ImageFolder(str(Path(root) / "val"), val_t)
        if train.classes != val.classes:
            raise LowRankError(f"{root}/train and {root}/val have different class folders; they must match")
        return train, val, len(train.classes), False
    mean, std = ((0.5,), (0.5,)) if grey else (_CIFAR_MEAN, _CIFAR_STD)
    native = 28 if grey else 32
    resize = [T.Resize(image_size)] if image_size != native else []
    base = resize + [T.ToTensor(), T.Normalize(mean, std)] + ([T.Lambda(_to_rgb)] if grey else [])
    aug: list[Any] = [T.RandomCrop(native, padding=2 if grey else 4)]
    if spec.name in ("cifar10", "cifar100", "fashion-mnist"):
        aug.append(T.RandomHorizontalFlip())  # not for digits (SVHN, MNIST)
    train_t = T.Compose((aug if augment else []) + base)
    val_t = T.Compose(base)
    try:
        if spec.name in ("cifar10", "cifar100"):
            cls = D.CIFAR10 if spec.name == "cifar10" else D.CIFAR100
            train, val = cls(root, train=True, transform=train_t, download=download), cls(root, train=False, transform=val_t, download=download)
            classes = 10 if spec.name == "cifar10" else 100
        elif spec.name == "svhn":
            train, val = D.SVHN(root, split="train", transform=train_t, download=download), D.SVHN(root, split="test", transform=val_t, download=download)
            classes = 10
        else:
            cls = D.MNIST if spec.name == "mnist" else D.FashionMNIST
            train, val = cls(root, train=True, transform=train_t, download=download), cls(root, train=False, transform=val_t, download=download)
            classes = 10
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0][:160]
        raise LowRankError(f"cannot read {spec.name} from {root} ({first}); add --download or point PATH at the folder torchvision expects") from None
    return train, val, classes, grey


def _to_rgb(x: torch.Tensor) -> torch.Tensor:
    return x.expand(3, -1, -1) if x.shape[0] == 1 else x


def build_datasets(spec: DataSpec | str, *, image_size: int | None = None, download: bool = False, seed: int = 0,
                   augment: bool = True) -> tuple[Dataset, Dataset, DataInfo]:
    """Train and validation datasets for a spec, and what a model needs to know about them."""
    spec = DataSpec.parse(spec)
    size = image_size or _NATIVE[spec.name]
    grey = False
    if spec.name == "digits":
        train, val, classes = _digits(size, seed, augment)
        grey = True
    elif spec.name == "synthetic":
        train, val, classes = _synthetic(size, seed)
    else:
        train, val, classes, grey = _torchvision(spec, size, download, augment)
    return train, val, DataInfo(spec.name, classes, 3, size, len(train), len(val), grey)


def build_loaders(spec: DataSpec | str, *, batch_size: int = 128, workers: int | None = None, image_size: int | None = None,
                  download: bool = False, seed: int = 0, distributed: bool = False, augment: bool = True,
                  val_batch_size: int | None = None) -> tuple[DataLoader, DataLoader, DataInfo]:
    """Data loaders with sensible defaults (workers for folder datasets, pinned memory on CUDA, DDP sampler).

    Example:
        >>> train, val, info = build_loaders("digits", batch_size=64)
        >>> info.num_classes, info.in_channels
        (10, 3)
    """
    spec = DataSpec.parse(spec)
    train, val, info = build_datasets(spec, image_size=image_size, download=download, seed=seed, augment=augment)
    if workers is None:
        workers = 0 if spec.name in ("digits", "synthetic") else min(4, os.cpu_count() or 1)
    common: dict[str, Any] = {"num_workers": workers, "pin_memory": torch.cuda.is_available(), "persistent_workers": workers > 0}
    train_sampler = val_sampler = None
    if distributed:
        from torch.utils.data.distributed import DistributedSampler

        train_sampler = DistributedSampler(train, shuffle=True, seed=seed)
        val_sampler = DistributedSampler(val, shuffle=False)
    generator = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(train, batch_size=batch_size, shuffle=train_sampler is None, sampler=train_sampler,
                              generator=generator if train_sampler is None else None, drop_last=False, **common)
    val_loader = DataLoader(val, batch_size=val_batch_size or batch_size, shuffle=False, sampler=val_sampler, **common)
    return train_loader, val_loader, info
