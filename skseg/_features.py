"""The per-image feature record and the sequence that holds a dataset of them."""

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ._indexing import positions

# What a ViT block's patch features can be read from; here, with the records
# they fill, so that the command line lists them without importing torch.
FACETS = ("key", "query", "value", "token")


@dataclass(eq=False)
class ImageFeatures:
    """Patch features of one image, as :class:`ViTPatchTransformer` returns them.

    Users may build these from their own arrays, so that features from any
    backbone can be segmented by :class:`MultilevelSegmenter`.

    Parameters
    ----------
    patches : ndarray of shape (h, w, d)
        One feature vector per patch of the patch grid.
    cls : ndarray of shape (d_cls,), default=None
        A global descriptor of the image (the ViT's final CLS token). Without
        it the category level groups images by their mean patch feature.
    attention : ndarray of shape (h, w), default=None
        CLS-to-patch attention of the last block, averaged over heads.
    image_shape : tuple of int, default=None
        ``(H, W)`` of the original image; masks come back at this size. When
        omitted it is ``(h * patch_size, w * patch_size)``, or ``(h, w)``
        without a patch size.
    image : str, path-like or ndarray, default=None
        The image these features came from (a reference, not a copy), used
        for pixel-level refinement and for re-encoding region crops.
    patch_size : int, default=None
        Side of one patch in pixels of the resized image.
    content_key : str, default=None
        A digest of the image these features came from
        (:class:`ViTPatchTransformer` sets it). The segmenter seeds the
        image's random draws from it; without one, from the bytes of the
        features, which the ViT reproduces only up to float rounding (see
        :class:`ViTPatchTransformer`).

    Examples
    --------
    >>> import numpy as np
    >>> from skseg import ImageFeatures
    >>> f = ImageFeatures(patches=np.zeros((14, 14, 8)), cls=np.zeros(8))
    >>> f.grid_shape, f.image_shape
    ((14, 14), (14, 14))
    """

    patches: np.ndarray
    cls: np.ndarray = None
    attention: np.ndarray = None
    image_shape: tuple = None
    image: object = field(default=None, repr=False)
    patch_size: int = None
    content_key: str = None

    def __post_init__(self):
        self.patches = np.asarray(self.patches)
        if self.patches.ndim != 3 or 0 in self.patches.shape:
            raise ValueError(
                "ImageFeatures.patches must be a non-empty (h, w, d) array, got shape "
                f"{self.patches.shape}."
            )
        if self.cls is not None:
            self.cls = np.asarray(self.cls)
            if self.cls.ndim != 1:
                raise ValueError(
                    f"ImageFeatures.cls must be 1-D, got shape {self.cls.shape}."
                )
        if self.attention is not None:
            self.attention = np.asarray(self.attention)
            if self.attention.shape != self.grid_shape:
                raise ValueError(
                    f"ImageFeatures.attention has shape {self.attention.shape}, but "
                    f"the patch grid is {self.grid_shape}."
                )
        if self.content_key is not None and not isinstance(self.content_key, str):
            raise TypeError(
                f"ImageFeatures.content_key must be a str, got {type(self.content_key).__name__}."
            )
        if self.image_shape is None:
            scale = self.patch_size or 1
            self.image_shape = (self.grid_shape[0] * scale, self.grid_shape[1] * scale)
        self.image_shape = tuple(int(s) for s in self.image_shape)

    @property
    def grid_shape(self):
        """``(h, w)`` of the patch grid."""
        return self.patches.shape[:2]

    def __getstate__(self):
        # A PIL image is a reference to pixels the user holds; keep pickles small
        # and portable by storing it as an array.
        state = self.__dict__.copy()
        if hasattr(state["image"], "getbands"):
            state["image"] = np.asarray(state["image"])
        return state


def check_features(record, where):
    """Refuse what is not an :class:`ImageFeatures` of real numbers.

    The one check that the segmenter's passes and the feature store share,
    so that whatever one accepts the other does: patches, CLS token and
    attention of float, integer or boolean dtype (booleans read as 0 and 1).
    """
    if not isinstance(record, ImageFeatures):
        raise TypeError(
            f"{where} is a {type(record).__name__}, not ImageFeatures; pass images "
            "through ViTPatchTransformer first."
        )
    for name in ("patches", "cls", "attention"):
        values = getattr(record, name)
        if values is not None and np.asarray(values).dtype.kind not in "biuf":
            raise TypeError(
                f"{where} has {name} of dtype {np.asarray(values).dtype}; they must be "
                "real numbers (float, integer or boolean arrays)."
            )


class FeatureSequence(Sequence):
    """A read-only sequence of :class:`ImageFeatures`, one per image.

    It supports ``len``, integer indexing, slicing and indexing by a list or
    array of integers or booleans (so scikit-learn's cross-validation
    splitters can split it), and it pickles. Indexing by several positions
    returns another :class:`FeatureSequence`.

    Parameters
    ----------
    records : iterable of ImageFeatures
    """

    def __init__(self, records):
        self._records = list(records)
        for index, record in enumerate(self._records):
            if not isinstance(record, ImageFeatures):
                raise TypeError(
                    f"item {index} is a {type(record).__name__}, not ImageFeatures."
                )

    def __len__(self):
        return len(self._records)

    def __getitem__(self, key):
        indices = positions(key, len(self), "FeatureSequence")
        if isinstance(indices, int):
            return self._records[indices]
        return FeatureSequence(self._records[i] for i in indices.tolist())

    def __repr__(self):
        return f"FeatureSequence(<{len(self)} images>)"
