"""Reading the client's own images: accepted layouts, the [0, 1] range, and clear refusals."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from edge_client.images import ImageError, read_images


def test_array_layouts_become_nchw_in_unit_range(tmp_path):
    rng = np.random.default_rng(0)
    pixels = (rng.random((4, 3, 8, 8)) * 255).astype(np.uint8)
    expected = pixels.astype(np.float32) / 255
    for name, array in {"nchw": pixels, "nhwc": pixels.transpose(0, 2, 3, 1), "chw": pixels[0]}.items():
        np.save(tmp_path / f"{name}.npy", array)
        names, images = read_images(tmp_path / f"{name}.npy", (3, 8, 8))
        assert images.dtype == np.float32 and images.shape[1:] == (3, 8, 8)
        np.testing.assert_array_equal(images, expected[:len(images)])
        assert names[0] == f"{name}.npy[0]"
    np.save(tmp_path / "grey.npy", expected[:, 0])  # [N, H, W] floats for a one-channel encoder
    _, images = read_images(tmp_path / "grey.npy", (1, 8, 8))
    np.testing.assert_array_equal(images, expected[:, :1])


def test_refusals_name_the_problem(tmp_path):
    np.save(tmp_path / "neg.npy", np.full((1, 1, 8, 8), -0.5, np.float32))
    with pytest.raises(ImageError, match=r"must lie in \[0, 1\], found \[-0.5"):
        read_images(tmp_path / "neg.npy", (1, 8, 8))
    np.save(tmp_path / "nan.npy", np.full((1, 1, 8, 8), np.nan, np.float32))
    with pytest.raises(ImageError, match=r"\[0, 1\]"):
        read_images(tmp_path / "nan.npy", (1, 8, 8))
    np.save(tmp_path / "shape.npy", np.zeros((2, 3, 8, 8), np.float32))
    with pytest.raises(ImageError, match=r"shape \[2, 3, 8, 8\], but the encoder takes \[N, 1, 8, 8\]"):
        read_images(tmp_path / "shape.npy", (1, 8, 8))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageError, match="no PNG/JPG/JPEG files"):
        read_images(tmp_path / "empty", (1, 8, 8))
    (tmp_path / "x.gif").write_bytes(b"GIF89a")
    with pytest.raises(ImageError, match="expected a .npy array"):
        read_images(tmp_path / "x.gif", (1, 8, 8))


def test_pictures_without_pillow_say_how_to_get_it(tmp_path, monkeypatch):
    (tmp_path / "a.png").write_bytes(b"\x89PNG")
    monkeypatch.setitem(sys.modules, "PIL", None)  # import PIL now raises ImportError
    with pytest.raises(ImageError, match=r"needs Pillow: pip install 'reaas\[images\]'"):
        read_images(tmp_path, (1, 8, 8))
