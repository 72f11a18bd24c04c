"""Reading images, and checking a whole list of them before any expensive work."""

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _describe(index, image):
    if isinstance(image, (str, os.PathLike)):
        return f"image {index} ({os.fspath(image)!r})"
    return f"image {index}"


def _open_path(path):
    """Open and fully decode a file, EXIF orientation applied."""
    with Image.open(path) as img:
        img.load()
        return ImageOps.exif_transpose(img)


def _pil_to_float(img):
    if img.mode in _SIXTEEN_BIT_MODES:
        grey = np.asarray(img, dtype=np.float32) / 65535.0
        return np.repeat(np.clip(grey, 0.0, 1.0)[..., None], 3, axis=2)
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


def _array_to_float(array):
    if array.ndim == 3:
        array = array[..., :3]  # an alpha channel carries no colour
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / 255.0
    elif array.dtype == np.uint16:
        array = array.astype(np.float32) / 65535.0
    else:
        array = array.astype(np.float32, copy=False)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    return array


def load_rgb(image):
    """Return an image as a float32 ``(H, W, 3)`` array with values in [0, 1].

    Parameters
    ----------
    image : str, path-like, PIL.Image.Image or ndarray
        A file (EXIF orientation honoured), a PIL image, or an array ``HxW``,
        ``HxWx3`` or ``HxWx4`` (alpha dropped) of ``uint8``, ``uint16`` or
        floats in [0, 1].

    Returns
    -------
    rgb : ndarray of shape (H, W, 3), dtype float32
    """
    if isinstance(image, (str, os.PathLike)):
        return _pil_to_float(_open_path(image))
    if isinstance(image, Image.Image):
        return _pil_to_float(image)
    return _array_to_float(np.asarray(image))


def _check_array(array, where):
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ValueError(
            f"{where} has shape {array.shape}; expected (H, W), (H, W, 3) or (H, W, 4)."
        )
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise ValueError(f"{where} contains NaN or infinite values.")
        if array.size and (array.min() < 0.0 or array.max() > 1.0):
            raise ValueError(
                f"{where} is a float array with values outside [0, 1] "
                f"(min {array.min():.3g}, max {array.max():.3g}); scale it to [0, 1] "
                "or pass uint8."
            )
    elif array.dtype not in (np.uint8, np.uint16):
        raise TypeError(
            f"{where} has dtype {array.dtype}; expected uint8, uint16 or float in [0, 1]."
        )
    return array.shape[:2]


def image_shape(image, where="image"):
    """Return the ``(H, W)`` of one image, validating it on the way.

    Files are fully decoded so that a truncated or corrupted file is found now,
    not in the middle of a long run.
    """
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise ValueError(f"{where}: no such file.")
        try:
            img = _open_path(path)
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError,
                Image.DecompressionBombError) as exc:
            raise ValueError(f"{where} cannot be read as an image: {exc}") from exc
        width, height = img.size
    elif isinstance(image, Image.Image):
        width, height = image.size
    elif isinstance(image, np.ndarray):
        height, width = _check_array(image, where)
    else:
        raise TypeError(
            f"{where} is a {type(image).__name__}; expected a file path, a PIL image "
            "or a numpy array."
        )
    return int(height), int(width)


def _checked_shape(index, image, min_side):
    where = _describe(index, image)
    height, width = image_shape(image, where)
    if height == 0 or width == 0:
        raise ValueError(f"{where} has zero size ({height} x {width}).")
    if height < min_side or width < min_side:
        raise ValueError(
            f"{where} is {height} x {width} pixels, smaller than one "
            f"{min_side} x {min_side} patch."
        )
    return height, width


def _as_image_list(images):
    if isinstance(images, (str, os.PathLike, np.ndarray, Image.Image)):
        raise TypeError(
            "X must be a list of images, not a single image; wrap it in a list."
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

    Files are decoded in threads (decoding releases the GIL), so checking a
    large folder costs a fraction of the ViT pass that follows.
    """
    images = _as_image_list(images)

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
    images : sequence
        Paths, PIL images or numpy arrays.
    min_side : int, default=1
        The smallest allowed height and width (a ViT needs one whole patch).

    Returns
    -------
    shapes : list of tuple of int

    Raises
    ------
    ValueError or TypeError
        For the first bad image, naming its index (and path).
    """
    results = check_each_image(images, min_side=min_side)
    for result in results:
        if isinstance(result, Exception):
            raise result
    return results


def content_hash(image):
    """A digest of an image's content, for the feature cache."""
    digest = hashlib.sha1()
    if isinstance(image, (str, os.PathLike)):
        with open(image, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    elif isinstance(image, Image.Image):
        digest.update(f"{image.mode}{image.size}".encode())
        digest.update(image.tobytes())
    else:
        array = np.ascontiguousarray(image)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.data)
    return digest.hexdigest()
