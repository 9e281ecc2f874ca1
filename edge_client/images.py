"""Reading the client's own images: a ``.npy`` array, or a folder (or one file) of PNG / JPEG images.

The result is what the encoder takes: float32 ``[N, C, H, W]`` in [0, 1], with one name per image. A uint8
array (or any PNG / JPEG) is scaled by 1/255; a float array must already lie in [0, 1]. An array may be
channels-last (``[N, H, W, C]``), and a single-channel one may leave the channel out (``[N, H, W]``); a
single image may leave out N. Nothing is resized: an image of another size is refused, naming both sizes.
PNG / JPEG need Pillow (``pip install 'reaas[images]'``), imported only when such files are read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SUFFIXES = (".png", ".jpg", ".jpeg")


class ImageError(ValueError):
    """The images cannot be read, or do not have the shape or value range the encoder takes."""


def read_images(path: str | Path, input_shape: tuple[int, int, int]) -> tuple[list[str], np.ndarray]:
    """(names [N], images [N, C, H, W] float32 in [0, 1]) from a .npy file, an image file or a folder."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in SUFFIXES)
        if not files:
            raise ImageError(f"{path}: no {'/'.join(s[1:].upper() for s in SUFFIXES)} files in this folder")
        return [p.name for p in files], np.stack([_read_picture(p, input_shape) for p in files])
    if not path.exists():
        raise ImageError(f"{path}: no such file or folder")
    if path.suffix.lower() == ".npy":
        images = _as_batch(_load_npy(path), input_shape, path)
        return [f"{path.name}[{i}]" for i in range(len(images))], _to_unit(images, path)
    if path.suffix.lower() in SUFFIXES:
        return [path.name], _read_picture(path, input_shape)[None]
    raise ImageError(f"{path}: expected a .npy array, a PNG / JPEG file or a folder of them")


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise ImageError(f"{path}: not a readable .npy array ({error})") from error


def _as_batch(array: np.ndarray, input_shape: tuple[int, int, int], path: Path) -> np.ndarray:
    """``array`` as [N, C, H, W]: adds N and a single channel where left out, moves a last channel axis."""
    channels, height, width = input_shape
    shape = tuple(array.shape)
    if shape[-3:] == (channels, height, width) and array.ndim in (3, 4):
        batch = array.reshape(-1, channels, height, width)
    elif shape[-3:] == (height, width, channels) and array.ndim in (3, 4):
        batch = np.moveaxis(array.reshape(-1, height, width, channels), -1, 1)
    elif channels == 1 and shape[-2:] == (height, width) and array.ndim in (2, 3):
        batch = array.reshape(-1, 1, height, width)
    else:
        raise ImageError(f"{path}: images of shape {list(shape)}, but the encoder takes "
                         f"[N, {channels}, {height}, {width}] (or [N, {height}, {width}, {channels}]"
                         + (f", [N, {height}, {width}]" if channels == 1 else "") + ")")
    if not len(batch):
        raise ImageError(f"{path}: no images in the array")
    return batch


def _to_unit(images: np.ndarray, path: Path) -> np.ndarray:
    """uint8 scaled to [0, 1]; floats checked to lie in [0, 1]; anything else refused."""
    if images.dtype == np.uint8:
        return images.astype(np.float32) / np.float32(255.0)
    if not np.issubdtype(images.dtype, np.floating):
        raise ImageError(f"{path}: pixel values of type {images.dtype}; expected uint8 (0-255) or floats in "
                         "[0, 1]")
    if not np.all(np.isfinite(images)) or images.min() < 0.0 or images.max() > 1.0:
        raise ImageError(f"{path}: pixel values must lie in [0, 1], found [{np.nanmin(images):.4g}, "
                         f"{np.nanmax(images):.4g}] (divide 0-255 values by 255, or save them as uint8)")
    return images.astype(np.float32)


def _read_picture(path: Path, input_shape: tuple[int, int, int]) -> np.ndarray:
    """One PNG / JPEG as [C, H, W] float32 in [0, 1], converted to grey or RGB as the encoder takes."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise ImageError("reading PNG / JPEG files needs Pillow: pip install 'reaas[images]' "
                         "(or pass the images as a .npy array)") from None
    channels, height, width = input_shape
    if channels not in (1, 3):
        raise ImageError(f"the encoder takes {channels}-channel images; pass them as a .npy array")
    try:
        with Image.open(path) as picture:
            pixels = np.asarray(picture.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as error:
        raise ImageError(f"{path}: not a readable image ({error})") from error
    if pixels.shape[:2] != (height, width):
        raise ImageError(f"{path}: {pixels.shape[1]}x{pixels.shape[0]} pixels, but the encoder takes "
                         f"{width}x{height} images (resize it first)")
    return _to_unit(pixels.reshape(height, width, channels).transpose(2, 0, 1), path)
