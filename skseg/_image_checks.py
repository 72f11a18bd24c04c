"""Checking a whole list of images before any expensive work: each image's
shape, read from a file's header, and its file read through (without
decoding it at full size) so that a truncated or corrupted file is reported
now, naming it, rather than in the middle of a long run.
"""

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ._image_decoding import (
    READ_ERRORS,
    TURNED_ORIENTATIONS,
    exif_orientation,
    pil_rows,
    row_strips,
)
from ._images import ImageError, ImageTooSmallError, as_array


def _describe(index, image):
    if isinstance(image, (str, os.PathLike)):
        return f"image {index} ({os.fspath(image)!r})"
    return f"image {index}"


def _check_decodes(img):
    """Find a truncated or corrupted file without decoding it at full size."""
    if img.format == "PNG":
        img.verify()  # every chunk and its checksum, to the end of the file
        return
    if img.format == "JPEG":
        width, height = img.size
        img.draft(img.mode, (max(1, width // 8), max(1, height // 8)))  # 1/64 of the pixels
    img.load()
    if img.mode == "F":
        _check_finite(img)


def _check_finite(img):
    # getextrema() skips NaN, so look at the values.
    for rows in row_strips(img.size[1], img.size[0], 1):
        if not np.isfinite(pil_rows(img, rows)).all():
            raise ValueError("it contains NaN or infinite values")


def _file_shape(path, where):
    if not path.is_file():
        raise ImageError(f"{where}: no such file.")
    try:
        with Image.open(path) as img:
            width, height = img.size
            if exif_orientation(img) in TURNED_ORIENTATIONS:
                width, height = height, width
            _check_decodes(img)
    except READ_ERRORS as exc:
        raise ImageError(f"{where} cannot be read as an image: {exc}") from exc
    return height, width


def image_shape(image, where="image"):
    """Return the ``(H, W)`` of one image (EXIF orientation applied), validating it.

    A file's size comes from its header; the file is read through to find
    truncation or corruption now rather than in the middle of a long run, but
    without decoding it at full size where the format allows (PNG checksums,
    JPEG at 1/8 scale).

    Raises
    ------
    ImageError
        A ``ValueError`` naming the image, for a missing, unreadable or
        malformed image.
    TypeError
        For an object that is not an image.
    """
    if isinstance(image, (str, os.PathLike)):
        return _file_shape(Path(image), where)
    if isinstance(image, Image.Image):
        if image.mode == "F":
            try:
                _check_finite(image)
            except ValueError as exc:
                raise ImageError(f"{where}: {exc}.") from None
        width, height = image.size
        return int(height), int(width)
    if isinstance(image, (np.ndarray, torch.Tensor)):
        height, width = as_array(image, where).shape[:2]
        return int(height), int(width)
    raise TypeError(
        f"{where} is a {type(image).__name__}; expected a file path, a PIL image, a "
        "numpy array or a torch tensor."
    )

def _checked_shape(index, image, min_side):
    where = _describe(index, image)
    height, width = image_shape(image, where)
    if height == 0 or width == 0:
        raise ImageError(f"{where} has zero size ({height} x {width}).")
    if height < min_side or width < min_side:
        raise ImageTooSmallError(
            f"{where} is {height} x {width} pixels, smaller than one "
            f"{min_side} x {min_side} patch."
        )
    return height, width


def as_image_list(images):
    """The images of ``X`` as a sequence, one item per image.

    A 4-D array ``(N, H, W, C)`` or tensor (``(N, C, H, W)`` or
    ``(N, H, W, C)``) is a batch: its items are views, not copies.
    """
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        if isinstance(images, np.ndarray) and images.shape[3] not in (3, 4):
            raise ValueError(
                f"X is an array of shape {images.shape}; a batch of images must be "
                "(N, H, W, 3) or (N, H, W, 4)."
            )
        images = list(images)
    if isinstance(images, (str, os.PathLike, np.ndarray, Image.Image, torch.Tensor)):
        raise TypeError(
            "X must be a list of images or a 4-D batch (N, H, W, C), not a single "
            "image; pass [image]."
        )
    try:
        n_images = len(images)
    except TypeError:
        raise TypeError(
            f"X must be a list of images, got {type(images).__name__}."
        ) from None
    if n_images == 0:
        raise ValueError("X is empty: at least one image is needed.")
    return images


def check_each_image(images, *, min_side=1):
    """Validate every image; return its ``(H, W)`` or the error it raised.

    Files are read in threads (decoding releases the GIL), so checking a
    large folder costs a fraction of the ViT pass that follows. An error is an
    :class:`ImageError` (:class:`ImageTooSmallError` for an image smaller than
    ``min_side``) or a ``TypeError``, its message naming the image.
    """
    images = as_image_list(images)

    def check(index):
        try:
            return _checked_shape(index, images[index], min_side)
        except (ValueError, TypeError) as exc:
            return exc

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(check, range(len(images))))


def check_images(images, *, min_side=1):
    """Validate a list of images and return their ``(H, W)`` shapes.

    Parameters
    ----------
    images : sequence or 4-D array or tensor
        Paths, PIL images, numpy arrays or torch tensors, or a batch.
    min_side : int, default=1
        The smallest allowed height and width (a ViT needs one whole patch).

    Returns
    -------
    shapes : list of tuple of int

    Raises
    ------
    ImageError or TypeError
        For the first bad image, naming its index (and path).
    """
    results = check_each_image(images, min_side=min_side)
    for result in results:
        if isinstance(result, Exception):
            raise result
    return results

