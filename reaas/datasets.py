"""Dataset loaders shared by the trainer, the edge client and the benchmarks.

Every loader returns ``(images, labels)``: images float32 ``[N, C, H, W]`` in [0, 1], labels int64 ``[N]``.
Nothing is downloaded: files come from the Debian package ``dataset-fashion-mnist``, scikit-learn, or the
user's own copies in their standard formats. A missing or corrupt file raises :class:`DatasetError` naming
the path and saying how to get the data.
"""

from __future__ import annotations

import functools
import gzip
import os
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

_HINTS = {
    "fashion-mnist": "install it with `apt-get install -y dataset-fashion-mnist` (or `make install`), "
                     "or pass the directory holding the four *-ubyte.gz IDX files",
    "cifar10": "download 'CIFAR-10 python version' and pass the extracted cifar-10-batches-py directory",
    "svhn": "download the cropped-digits files train_32x32.mat / test_32x32.mat and pass their directory",
    "stl10": "download 'STL-10 binary' and pass the extracted stl10_binary directory",
    "tiny-imagenet": "download tiny-imagenet-200.zip and pass the extracted tiny-imagenet-200 directory",
}


class DatasetError(Exception):
    """A data file is missing or corrupt; the message names the path and how to get the data."""

    def __init__(self, dataset: str, path: os.PathLike | str, problem: str):
        super().__init__(f"{dataset}: {problem}: {path} — {_HINTS.get(dataset, '')}".rstrip(" —"))
        self.dataset = dataset
        self.path = Path(path)


def _check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def _require(dataset: str, path: Path) -> Path:
    if not path.exists():
        raise DatasetError(dataset, path, "file not found")
    return path


def _to_unit_float(images_uint8: np.ndarray) -> np.ndarray:
    return images_uint8.astype(np.float32) / np.float32(255.0)


# ---- IDX (MNIST family) ----

def read_idx(path: Path, dataset: str = "fashion-mnist") -> np.ndarray:
    """Read a (possibly gzipped) IDX file of unsigned bytes into an array of its declared shape."""
    opener: Callable = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(_require(dataset, path), "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as error:
        raise DatasetError(dataset, path, f"unreadable ({error})") from error
    if len(raw) < 4:
        raise DatasetError(dataset, path, "truncated IDX header")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08 or ndim < 1 or len(raw) < 4 + 4 * ndim:
        raise DatasetError(dataset, path, "not an unsigned-byte IDX file")
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DatasetError(dataset, path, f"IDX body has {body.size} bytes, header says {shape}")
    return body.reshape(shape)


def load_fashion_mnist(split: str = "train", root: os.PathLike | str | None = None):
    """Fashion-MNIST from gzipped IDX files: ([N,1,28,28] float32, [N] int64); N = 60,000 or 10,000."""
    _check_split(split)
    root = Path(root) if root is not None else FASHION_MNIST_DIR
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(root / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(root / f"{prefix}-labels-idx1-ubyte.gz")
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DatasetError("fashion-mnist", root,
                           f"image/label files disagree: {images.shape} vs {labels.shape}")
    return _to_unit_float(images)[:, None], labels.astype(np.int64)


# ---- scikit-learn digits ----

def load_digits_28(split: str = "train", test_fraction: float = 0.2, seed: int = 0):
    """scikit-learn's 8x8 digits, bilinearly resized to [N,1,28,28] in [0,1]; a seeded train/test split."""
    _check_split(split)
    from scipy.ndimage import zoom
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.astype(np.float32) / np.float32(16.0)
    resized = np.clip(zoom(images, (1, 28 / 8, 28 / 8), order=1), 0.0, 1.0).astype(np.float32)
    order = np.random.default_rng(seed).permutation(len(resized))
    n_test = int(round(test_fraction * len(resized)))
    chosen = order[n_test:] if split == "train" else order[:n_test]
    return resized[chosen][:, None], bunch.target[chosen].astype(np.int64)


# ---- CIFAR10 python pickles ----

def load_cifar10(root: os.PathLike | str, split: str = "train"):
    """CIFAR10 from the python-pickle batches in cifar-10-batches-py: ([N,3,32,32], [N])."""
    _check_split(split)
    root = Path(root)
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    images, labels = [], []
    for name in names:
        path = _require("cifar10", root / name)
        try:
            with open(path, "rb") as handle:
                batch = pickle.load(handle, encoding="bytes")
            data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            targets = np.asarray(batch[b"labels"], dtype=np.int64)
        except (pickle.UnpicklingError, KeyError, ValueError, EOFError, TypeError) as error:
            raise DatasetError("cifar10", path, f"corrupt batch ({error})") from error
        if len(data) != len(targets):
            raise DatasetError("cifar10", path, "data and labels differ in length")
        images.append(data)
        labels.append(targets)
    return _to_unit_float(np.concatenate(images)), np.concatenate(labels)


# ---- SVHN .mat ----

def load_svhn(root: os.PathLike | str, split: str = "train"):
    """SVHN cropped digits from train_32x32.mat / test_32x32.mat: ([N,3,32,32], [N]); label 10 means 0."""
    _check_split(split)
    from scipy.io import loadmat

    path = _require("svhn", Path(root) / f"{split}_32x32.mat")
    try:
        mat = loadmat(path)
        data = np.asarray(mat["X"], dtype=np.uint8)  # [32, 32, 3, N]
        targets = np.asarray(mat["y"], dtype=np.int64).reshape(-1)
    except (ValueError, KeyError, OSError, TypeError) as error:
        raise DatasetError("svhn", path, f"corrupt .mat file ({error})") from error
    if data.ndim != 4 or data.shape[:3] != (32, 32, 3) or data.shape[3] != len(targets):
        raise DatasetError("svhn", path, f"unexpected X shape {data.shape}")
    return _to_unit_float(data.transpose(3, 2, 0, 1)), np.where(targets == 10, 0, targets)


# ---- STL10 binaries ----

def load_stl10(root: os.PathLike | str, split: str = "train"):
    """STL10 labelled images from stl10_binary/{train,test}_{X,y}.bin: ([N,3,96,96], [N] in 0..9)."""
    _check_split(split)
    root = Path(root)
    x_path = _require("stl10", root / f"{split}_X.bin")
    y_path = _require("stl10", root / f"{split}_y.bin")
    raw = np.fromfile(x_path, dtype=np.uint8)
    targets = np.fromfile(y_path, dtype=np.uint8).astype(np.int64)
    if raw.size % (3 * 96 * 96) or raw.size // (3 * 96 * 96) != targets.size:
        raise DatasetError("stl10", x_path, f"{raw.size} bytes do not hold {targets.size} 3x96x96 images")
    if targets.size and (targets.min() < 1 or targets.max() > 10):
        raise DatasetError("stl10", y_path, "labels must lie in 1..10")
    # Each image is stored column-major: channel, then column, then row.
    images = raw.reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2)
    return _to_unit_float(images), targets - 1


# ---- Tiny-ImageNet folder tree ----

def load_tiny_imagenet(root: os.PathLike | str, split: str = "train"):
    """Tiny-ImageNet-200 folder tree: ([N,3,64,64], [N]); split 'test' reads the labelled val/ folder."""
    _check_split(split)
    from PIL import Image, UnidentifiedImageError

    root = Path(root)
    wnids = [line.strip() for line in _require("tiny-imagenet", root / "wnids.txt").read_text().splitlines()
             if line.strip()]
    index = {wnid: i for i, wnid in enumerate(wnids)}
    if split == "train":
        files = [(path, index[wnid]) for wnid in wnids
                 for path in sorted(_require("tiny-imagenet", root / "train" / wnid / "images").iterdir())]
    else:
        annotations = _require("tiny-imagenet", root / "val" / "val_annotations.txt")
        files = []
        for line in annotations.read_text().splitlines():
            fields = line.split("\t")
            if len(fields) < 2 or fields[1] not in index:
                raise DatasetError("tiny-imagenet", annotations, f"bad annotation line {line!r}")
            files.append((root / "val" / "images" / fields[0], index[fields[1]]))
    images = np.empty((len(files), 3, 64, 64), dtype=np.uint8)
    for i, (path, _) in enumerate(files):
        try:
            with Image.open(_require("tiny-imagenet", path)) as image:
                pixels = np.asarray(image.convert("RGB").resize((64, 64)), dtype=np.uint8)
        except (UnidentifiedImageError, OSError) as error:
            raise DatasetError("tiny-imagenet", path, f"unreadable image ({error})") from error
        images[i] = pixels.transpose(2, 0, 1)
    return _to_unit_float(images), np.asarray([label for _, label in files], dtype=np.int64)


LOADERS: dict[str, Callable] = {
    "fashion-mnist": load_fashion_mnist,
    "digits": load_digits_28,
    "cifar10": load_cifar10,
    "svhn": load_svhn,
    "stl10": load_stl10,
    "tiny-imagenet": load_tiny_imagenet,
}


def load_dataset(name: str, split: str = "train", root: os.PathLike | str | None = None):
    """Load any supported dataset by name; ``root`` is required for the user-provided ones."""
    if name not in LOADERS:
        raise ValueError(f"unknown dataset {name!r}; choose from {sorted(LOADERS)}")
    if name == "digits":
        return load_digits_28(split)
    if name == "fashion-mnist":
        return load_fashion_mnist(split, root)
    if root is None:
        raise DatasetError(name, "<no --data-root given>", "this dataset is read from your own files")
    return LOADERS[name](root, split)


def evaluation_subset_indices(n: int = 500, stride: int = 20, total: int = 10_000) -> np.ndarray:
    """The fixed evaluation subset: test indices ≡ 0 (mod stride), the first n of them (a prefix keeps
    smaller runs comparable with the 500-input one)."""
    indices = np.arange(0, total, stride, dtype=np.int64)
    if not 1 <= n <= len(indices):
        raise ValueError(f"n must lie in [1, {len(indices)}], got {n}")
    return indices[:n]


@dataclass(frozen=True)
class DataSource:
    """A dataset by name and, for the user-provided ones, the directory of its files (no download)."""

    name: str = "fashion-mnist"
    root: str | None = None  # None: the default place (Fashion-MNIST's Debian package, scikit-learn)

    def __post_init__(self) -> None:
        if self.name not in LOADERS:
            raise ValueError(f"unknown dataset {self.name!r}; choose from {sorted(LOADERS)}")

    def load(self, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
        """(images [N, C, H, W] float32 in [0, 1], labels [N] int64), read once per process.

        The arrays are shared between callers: treat them as read-only.
        """
        return _load_once(self.name, split, self.root)


@functools.lru_cache(maxsize=4)
def _load_once(name: str, split: str, root: str | None) -> tuple[np.ndarray, np.ndarray]:
    images, labels = load_dataset(name, split, root)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels
