"""Every loader reads small files written in its real on-disk format, and fails clearly on bad ones."""

import gzip
import pickle
import struct

import numpy as np
import pytest
from scipy.io import savemat

from reaas import datasets
from reaas.datasets import DatasetError


def _write_idx(path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def _assert_images(images, labels, shape, n):
    assert images.dtype == np.float32 and labels.dtype == np.int64
    assert images.shape == (n, *shape) and labels.shape == (n,)
    assert images.min() >= 0.0 and images.max() <= 1.0


def test_fashion_mnist_idx_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=5, dtype=np.uint8)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", pixels)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels)
    images, targets = datasets.load_fashion_mnist("test", root=tmp_path)
    _assert_images(images, targets, (1, 28, 28), 5)
    np.testing.assert_array_equal(images[:, 0], pixels / np.float32(255))
    np.testing.assert_array_equal(targets, labels)


def test_fashion_mnist_missing_file_names_path_and_hint(tmp_path):
    with pytest.raises(DatasetError) as error:
        datasets.load_fashion_mnist("train", root=tmp_path)
    assert "train-images-idx3-ubyte.gz" in str(error.value)
    assert "apt-get install -y dataset-fashion-mnist" in str(error.value)


def test_fashion_mnist_truncated_file_is_reported(tmp_path):
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((5, 28, 28), np.uint8))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(5, np.uint8))
    raw = gzip.decompress((tmp_path / "t10k-images-idx3-ubyte.gz").read_bytes())
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw[:-10]))
    with pytest.raises(DatasetError, match="IDX body"):
        datasets.load_fashion_mnist("test", root=tmp_path)


@pytest.mark.skipif(not datasets.FASHION_MNIST_DIR.exists(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist_from_debian_package():
    images, labels = datasets.load_fashion_mnist("test")
    _assert_images(images, labels, (1, 28, 28), 10_000)
    assert np.bincount(labels).tolist() == [1000] * 10


def test_digits_resized_to_28():
    train, train_labels = datasets.load_digits_28("train")
    test, test_labels = datasets.load_digits_28("test")
    _assert_images(train, train_labels, (1, 28, 28), len(train))
    assert len(train) + len(test) == 1797 and set(test_labels.tolist()) <= set(range(10))


def test_cifar10_pickles(tmp_path):
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, size=(3, 3072), dtype=np.uint8), b"labels": [1, 2, 3]}
        with open(tmp_path / name, "wb") as handle:
            pickle.dump(batch, handle)
    images, labels = datasets.load_cifar10(tmp_path, "train")
    _assert_images(images, labels, (3, 32, 32), 15)
    with open(tmp_path / "test_batch", "rb") as handle:
        raw = pickle.load(handle)[b"data"]
    test_images, _ = datasets.load_cifar10(tmp_path, "test")
    # Channel-major rows: the first 1024 bytes are the red plane.
    np.testing.assert_array_equal(test_images[0, 0].reshape(-1), raw[0, :1024] / np.float32(255))
    (tmp_path / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match="test_batch"):
        datasets.load_cifar10(tmp_path, "test")


def test_svhn_mat_maps_label_10_to_0(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, size=(32, 32, 3, 4), dtype=np.uint8)
    savemat(tmp_path / "test_32x32.mat", {"X": x, "y": np.array([[10], [1], [9], [10]], dtype=np.uint8)})
    images, labels = datasets.load_svhn(tmp_path, "test")
    _assert_images(images, labels, (3, 32, 32), 4)
    assert labels.tolist() == [0, 1, 9, 0]
    np.testing.assert_array_equal(images[2, 1], x[:, :, 1, 2] / np.float32(255))
    with pytest.raises(DatasetError, match="train_32x32.mat"):
        datasets.load_svhn(tmp_path, "train")


def test_stl10_column_major_binaries(tmp_path):
    rng = np.random.default_rng(3)
    images_chw = rng.integers(0, 256, size=(2, 3, 96, 96), dtype=np.uint8)
    images_chw.transpose(0, 1, 3, 2).tofile(tmp_path / "test_X.bin")
    np.array([1, 10], dtype=np.uint8).tofile(tmp_path / "test_y.bin")
    images, labels = datasets.load_stl10(tmp_path, "test")
    _assert_images(images, labels, (3, 96, 96), 2)
    np.testing.assert_array_equal(images, images_chw / np.float32(255))
    assert labels.tolist() == [0, 9]
    np.array([1], dtype=np.uint8).tofile(tmp_path / "test_y.bin")
    with pytest.raises(DatasetError, match="test_X.bin"):
        datasets.load_stl10(tmp_path, "test")


def test_tiny_imagenet_tree(tmp_path):
    from PIL import Image

    wnids = ["n01", "n02"]
    (tmp_path / "wnids.txt").write_text("\n".join(wnids) + "\n")
    rng = np.random.default_rng(4)
    for wnid in wnids:
        folder = tmp_path / "train" / wnid / "images"
        folder.mkdir(parents=True)
        for j in range(2):
            pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{wnid}_{j}.JPEG")
    (tmp_path / "val" / "images").mkdir(parents=True)
    solid = np.full((64, 64, 3), 200, dtype=np.uint8)
    Image.fromarray(solid).save(tmp_path / "val" / "images" / "val_0.png")
    (tmp_path / "val" / "val_annotations.txt").write_text("val_0.png\tn02\t0\t0\t63\t63\n")
    images, labels = datasets.load_tiny_imagenet(tmp_path, "train")
    _assert_images(images, labels, (3, 64, 64), 4)
    assert labels.tolist() == [0, 0, 1, 1]
    val_images, val_labels = datasets.load_tiny_imagenet(tmp_path, "test")
    assert val_labels.tolist() == [1]
    np.testing.assert_allclose(val_images[0], 200 / 255, atol=1e-6)
    (tmp_path / "val" / "images" / "val_0.png").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="val_0.png"):
        datasets.load_tiny_imagenet(tmp_path, "test")


def test_load_dataset_requires_root_for_user_files():
    with pytest.raises(DatasetError, match="your own files"):
        datasets.load_dataset("cifar10", "train")
    with pytest.raises(ValueError, match="unknown dataset"):
        datasets.load_dataset("imagenet")


def test_evaluation_subset_is_every_twentieth_test_image():
    indices = datasets.evaluation_subset_indices(500)
    assert len(indices) == 500 and indices[0] == 0 and indices[-1] == 9980
    assert np.all(indices % 20 == 0)
    np.testing.assert_array_equal(datasets.evaluation_subset_indices(10), indices[:10])


def test_data_source_loads_once_read_only_and_names_unknown_datasets():
    source = datasets.DataSource("digits")
    images, labels = source.load("train")
    again, _ = datasets.DataSource("digits").load("train")
    assert again is images  # one read per process, shared
    assert not images.flags.writeable and not labels.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        images[0, 0, 0, 0] = 1.0
    np.testing.assert_array_equal(images, datasets.load_digits_28("train")[0])
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        datasets.DataSource("imagenet")
