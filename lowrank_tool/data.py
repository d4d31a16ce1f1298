"""Datasets by spec, ``NAME[:PATH]``, each with its standard training augmentation.

* ``digits``: scikit-learn's real handwritten digits (1,797 grey 8×8 images, 10 classes), shipped
  inside scikit-learn, so nothing is downloaded. This is the toolkit's embedded default. The images are
  upscaled (bilinear) to ``image_size`` (default 32) so that standard CNNs, including the CIFAR networks,
  take them. A stratified 80/20 split fixed by the seed gives 1,437 train and 360 val images. Pixels are
  scaled from [0, 16] to [0, 1] and normalised with the training split's mean and std. Everything stays
  in memory: an epoch costs milliseconds of data work.
* ``synthetic``: generated and learnable. Each class has a fixed random template (smooth blobs), and
  a sample is its class's template plus Gaussian noise. The same seed gives the same data. For another
  size or class count, use :class:`SyntheticDataset` directly.
* ``cifar10``, ``cifar100``, ``mnist``, ``fashion-mnist``, ``svhn``: torchvision datasets read from
  the folder PATH, in torchvision's on-disk layout. ``download=True`` (``--download``) lets
  torchvision fetch them into PATH. MNIST and Fashion-MNIST are also read from the four idx files
  (raw or ``.gz``) right in PATH, as the original sites and Debian's ``dataset-fashion-mnist``
  (``fashion-mnist:/usr/share/datasets/fashion-mnist``) ship them.
* ``imagefolder``: ``PATH/train/<class>/<image>`` and ``PATH/val/<class>/<image>`` (ImageNet layout).

**Grey images** (digits, MNIST, Fashion-MNIST) are fed to 3-channel models by repeating the grey channel
three times. Every network of the zoo and of torchvision then takes them unchanged, and
:attr:`DataInfo.in_channels` is always 3 (:attr:`DataInfo.grey` tells the two cases apart).
For small images with a torchvision ResNet, see :func:`lowrank_tool.zoo.cifar_stem_`.

Augmentation (training split only; validation gets none):

======================  ======================================================================
CIFAR-10 / CIFAR-100    RandomCrop(32, padding=4) + horizontal flip, CIFAR mean/std
SVHN                    RandomCrop(32, padding=4), no flip (a mirrored digit is not a digit)
MNIST                   RandomCrop(28, padding=2)
Fashion-MNIST           RandomCrop(28, padding=2) + horizontal flip
digits                  small random affine (±10°, scale 0.9-1.1, shift ±1/16 of the size), no flip
imagefolder             RandomResizedCrop + flip; val: Resize(size·256/224) + CenterCrop, ImageNet mean/std
synthetic               none
======================  ======================================================================

With ``image_size`` other than the native size, the torchvision datasets are resized first and the
crop padding scales with the size.

In the loaders :func:`build_loaders` makes, a training sample's augmentation is a function of (``seed``,
epoch, sample index): each sample is transformed under torch's generator seeded from those three, and the
global generator is left as it was. So the augmented data do not depend on the number of DataLoader
workers, on what else drew random numbers, or on where an epoch started: a run resumed in the middle of an
epoch sees exactly the batches an uninterrupted run sees, and the batches already done are skipped by the
sampler (:meth:`EpochSampler.skip_next`) without being loaded.

Example:
    >>> train_loader, val_loader, info = build_loaders("digits", batch_size=64)
    >>> info.num_classes, info.in_channels, info.image_size, info.grey
    (10, 3, 32, True)
"""

from __future__ import annotations

import difflib
import functools
import gzip
import itertools
import math
import os
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as tdist
import torch.nn.functional as F
import torchvision.datasets as D
import torchvision.transforms as T
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from .errors import LowRankError, first_line

__all__ = [
    "DATASETS",
    "RECORDS",
    "DatasetRecord",
    "DataSpec",
    "DataInfo",
    "SyntheticDataset",
    "EpochSampler",
    "sample_seed",
    "build_datasets",
    "build_loaders",
]

_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _torchvision(cls: Any) -> Callable[[str, bool, Any, bool], Dataset]:
    """A reader for torchvision datasets split by ``train=True/False``."""
    return lambda root, train, transform, download: cls(root, train=train, transform=transform, download=download)


def _flat_files(root: Path) -> bool:
    """MNIST's four idx files directly in ``root``, raw or gzipped (the original site's and Debian's layout)."""
    return all((root / f).exists() or (root / f"{f}.gz").exists() for f in _MNIST_FILES)


def _read_idx(path: Path, ndim: int) -> torch.Tensor:
    """An idx file of unsigned bytes (``path`` or ``path.gz``) as a uint8 tensor, its header checked."""
    source = path if path.exists() else path.with_name(path.name + ".gz")
    try:
        raw = gzip.decompress(source.read_bytes()) if source.suffix == ".gz" else source.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise LowRankError(f"{source} is not readable ({first_line(exc, with_type=False)}); fetch it again") from None
    if len(raw) < 4 + 4 * ndim or raw[:3] != b"\x00\x00\x08" or raw[3] != ndim:
        raise LowRankError(f"{source} is not an idx file of {ndim}-D unsigned bytes; fetch it again")
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    body = raw[4 + 4 * ndim :]
    if len(body) != math.prod(shape):
        raise LowRankError(
            f"{source} is cut or padded: its header says {'x'.join(map(str, shape))} values, it holds {len(body)}; "
            "fetch it again"
        )
    return torch.frombuffer(bytearray(body), dtype=torch.uint8).reshape(shape)


def _mnist_like(cls: Any) -> Callable[[str, bool, Any, bool], Dataset]:
    """torchvision's reader for MNIST-like data, which also takes the four idx files (or .gz) right in PATH."""

    class Flat(cls):
        def _check_exists(self) -> bool:
            return True

        def _load_data(self) -> tuple[torch.Tensor, torch.Tensor]:
            split = "train" if self.train else "t10k"
            root = Path(self.root)
            return _read_idx(root / f"{split}-images-idx3-ubyte", 3), _read_idx(root / f"{split}-labels-idx1-ubyte", 1)

    Flat.__name__ = Flat.__qualname__ = cls.__name__  # its repr and folders are the dataset's

    def read(root: str, train: bool, transform: Any, download: bool) -> Dataset:
        standard = all(os.path.exists(os.path.join(root, cls.__name__, "raw", f)) for f in _MNIST_FILES)
        if not download and not standard and _flat_files(Path(root)):
            return Flat(root, train=train, transform=transform)
        return cls(root, train=train, transform=transform, download=download)

    return read


def _svhn(root: str, train: bool, transform: Any, download: bool) -> Dataset:
    return D.SVHN(root, split="train" if train else "test", transform=transform, download=download)


def _image_folder(root: str, train: bool, transform: Any, download: bool) -> Dataset:
    return D.ImageFolder(os.path.join(root, "train" if train else "val"), transform, loader=_read_image)


def _read_image(path: str) -> Any:
    """torchvision's image loader, with a damaged file named in one line instead of PIL's traceback."""
    try:
        return D.folder.default_loader(path)
    except Exception as exc:
        raise LowRankError(
            f"{path} is not a readable image ({first_line(exc, with_type=False)}); remove or replace the file"
        ) from None


@dataclass(frozen=True)
class DatasetRecord:
    """Everything the toolkit knows about one dataset, in one place (a new dataset is one more record).

    Attributes:
        name: the name ``--data`` takes.
        native_size: side of its images (``image_size`` default).
        num_classes: number of classes; ``None`` when read from the folders (imagefolder).
        grey: single-channel images, repeated to 3 channels for the model.
        in_memory: built in (no PATH, no files).
        mean_std: per-channel mean and std of the training set (the values the literature uses).
        crop_padding: RandomCrop padding at the native size (0: no random crop).
        flip: random horizontal flips in training.
        layout: the files torchvision reads, relative to PATH (checked first, so a missing dataset names
            the exact file expected instead of torchvision's "Dataset not found or corrupted").
        legacy_layout: an older layout torchvision still reads (MNIST's processed tensors).
        aliases: names people type for it (for the "did you mean" hint only).
        read: ``read(root, train, transform, download)`` → the split, for the folder datasets.
    """

    name: str
    native_size: int
    num_classes: int | None
    grey: bool = False
    in_memory: bool = False
    mean_std: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    crop_padding: int = 0
    flip: bool = False
    layout: tuple[str, ...] = ()
    legacy_layout: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    read: Callable[[str, bool, Any, bool], Dataset] | None = None


_CIFAR10_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")

#: The datasets ``--data`` accepts: the embedded ones first, then the folder datasets.
RECORDS: dict[str, DatasetRecord] = {
    r.name: r
    for r in (
        DatasetRecord("digits", 32, 10, grey=True, in_memory=True, aliases=("sklearn",)),
        DatasetRecord("synthetic", 32, 10, in_memory=True),
        DatasetRecord(
            "cifar10",
            32,
            10,
            mean_std=((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
            crop_padding=4,
            flip=True,
            layout=tuple(f"cifar-10-batches-py/{f}" for f in _CIFAR10_FILES),
            aliases=("cifar-10",),
            read=_torchvision(D.CIFAR10),
        ),
        DatasetRecord(
            "cifar100",
            32,
            100,
            mean_std=((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
            crop_padding=4,
            flip=True,
            layout=("cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta"),
            aliases=("cifar-100",),
            read=_torchvision(D.CIFAR100),
        ),
        DatasetRecord(
            "mnist",
            28,
            10,
            grey=True,
            mean_std=((0.1307,), (0.3081,)),
            crop_padding=2,
            layout=tuple(f"MNIST/raw/{f}" for f in _MNIST_FILES),
            legacy_layout=("MNIST/processed/training.pt", "MNIST/processed/test.pt"),
            read=_mnist_like(D.MNIST),
        ),
        DatasetRecord(
            "fashion-mnist",
            28,
            10,
            grey=True,
            mean_std=((0.2860,), (0.3530,)),
            crop_padding=2,
            flip=True,
            layout=tuple(f"FashionMNIST/raw/{f}" for f in _MNIST_FILES),
            legacy_layout=("FashionMNIST/processed/training.pt", "FashionMNIST/processed/test.pt"),
            aliases=("fmnist", "fashionmnist", "fashion_mnist"),
            read=_mnist_like(D.FashionMNIST),
        ),
        # no flip: a mirrored digit is not a digit
        DatasetRecord(
            "svhn",
            32,
            10,
            mean_std=((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
            crop_padding=4,
            layout=("train_32x32.mat", "test_32x32.mat"),
            read=_svhn,
        ),
        DatasetRecord(
            "imagefolder",
            224,
            None,
            mean_std=_IMAGENET,
            flip=True,
            layout=("train", "val"),
            aliases=("imagenet", "folder"),
            read=_image_folder,
        ),
    )
}
#: Every dataset name ``--data`` accepts.
DATASETS: tuple[str, ...] = tuple(RECORDS)


@dataclass(frozen=True)
class DataSpec:
    """A dataset name and, for the folder datasets, the folder it lives in.

    Attributes:
        name: one of :data:`DATASETS`.
        path: the data folder, ``~`` expanded. Required for the folder datasets; must be ``None``
            for ``digits`` and ``synthetic``.

    Example:
        >>> DataSpec.parse("cifar10:/data/cifar")
        DataSpec(name='cifar10', path='/data/cifar')
        >>> str(DataSpec.parse("digits"))
        'digits'
    """

    name: str
    path: str | None = None

    def __post_init__(self) -> None:
        if self.name not in DATASETS:
            raise LowRankError(_unknown_message(self.name))
        if RECORDS[self.name].in_memory and self.path:
            raise LowRankError(
                f"dataset {self.name!r} is built in and takes no PATH, got {self.path!r}; write --data {self.name}"
            )
        if not RECORDS[self.name].in_memory and not self.path:
            raise LowRankError(
                f"dataset {self.name!r} is read from a folder but no PATH was given; write {self.name}:PATH (e.g. --data {self.name}:~/data)"
            )

    @classmethod
    def parse(cls, text: str | DataSpec) -> DataSpec:
        """Parse ``NAME[:PATH]`` (the name is case-insensitive; ``~`` in PATH is expanded).

        Only the first ``:`` separates, so PATH may contain colons. Whether PATH exists is checked by
        :func:`build_datasets`, because ``download=True`` may create it.

        Raises:
            LowRankError: unknown name (with close matches), a folder dataset without PATH, or a
                PATH given to ``digits`` / ``synthetic``.
        """
        if isinstance(text, DataSpec):  # tolerated so that callers can pass either form through
            return text
        if not isinstance(text, str):
            raise LowRankError(
                f"dataset spec must be a string NAME[:PATH], got {type(text).__name__} {text!r}; e.g. 'digits' or 'cifar10:~/data'"
            )
        name, _, path = text.strip().partition(":")
        path = path.strip()
        return cls(name.strip().lower(), os.path.expanduser(path) if path else None)

    def __str__(self) -> str:
        return self.name if self.path is None else f"{self.name}:{self.path}"


def _unknown_message(name: str) -> str:
    close = difflib.get_close_matches(name, DATASETS, n=3, cutoff=0.6)
    alias = next((r.name for r in RECORDS.values() if name in r.aliases), None)
    if alias and alias not in close:
        close.insert(0, alias)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    return f"unknown dataset {name!r}; {hint}expected one of {', '.join(DATASETS)}, written NAME[:PATH] (e.g. cifar10:~/data)"


@dataclass
class DataInfo:
    """What a model and a trainer need to know about a dataset.

    Attributes:
        name: the dataset name (one of :data:`DATASETS`).
        num_classes: number of classes (labels are ``0 .. num_classes-1``).
        in_channels: channels of the images fed to the model: always 3 (grey images are repeated).
        image_size: side of the square images the model receives.
        train_size: number of training samples.
        val_size: number of validation samples.
        grey: whether the source images are grey (digits, MNIST, Fashion-MNIST).
    """

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    train_size: int
    val_size: int
    grey: bool


# -- in-memory datasets ---------------------------------------------------------------------------------
class _ImageTensors(Dataset):
    """Images held as one ``(N, C, H, W)`` tensor, augmented, normalised and made 3-channel per item.

    Images are stored before normalisation so that augmentation pads with the true background (0).
    The normalised image is computed per item, which costs microseconds.
    """

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        classes: Sequence[str],
        *,
        mean: float = 0.0,
        std: float = 1.0,
        augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.images = images
        self.targets = targets
        self.classes = list(classes)
        self.mean, self.std = mean, std
        self.augment = augment

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        if self.augment is not None:
            image = self.augment(image)
        if self.mean != 0.0 or self.std != 1.0:
            image = (image - self.mean) / self.std
        if image.shape[0] == 1:
            # repeat, not expand: samples are independent tensors that callers may modify in place
            image = image.repeat(3, 1, 1)
        return image, int(self.targets[index])


class _RandomAffine:
    """Random rotation, scale and shift of a ``(C, H, W)`` tensor in one bilinear resampling.

    Regions moved in from outside the image are filled with 0 (the digits' background). It draws from
    torch's global generator, as torchvision's transforms do, so ``torch.manual_seed`` (or each
    DataLoader worker's seed) makes it repeatable.
    """

    def __init__(self, degrees: float = 10.0, scale: tuple[float, float] = (0.9, 1.1), max_shift: float = 1.0) -> None:
        self.degrees, self.scale, self.max_shift = degrees, scale, max_shift

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        c, h, w = image.shape
        r = torch.rand(4).tolist()
        angle = math.radians((2 * r[0] - 1) * self.degrees)
        scale = self.scale[0] + r[1] * (self.scale[1] - self.scale[0])
        # affine_grid maps output to input coordinates in [-1, 1], so a shift of p pixels is 2p/size
        tx, ty = ((2 * r[2] - 1) * 2 * self.max_shift / w, (2 * r[3] - 1) * 2 * self.max_shift / h)
        cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
        theta = torch.tensor([[[cos, -sin, tx], [sin, cos, ty]]], dtype=image.dtype)
        grid = F.affine_grid(theta, [1, c, h, w], align_corners=False)
        return F.grid_sample(image[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]

    def __repr__(self) -> str:
        return f"RandomAffine(degrees={self.degrees}, scale={self.scale}, max_shift={self.max_shift}px)"


@functools.lru_cache(maxsize=1)
def _load_digits() -> tuple[Any, Any]:
    """scikit-learn's digits as (images (1797, 8, 8) in [0, 16], targets), read once per process."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise LowRankError(
            "the digits dataset needs scikit-learn, which is not installed; run pip install scikit-learn"
        ) from None
    bunch = load_digits()
    return bunch.images, bunch.target


def _digits(size: int, seed: int, augment: bool) -> tuple[Dataset, Dataset]:
    from sklearn.model_selection import train_test_split

    images, targets = _load_digits()
    # stratified: every class keeps its share in both splits (36 ± 1 val images per digit)
    train_idx, val_idx = train_test_split(np.arange(len(targets)), test_size=0.2, stratify=targets, random_state=seed)
    train_idx, val_idx = torch.as_tensor(np.sort(train_idx)), torch.as_tensor(np.sort(val_idx))
    x = torch.as_tensor(images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8) in [0, 1]
    if size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    y = torch.as_tensor(targets, dtype=torch.long)
    # statistics of the training split only, at the size the model sees
    mean, std = x[train_idx].mean().item(), x[train_idx].std().item()
    classes = [str(i) for i in range(10)]
    shift = max(1, size // 16)  # about half a pixel of the original 8×8 digit
    train = _ImageTensors(
        x[train_idx],
        y[train_idx],
        classes,
        mean=mean,
        std=std,
        augment=_RandomAffine(max_shift=shift) if augment else None,
    )
    val = _ImageTensors(x[val_idx], y[val_idx], classes, mean=mean, std=std)
    return train, val


class SyntheticDataset(_ImageTensors):
    """Generated, learnable classification data: a fixed random template per class plus noise.

    Templates are smooth random patterns (4×4 Gaussian noise upsampled bilinearly), so a CNN can learn
    them as well as a linear model can. Each template is standardised, and a sample is
    ``(template[y] + noise * N(0, 1)) / sqrt(1 + noise**2)``, so pixels have unit variance. Templates depend
    only on ``seed``, so the ``"train"`` and ``"val"`` splits of one seed share their classes and differ
    only in their noise. Classes are balanced, and the whole set is generated once, in memory.

    Args:
        num_samples: number of samples.
        num_classes: number of classes (templates).
        image_size: side of the square 3-channel images.
        noise: standard deviation of the noise relative to the template (higher is harder).
        seed: fixes the templates and, together with ``split``, the samples.
        split: ``"train"`` or ``"val"``.

    Example:
        >>> data = SyntheticDataset(200, num_classes=5, image_size=16, seed=1)
        >>> image, label = data[0]
        >>> tuple(image.shape), 0 <= label < 5
        ((3, 16, 16), True)
    """

    def __init__(
        self,
        num_samples: int = 1024,
        *,
        num_classes: int = 10,
        image_size: int = 32,
        noise: float = 1.0,
        seed: int = 0,
        split: str = "train",
    ) -> None:
        _check_int("num_samples", num_samples, 1)
        _check_int("num_classes", num_classes, 2)
        _check_int("image_size", image_size, 4)
        _check_int("seed", seed, 0)
        if not isinstance(noise, (int, float)) or isinstance(noise, bool) or not math.isfinite(noise) or noise < 0:
            raise LowRankError(f"noise must be a finite number >= 0, got {noise!r}; e.g. noise=1.0")
        if split not in ("train", "val"):
            raise LowRankError(f"split must be 'train' or 'val', got {split!r}")
        gen = torch.Generator().manual_seed(seed)
        low = torch.randn(num_classes, 3, 4, 4, generator=gen)
        # both splits' noise seeds come from the template generator: independent of each other and of num_samples
        split_seeds = torch.randint(0, 2**62, (2,), generator=gen).tolist()
        templates = F.interpolate(low, size=(image_size, image_size), mode="bilinear", align_corners=False)
        flat = templates.flatten(1)
        templates = ((flat - flat.mean(1, keepdim=True)) / flat.std(1, keepdim=True)).view_as(templates)
        gen = torch.Generator().manual_seed(split_seeds[0 if split == "train" else 1])
        targets = (torch.arange(num_samples) % num_classes)[torch.randperm(num_samples, generator=gen)]
        images = (
            templates[targets] + noise * torch.randn(num_samples, 3, image_size, image_size, generator=gen)
        ) / math.sqrt(1 + noise**2)
        super().__init__(images, targets, [f"class{i}" for i in range(num_classes)])
        self.templates = templates


# -- folder datasets (torchvision) ---------------------------------------------------------------------
class _GreyToRGB:
    """Repeat a 1-channel tensor image to 3 channels (a class, not a lambda, so that workers can pickle it)."""

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return image.repeat(3, 1, 1) if image.shape[0] == 1 else image

    def __repr__(self) -> str:
        return "GreyToRGB()"


def _transforms(name: str, size: int, augment: bool) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """The (train, val) transforms of a folder dataset; train equals val when ``augment`` is off."""

    record = RECORDS[name]
    assert record.mean_std is not None  # every folder dataset has its statistics
    mean, std = record.mean_std
    tail: list[Any] = [T.ToTensor(), T.Normalize(mean, std)] + ([_GreyToRGB()] if record.grey else [])
    if name == "imagefolder":
        val = T.Compose([T.Resize(int(size * 256 / 224)), T.CenterCrop(size), *tail])
        return (T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), *tail]) if augment else val), val
    native = record.native_size
    resize: list[Any] = [T.Resize((size, size))] if size != native else []
    val = T.Compose([*resize, *tail])
    if not augment:
        return val, val
    padding = max(1, round(record.crop_padding * size / native))
    flip: list[Any] = [T.RandomHorizontalFlip()] if record.flip else []
    return T.Compose([*resize, T.RandomCrop(size, padding=padding), *flip, *tail]), val


def _layout_text(name: str, root: Path) -> str:
    if name == "imagefolder":
        return f"{root / 'train'}/<class>/<image> and {root / 'val'}/<class>/<image> with the same class folders"
    files = RECORDS[name].layout
    folder = os.path.dirname(files[0])
    listing = ", ".join(os.path.basename(f) for f in files)
    return f"{root / folder if folder else root} holding {listing}"


def _check_layout(name: str, root: Path, download: bool) -> None:
    """Fail early, naming the file expected, when PATH does not hold the dataset (and nothing will fetch it)."""
    fetch = download and name != "imagefolder"
    fix = f"put the files there ({_layout_text(name, root)})" + (
        "" if name == "imagefolder" else " or add --download to fetch them (needs internet)"
    )
    if not root.exists():
        if fetch:
            return  # torchvision creates the folder
        raise LowRankError(f"data folder {root} does not exist; create it and {fix}")
    if not root.is_dir():
        raise LowRankError(
            f"{name}:PATH must be a folder, but {root} is a file; point PATH at the folder described: {_layout_text(name, root)}"
        )
    missing = [rel for rel in RECORDS[name].layout if not (root / rel).exists()]
    legacy = RECORDS[name].legacy_layout
    if not missing or fetch or (legacy and all((root / rel).exists() for rel in legacy)):
        return
    if name in ("mnist", "fashion-mnist") and _flat_files(root):
        return  # the four idx files (or .gz) right in PATH
    hint = ""
    for parent in list(root.parents)[:2]:
        # a common slip: PATH points inside the dataset's own folder (e.g. ~/data/cifar-10-batches-py)
        if all((parent / rel).exists() for rel in RECORDS[name].layout):
            hint = f"; the dataset is in {parent}: write {name}:{parent}"
            break
    else:
        if (root / f"{missing[0]}.gz").exists():
            hint = f"; {root / missing[0]}.gz is there: decompress the .gz files (gunzip) or add --download"
    if not hint:
        hint = f"; {fix}"
    raise LowRankError(f"{name} not found in {root}: expected {root / missing[0]}{hint}")


def _folder_datasets(spec: DataSpec, size: int, download: bool, augment: bool) -> tuple[Dataset, Dataset, int]:

    name = spec.name
    assert spec.path is not None  # DataSpec guarantees it for folder datasets
    root = Path(spec.path)
    _check_layout(name, root, download)
    train_t, val_t = _transforms(name, size, augment)
    fetch = download and name != "imagefolder"
    read = RECORDS[name].read
    assert read is not None  # every folder dataset has a reader
    try:
        train, val = read(str(root), True, train_t, fetch), read(str(root), False, val_t, fetch)
    except Exception as exc:
        detail = first_line(exc, with_type=False)
        if fetch:
            raise LowRankError(
                f"cannot download or read {name} in {root} ({detail}); check the internet connection, or put the files there yourself ({_layout_text(name, root)})"
            ) from None
        if name == "imagefolder":
            raise LowRankError(
                f"cannot read imagefolder from {root} ({detail}); expected {_layout_text(name, root)}"
            ) from None
        raise LowRankError(
            f"cannot read {name} from {root} ({detail}); the files may be incomplete or fail torchvision's checksum: delete them and fetch them again with --download"
        ) from None
    for split, dataset in (("train", train), ("test", val)):
        _check_counts(name, root, split, dataset)
    classes = RECORDS[name].num_classes
    if classes is None:  # imagefolder: the class folders
        assert isinstance(train, D.ImageFolder) and isinstance(val, D.ImageFolder)
        if train.classes != val.classes:
            # ImageFolder numbers classes per folder, so mismatched folders would silently mislabel val
            only_train = sorted(set(train.classes) - set(val.classes))
            only_val = sorted(set(val.classes) - set(train.classes))
            raise LowRankError(
                f"imagefolder {root}: train/ and val/ have different class folders (only in train: {', '.join(only_train) or '-'}; "
                f"only in val: {', '.join(only_val) or '-'}); give both the same class folders"
            )
        return train, val, len(train.classes)
    return train, val, classes


def _check_counts(name: str, root: Path, split: str, dataset: Dataset) -> None:
    """Images and labels read from separate files (MNIST's idx pair, SVHN's X/y) must be as many."""
    images = getattr(dataset, "data", None)
    labels = getattr(dataset, "targets", getattr(dataset, "labels", None))
    if images is None or labels is None or len(images) == len(labels):
        return
    raise LowRankError(
        f"{name} in {root}: the {split} split has {len(images)} images but {len(labels)} labels; the files are "
        "damaged or from different releases — fetch them again (delete them and add --download)"
    )


# -- the training order and augmentation as functions of (seed, epoch) ----------------------------------
_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one sample's augmentation in one epoch: distinct triples give unrelated 63-bit seeds."""
    h = 0
    for value in (seed, epoch, index):
        h = _splitmix64(h ^ (value & _MASK64))
    return h >> 1


class _SeededAugmentation(Dataset):
    """A training set whose random augmentation of a sample is a function of (seed, epoch, sample index).

    Indexed with ``(epoch, index)`` (what :class:`_EpochLoader` passes), it runs the wrapped data set's
    ``[index]`` under torch's CPU generator seeded with :func:`sample_seed` and then restores the generator,
    so neither the worker a sample is loaded in nor the samples loaded before it change its augmentation,
    and the caller's random state is untouched. A plain ``index`` draws from the global generator, as the
    wrapped data set does. Other attributes (``transform``, ``targets``, ``classes``...) are the wrapped one's.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: Any) -> Any:
        if not isinstance(key, tuple):
            return self.dataset[key]
        epoch, index = key
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(sample_seed(self.seed, epoch, index))
            return self.dataset[index]

    def __getattr__(self, name: str) -> Any:
        inner = self.__dict__.get("dataset")  # (not yet set while a worker unpickles it)
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)


class _Epochs:
    """Epoch bookkeeping shared by the training samplers: each pass is the next epoch unless ``set_epoch``
    named it, and ``skip_next`` drops the first samples of the next pass only."""

    epoch: int

    def _start_pass(self) -> int:
        if getattr(self, "_pinned", True) is False:
            self.epoch += 1  # a loop that never calls set_epoch still gets a new order and new augmentation
        self._pinned = False
        skip, self._skip = getattr(self, "_skip", 0), 0
        return skip

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass epoch ``epoch`` (its order and its augmentation)."""
        self.epoch = epoch
        self._pinned = True

    def skip_next(self, samples: int) -> None:
        """Start the next pass at its ``samples``-th sample (the samples before it are not loaded)."""
        self._skip = samples


class EpochSampler(_Epochs, Sampler[int]):
    """The training order: a permutation of ``range(size)`` that is a function of (``seed``, epoch).

    Each pass over it is the next epoch (0, 1, ...) unless :meth:`set_epoch` names one;
    :meth:`skip_next` makes the next pass start later (a resumed epoch).

    Example:
        >>> sampler = EpochSampler(5, seed=1)
        >>> sampler.set_epoch(3); first = list(sampler)
        >>> sampler.set_epoch(3); sampler.skip_next(2); list(sampler) == first[2:]
        True
    """

    def __init__(self, size: int, seed: int = 0, shuffle: bool = True) -> None:
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.epoch = 0

    def __iter__(self) -> Iterator[int]:
        skip = self._start_pass()
        if not self.shuffle:
            return iter(range(skip, self.size))
        gen = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, -1))
        return iter(torch.randperm(self.size, generator=gen)[skip:].tolist())

    def __len__(self) -> int:
        return self.size


class _EpochDistributedSampler(_Epochs, DistributedSampler):
    """``DistributedSampler`` (this rank's share, a function of seed and epoch) with :class:`EpochSampler`'s
    passes and ``skip_next`` (counted in this rank's samples)."""

    def __iter__(self) -> Iterator[int]:
        skip = self._start_pass()
        return itertools.islice(super().__iter__(), skip, None)


class _EpochKeys:
    """The batches of sample indices a loader fetches, each index as ``(epoch, index)``."""

    def __init__(self, batches: Any, sampler: Any) -> None:
        self.batches, self.sampler = batches, sampler

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for batch in self.batches:
            epoch = self.sampler.epoch  # read once the pass began (it may have moved on to the next epoch)
            yield [(epoch, int(i)) for i in batch]

    def __len__(self) -> int:
        return len(self.batches)


class _EpochLoader(DataLoader):
    """A DataLoader that hands its data set ``(epoch, index)`` keys, so that augmentation can depend on both."""

    @property
    def _index_sampler(self) -> Any:
        return _EpochKeys(super()._index_sampler, self.sampler)


# -- public builders ------------------------------------------------------------------------------------
def _check_int(what: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise LowRankError(f"{what} must be an integer >= {minimum}, got {value!r}")


def build_datasets(
    spec: DataSpec | str, *, image_size: int | None = None, download: bool = False, seed: int = 0, augment: bool = True
) -> tuple[Dataset, Dataset, DataInfo]:
    """Build the train and validation datasets for a spec, plus what a model needs to know about them.

    Samples are ``(image, label)``: a float tensor ``(3, image_size, image_size)`` and an ``int``.

    Args:
        spec: ``NAME[:PATH]`` or a :class:`DataSpec`.
        image_size: side of the images fed to the model (``None``: 32 for digits, synthetic, CIFAR and
            SVHN; 28 for MNIST-like; 224 for imagefolder).
        download: let torchvision download a missing dataset into PATH (needs internet; not for
            ``imagefolder``, which is always your own folder).
        seed: fixes the digits split and the synthetic data. Augmentation draws from torch's global
            generator (seed it, or let DataLoader workers seed it); the loaders of :func:`build_loaders`
            make it a function of (seed, epoch, sample index).
        augment: apply the dataset's standard training augmentation (see the module docstring).

    Raises:
        LowRankError: bad spec or image size, PATH missing, dataset not found in PATH, unreadable files.

    Example:
        >>> train, val, info = build_datasets("digits", image_size=16, augment=False)
        >>> len(train), len(val), tuple(train[0][0].shape)
        (1437, 360, (3, 16, 16))
    """
    spec = DataSpec.parse(spec)
    if image_size is not None:
        _check_int("image_size", image_size, 8)
    _check_int("seed", seed, 0)
    size = image_size or RECORDS[spec.name].native_size
    train: Dataset
    val: Dataset
    if spec.name == "digits":
        train, val = _digits(size, seed, augment)
        classes = 10
    elif spec.name == "synthetic":
        train = SyntheticDataset(1024, image_size=size, seed=seed, split="train")
        val = SyntheticDataset(256, image_size=size, seed=seed, split="val")
        classes = 10
    else:
        train, val, classes = _folder_datasets(spec, size, download, augment)
    info = DataInfo(spec.name, classes, 3, size, len(train), len(val), RECORDS[spec.name].grey)  # type: ignore[arg-type]
    return train, val, info


def build_loaders(
    spec: DataSpec | str,
    *,
    batch_size: int = 128,
    workers: int | None = None,
    image_size: int | None = None,
    download: bool = False,
    seed: int = 0,
    distributed: bool = False,
    augment: bool = True,
    val_batch_size: int | None = None,
) -> tuple[DataLoader, DataLoader, DataInfo]:
    """Build train and validation DataLoaders for a spec, with defaults that suit each dataset.

    * ``workers`` (``None``): ``min(4, os.cpu_count())`` for folder datasets, 0 for the in-memory
      digits and synthetic. For those, worker processes cost more than the data work they would do.
      ``persistent_workers`` is on whenever there are workers.
    * ``pin_memory`` when CUDA is available. ``drop_last`` is off: every sample is used.
    * Train order and augmentation: functions of (``seed``, epoch). The train loader's ``.sampler`` is an
      :class:`EpochSampler` (or, with ``distributed=True``, a ``DistributedSampler`` of the same kind,
      splitting train across ranks; a torch.distributed process group must be initialised); each pass
      over the loader is the next epoch, or the one ``sampler.set_epoch(epoch)`` names (the trainer
      does). Each sample's augmentation is drawn from a generator seeded by (``seed``, epoch, sample
      index), so it is the same with any number of workers. ``sampler.skip_next(n)`` starts the next
      pass at its ``n``-th sample (a resumed epoch skips its done batches without loading them). The
      val sampler (distributed) repeats up to ``world_size - 1`` samples so all ranks get equal shares.

    Args:
        spec: ``NAME[:PATH]`` or a :class:`DataSpec`.
        batch_size: training batch size (per process under DDP).
        workers: DataLoader worker processes (``None``: automatic, see above).
        image_size: see :func:`build_datasets`.
        download: see :func:`build_datasets`.
        seed: data split, synthetic data, shuffling and the DDP sampler.
        distributed: use ``DistributedSampler`` for both loaders.
        augment: the dataset's standard training augmentation.
        val_batch_size: validation batch size (``None``: ``batch_size``).

    Raises:
        LowRankError: as :func:`build_datasets`, plus bad sizes/worker counts, or ``distributed=True``
            without an initialised process group.

    Example:
        >>> train_loader, val_loader, info = build_loaders("digits", batch_size=64, image_size=16)
        >>> images, labels = next(iter(train_loader))
        >>> tuple(images.shape), labels.dtype
        ((64, 3, 16, 16), torch.int64)
    """
    _check_int("batch_size", batch_size, 1)
    if val_batch_size is not None:
        _check_int("val_batch_size", val_batch_size, 1)
    if workers is not None:
        _check_int("workers", workers, 0)
    spec = DataSpec.parse(spec)
    sampler_cls: Any = None
    if distributed:
        if not (tdist.is_available() and tdist.is_initialized()):
            raise LowRankError(
                "distributed=True needs an initialised torch.distributed process group; call torch.distributed.init_process_group "
                "first (lowrank train --nproc N does it) or pass distributed=False"
            )

        sampler_cls = DistributedSampler
    train, val, info = build_datasets(spec, image_size=image_size, download=download, seed=seed, augment=augment)
    train_data: Dataset = _SeededAugmentation(train, seed) if augment else train
    if workers is None:
        workers = 0 if RECORDS[spec.name].in_memory else min(4, os.cpu_count() or 1)
    common: dict[str, Any] = {
        "num_workers": workers,
        "pin_memory": torch.cuda.is_available(),
        "persistent_workers": workers > 0,
    }
    # the workers' base seed (the augmentation does not depend on it: see _SeededAugmentation)
    generator = torch.Generator().manual_seed(seed)
    size = len(train)  # type: ignore[arg-type]
    train_sampler = (
        _EpochDistributedSampler(train, shuffle=True, seed=seed) if sampler_cls else EpochSampler(size, seed)
    )
    train_loader = _EpochLoader(
        train_data, batch_size=batch_size, sampler=train_sampler, generator=generator, drop_last=False, **common
    )
    if sampler_cls is not None:
        val_loader = DataLoader(
            val, batch_size=val_batch_size or batch_size, sampler=sampler_cls(val, shuffle=False), **common
        )
    else:
        val_loader = DataLoader(val, batch_size=val_batch_size or batch_size, shuffle=False, **common)
    return train_loader, val_loader, info
