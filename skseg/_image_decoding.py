"""Decoding images: files opened (EXIF orientation applied), and every kind
of input read as float RGB pixels in [0, 1], reduced and resized.

How pixel values become floats in [0, 1], one rule for every kind of input:

- 8-bit data (``uint8`` arrays and tensors, PIL modes "1", "L", "P", "RGB",
  "RGBA", "CMYK", "YCbCr", "LAB", "HSV", ...) is divided by 255.
- 16-bit data (``uint16`` arrays, PIL modes "I;16*", 16-bit PNG and TIFF files)
  is divided by 65535.
- Float arrays and tensors must already lie in [0, 1]; anything else is
  refused, so a forgotten scaling is reported rather than guessed at.
- PIL modes "I" (32-bit integers) and "F" (32-bit floats), as float and
  integer TIFF files give, have no fixed range: non-negative images are divided
  by the smallest of 1, 255 and 65535 that holds every value, and others are
  stretched from their own minimum and maximum to [0, 1].

Large images are reduced before they become floats: JPEG files decode at a
reduced DCT scale, and every input is averaged over integer boxes while it
stays at least twice the size it will be resized to, so the full-resolution
pixels are never held as floats.
"""

import io
import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from ._digest import bytes_digest
from ._images import ImageError, as_array
from ._working_memory import IMAGE_STRIP, rows_within

# Modes numpy holds as they are; every other mode is converted to RGB.
_NUMPY_MODES = {"L", "LA", "RGB", "RGBA", "RGBX", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}
_UNBOUNDED_MODES = {"I", "F"}
READ_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, ValueError,
               Image.DecompressionBombError)
# A float32 RGB pixel, as a large image is reduced strip by strip.
_FLOAT_RGB_BYTES = 12

# EXIF orientations that show the stored picture turned by 90 degrees.
TURNED_ORIENTATIONS = (5, 6, 7, 8)


def exif_orientation(img):
    """The EXIF orientation tag, read without decoding pixels."""
    if img.format == "PNG":
        # PIL's PNG getexif() decodes the whole image to look for a late eXIf chunk.
        exif = Image.Exif()
        if img.info.get("exif"):
            exif.load(img.info["exif"])
    else:
        exif = img.getexif()
    return exif.get(0x0112, 1)


class ExtractedImagePath(str):
    """The path of an image file whose features were extracted from the
    content with digest ``content_key`` (:func:`content_hash`).

    Reading it checks that the file still holds that content, so pixels are
    never taken from another image than the features (a file moved, renamed
    or rewritten since the extraction).
    """

    def __new__(cls, path, content_key):
        self = super().__new__(cls, os.fspath(path))
        self.content_key = content_key
        return self

    def __reduce__(self):
        return (ExtractedImagePath, (str(self), self.content_key))


def _checked_source(path):
    """What :func:`PIL.Image.open` reads for ``path``: its bytes, checked
    against the content the features came from, if the path says which."""
    expected = getattr(path, "content_key", None)
    if expected is None:
        return path
    with open(path, "rb") as handle:
        data = handle.read()
    found = bytes_digest(data)
    if found != expected:
        raise ImageError(
            f"{os.fspath(path)!r} is not the image its features were extracted from "
            f"(its content is {found}, the features' image was {expected}): it was "
            "moved, renamed or changed since; give it again so that its features are "
            "extracted again."
        )
    return io.BytesIO(data)


def open_image(path, cover=None):
    """Open and decode a file, EXIF orientation applied: the one opener of
    image files, for the features and the refinement alike.

    With ``cover`` ``(height, width)``, a JPEG decodes at the smallest DCT
    scale (1/2, 1/4, 1/8) whose upright picture still covers it. An
    :class:`ExtractedImagePath` is decoded only if it holds its content.

    Returns
    -------
    img : PIL.Image.Image
        Decoded (its file closed), in the file's own mode.

    Raises
    ------
    ImageError
        Naming the file, if it cannot be read or decoded, or no longer holds
        the content its features were extracted from.
    """
    try:
        source = _checked_source(path)
    except OSError as exc:
        raise ImageError(f"{os.fspath(path)!r} cannot be read as an image: {exc}") from exc
    try:
        with Image.open(source) as img:  # closes the file; decoded pixels stay
            if cover is not None:
                height, width = cover
                if exif_orientation(img) in TURNED_ORIENTATIONS:  # stored on its side
                    height, width = width, height
                img.draft(img.mode, (width, height))
            img.load()
            # In place: a copy only for a turned image, never of an upright one.
            ImageOps.exif_transpose(img, in_place=True)
    except READ_ERRORS as exc:
        raise ImageError(f"{os.fspath(path)!r} cannot be read as an image: {exc}") from exc
    return img


def _natural_range(low, high):
    """The value range of data that has no fixed one (PIL modes "I" and "F")."""
    if low >= 0:
        for top in (1.0, 255.0, 65535.0):
            if high <= top:
                return 0.0, top
    if high > low:
        return float(low), float(high)
    return float(low), float(low) + 1.0  # a constant image reads as black


def _value_range(image):
    """``(low, high)``: the values that map to 0 and 1."""
    if isinstance(image, Image.Image):
        if image.mode in _SIXTEEN_BIT_MODES:
            return 0.0, 65535.0
        if image.mode in _UNBOUNDED_MODES:
            return _natural_range(*image.getextrema())
        return 0.0, 255.0
    if image.dtype == np.uint8:
        return 0.0, 255.0
    if image.dtype == np.uint16:
        return 0.0, 65535.0
    return 0.0, 1.0  # floats, checked to lie in [0, 1]


def _colour(block):
    """Drop alpha and padding channels: ``(r, W)`` grey or ``(r, W, 3)`` colour."""
    if block.ndim == 3:
        return block[..., 0] if block.shape[2] == 2 else block[..., :3]
    return block


def pil_rows(img, rows):
    start, stop = rows
    if (start, stop) != (0, img.size[1]):
        img = img.crop((0, start, img.size[0], stop))
    if img.mode not in _NUMPY_MODES:
        img = img.convert("RGB")
    return np.asarray(img)


def is_sixteen_bit(img):
    """Whether a PIL image holds 16-bit values ("I;16" modes), which
    converting it to "RGB" would not keep."""
    return img.mode in _SIXTEEN_BIT_MODES


def row_strips(height, width, factor):
    """Row ranges, whole boxes of ``factor`` rows, each of a share of the
    working memory in float RGB pixels."""
    step = factor * rows_within(IMAGE_STRIP, _FLOAT_RGB_BYTES * factor * width)
    return [(start, min(height, start + step)) for start in range(0, height, step)]


def _box_sums(block, factor):
    """Sums over ``factor x factor`` boxes (smaller at the bottom and right edges)."""
    starts = [np.arange(0, side, factor) for side in block.shape[:2]]
    sums = np.add.reduceat(block, starts[0], axis=0, dtype=np.float32)
    sums = np.add.reduceat(sums, starts[1], axis=1)
    counts = [np.diff(np.append(s, side)) for s, side in zip(starts, block.shape[:2])]
    area = np.outer(*counts).astype(np.float32)
    return sums / (area[..., None] if sums.ndim == 3 else area)


def _reduced_float(image, height, width, factor):
    """An image's pixels as float32, averaged over ``factor`` boxes, strip by strip."""
    if isinstance(image, Image.Image):
        def read(rows):
            return _colour(pil_rows(image, rows))
    else:
        def read(rows):
            return _colour(image[rows[0]:rows[1]])
    if factor == 1:
        pixels = read((0, height)).astype(np.float32)
    else:
        pixels = np.concatenate(
            [_box_sums(read(rows), factor) for rows in row_strips(height, width, factor)]
        )
    low, high = _value_range(image)
    if low:
        pixels -= low
    pixels /= high - low
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    return pixels


def _resized_pixels(image, size):
    """:func:`load_rgb`'s pixels as a ``(3, H, W)`` float32 tensor of their
    own (no view of ``image``), channels last in memory unless resized."""
    if isinstance(image, (str, os.PathLike)):
        # Decoded at twice the target size at least, for the antialiasing filter.
        image = open_image(image, None if size is None else (2 * max(size),) * 2)
    if isinstance(image, Image.Image):
        width, height = image.size
    else:
        image = as_array(image, "image")
        height, width = image.shape[:2]
    factor = 1
    if size is not None:
        # PIL's reducing gap: boxes only while the image stays twice the target.
        factor = max(1, min(height // (2 * size[0]), width // (2 * size[1])))
    pixels = torch.from_numpy(_reduced_float(image, height, width, factor)).permute(2, 0, 1)
    if size is not None and tuple(pixels.shape[1:]) != tuple(size):
        pixels = F.interpolate(pixels[None], size=tuple(size), mode="bilinear",
                               antialias=True, align_corners=False)[0]
    return pixels


def load_rgb(image, size=None):
    """Return an image as a float32 ``(H, W, 3)`` array with values in [0, 1].

    Parameters
    ----------
    image : str, path-like, PIL.Image.Image, ndarray or torch.Tensor
        A file (EXIF orientation honoured), a PIL image of any mode, an array
        ``HxW``, ``HxWx3`` or ``HxWx4`` (alpha dropped), or a tensor ``CxHxW``
        or ``HxWxC``. Values are scaled by the rule in this module's docstring.
    size : (int, int), default=None
        ``(height, width)`` to resize to (bilinear, antialiased, whole image,
        no crop). Large images are reduced before they become floats, so the
        full-resolution pixels are never held as floats. ``None`` keeps the
        image's own size.

    Returns
    -------
    rgb : ndarray of shape (H, W, 3) or (*size, 3), dtype float32
    """
    return _resized_pixels(image, size).permute(1, 2, 0).contiguous().numpy()


def normalised_pixels(image, size, mean, std):
    """The ViT's input for one image: :func:`load_rgb`'s pixels at ``size``,
    channels first, less ``mean`` and divided by ``std`` per channel.

    The values are those of ``(load_rgb(image, size) - mean) / std`` bit for
    bit; only the copies back to channels last and the temporaries of the
    normalisation are saved.

    Parameters
    ----------
    image : str, path-like, PIL.Image.Image, ndarray or torch.Tensor
        As for :func:`load_rgb`.
    size : (int, int)
        ``(height, width)``.
    mean, std : Tensor of shape (3, 1, 1)
        float32.

    Returns
    -------
    pixels : Tensor of shape (3, *size), float32
    """
    # In place: the pixels are this call's own (read into a new array, or
    # the interpolation's output).
    return _resized_pixels(image, size).sub_(mean).div_(std)

