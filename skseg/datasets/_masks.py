"""Ground-truth masks read lazily from PNG files."""

from collections.abc import Sequence

from .._indexing import positions
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
    Integer, slice and array indexing as for :class:`~skseg.FeatureSequence`.

    Parameters
    ----------
    paths : list of path-like
    lookup : ndarray of shape (256,), default=None
    names : list of str, default=None
        A name per mask (:func:`skseg.io.read_masks` gives their paths
        relative to the folder read); ``None``: the paths as strings.
    """

    def __init__(self, paths, lookup=None, names=None):
        self.paths = list(paths)
        self.lookup = lookup
        self.names = [str(path) for path in self.paths] if names is None else list(names)

    def __len__(self):
        return len(self.paths)

    def _read(self, path):
        mask = read_label_png(path)
        return mask if self.lookup is None else self.lookup[mask]

    def __getitem__(self, key):
        indices = positions(key, len(self), "MaskFiles")
        if isinstance(indices, int):
            return self._read(self.paths[indices])
        indices = indices.tolist()
        return MaskFiles([self.paths[i] for i in indices], self.lookup,
                         [self.names[i] for i in indices])

    def __repr__(self):
        return f"MaskFiles(<{len(self)} masks>)"
