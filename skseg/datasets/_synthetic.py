"""Synthetic data with known masks: patch features with planted structure."""

import numpy as np
from sklearn.utils import check_random_state

from .._features import FeatureSequence, ImageFeatures


def _unit_vectors(rng, n, dim):
    vectors = rng.standard_normal((n, dim))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _object_boxes(rng, grid, n_objects):
    """Non-touching rectangles away from the border, one per vertical band."""
    h, w = grid
    band = (w - 2) // n_objects
    boxes = []
    for k in range(n_objects):
        left, right = 1 + k * band, 1 + (k + 1) * band - 1  # a gap column between bands
        box_w = rng.integers(max(1, band // 2), max(2, right - left + 1))
        box_h = rng.integers(max(1, (h - 2) // 3), max(2, h - 2))
        x = rng.integers(left, max(left + 1, right - box_w + 1))
        y = rng.integers(1, max(2, h - 1 - box_h))
        boxes.append((slice(y, y + box_h), slice(x, x + box_w)))
    return boxes


def make_patch_features(
    n_images=100,
    *,
    grid=(14, 14),
    n_features=64,
    n_classes=4,
    n_backgrounds=3,
    max_objects=2,
    separation=2.0,
    objectness=2.0,
    style=3.0,
    noise=0.5,
    patch_size=None,
    random_state=None,
):
    """Patch features of imaginary images with planted objects.

    Like :func:`sklearn.datasets.make_blobs`, for segmentation: every image
    has one of ``n_backgrounds`` background kinds and 1 to ``max_objects``
    rectangular objects (away from the border, not touching) of distinct
    classes. A patch's feature is the vector of its background kind or object
    class, plus a shared "objectness" direction (added on objects, subtracted
    on background), plus a per-image style offset, plus Gaussian noise. The
    style offsets and the several background kinds make a single K-means
    over all patches fail, while foreground/background separation first (and
    per image) recovers the objects.

    Parameters
    ----------
    n_images : int, default=100
    grid : (int, int), default=(14, 14)
        Patch grid ``(h, w)`` of every image.
    n_features : int, default=64
    n_classes : int, default=4
    n_backgrounds : int, default=3
    max_objects : int, default=2
    separation : float, default=2.0
        Length of each class and background vector.
    objectness : float, default=2.0
        Length of the shared foreground direction.
    style : float, default=3.0
        Length of each image's style offset.
    noise : float, default=0.5
        Standard deviation of the per-patch Gaussian noise.
    patch_size : int, default=None
        Recorded in each :class:`ImageFeatures`; image shapes are the grid
        times this, or the grid itself when None (masks at patch resolution).
    random_state : int, RandomState instance or None, default=None

    Returns
    -------
    X : FeatureSequence of ImageFeatures
        With ``cls`` (mean of the image's class vectors, plus noise) and
        ``attention`` (higher on objects). No pixels: ``image`` is None.
    masks : list of ndarray of shape grid, int
        0 for background, ``k + 1`` for class ``k``.

    Examples
    --------
    >>> from skseg.datasets import make_patch_features
    >>> X, masks = make_patch_features(n_images=5, random_state=0)
    >>> X[0].patches.shape, masks[0].shape
    ((14, 14, 64), (14, 14))
    """
    rng = np.random.default_rng(check_random_state(random_state).randint(2**31))
    if max_objects > n_classes:
        raise ValueError(f"max_objects={max_objects} exceeds n_classes={n_classes}.")
    h, w = grid
    if h < 5 or w < 2 + 2 * max_objects:
        raise ValueError(f"grid={grid} is too small for {max_objects} objects.")
    classes = separation * _unit_vectors(rng, n_classes, n_features)
    backgrounds = separation * _unit_vectors(rng, n_backgrounds, n_features)
    foreground_direction = objectness * _unit_vectors(rng, 1, n_features)[0]
    features, masks = [], []
    for _ in range(n_images):
        mask = np.zeros(grid, dtype=np.int64)
        n_objects = rng.integers(1, max_objects + 1)
        present = rng.choice(n_classes, size=n_objects, replace=False)
        for label, box in zip(present, _object_boxes(rng, grid, n_objects)):
            mask[box] = label + 1
        base = np.where(
            (mask > 0)[..., None],
            classes[np.maximum(mask - 1, 0)] + foreground_direction,
            backgrounds[rng.integers(n_backgrounds)] - foreground_direction,
        )
        offset = style * _unit_vectors(rng, 1, n_features)[0]
        patches = base + offset + noise * rng.standard_normal((h, w, n_features))
        cls = classes[present].mean(0) + 0.1 * separation * rng.standard_normal(n_features)
        attention = np.where(mask > 0, 2.0, 1.0) + 0.3 * rng.random(grid)
        features.append(ImageFeatures(
            patches=patches.astype(np.float32),
            cls=cls.astype(np.float32),
            attention=(attention / attention.sum()).astype(np.float32),
            patch_size=patch_size,
        ))
        masks.append(mask)
    return FeatureSequence(features), masks
