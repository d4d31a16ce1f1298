"""Dataset specs, the embedded digits, synthetic data, the folder datasets (generated locally) and loaders.

Nothing here touches the network: CIFAR-10, SVHN, MNIST and ImageFolder are written to tmp_path in the
exact on-disk format torchvision reads.
"""

import math
import os
import pickle
import struct

import numpy as np
import pytest
import torch
from torch import nn

from lowrank_tool import LowRankError
from lowrank_tool.data import DATASETS, DataInfo, DataSpec, SyntheticDataset, build_datasets, build_loaders

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def stack(dataset, n=None):
    items = [dataset[i] for i in range(len(dataset) if n is None else n)]
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])


def transform_names(dataset):
    return [type(t).__name__ for t in dataset.transform.transforms]


# -- specs --------------------------------------------------------------------------------------------------
def test_dataset_names():
    assert DATASETS == ("digits", "synthetic", "cifar10", "cifar100", "mnist", "fashion-mnist", "svhn", "imagefolder")


@pytest.mark.parametrize(
    "text,name,path",
    [
        ("digits", "digits", None),
        ("synthetic", "synthetic", None),
        ("cifar10:/data", "cifar10", "/data"),
        ("SVHN:/x", "svhn", "/x"),
        ("  fashion-mnist:/a b ", "fashion-mnist", "/a b"),
        ("imagefolder:/mnt/c:/imagenet", "imagefolder", "/mnt/c:/imagenet"),  # only the first ':' separates
    ],
)
def test_parse(text, name, path):
    spec = DataSpec.parse(text)
    assert spec == DataSpec(name, path)
    assert DataSpec.parse(str(spec)) == spec


def test_parse_expands_home(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert DataSpec.parse("cifar10:~/data") == DataSpec("cifar10", str(tmp_path / "data"))


@pytest.mark.parametrize(
    "text,message",
    [
        (
            "cifar",
            "unknown dataset 'cifar'; did you mean 'cifar10' or 'cifar100'\\? expected one of digits, synthetic, cifar10",
        ),
        ("imagenet:/d", "unknown dataset 'imagenet'; did you mean 'imagefolder'\\?"),
        ("fashion_mnist:/d", "did you mean 'fashion-mnist'\\?"),
        (
            "qqq",
            "unknown dataset 'qqq'; expected one of digits, synthetic, cifar10, cifar100, mnist, fashion-mnist, svhn, imagefolder, written NAME\\[:PATH\\]",
        ),
        ("cifar10", "dataset 'cifar10' is read from a folder but no PATH was given; write cifar10:PATH"),
        ("imagefolder:", "write imagefolder:PATH"),
        ("digits:/data", "dataset 'digits' is built in and takes no PATH, got '/data'; write --data digits"),
    ],
)
def test_parse_errors(text, message):
    with pytest.raises(LowRankError, match=message) as err:
        DataSpec.parse(text)
    assert "\n" not in str(err.value)


def test_spec_validates_when_built_directly():
    with pytest.raises(LowRankError, match="unknown dataset 'cifar11'; did you mean 'cifar10'"):
        DataSpec("cifar11", "/d")
    with pytest.raises(LowRankError, match="write mnist:PATH"):
        DataSpec("mnist")


# -- digits ---------------------------------------------------------------------------------------------------
def test_digits_split_shapes_and_grey_to_three_channels():
    from sklearn.datasets import load_digits

    train, val, info = build_datasets("digits", augment=False)
    assert info == DataInfo("digits", 10, 3, 32, 1437, 360, True)
    assert (len(train), len(val)) == (1437, 360)
    x, y = train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and isinstance(y, int)
    assert torch.equal(x[0], x[1]) and torch.equal(x[0], x[2])  # the grey channel, repeated
    ys_train, ys_val = stack(train)[1], stack(val)[1]
    all_counts = torch.as_tensor(np.bincount(load_digits().target))
    assert torch.equal(torch.bincount(ys_train, minlength=10) + torch.bincount(ys_val, minlength=10), all_counts)
    assert torch.all((torch.bincount(ys_val) - all_counts * 0.2).abs() <= 1)  # stratified: 20% of every class


def test_digits_values_are_scaled_and_normalised():
    train, val, _ = build_datasets("digits", image_size=16, augment=False)
    xs = stack(train)[0][:, 0]
    assert abs(xs.mean().item()) < 1e-3 and abs(xs.std().item() - 1) < 1e-3  # train statistics
    mean, std = train.mean, train.std
    assert 0.1 < mean < 0.5 and 0.2 < std < 0.6  # of pixels scaled from [0, 16] to [0, 1]
    assert xs.min().item() == pytest.approx(-mean / std)  # the background is pixel value 0
    assert xs.max().item() <= (1 - mean) / std + 1e-5
    assert val.mean == mean and val.std == std  # val uses the training statistics


def test_digits_native_size_is_the_raw_data():
    from sklearn.datasets import load_digits

    train, _, info = build_datasets("digits", image_size=8, augment=False)
    raw = torch.as_tensor(load_digits().images, dtype=torch.float32) / 16
    x, y = train[0]
    matches = [i for i in range(len(raw)) if torch.allclose(x[0] * train.std + train.mean, raw[i], atol=1e-5)]
    assert matches and load_digits().target[matches[0]] == y and info.image_size == 8


def test_digits_split_is_deterministic_per_seed():
    a, _, _ = build_datasets("digits", image_size=8, augment=False, seed=0)
    b, _, _ = build_datasets("digits", image_size=8, augment=False, seed=0)
    c, _, _ = build_datasets("digits", image_size=8, augment=False, seed=1)
    assert torch.equal(a.images, b.images) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.images, c.images)


def test_digits_augmentation_is_small_random_and_seeded():
    plain, val, _ = build_datasets("digits", image_size=16, augment=False)
    aug, _, _ = build_datasets("digits", image_size=16, augment=True)
    torch.manual_seed(1)
    first = stack(aug, 200)[0]
    torch.manual_seed(1)
    again = stack(aug, 200)[0]
    reference = stack(plain, 200)[0]
    assert torch.equal(first, again) and first.shape == reference.shape
    assert not torch.equal(first, stack(aug, 200)[0])  # a fresh draw differs
    changed = (first - reference).abs().flatten(1).mean(1)
    assert (changed > 0).float().mean() > 0.95  # almost every image is moved...
    assert (changed.mean() / reference.abs().mean()) < 0.6  # ...but only a little
    assert torch.equal(val[3][0], val[3][0])  # val is never augmented


def test_digits_train_a_small_cnn_quickly():
    """The embedded default must be real, learnable data: a tiny CNN gets >= 90% in a few seconds."""
    torch.manual_seed(0)
    train, val, info = build_loaders("digits", batch_size=64, image_size=16)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, info.num_classes),
    )
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(3):
        for x, y in train:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    with torch.no_grad():
        correct = sum((model(x).argmax(1) == y).sum().item() for x, y in val)
    assert correct / info.val_size > 0.9


# -- synthetic --------------------------------------------------------------------------------------------------
def test_synthetic_is_learnable():
    train, val, info = build_datasets("synthetic", image_size=16)
    assert info == DataInfo("synthetic", 10, 3, 16, 1024, 256, False)
    xs, ys = stack(train)
    assert torch.equal(torch.bincount(ys), torch.full((10,), 1024 // 10) + (torch.arange(10) < 1024 % 10))  # balanced
    assert abs(xs.std().item() - 1) < 0.05
    means = torch.stack([xs[ys == c].mean(0) for c in range(10)]).flatten(1)  # learnt from the training split only
    vx, vy = stack(val)
    accuracy = (torch.cdist(vx.flatten(1), means).argmin(1) == vy).float().mean().item()
    assert accuracy > 0.95


def test_synthetic_is_deterministic_and_splits_share_templates():
    a, va, _ = build_datasets("synthetic", image_size=8, seed=3)
    b, _, _ = build_datasets("synthetic", image_size=8, seed=3)
    c, _, _ = build_datasets("synthetic", image_size=8, seed=4)
    assert torch.equal(a.images, b.images) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.templates, c.templates)
    assert torch.equal(a.templates, va.templates) and not torch.equal(a.images[:256], va.images)


def test_synthetic_dataset_is_configurable():
    data = SyntheticDataset(50, num_classes=5, image_size=12, noise=0.0, seed=2, split="val")
    x, y = data[0]
    assert len(data) == 50 and x.shape == (3, 12, 12) and 0 <= y < 5
    assert torch.allclose(x, data.templates[y])  # no noise: the template itself
    with pytest.raises(LowRankError, match="num_classes must be an integer >= 2, got 1"):
        SyntheticDataset(10, num_classes=1)
    with pytest.raises(LowRankError, match="split must be 'train' or 'val', got 'test'"):
        SyntheticDataset(10, split="test")


# -- folder datasets, generated in torchvision's on-disk format -------------------------------------------------
def fake_cifar10(root, n=8):
    """cifar-10-batches-py as torchvision reads it: pickled dicts of uint8 rows (3072 = 3x32x32, CHW) and labels."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batches[name] = {
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "labels": [int(v) for v in rng.integers(0, 10, n)],
        }
        with open(folder / name, "wb") as fh:
            pickle.dump(batches[name], fh)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, fh)
    return batches


@pytest.fixture
def skip_md5(monkeypatch):
    """torchvision compares every CIFAR/SVHN file with the md5 sum of the official release; our generated
    stand-ins cannot match, so the check becomes "the file exists" (what it reduces to without an md5)."""
    from torchvision.datasets import cifar, svhn

    for module in (cifar, svhn):
        monkeypatch.setattr(module, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))


def test_cifar10_from_a_local_folder(tmp_path, skip_md5):
    batches = fake_cifar10(tmp_path)
    train, val, info = build_loaders(f"cifar10:{tmp_path}", batch_size=8, workers=0)
    assert info == DataInfo("cifar10", 10, 3, 32, 40, 8, False)
    x, y = next(iter(train))
    assert x.shape == (8, 3, 32, 32) and y.dtype == torch.int64
    vx, vy = next(iter(val))  # val: no augmentation, CIFAR normalisation
    raw = torch.as_tensor(batches["test_batch"]["data"], dtype=torch.float32).view(-1, 3, 32, 32) / 255
    expected = (raw - torch.tensor(CIFAR_MEAN).view(3, 1, 1)) / torch.tensor(CIFAR_STD).view(3, 1, 1)
    assert torch.allclose(vx, expected, atol=1e-5) and vy.tolist() == batches["test_batch"]["labels"]
    assert transform_names(train.dataset) == ["RandomCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    assert train.dataset.transform.transforms[0].padding == 4


def test_cifar10_folder_defaults_to_worker_processes(tmp_path, skip_md5):
    fake_cifar10(tmp_path)
    train, val, _ = build_loaders(f"cifar10:{tmp_path}", batch_size=16)
    assert train.num_workers == val.num_workers == min(4, os.cpu_count()) and train.persistent_workers
    x, _ = next(iter(train))  # the transforms run in the worker processes
    assert x.shape == (16, 3, 32, 32)


def test_cifar10_resized(tmp_path, skip_md5):
    fake_cifar10(tmp_path)
    train, val, info = build_datasets(f"cifar10:{tmp_path}", image_size=40)
    assert info.image_size == 40 and train[0][0].shape == val[0][0].shape == (3, 40, 40)
    assert train.transform.transforms[1].padding == 5  # the crop padding scales with the size


def test_cifar10_with_wrong_checksums_is_reported(tmp_path):
    fake_cifar10(tmp_path)  # without skip_md5: torchvision sees files that are not the official ones
    with pytest.raises(
        LowRankError,
        match=f"cannot read cifar10 from {tmp_path} \\(Dataset not found or corrupted.*checksum.*--download",
    ):
        build_datasets(f"cifar10:{tmp_path}")


def write_idx(path, array):
    """The MNIST idx format: magic 0x0000 08 <ndim> (uint8 data), big-endian dims, raw bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()
    )


def fake_mnist(root, folder="MNIST", n=6):
    rng = np.random.default_rng(1)
    out = {}
    for split in ("train", "t10k"):
        images, labels = rng.integers(0, 256, (n, 28, 28)), rng.integers(0, 10, n)
        write_idx(root / folder / "raw" / f"{split}-images-idx3-ubyte", images)
        write_idx(root / folder / "raw" / f"{split}-labels-idx1-ubyte", labels)
        out[split] = images, labels
    return out


def test_mnist_from_idx_files_is_grey_to_three_channels(tmp_path):
    data = fake_mnist(tmp_path)
    train, val, info = build_datasets(f"mnist:{tmp_path}")
    assert info == DataInfo("mnist", 10, 3, 28, 6, 6, True)
    x, y = val[2]
    images, labels = data["t10k"]
    assert x.shape == (3, 28, 28) and torch.equal(x[0], x[1]) and torch.equal(x[0], x[2]) and y == labels[2]
    expected = (torch.as_tensor(images[2], dtype=torch.float32) / 255 - 0.1307) / 0.3081
    assert torch.allclose(x[0], expected, atol=1e-5)
    assert transform_names(train) == ["RandomCrop", "ToTensor", "Normalize", "_GreyToRGB"]  # digits: no flip
    assert train.transform.transforms[0].padding == 2
    assert train[0][0].shape == (3, 28, 28)


def test_fashion_mnist_flips_and_resizes(tmp_path):
    fake_mnist(tmp_path, folder="FashionMNIST")
    train, val, info = build_datasets(f"fashion-mnist:{tmp_path}", image_size=32)
    assert info.grey and info.image_size == 32 and train[0][0].shape == val[0][0].shape == (3, 32, 32)
    assert transform_names(train) == [
        "Resize",
        "RandomCrop",
        "RandomHorizontalFlip",
        "ToTensor",
        "Normalize",
        "_GreyToRGB",
    ]
    assert transform_names(val) == ["Resize", "ToTensor", "Normalize", "_GreyToRGB"]


def test_svhn_from_mat_files(tmp_path, skip_md5):
    from scipy.io import savemat

    rng = np.random.default_rng(2)
    for split, n in (("train", 5), ("test", 3)):  # SVHN's .mat: X is (32, 32, 3, N), y is (N, 1) with 10 for digit 0
        savemat(
            tmp_path / f"{split}_32x32.mat",
            {"X": rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8), "y": np.array([[10], [1], [2], [3], [4]][:n])},
        )
    train, val, info = build_datasets(f"svhn:{tmp_path}")
    assert info == DataInfo("svhn", 10, 3, 32, 5, 3, False)
    assert [val[i][1] for i in range(3)] == [0, 1, 2]
    assert transform_names(train) == ["RandomCrop", "ToTensor", "Normalize"]  # digits: no flip


def make_imagefolder(root, train_classes=("cat", "dog"), val_classes=("cat", "dog")):
    from PIL import Image

    for split, classes in (("train", train_classes), ("val", val_classes)):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((40, 48, 3), 60 * i + 20, dtype=np.uint8)).save(root / split / c / f"{i}.png")
    Image.fromarray(np.full((30, 30), 200, dtype=np.uint8)).save(
        root / "train" / "cat" / "grey.png"
    )  # grey files become RGB


def test_imagefolder(tmp_path):
    make_imagefolder(tmp_path)
    train, val, info = build_loaders(f"imagefolder:{tmp_path}", batch_size=5, workers=0, image_size=32)
    assert info == DataInfo("imagefolder", 2, 3, 32, 5, 4, False)
    x, _ = next(iter(train))
    assert x.shape == (5, 3, 32, 32)
    vx, vy = next(iter(val))
    assert vx.shape == (4, 3, 32, 32) and vy.tolist() == [0, 0, 1, 1]
    # a constant image stays constant through Resize + CenterCrop; ImageNet normalisation
    expected = (20 / 255 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(vx[0].mean((1, 2)), expected, atol=1e-3)
    assert transform_names(train.dataset) == ["RandomResizedCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    assert transform_names(val.dataset) == ["Resize", "CenterCrop", "ToTensor", "Normalize"]
    assert val.dataset.transform.transforms[0].size == int(32 * 256 / 224)


def test_imagefolder_default_size_and_no_augment(tmp_path):
    make_imagefolder(tmp_path)
    train, val, info = build_datasets(f"imagefolder:{tmp_path}", augment=False)
    assert info.image_size == 224 and train[0][0].shape == (3, 224, 224)
    assert torch.equal(train[0][0], train[0][0]) and transform_names(train) == transform_names(val)


def test_imagefolder_class_mismatch(tmp_path):
    make_imagefolder(tmp_path, val_classes=("cat", "cow"))
    with pytest.raises(
        LowRankError, match="train/ and val/ have different class folders \\(only in train: dog; only in val: cow\\)"
    ):
        build_datasets(f"imagefolder:{tmp_path}")


# -- missing datasets -------------------------------------------------------------------------------------------
def test_missing_folder(tmp_path):
    with pytest.raises(LowRankError) as err:
        build_loaders(f"cifar10:{tmp_path / 'nope'}")
    message = str(err.value)
    assert message.startswith(f"data folder {tmp_path / 'nope'} does not exist; create it and put the files there")
    assert f"{tmp_path / 'nope' / 'cifar-10-batches-py'} holding data_batch_1" in message and "--download" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "name,expected",
    [
        ("cifar10", "cifar-10-batches-py/data_batch_1"),
        ("cifar100", "cifar-100-python/train"),
        ("mnist", "MNIST/raw/train-images-idx3-ubyte"),
        ("fashion-mnist", "FashionMNIST/raw/train-images-idx3-ubyte"),
        ("svhn", "train_32x32.mat"),
    ],
)
def test_dataset_missing_from_folder(tmp_path, name, expected):
    with pytest.raises(
        LowRankError,
        match=f"{name} not found in {tmp_path}: expected {tmp_path / expected}; put the files there .* or add --download",
    ):
        build_datasets(f"{name}:{tmp_path}")


def test_imagefolder_missing_layout(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(
        LowRankError, match=f"imagefolder not found in {tmp_path}: expected {tmp_path / 'val'}; .*<class>/<image>"
    ) as err:
        build_datasets(f"imagefolder:{tmp_path}", download=True)  # nothing can download an image folder
    assert "--download" not in str(err.value)


def test_path_inside_the_dataset_folder_suggests_the_parent(tmp_path):
    fake_cifar10(tmp_path)
    with pytest.raises(LowRankError, match=f"the dataset is in {tmp_path}: write cifar10:{tmp_path}$"):
        build_datasets(f"cifar10:{tmp_path / 'cifar-10-batches-py'}")


def test_path_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(LowRankError, match=f"cifar10:PATH must be a folder, but {tmp_path / 'f'} is a file"):
        build_datasets(f"cifar10:{tmp_path / 'f'}")


def test_download_hands_a_missing_folder_to_torchvision(tmp_path, monkeypatch):
    import torchvision.datasets as D

    calls = []

    def fake_download(self):
        calls.append(self.root)
        raise OSError("no route to host")

    monkeypatch.setattr(D.CIFAR10, "download", fake_download)
    with pytest.raises(
        LowRankError,
        match=f"cannot download or read cifar10 in {tmp_path / 'new'} \\(no route to host\\); check the internet connection",
    ):
        build_datasets(f"cifar10:{tmp_path / 'new'}", download=True)
    assert calls == [str(tmp_path / "new")]


# -- loaders ------------------------------------------------------------------------------------------------------
def test_loaders_shapes_and_defaults():
    train, val, info = build_loaders("digits", batch_size=32, image_size=16, val_batch_size=100)
    x, y = next(iter(train))
    assert x.shape == (32, 3, 16, 16) and y.dtype == torch.int64
    assert len(train) == math.ceil(1437 / 32) and not train.drop_last  # the last, partial batch is kept
    assert [len(b[1]) for b in val] == [100, 100, 100, 60]
    assert train.num_workers == val.num_workers == 0 and not train.persistent_workers
    assert train.pin_memory == torch.cuda.is_available()
    assert sum(len(b[1]) for b in train) == info.train_size


def test_train_order_is_seeded():
    def first_labels(seed):
        torch.manual_seed(123)  # the global generator must not matter
        train, _, _ = build_loaders("synthetic", batch_size=16, image_size=8, seed=seed)
        return next(iter(train))[1].tolist()

    assert first_labels(0) == first_labels(0) != first_labels(1)
    _, val, _ = build_loaders("synthetic", batch_size=16, image_size=8)
    assert torch.equal(next(iter(val))[1], val.dataset.targets[:16])  # val is not shuffled


def test_distributed_needs_a_process_group():
    with pytest.raises(LowRankError, match="distributed=True needs an initialised torch.distributed process group"):
        build_loaders("synthetic", distributed=True)


def test_distributed_samplers(tmp_path):
    import torch.distributed as tdist
    from torch.utils.data.distributed import DistributedSampler

    tdist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        train, val, _ = build_loaders("synthetic", batch_size=64, image_size=8, seed=5, distributed=True)
    finally:
        tdist.destroy_process_group()
    assert isinstance(train.sampler, DistributedSampler) and isinstance(val.sampler, DistributedSampler)
    assert train.sampler.shuffle and train.sampler.seed == 5 and not val.sampler.shuffle
    train.sampler.set_epoch(1)
    order1 = list(train.sampler)
    train.sampler.set_epoch(2)
    assert sorted(order1) == list(range(1024)) and order1 != list(train.sampler)
    assert list(val.sampler) == list(range(256))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
        ({"workers": -1}, "workers must be an integer >= 0, got -1"),
        ({"image_size": 4}, "image_size must be an integer >= 8, got 4"),
        ({"val_batch_size": 2.5}, "val_batch_size must be an integer >= 1, got 2.5"),
        ({"seed": -1}, "seed must be an integer >= 0, got -1"),
    ],
)
def test_bad_loader_arguments(kwargs, message):
    with pytest.raises(LowRankError, match=message):
        build_loaders("synthetic", **kwargs)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_like_idx_files_right_in_path_raw_or_gzipped(tmp_path, gz):
    """The original sites' and Debian's dataset-fashion-mnist layout: the four files in PATH, maybe .gz."""
    import gzip

    data = fake_mnist(tmp_path / "staging", folder="x")
    for path in (tmp_path / "staging" / "x" / "raw").iterdir():
        target = tmp_path / "flat" / (path.name + (".gz" if gz else ""))
        target.parent.mkdir(exist_ok=True)
        target.write_bytes(gzip.compress(path.read_bytes()) if gz else path.read_bytes())
    train, val, info = build_datasets(f"fashion-mnist:{tmp_path / 'flat'}", augment=False)
    images, labels = data["t10k"]
    assert info.train_size == info.val_size == 6 and type(val).__name__ == "FashionMNIST"
    x, y = val[3]
    assert y == labels[3] and torch.allclose(
        x[0], (torch.as_tensor(images[3] / 255, dtype=torch.float32) - 0.2860) / 0.3530, atol=1e-5
    )


def test_a_cut_idx_file_is_one_line(tmp_path):
    fake_mnist(tmp_path / "s", folder="x")
    (tmp_path / "flat").mkdir()
    for path in (tmp_path / "s" / "x" / "raw").iterdir():
        (tmp_path / "flat" / path.name).write_bytes(path.read_bytes())
    cut = tmp_path / "flat" / "train-images-idx3-ubyte"
    cut.write_bytes(cut.read_bytes()[:-10])
    with pytest.raises(LowRankError, match=r"train-images-idx3-ubyte is cut or padded: its header says 6x28x28 values"):
        build_datasets(f"fashion-mnist:{tmp_path / 'flat'}")
