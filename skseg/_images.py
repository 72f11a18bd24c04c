"""Image inputs: the errors that name a bad image, arrays and tensors read as
images (their layout and value checks), and the identity digest of an
image's content.

How files and PIL images become pixels is in ``_image_decoding``; checking
a whole list of inputs before any expensive work is in ``_image_checks``.
"""

import os

import numpy as np
import torch
from PIL import Image

from ._digest import array_digest, bytes_digest, file_digest


class ImageError(ValueError):
    """One input image cannot be used; the message names it (index and file)."""


class ImageTooSmallError(ImageError):
    """An image smaller than one ViT patch, so it has no patch grid."""


def tensor_as_numpy(tensor):
    """A tensor's data as a numpy array (a view where the device and dtype allow)."""
    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16
        tensor = tensor.float()
    return tensor.numpy()


def tensor_to_array(tensor, where):
    """A ``(C, H, W)`` or ``(H, W, C)`` tensor as an ``(H, W[, C])`` numpy view."""
    shape = tuple(tensor.shape)
    if tensor.ndim == 3:
        channels_first = shape[0] in (1, 3, 4)
        channels_last = shape[2] in (1, 3, 4)
        if channels_first and channels_last:
            raise ImageError(
                f"{where} is a tensor of shape {shape}: its channels could be first or "
                "last. Pass it as a numpy (H, W, C) array or a PIL image."
            )
        if channels_first:
            tensor = tensor.permute(1, 2, 0)
        elif not channels_last:
            raise ImageError(
                f"{where} is a tensor of shape {shape}; expected (C, H, W) or (H, W, C) "
                "with 1, 3 or 4 channels."
            )
        if tensor.shape[2] == 1:
            tensor = tensor[..., 0]
    elif tensor.ndim != 2:
        raise ImageError(
            f"{where} is a tensor of shape {shape}; expected (C, H, W), (H, W, C) or (H, W)."
        )
    return tensor_as_numpy(tensor)


def _check_array(array, where):
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageError(
            f"{where} has shape {array.shape}; expected (H, W), (H, W, 3) or (H, W, 4)."
        )
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise ImageError(f"{where} contains NaN or infinite values.")
        if array.size and (array.min() < 0.0 or array.max() > 1.0):
            raise ImageError(
                f"{where} is a float array with values outside [0, 1] "
                f"(min {array.min():.3g}, max {array.max():.3g}); scale it to [0, 1] "
                "or pass uint8."
            )
    elif array.dtype not in (np.uint8, np.uint16):
        raise TypeError(
            f"{where} has dtype {array.dtype}; expected uint8, uint16 or float in [0, 1]."
        )
    return array.shape[:2]


def as_array(image, where):
    """A numpy array or tensor image as a checked ``(H, W[, C])`` array."""
    if isinstance(image, torch.Tensor):
        image = tensor_to_array(image, where)
    _check_array(image, where)
    return image


def content_hash(image):
    """The identity digest of an image's content: of a file's bytes, of an
    array's dtype, shape and values, of a PIL image's mode, size and pixels."""
    if isinstance(image, (str, os.PathLike)):
        return file_digest(image)
    if isinstance(image, Image.Image):
        return bytes_digest(f"{image.mode}{image.size}".encode() + image.tobytes())
    if isinstance(image, torch.Tensor):
        image = tensor_as_numpy(image)
    return array_digest(image)
