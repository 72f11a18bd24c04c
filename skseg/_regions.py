"""Object regions of a binary mask, their descriptors, and the label masks
made from the class of each region."""

import zlib
from collections.abc import Sequence
from numbers import Integral

import numpy as np
from scipy import ndimage

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def object_regions(mask, min_size):
    """Connected foreground regions of at least ``min_size`` pixels.

    Parameters
    ----------
    mask : ndarray of shape (H, W), bool
    min_size : int

    Returns
    -------
    regions : ndarray of shape (H, W), int32
        0 for background, 1..n_regions for the kept regions.
    n_regions : int
    """
    regions = np.empty(mask.shape, dtype=np.int32)
    n_found = ndimage.label(mask, structure=_EIGHT_CONNECTED, output=regions)
    if n_found == 0:
        return regions, 0
    sizes = np.bincount(regions.ravel(), minlength=n_found + 1)
    keep = sizes >= min_size
    keep[0] = False
    n_kept = int(keep.sum())
    if n_kept == n_found:
        # Labels are already 1..n_found: no full-size relabelling pass.
        return regions, n_kept
    new_ids = np.zeros(n_found + 1, dtype=np.int32)
    new_ids[keep] = np.arange(1, n_kept + 1, dtype=np.int32)
    return new_ids[regions], n_kept


def pixel_to_patch(image_shape, grid_shape):
    """Index of the patch under every pixel, for a grid covering the image."""
    (height, width), (h, w) = image_shape, grid_shape
    rows = np.arange(height) * h // height
    cols = np.arange(width) * w // width
    return rows[:, None] * w + cols[None, :]


def pooled_descriptors(regions, n_regions, patches):
    """Mean patch feature of each region, weighted by pixel coverage.

    Parameters
    ----------
    regions : ndarray of shape (H, W), int
    n_regions : int
    patches : ndarray of shape (h, w, d)

    Returns
    -------
    descriptors : ndarray of shape (n_regions, d)
    """
    h, w, d = patches.shape
    patch_of_pixel = pixel_to_patch(regions.shape, (h, w))
    # One bincount: pixels per (region, patch) pair.
    coverage = np.bincount(
        (regions.astype(np.int64) * (h * w) + patch_of_pixel).ravel(),
        minlength=(n_regions + 1) * h * w,
    ).reshape(n_regions + 1, h * w)[1:].astype(np.float32)
    coverage /= coverage.sum(1, keepdims=True)
    return coverage @ patches.reshape(h * w, d).astype(np.float32)


def _grown(span, limit, min_side):
    side = min(max(span.stop - span.start, min_side), limit)
    centre = (span.start + span.stop) // 2
    start = min(max(0, centre - side // 2), limit - side)
    return slice(start, start + side)


def region_crops(rgb, regions, n_regions, min_side):
    """Bounding-box crops of each region, grown to at least ``min_side``."""
    return [
        rgb[_grown(rows, regions.shape[0], min_side), _grown(cols, regions.shape[1], min_side)]
        for rows, cols in ndimage.find_objects(regions, max_label=n_regions)
    ]


def encode_crops(encoder, crops_per_image):
    """CLS token of every region crop, encoded in one batched call.

    Parameters
    ----------
    encoder : fitted ViTPatchTransformer
    crops_per_image : list of list of ndarray
        The crops of each image's regions.

    Returns
    -------
    descriptors : list of ndarray of shape (n_regions, d_cls)
    """
    flat = [crop for crops in crops_per_image for crop in crops]
    if not flat:
        return [np.zeros((0, 1), np.float32) for _ in crops_per_image]
    tokens = np.stack([f.cls for f in encoder.transform(flat)]).astype(np.float32)
    bounds = np.cumsum([0] + [len(crops) for crops in crops_per_image])
    return [tokens[start:stop] for start, stop in zip(bounds[:-1], bounds[1:])]


class CompactRegions:
    """A region map kept compressed: a few kilobytes instead of a full-size array.

    Region maps are large flat areas, so zlib shrinks them by one to two
    orders of magnitude; the segmenter keeps one per image to produce label
    masks on demand without holding full-size arrays.
    """

    __slots__ = ("shape", "dtype", "data")

    def __init__(self, region_map, n_regions):
        self.shape = region_map.shape
        self.dtype = np.uint8 if n_regions < 256 else np.int32
        self.data = zlib.compress(region_map.astype(self.dtype).tobytes(), 1)

    def __getstate__(self):
        return {name: getattr(self, name) for name in self.__slots__}

    def __setstate__(self, state):
        for name, value in state.items():
            setattr(self, name, value)

    def region_map(self):
        return np.frombuffer(zlib.decompress(self.data), dtype=self.dtype).reshape(self.shape)


class LabelMasks(Sequence):
    """The label masks of a set of images, each produced when indexed.

    Holds one compressed region map per image and the class of each region,
    so memory stays small whatever the number of images; ``masks[i]`` is the
    full-size ``(H, W)`` label array of image ``i`` (0 for background,
    ``1..n_classes`` for the classes). Integer, slice and array indexing as
    for :class:`FeatureSequence`.
    """

    def __init__(self, regions, classes, dtype):
        self._regions = list(regions)
        self._classes = list(classes)
        self._dtype = dtype

    def __len__(self):
        return len(self._regions)

    def __getitem__(self, key):
        if isinstance(key, Integral):
            lookup = np.zeros(len(self._classes[key]) + 1, dtype=self._dtype)
            lookup[1:] = self._classes[key]
            return lookup[self._regions[key].region_map()]
        indices = range(len(self))[key] if isinstance(key, slice) else np.asarray(key)
        if isinstance(indices, np.ndarray) and indices.dtype == bool:
            indices = np.flatnonzero(indices)
        return LabelMasks(
            [self._regions[i] for i in indices], [self._classes[i] for i in indices],
            self._dtype,
        )

    def __repr__(self):
        return f"LabelMasks(<{len(self)} images>)"
