"""MultilevelSegmenter: dataset-, category- and image-level clustering of patch
features, their consensus, upsampling, refinement and region labelling."""

import copy
import math
import warnings
from numbers import Integral, Real

import numpy as np
import torch
import torch.nn.functional as F
from joblib import Parallel, delayed
from sklearn.base import BaseEstimator, ClusterMixin, clone
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from ._backbone import resolve_device
from ._clustering import (
    agreement,
    attention_foreground,
    batched_two_means,
    border_foreground,
    fit_kmeans,
    nearest_centroid,
    second_is_nearer,
)
from ._features import ImageFeatures
from ._images import load_rgb
from ._n_classes import choose_n_clusters
from ._refine import pamr
from ._regions import object_regions, pooled_descriptors, region_crops
from ._validation import HasMethods, Interval, StrOptions, validate_params

# Floats per image-level batch (B x N x d): ~128 MB of float32.
_IMAGE_BATCH_FLOATS = 1 << 25


def _row_norms(X, chunk=65536):
    """Euclidean norm of every row, a block of rows at a time (no n x d temporary)."""
    norms = np.empty(len(X), dtype=X.dtype)
    for start in range(0, len(X), chunk):
        block = X[start:start + chunk]
        norms[start:start + chunk] = np.sqrt(np.einsum("ij,ij->i", block, block))
    return norms


def _unit(X):
    """Rows scaled to unit length (zero rows stay zero)."""
    return X / np.maximum(_row_norms(X), 1e-12)[:, None]


def _as_feature_list(X):
    if isinstance(X, np.ndarray):
        if X.ndim != 4:
            raise ValueError(
                f"X as an array must be 4-D (n_images, h, w, d), got shape {X.shape}."
            )
        return [ImageFeatures(patches=patches) for patches in X]
    if isinstance(X, (str, bytes)) or not hasattr(X, "__len__"):
        raise TypeError(
            "X must be a sequence of ImageFeatures (ViTPatchTransformer's output) or "
            f"a 4-D array of patch features, got {type(X).__name__}."
        )
    features = list(X)
    for index, item in enumerate(features):
        if not isinstance(item, ImageFeatures):
            raise TypeError(
                f"X[{index}] is a {type(item).__name__}, not ImageFeatures; pass images "
                "through ViTPatchTransformer first."
            )
    return features


class _FeatureData:
    """All patches of a set of images as one (n_patches, d) float32 matrix,
    with the per-image bookkeeping the levels need. Checks come first, so bad
    input fails before any clustering."""

    def __init__(self, X, *, metric, needs_attention):
        features = _as_feature_list(X)
        if not features:
            raise ValueError("X is empty: at least one image is needed.")
        dim = features[0].patches.shape[2]
        has_cls = features[0].cls is not None
        for index, f in enumerate(features):
            if f.patches.shape[2] != dim:
                raise ValueError(
                    f"image {index} has {f.patches.shape[2]}-dimensional features, "
                    f"image 0 has {dim}: all images must come from one extractor."
                )
            if f.grid_shape[0] * f.grid_shape[1] < 2:
                raise ValueError(
                    f"image {index} has a {f.grid_shape} patch grid: at least 2 patches "
                    "are needed to split foreground from background."
                )
            if (f.cls is not None) != has_cls:
                raise ValueError(
                    f"image {index} {'has' if f.cls is not None else 'lacks'} a CLS token "
                    f"but image 0 {'has' if has_cls else 'lacks'} one; give all or none."
                )
            if needs_attention and f.attention is None:
                raise ValueError(
                    f"image {index} has no attention map, needed by foreground='attention'; "
                    "extract with ViTPatchTransformer(attention=True)."
                )
            for name in ("cls", "attention"):
                values = getattr(f, name)
                if values is not None and not np.isfinite(values).all():
                    raise ValueError(f"image {index} has NaN or infinite {name}.")
        if has_cls and len({f.cls.shape for f in features}) > 1:
            raise ValueError("CLS tokens of different lengths in X.")

        self.features = features
        self.n_features = dim
        self.grids = [f.grid_shape for f in features]
        sizes = np.array([h * w for h, w in self.grids])
        self.offsets = np.concatenate([[0], np.cumsum(sizes)])
        self.image_of_patch = np.repeat(np.arange(len(features)), sizes)
        patches = np.concatenate(
            [f.patches.reshape(-1, dim).astype(np.float32, copy=False) for f in features]
        )
        # One pass over all patches: a NaN or inf makes its row norm non-finite.
        norms = _row_norms(patches)
        bad = ~np.isfinite(norms)
        if bad.any():
            index = int(self.image_of_patch[np.argmax(bad)])
            problem = "NaN or infinite" if not np.isfinite(features[index].patches).all() \
                else "too large (their squares overflow float32)"
            raise ValueError(f"image {index} has {problem} patches.")
        if metric == "cosine":
            patches /= np.maximum(norms, 1e-12)[:, None]  # in place: patches is our copy
        self.patches = patches
        if has_cls:
            descriptors = np.stack([f.cls for f in features]).astype(np.float32)
        else:  # no global token: an image is described by its mean patch
            descriptors = np.add.reduceat(self.patches, self.offsets[:-1]) / sizes[:, None]
        self.descriptors = _unit(descriptors) if metric == "cosine" else descriptors
        self.has_cls = has_cls

    def __len__(self):
        return len(self.features)

    def rows(self, index):
        return slice(self.offsets[index], self.offsets[index + 1])

    def on_border(self):
        flags = []
        for h, w in self.grids:
            grid = np.ones((h, w), dtype=bool)
            grid[1:-1, 1:-1] = False
            flags.append(grid.ravel())
        return np.concatenate(flags)

    def attention(self):
        return np.concatenate([f.attention.ravel() for f in self.features]).astype(np.float64)

    def split(self, values):
        """Per-image (h, w) views of a per-patch vector."""
        return [values[self.rows(i)].reshape(self.grids[i]) for i in range(len(self))]


class MultilevelSegmenter(ClusterMixin, BaseEstimator):
    """Unsupervised semantic segmentation by clustering at three levels.

    Patch features (from :class:`ViTPatchTransformer`) are clustered over the
    whole dataset, within pseudo-categories of images and within each image;
    the three foreground/background masks are kept consistent (each level
    decides which of its clusters is foreground by agreement with the level
    above) and combined. The combined mask is upsampled to the image,
    refined with the image's own pixels, split into connected object regions,
    and each region is given one of ``n_classes`` classes by clustering
    region descriptors over the dataset.

    Parameters
    ----------
    n_classes : int or "auto", default=20
        Number of object classes; masks hold 0 (background) to ``n_classes``.
        The default is PASCAL VOC's 20 object classes, the field's protocol.
        ``"auto"`` chooses it without labels, from 2 to ``max_classes``: the
        count whose K-means partition of the region descriptors has the
        highest silhouette (on at most 1000 of them, projected on their first
        ``max_classes`` principal components); see ``n_classes_scores_``.
        It needs at least 3 object regions.
    max_classes : int, default=30
        Largest count ``"auto"`` considers, for classes and categories; at
        least 2. Unused when neither is ``"auto"``.
    n_categories : int, "auto" or None, default=None
        Number of image pseudo-categories (clusters of CLS tokens, or of mean
        patch features without them). ``"auto"`` chooses it from the image
        descriptors by the criterion of ``n_classes="auto"`` (needs at least
        3 images). ``None`` means ``n_classes``; with ``n_classes="auto"``,
        ``"auto"``. Capped at the number of images, with a warning.
    n_dataset_clusters : int, default=2
        Clusters of the dataset-level K-means over all patches.
    foreground : {"border", "attention"}, default="border"
        Which dataset-level clusters are foreground: ``"border"``, those
        under-represented on the image border (a cluster whose share of border
        patches exceeds its share of all patches is background);
        ``"attention"``, those with above-average CLS attention (needs
        features extracted with ``attention=True``).
    consensus : {"vote", "intersection", "image"}, default="vote"
        How the three levels are combined: foreground where at least two
        agree, where all three agree, or the image level alone.
    refine : {"pamr"} or None, default="pamr"
        Pixel-adaptive mask refinement with the image's colours; skipped with
        a warning for images without pixels (``ImageFeatures.image`` is None).
    refine_iter : int, default=10
        PAMR propagation steps.
    refine_dilations : tuple of int, default=(1, 2, 4, 8, 12, 24)
        PAMR neighbourhood dilations in pixels (of the working resolution).
    refine_max_side : int, default=128
        PAMR runs on the image and mask shrunk so that their longer side is
        at most this (the original applies it to coarse masks, too); the
        refined mask is then upsampled to full size.
    region : {"pooled", "crop"}, default="pooled"
        Region descriptor: the coverage-weighted mean of the region's patch
        features (fast), or the CLS token of the region's bounding-box crop
        re-encoded by ``region_encoder`` (faithful, slower; the crops of all
        images are encoded in one batched call at the end).
    region_encoder : estimator, default=None
        A :class:`ViTPatchTransformer` (fitted or not) for ``region="crop"``.
    min_region_size : int or float, default=0.01
        Smallest object region kept: pixels if an int, a fraction of the image
        area if a float. Smaller regions become background.
    max_samples : int, default=20_000
        Patches drawn at random to fit the dataset-level and each category's
        K-means; every patch is then assigned to the nearest centroid.
    max_iter : int, default=20
        Iterations of the image-level 2-means.
    n_init : "auto" or int, default=4
        Restarts of the K-means fits of image categories and region classes
        (a few restarts keep them out of poor local minima at little cost).
        The foreground/background fits over patches use one k-means++ start.
    metric : {"cosine", "euclidean"}, default="cosine"
        ``"cosine"`` normalises patch features and descriptors to unit length
        before clustering.
    batch_size : int, default=16
        Images per batch in the pixel stage (upsampling and PAMR).
    device : {"auto", "cpu", "cuda", "mps"}, default="auto"
        Where the image-level clustering and refinement run.
    random_state : int, RandomState instance or None, default=None
        Seeds the subsampling and the K-means fits.
    n_jobs : int, default=None
        Threads for the pixel stage (image loading, refinement, regions).
        Results do not depend on it.

    Attributes
    ----------
    labels_ : list of ndarray of shape (H, W)
        Label masks of the training images.
    n_features_in_ : int
        Dimension of the patch features seen in :meth:`fit`.
    dataset_centroids_ : ndarray of shape (n_dataset_clusters, d)
    dataset_foreground_ : ndarray of shape (n_dataset_clusters,), bool
        Which dataset-level clusters are foreground.
    category_centers_ : ndarray of shape (n_categories, d_cls)
        Centres of the image pseudo-categories.
    category_centroids_ : ndarray of shape (n_categories, 2, d)
        Background and foreground centroid of each category's 2-means.
    categories_ : ndarray of shape (n_images,)
        Category of each training image.
    class_centroids_ : ndarray of shape (n_classes, d_region)
        Centroids of the region descriptors; class ``k + 1`` is centroid ``k``.
    n_categories_ : int
        Number of categories used (``n_categories``, capped at the images).
    n_classes_ : int
        Number of classes used (``n_classes``, capped at the regions found,
        or the count chosen by ``n_classes="auto"``).
    n_classes_scores_ : dict of int to float
        Only with ``n_classes="auto"``: the silhouette of every candidate
        count (higher is better), to plot the criterion.
    n_categories_scores_ : dict of int to float
        Only when the number of categories was chosen (``"auto"``): the
        same, over the image descriptors.
    uses_cls_ : bool
        Whether categories were formed from CLS tokens (else mean patches).

    See Also
    --------
    ViTPatchTransformer : Produces the features this estimator clusters.
    skseg.metrics.mean_iou : Hungarian-matched mIoU of the masks.

    Examples
    --------
    >>> from skseg import MultilevelSegmenter
    >>> from skseg.datasets import make_patch_features
    >>> X, masks = make_patch_features(n_images=30, n_classes=3, random_state=0)
    >>> seg = MultilevelSegmenter(n_classes=3, refine=None, random_state=0)
    >>> labels = seg.fit_predict(X)
    >>> len(labels), labels[0].shape
    (30, (14, 14))
    """

    _parameter_constraints = {
        "n_classes": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "max_classes": [Interval(Integral, 2, None, closed="left")],
        "n_categories": [None, Interval(Integral, 1, None, closed="left"),
                         StrOptions({"auto"})],
        "n_dataset_clusters": [Interval(Integral, 2, None, closed="left")],
        "foreground": [StrOptions({"border", "attention"})],
        "consensus": [StrOptions({"vote", "intersection", "image"})],
        "refine": [StrOptions({"pamr"}), None],
        "refine_iter": [Interval(Integral, 0, None, closed="left")],
        "refine_dilations": [tuple, list],
        "refine_max_side": [Interval(Integral, 1, None, closed="left")],
        "region": [StrOptions({"pooled", "crop"})],
        "region_encoder": [None, HasMethods(["fit", "transform"])],
        "min_region_size": [
            Interval(Integral, 1, None, closed="left"),
            Interval(Real, 0, 1, closed="left"),
        ],
        "max_samples": [Interval(Integral, 2, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "n_init": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "metric": [StrOptions({"cosine", "euclidean"})],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "device": [StrOptions({"auto", "cpu", "cuda", "mps"})],
        "random_state": ["random_state"],
        "n_jobs": [None, Integral],
    }

    def __init__(
        self,
        n_classes=20,
        *,
        max_classes=30,
        n_categories=None,
        n_dataset_clusters=2,
        foreground="border",
        consensus="vote",
        refine="pamr",
        refine_iter=10,
        refine_dilations=(1, 2, 4, 8, 12, 24),
        refine_max_side=128,
        region="pooled",
        region_encoder=None,
        min_region_size=0.01,
        max_samples=20_000,
        max_iter=20,
        n_init=4,
        metric="cosine",
        batch_size=16,
        device="auto",
        random_state=None,
        n_jobs=None,
    ):
        self.n_classes = n_classes
        self.max_classes = max_classes
        self.n_categories = n_categories
        self.n_dataset_clusters = n_dataset_clusters
        self.foreground = foreground
        self.consensus = consensus
        self.refine = refine
        self.refine_iter = refine_iter
        self.refine_dilations = refine_dilations
        self.refine_max_side = refine_max_side
        self.region = region
        self.region_encoder = region_encoder
        self.min_region_size = min_region_size
        self.max_samples = max_samples
        self.max_iter = max_iter
        self.n_init = n_init
        self.metric = metric
        self.batch_size = batch_size
        self.device = device
        self.random_state = random_state
        self.n_jobs = n_jobs

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        return tags

    # ------------------------------------------------------------------ fit
    def _check_params(self):
        validate_params(self)
        dilations = self.refine_dilations
        if not dilations or not all(isinstance(d, Integral) and d >= 1 for d in dilations):
            raise ValueError(
                f"refine_dilations={dilations!r} must be a non-empty sequence of positive ints."
            )
        if self.region == "crop" and self.region_encoder is None:
            raise ValueError("region='crop' needs a region_encoder, e.g. a ViTPatchTransformer.")
        resolve_device(self.device)  # an unavailable device fails now, not mid-run

    def _data(self, X):
        data = _FeatureData(
            X, metric=self.metric, needs_attention=self.foreground == "attention"
        )
        if self.region == "crop":
            for index, f in enumerate(data.features):
                if f.image is None:
                    raise ValueError(
                        f"image {index} carries no pixels (ImageFeatures.image is None), "
                        "needed by region='crop'."
                    )
        return data

    def fit(self, X, y=None):
        """Fit the three clustering levels and the region classes.

        Parameters
        ----------
        X : sequence of ImageFeatures or ndarray of shape (n_images, h, w, d)
            Patch features; with a 4-D array there are no CLS tokens and no
            pixels, so masks come back at patch resolution, unrefined.
        y : ignored
            Accepted so that model selection can pass ground truth to a scorer.

        Returns
        -------
        self : MultilevelSegmenter
        """
        self._check_params()
        data = self._data(X)
        rng = check_random_state(self.random_state)
        for name in ("n_classes_scores_", "n_categories_scores_"):  # from an earlier "auto" fit
            vars(self).pop(name, None)
        self.n_features_in_ = data.n_features
        self.uses_cls_ = data.has_cls
        fg_dataset = self._fit_dataset_level(data, rng)
        self._fit_categories(data, fg_dataset, rng)
        if self.region == "crop":
            self.region_encoder_ = (
                clone(self.region_encoder).fit() if _needs_fit(self.region_encoder)
                else self.region_encoder
            )
        soft, _, _ = self._consensus(data, fg_dataset, self.categories_)
        regions, descriptors = self._regions(data, soft)
        n_regions = sum(len(d) for d in descriptors)
        if n_regions == 0:
            raise ValueError(
                "No foreground region was found in any image; lower min_region_size or "
                "check the features."
            )
        all_descriptors = np.concatenate([d for d in descriptors if len(d)])
        if self.n_classes == "auto":
            # A copy of the generator: choosing leaves the rest of fit's random
            # draws as they are, so "auto" fits as n_classes=n_classes_ would.
            self.n_classes_, self.n_classes_scores_ = choose_n_clusters(
                all_descriptors, self.max_classes, random_state=copy.deepcopy(rng),
                rows_name="object regions", parameter="n_classes",
            )
        else:
            self.n_classes_ = min(self.n_classes, n_regions)
            if self.n_classes_ < self.n_classes:
                warnings.warn(
                    f"Only {n_regions} object regions were found, fewer than "
                    f"n_classes={self.n_classes}; using {self.n_classes_} classes.",
                    UserWarning,
                )
        self.class_centroids_ = fit_kmeans(
            all_descriptors, self.n_classes_, max_samples=len(all_descriptors),
            n_init=self.n_init, random_state=rng,
        )
        self.labels_ = self._label(regions, descriptors)
        return self

    def _fit_dataset_level(self, data, rng):
        if len(data.patches) < self.n_dataset_clusters:
            raise ValueError(
                f"X has {len(data.patches)} patches in all, fewer than "
                f"n_dataset_clusters={self.n_dataset_clusters}."
            )
        self.dataset_centroids_ = fit_kmeans(
            data.patches, self.n_dataset_clusters, max_samples=self.max_samples,
            n_init=1, random_state=rng,
        )
        assignment = nearest_centroid(data.patches, self.dataset_centroids_)
        if self.foreground == "border":
            self.dataset_foreground_ = border_foreground(
                assignment, data.on_border(), self.n_dataset_clusters
            )
        else:
            self.dataset_foreground_ = attention_foreground(
                assignment, data.attention(), self.n_dataset_clusters
            )
        return self.dataset_foreground_[assignment]

    def _fit_categories(self, data, fg_dataset, rng):
        requested = self.n_classes if self.n_categories is None else self.n_categories
        if requested == "auto":
            # A copy of the generator, as for the classes in fit.
            requested, self.n_categories_scores_ = choose_n_clusters(
                data.descriptors, self.max_classes, random_state=copy.deepcopy(rng),
                rows_name="images", parameter="n_categories",
            )
        self.n_categories_ = min(requested, len(data))
        if self.n_categories_ < requested:
            warnings.warn(
                f"n_categories={requested} exceeds the {len(data)} images; using "
                f"{self.n_categories_}.", UserWarning,
            )
        self.category_centers_ = fit_kmeans(
            data.descriptors, self.n_categories_, max_samples=len(data),
            n_init=self.n_init, random_state=rng,
        )
        self.categories_ = nearest_centroid(data.descriptors, self.category_centers_)
        patch_category = self.categories_[data.image_of_patch]
        # A category no image fell into keeps the dataset-wide split.
        sides = np.stack([~fg_dataset, fg_dataset]).astype(np.float32)
        counts = sides.sum(1, keepdims=True)
        overall = data.patches.mean(0)
        fallback = np.where(counts > 0, sides @ data.patches / np.maximum(counts, 1), overall)
        centroids = np.repeat(fallback[None], self.n_categories_, axis=0).astype(np.float32)
        for category in range(self.n_categories_):
            rows = np.flatnonzero(patch_category == category)
            if len(rows) < 2:
                continue
            pair = fit_kmeans(
                data.patches[rows], 2, max_samples=self.max_samples,
                n_init=1, random_state=rng,
            )
            split = nearest_centroid(data.patches[rows], pair) == 1
            # Consistency with the level above: the cluster that agrees best
            # with the dataset-level foreground is this category's foreground.
            if agreement(~split, fg_dataset[rows]) > agreement(split, fg_dataset[rows]):
                pair = pair[::-1]
            centroids[category] = pair
        self.category_centroids_ = centroids

    # --------------------------------------------------------------- levels
    def _consensus(self, data, fg_dataset=None, categories=None):
        """Soft consensus per image at patch resolution, and the three levels.

        ``fit`` passes the dataset-level mask and the categories it has just
        computed; for new images they come from the fitted centroids.
        """
        if fg_dataset is None:
            assignment = nearest_centroid(data.patches, self.dataset_centroids_)
            fg_dataset = self.dataset_foreground_[assignment]
        if categories is None:
            categories = nearest_centroid(data.descriptors, self.category_centers_)
        # Nearest of its category's two centroids, for every patch at once.
        direction, offset = second_is_nearer(self.category_centroids_)
        patch_category = categories[data.image_of_patch]
        scores = _row_dot(data.patches, direction, patch_category)
        fg_category = scores > offset[patch_category]
        fg_image = self._image_level(data, fg_category, categories)
        votes = fg_dataset.astype(np.float32) + fg_category + fg_image
        if self.consensus == "vote":
            soft = votes / 3
        elif self.consensus == "intersection":
            soft = (votes == 3).astype(np.float32)
        else:
            soft = fg_image.astype(np.float32)
        levels = {
            "dataset": fg_dataset, "category": fg_category, "image": fg_image,
            "consensus": soft,
        }
        return data.split(soft), levels, categories

    def _image_level(self, data, fg_category, categories):
        """Batched 2-means inside every image, started from the category mask."""
        device = resolve_device(self.device)
        fg_image = np.zeros(len(data.patches), dtype=bool)
        by_grid = {}
        for index, grid in enumerate(data.grids):
            by_grid.setdefault(grid, []).append(index)
        for (h, w), indices in by_grid.items():
            per_batch = max(1, _IMAGE_BATCH_FLOATS // (h * w * data.n_features))
            for start in range(0, len(indices), per_batch):
                batch = indices[start:start + per_batch]
                rows = np.concatenate([np.arange(data.offsets[i], data.offsets[i + 1]) for i in batch])
                X = torch.from_numpy(data.patches[rows]).to(device).view(len(batch), h * w, -1)
                init = torch.from_numpy(fg_category[rows]).to(device).view(len(batch), h * w)
                split, centroids = batched_two_means(X, init, max_iter=self.max_iter)
                split, init = split.cpu().numpy(), init.cpu().numpy()
                keep = agreement(split, init)
                flip = agreement(~split, init)
                # Both zero: the category put no patch of this image in the
                # foreground; then the cluster nearer the category's
                # foreground centroid is foreground.
                tie = (keep == 0) & (flip == 0)
                if tie.any():
                    cat_fg = torch.from_numpy(self.category_centroids_[categories[batch], 1]).to(device)
                    nearer = ((centroids - cat_fg[:, None]) ** 2).sum(-1).argmin(1).cpu().numpy()
                    flip = np.where(tie, nearer == 0, flip)
                    keep = np.where(tie, nearer == 1, keep)
                chosen = np.where((flip > keep)[:, None], ~split, split)
                fg_image[rows] = chosen.ravel()
        return fg_image

    def predict_levels(self, X):
        """The three level masks and their consensus, at patch resolution.

        Parameters
        ----------
        X : sequence of ImageFeatures or ndarray of shape (n_images, h, w, d)

        Returns
        -------
        levels : list of dict
            Per image: ``"dataset"``, ``"category"``, ``"image"`` (bool
            ``(h, w)`` foreground masks), ``"consensus"`` (float ``(h, w)``
            soft score thresholded at 0.5) and ``"category_index"``.
        """
        check_is_fitted(self, "class_centroids_")
        data = self._checked_data(X)
        _, levels, categories = self._consensus(data)
        per_level = {name: data.split(values) for name, values in levels.items()}
        return [
            {**{name: maps[i] for name, maps in per_level.items()},
             "category_index": int(categories[i])}
            for i in range(len(data))
        ]

    # ---------------------------------------------------------- pixel stage
    def _regions(self, data, soft):
        """Upsample, refine and split into regions; describe each region."""
        refine = self.refine is not None and self.refine_iter > 0
        no_pixels = [i for i, f in enumerate(data.features) if f.image is None]
        if refine and no_pixels:
            warnings.warn(
                f"{len(no_pixels)} of {len(data)} images carry no pixels "
                "(ImageFeatures.image is None), so refinement is skipped for them.",
                UserWarning,
            )
        groups = {}
        for i, f in enumerate(data.features):
            groups.setdefault((f.image_shape, data.grids[i], f.image is None), []).append(i)
        batches = [
            indices[start:start + self.batch_size]
            for indices in groups.values()
            for start in range(0, len(indices), self.batch_size)
        ]
        device = resolve_device(self.device)
        results = Parallel(n_jobs=self.n_jobs, prefer="threads")(
            delayed(self._regions_of_batch)(data, soft, batch, refine, device)
            for batch in batches
        )
        regions = [None] * len(data)
        descriptors = [None] * len(data)
        crops = []
        for batch, result in zip(batches, results):
            for i, (region_map, n_regions, described) in zip(batch, result):
                regions[i] = region_map
                descriptors[i] = described
                if self.region == "crop":
                    crops.append((i, described))
        if self.region == "crop":
            descriptors = self._encode_crops(crops, len(data))
        elif self.metric == "cosine":
            descriptors = [_unit(d) for d in descriptors]
        return regions, descriptors

    def _regions_of_batch(self, data, soft, batch, refine, device):
        features = [data.features[i] for i in batch]
        height, width = features[0].image_shape
        scores = torch.from_numpy(np.stack([soft[i] for i in batch]))[:, None].to(device)
        scores = F.interpolate(scores, size=(height, width), mode="bilinear", align_corners=False)
        has_pixels = features[0].image is not None
        rgb = None
        if has_pixels and (refine or self.region == "crop"):
            rgb = [_pixels(f) for f in features]
        if refine and has_pixels:
            masks = self._refined(np.stack(rgb), scores, device) > 0.5
        else:
            masks = scores[:, 0] > 0.5
        masks = masks.cpu().numpy()
        min_size = self._min_region_pixels(height, width)
        out = []
        for j, i in enumerate(batch):
            region_map, n_regions = object_regions(masks[j], min_size)
            if self.region == "crop":
                described = region_crops(rgb[j], region_map, n_regions,
                                         self.region_encoder_.patch_size_)
            else:
                described = pooled_descriptors(region_map, n_regions, data.features[i].patches)
            out.append((region_map, n_regions, described))
        return out

    def _refined(self, rgb, scores, device):
        """PAMR at a working resolution, as its authors apply it to coarse
        masks, then back to full size. Only the foreground probability is
        propagated: affinities sum to one, so the background stays its
        complement."""
        height, width = scores.shape[-2:]
        shrink = min(1.0, self.refine_max_side / max(height, width))
        work = (max(1, round(height * shrink)), max(1, round(width * shrink)))
        image = torch.from_numpy(rgb).permute(0, 3, 1, 2).to(device)
        if work != (height, width):
            image = F.interpolate(image, size=work, mode="bilinear", antialias=True,
                                  align_corners=False)
            scores = F.interpolate(scores, size=work, mode="bilinear", antialias=True,
                                   align_corners=False)
        refined = pamr(image, scores, n_iter=self.refine_iter,
                       dilations=tuple(self.refine_dilations))
        if work != (height, width):
            refined = F.interpolate(refined, size=(height, width), mode="bilinear",
                                    align_corners=False)
        return refined[:, 0]

    def _min_region_pixels(self, height, width):
        if isinstance(self.min_region_size, Integral):
            return int(self.min_region_size)
        return max(1, math.ceil(self.min_region_size * height * width))

    def _encode_crops(self, crops, n_images):
        """CLS tokens of all region crops, encoded in one batched call."""
        flat = [crop for _, image_crops in crops for crop in image_crops]
        tokens = (
            np.stack([f.cls for f in self.region_encoder_.transform(flat)]).astype(np.float32)
            if flat else np.zeros((0, 1), np.float32)
        )
        if self.metric == "cosine":
            tokens = _unit(tokens)
        descriptors = [np.zeros((0, tokens.shape[1]), np.float32)] * n_images
        start = 0
        for i, image_crops in crops:
            descriptors[i] = tokens[start:start + len(image_crops)]
            start += len(image_crops)
        return descriptors

    def _label(self, regions, descriptors):
        dtype = np.uint8 if self.n_classes_ < 256 else np.int32
        masks = []
        for region_map, described in zip(regions, descriptors):
            lookup = np.zeros(len(described) + 1, dtype=dtype)
            if len(described):
                lookup[1:] = 1 + nearest_centroid(described, self.class_centroids_)
            masks.append(lookup[region_map])
        return masks

    # -------------------------------------------------------------- predict
    def _checked_data(self, X):
        data = self._data(X)
        if data.n_features != self.n_features_in_:
            raise ValueError(
                f"X has {data.n_features}-dimensional patch features, but "
                f"MultilevelSegmenter was fitted on {self.n_features_in_}."
            )
        if data.has_cls != self.uses_cls_:
            raise ValueError(
                "X's image descriptors (CLS tokens or mean patches) do not match those "
                "seen in fit: give CLS tokens in both or in neither."
            )
        return data

    def predict(self, X):
        """Label masks for new images with the fitted centroids.

        The dataset-level, category and class centroids are reused; only the
        image-level clustering is computed afresh.

        Parameters
        ----------
        X : sequence of ImageFeatures or ndarray of shape (n_images, h, w, d)

        Returns
        -------
        labels : list of ndarray of shape (H, W)
            0 for background, 1..n_classes_ for the classes.
        """
        check_is_fitted(self, "class_centroids_")
        data = self._checked_data(X)
        soft, _, _ = self._consensus(data)
        regions, descriptors = self._regions(data, soft)
        return self._label(regions, descriptors)

    def fit_predict(self, X, y=None):
        """Fit and return the label masks of the training images.

        Parameters
        ----------
        X : sequence of ImageFeatures or ndarray of shape (n_images, h, w, d)
        y : ignored

        Returns
        -------
        labels : list of ndarray of shape (H, W)
        """
        return self.fit(X).labels_


def _needs_fit(estimator):
    try:
        check_is_fitted(estimator)
    except Exception:
        return True
    return False


def _row_dot(X, directions, which, chunk=65536):
    """``X[i] . directions[which[i]]`` for every row, by chunked matrix products."""
    out = np.empty(len(X), dtype=np.float32)
    for start in range(0, len(X), chunk):
        block = X[start:start + chunk] @ directions.T
        out[start:start + chunk] = block[np.arange(len(block)), which[start:start + chunk]]
    return out


def _pixels(features):
    """The image's pixels at its recorded shape, float32 in [0, 1]."""
    rgb = load_rgb(features.image)
    if rgb.shape[:2] != tuple(features.image_shape):
        tensor = torch.from_numpy(rgb).permute(2, 0, 1)[None]
        tensor = F.interpolate(tensor, size=features.image_shape, mode="bilinear",
                               antialias=True, align_corners=False)
        rgb = tensor[0].permute(1, 2, 0).contiguous().numpy()
    return rgb
