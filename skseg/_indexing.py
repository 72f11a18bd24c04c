"""The indexing rules every sequence of per-image things follows (feature
stores, label masks, mask folders), in one place."""

from numbers import Integral

import numpy as np


def positions(key, length, what):
    """An int position, or a 1-D int64 array of positions, for ``key``.

    Same indexing rules as :class:`~skseg.FeatureSequence`: ints (negative
    from the end), slices, and 1-D arrays or lists of ints or booleans (a
    boolean array must have one entry per item).
    """
    if isinstance(key, Integral):
        index = int(key)
        if not -length <= index < length:
            raise IndexError(f"image index {index} out of range for {length} images.")
        return index % length
    if isinstance(key, slice):
        return np.arange(length, dtype=np.int64)[key]
    key = np.asarray(key)
    if key.dtype == bool:
        if key.shape != (length,):
            raise IndexError(f"boolean index of length {key.size} for {length} images.")
        return np.flatnonzero(key).astype(np.int64)
    if key.ndim != 1 or (key.size and key.dtype.kind not in "iu"):
        raise IndexError(
            f"{what} indices must be integers, slices or 1-D arrays of integers or "
            "booleans."
        )
    key = key.astype(np.int64)
    if key.size and (key.min() < -length or key.max() >= length):
        raise IndexError(f"index out of range for {length} images.")
    return key % max(length, 1)
