"""Object regions of a binary mask and their descriptors."""

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
