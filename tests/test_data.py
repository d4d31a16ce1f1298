"""Dataset specs, the embedded digits, synthetic data and the folder datasets (generated locally)."""

import pickle

import numpy as np
import pytest
import torch

from lowrank_tool import LowRankError
from lowrank_tool.train.data import DataSpec, build_datasets, build_loaders


@pytest.mark.parametrize("text,name,path", [("digits", "digits", None), ("cifar10:/data", "cifar10", "/data"), ("SVHN:/x", "svhn", "/x")])
def test_parse(text, name, path):
    assert DataSpec.parse(text) == DataSpec(name, path)


@pytest.mark.parametrize("text,message", [("cifar", "unknown dataset 'cifar' \\(did you mean 'cifar10'\\?\\)"),
                                          ("cifar10", "write cifar10:PATH")])
def test_parse_errors(text, message):
    with pytest.raises(LowRankError, match=message):
        DataSpec.parse(text)


def test_digits_is_real_split_and_three_channel():
    train, val, info = build_datasets("digits", image_size=16, augment=False)
    assert (info.num_classes, info.in_channels, info.grey, info.train_size + info.val_size) == (10, 3, True, 1797)
    assert abs(info.val_size - 360) <= 5
    x, y = train[0]
    assert x.shape == (3, 16, 16) and torch.equal(x[0], x[1]) and -1.0 <= x.min() and x.max() <= 1.0
    labels = torch.stack([val[i][1] for i in range(len(val))])
    assert torch.bincount(labels).min() >= 34  # stratified
    again, _, _ = build_datasets("digits", image_size=16, augment=False)
    assert torch.equal(again[5][0], train[5][0])


def test_synthetic_is_learnable_and_deterministic():
    train, val, info = build_datasets("synthetic", image_size=8)
    xs = torch.stack([train[i][0] for i in range(len(train))]).flatten(1)
    ys = torch.stack([train[i][1] for i in range(len(train))])
    means = torch.stack([xs[ys == c].mean(0) for c in range(info.num_classes)])
    vx = torch.stack([val[i][0] for i in range(len(val))]).flatten(1)
    vy = torch.stack([val[i][1] for i in range(len(val))])
    acc = ((torch.cdist(vx, means).argmin(1) == vy).float().mean()).item()
    assert acc > 0.9  # nearest class mean separates it: a network can learn it
    assert torch.equal(build_datasets("synthetic", image_size=8)[0][3][0], train[3][0])


def test_loaders_shapes():
    train, val, info = build_loaders("digits", batch_size=32, image_size=16)
    x, y = next(iter(train))
    assert x.shape == (32, 3, 16, 16) and y.dtype == torch.long and train.num_workers == 0


def _fake_cifar10(root, n=20):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as fh:
            pickle.dump({"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8), "labels": list(rng.integers(0, 10, n))}, fh)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, fh)


def test_cifar10_from_a_local_folder(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as C

    _fake_cifar10(tmp_path)
    # torchvision checks the official files' md5 sums; ours are generated stand-ins in the same format
    monkeypatch.setattr(C, "check_integrity", lambda *args, **kwargs: True)
    train, val, info = build_loaders(f"cifar10:{tmp_path}", batch_size=8, workers=0)
    x, y = next(iter(train))
    assert x.shape == (8, 3, 32, 32) and info.num_classes == 10 and info.train_size == 100 and info.val_size == 20


def test_imagefolder(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for c in ("cat", "dog"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((40, 48, 3), 50 * i, dtype=np.uint8)).save(tmp_path / split / c / f"{i}.png")
    train, val, info = build_loaders(f"imagefolder:{tmp_path}", batch_size=4, workers=0, image_size=32)
    x, y = next(iter(val))
    assert x.shape == (4, 3, 32, 32) and info.num_classes == 2


def test_missing_folder_dataset(tmp_path):
    with pytest.raises(LowRankError, match="does not exist; point cifar10:PATH at the dataset or add --download"):
        build_loaders(f"cifar10:{tmp_path / 'nope'}")
    with pytest.raises(LowRankError, match="cannot read cifar10 from"):
        build_loaders(f"cifar10:{tmp_path}")
