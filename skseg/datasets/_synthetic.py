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


def _texture(rng, shape, colour, kind, frequency):
    """A colour modulated by stripes, checks or noise."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w] / max(h, w)
    angle = rng.uniform(0, np.pi)
    if kind == 0:
        pattern = np.sin(2 * np.pi * frequency * (xx * np.cos(angle) + yy * np.sin(angle)))
    elif kind == 1:
        pattern = np.sign(np.sin(2 * np.pi * frequency * xx) * np.sin(2 * np.pi * frequency * yy))
    else:
        pattern = rng.standard_normal((h, w))
    return np.clip(colour + 0.12 * pattern[..., None], 0, 1)


def make_scenes(
    n_images=20,
    n_classes=3,
    image_size=(96, 96),
    *,
    n_backgrounds=2,
    max_objects=2,
    min_object_size=0.2,
    max_object_size=0.45,
    noise=0.03,
    random_state=None,
):
    """Synthetic photographs with known segmentation masks.

    Like :func:`sklearn.datasets.make_blobs` for segmentation: each image has
    a textured background of one of ``n_backgrounds`` kinds and 1 to
    ``max_objects`` non-overlapping objects (ellipses or rectangles), each of
    a class with its own colour and texture, at random sizes and positions.

    Parameters
    ----------
    n_images : int, default=20
    n_classes : int, default=3
    image_size : (int, int), default=(96, 96)
        ``(height, width)``.
    n_backgrounds : int, default=2
    max_objects : int, default=2
    min_object_size, max_object_size : float, default=0.2, 0.45
        Object side as a fraction of the shorter image side.
    noise : float, default=0.03
        Standard deviation of the pixel noise.
    random_state : int, RandomState instance or None, default=None

    Returns
    -------
    images : list of ndarray of shape (H, W, 3), uint8
    masks : list of ndarray of shape (H, W), uint8
        0 for background, ``k + 1`` for class ``k``.

    Examples
    --------
    >>> from skseg.datasets import make_scenes
    >>> images, masks = make_scenes(n_images=4, random_state=0)
    >>> images[0].shape, masks[0].shape
    ((96, 96, 3), (96, 96))
    """
    if max_objects > n_classes:
        raise ValueError(f"max_objects={max_objects} exceeds n_classes={n_classes}.")
    if not 0 < min_object_size <= max_object_size < 1:
        raise ValueError("need 0 < min_object_size <= max_object_size < 1.")
    rng = np.random.default_rng(check_random_state(random_state).randint(2**31))
    h, w = image_size
    side = min(h, w)
    # Colours spread around the hue circle so classes are told apart by eye.
    hues = (np.arange(n_classes) + rng.uniform(0, 1)) / n_classes
    class_colours = 0.5 + 0.35 * np.stack([np.cos(2 * np.pi * (hues + s / 3)) for s in range(3)], 1)
    class_kinds = np.arange(n_classes) % 3
    background_colours = rng.uniform(0.15, 0.45, size=(n_backgrounds, 3))
    images, masks = [], []
    for _ in range(n_images):
        kind = rng.integers(n_backgrounds)
        image = _texture(rng, (h, w), background_colours[kind], kind % 3, 3 + 2 * kind)
        mask = np.zeros((h, w), dtype=np.uint8)
        n_objects = rng.integers(1, max_objects + 1)
        for label in rng.choice(n_classes, size=n_objects, replace=False):
            for _attempt in range(20):  # find a place that overlaps nothing
                oh, ow = (rng.uniform(min_object_size, max_object_size, 2) * side).astype(int)
                y, x = rng.integers(0, h - oh), rng.integers(0, w - ow)
                if not mask[max(0, y - 2):y + oh + 2, max(0, x - 2):x + ow + 2].any():
                    break
            else:
                continue
            yy, xx = np.mgrid[:oh, :ow]
            if rng.random() < 0.5:  # ellipse
                shape = ((yy - oh / 2) / (oh / 2)) ** 2 + ((xx - ow / 2) / (ow / 2)) ** 2 <= 1
            else:
                shape = np.ones((oh, ow), dtype=bool)
            texture = _texture(rng, (oh, ow), class_colours[label], class_kinds[label], 6)
            image[y:y + oh, x:x + ow][shape] = texture[shape]
            mask[y:y + oh, x:x + ow][shape] = label + 1
        image = np.clip(image + noise * rng.standard_normal(image.shape), 0, 1)
        images.append((image * 255).round().astype(np.uint8))
        masks.append(mask)
    return images, masks
