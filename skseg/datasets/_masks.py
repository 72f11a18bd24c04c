"""Ground-truth masks read lazily from PNG files."""

from collections.abc import Sequence
from numbers import Integral

import numpy as np

from .._io import read_label_png


def check_pairs(images, masks):
    """Every image must exist and have its mask; name the first that does not."""
    for image, mask in zip(images, masks):
        if not image.is_file():
            raise FileNotFoundError(f"image {str(image)!r} does not exist.")
        if not mask.is_file():
            raise FileNotFoundError(f"image {str(image)!r} has no mask at {str(mask)!r}.")


class MaskFiles(Sequence):
    """A sequence of label masks, each read from its PNG when indexed.

    PNGs in palette mode give their palette indices (the class ids), as VOC
    stores them. A ``lookup`` table maps stored values to returned labels.

    Parameters
    ----------
    paths : list of path-like
    lookup : ndarray of shape (256,), default=None
    """

    def __init__(self, paths, lookup=None):
        self.paths = list(paths)
        self.lookup = lookup

    def __len__(self):
        return len(self.paths)

    def _read(self, path):
        mask = read_label_png(path)
        return mask if self.lookup is None else self.lookup[mask]

    def __getitem__(self, key):
        if isinstance(key, Integral):
            return self._read(self.paths[key])
        if isinstance(key, slice):
            return MaskFiles(self.paths[key], self.lookup)
        key = np.asarray(key)
        if key.dtype == bool:
            key = np.flatnonzero(key)
        return MaskFiles([self.paths[i] for i in key.tolist()], self.lookup)

    def __repr__(self):
        return f"MaskFiles(<{len(self)} masks>)"
