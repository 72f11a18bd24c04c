"""MultilevelSegmenter: the method of Cheung et al. as a scikit-learn estimator.

``fit`` reads the features in passes over chunks of images, so memory is
bounded by a chunk and the bounded K-means samples, not by the number of
images:

1. survey: check every image, key it by content, draw the dataset-level
   sample of patches and a sample of the images' descriptors (CLS tokens);
2. dataset level: fit its K-means (more clusters than foreground and
   background) and the images' categories, count the clusters on the border
   (or under the CLS attention) and split them into foreground and
   background by Otsu's threshold; draw each category's sample;
3. category level: each category's 2-means, started from and oriented by the
   dataset level;
4. the per-image path that ``predict`` runs too: image level (redone from
   the border prior where it inherited a border-filling mask), consensus,
   upsampling and refinement, object regions and their descriptors; with
   counts of how the levels agree, which ``fit`` records and warns on;
5. classes: K-means of a content-keyed sample of the region descriptors,
   then every region's nearest class. By default the regions and
   descriptors come to the fitting process, which keeps the regions for
   ``labels_``, draws the sample, and spills the descriptors to a temporary
   file until it assigns the classes.

With ``labels_path``, the workers write into a zarr group there what the
fitting process would otherwise receive, so that it holds nothing per image.
The stages are functions in :mod:`skseg._fit_stages` and, for the per-image
path, :mod:`skseg._per_image_path`; ``fit`` runs them in order and assigns
what they return.
"""

import functools
import os
from numbers import Integral, Real

from sklearn.base import BaseEstimator, ClusterMixin, clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted
from sklearn_compat.base import _fit_context

from ._backbone import resolve_device
from ._chunks import Expected, as_features, chunk_ranges
from ._diagnostics import foreground_diagnostics, warn_if_foreground_looks_wrong
from ._features import check_features
from ._fit_stages import (
    StageSettings,
    dataset_foreground,
    draw_seeds,
    fit_categories,
    fit_category_level,
    fit_classes,
    fit_dataset_level,
    run_dataset_statistics,
    run_survey,
)
from ._label_store import LabelStore
from ._passes import FittedState, levels_only
from ._per_image_path import (
    RegionsInMemory,
    RegionsOnWorkers,
    classes_per_image,
    label_dtype,
    segment_all,
)
from ._refine import dense_crf, pamr
from ._regions import LabelMasks
from ._validation import HasMethods, Interval, StrOptions


def _needs_fit(estimator):
    try:
        check_is_fitted(estimator)
    except NotFittedError:
        return True
    return False


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
    n_dataset_clusters : int, default=8
        Clusters of the dataset-level K-means over all patches. More clusters
        than foreground and background: each kind of background (sky, grass,
        walls...) and of object gets clusters of its own, and the foreground
        rule then sorts clusters, not a two-way split that can fall between
        two backgrounds.
    foreground : {"border", "attention"}, default="border"
        Which dataset-level clusters are foreground. ``"border"``: those that
        keep off the image border, by the ratio of their share of border
        patches to their share of all patches; ``"attention"``: those with
        the higher mean CLS attention (needs features extracted with
        ``attention=True``). Either score is split in two by Otsu's
        threshold, weighted by patch counts (see ``dataset_foreground_``).
    consensus : {"vote", "intersection", "image"}, default="vote"
        How the three levels are combined: foreground where at least two
        agree, where all three agree, or the image level alone.
    refine : {"crf", "pamr"} or None, default="crf"
        Refinement of the upsampled mask with the image's colours:
        mean-field inference in a dense CRF with a bilateral and a Gaussian
        kernel, truncated to a window (``"crf"``, in torch, no compiled
        extension), or pixel-adaptive mask refinement (``"pamr"``). ``None``
        keeps the bilinearly upsampled mask. On 17 real VOC photos the CRF
        kept good masks as they were and repaired noisy ones, where PAMR
        degraded good masks (see the performance page); hence the default.
        Skipped with a warning for images without pixels
        (``ImageFeatures.image`` is None).
    refine_iter : int, default=10
        PAMR propagation steps, or CRF mean-field steps; 0 skips refinement.
    refine_dilations : tuple of int, default=(1, 2, 4, 8, 12, 24)
        PAMR neighbourhood dilations in pixels (of the working resolution).
    refine_max_side : int, default=128
        Refinement runs on the image and mask shrunk so that their longer
        side is at most this (PAMR's authors apply it to coarse masks, too);
        the refined mask is then upsampled to full size.
    crf_radius : int, default=6
        CRF window: neighbours up to this many pixels (of the working
        resolution) away along each axis.
    crf_stride : int, default=3
        The CRF's bilateral kernel visits the window's offsets that are
        multiples of this (its cost grows with their number); the Gaussian
        kernel, a convolution, visits every offset.
    crf_bilateral_weight : float, default=5.0
        Weight of the CRF's bilateral (appearance) kernel.
    crf_bilateral_xy : float, default=5.0
        Spatial standard deviation of the bilateral kernel, in pixels of the
        working resolution.
    crf_bilateral_rgb : float, default=0.05
        Colour standard deviation of the bilateral kernel, for colours in
        [0, 1] (13 of 255, pydensecrf's usual setting).
    crf_gaussian_weight : float, default=1.0
        Weight of the CRF's spatial Gaussian (smoothness) kernel.
    crf_gaussian_xy : float, default=1.0
        Standard deviation of the Gaussian kernel, in pixels of the working
        resolution.
    region : {"pooled", "crop"}, default="pooled"
        Region descriptor: the coverage-weighted mean of the region's patch
        features (fast), or the CLS token of the region's bounding-box crop
        re-encoded by ``region_encoder`` (faithful, slower; the crops of a
        chunk of images are encoded in one batched call).
    region_encoder : estimator, default=None
        A :class:`ViTPatchTransformer` (fitted or not) for ``region="crop"``.
    min_region_size : int or float, default=0.01
        Smallest object region kept: pixels if an int, a fraction of the image
        area if a float. Smaller regions become background.
    max_samples : int, default=20_000
        Rows drawn at random to fit each K-means: patches for the dataset
        level and each category's 2-means, images for the categories, regions
        for the classes (also when their number is chosen by ``"auto"``);
        every row is then assigned to its nearest centroid.
        Draws are keyed to the content of each image, so the same images in
        any order give the same sample.
    max_iter : int, default=20
        Most iterations of every K-means: the dataset level, categories,
        classes, the ``"auto"`` searches, and the category- and image-level
        2-means.
    n_init : "auto" or int, default="auto"
        k-means++ starts of every K-means fit: the dataset level, image
        categories, region classes and the ``"auto"`` searches; the start
        with the lowest inertia is kept. ``"auto"`` gives 10 starts to the
        fits over descriptors (categories, classes; one start merged two
        planted classes in 2 seeds of 10) and 3 to the dataset level, whose
        fit over ``max_samples`` patches costs most and whose over-clustering
        its start moves least. The category- and image-level 2-means start
        from the split of the level above instead.
    metric : {"cosine", "euclidean"}, default="cosine"
        ``"cosine"`` normalises patch features and descriptors to unit length
        before clustering.
    batch_size : int, default=16
        Images per batch in the pixel stage (upsampling and refinement).
    chunk_size : int, default=None
        Images read and processed together in each pass over ``X``; memory
        grows with it, not with the number of images. ``None`` picks chunks
        of a thirty-second of scikit-learn's ``working_memory`` in float32
        patch features (32 MiB by default; see :func:`sklearn.set_config`),
        at most a share of the images per job, so that ``n_jobs`` jobs have
        work. Results do not depend on it.
    device : {"auto", "cpu", "cuda", "mps"}, default="auto"
        Where the image-level clustering and refinement run.
    random_state : int, RandomState instance or None, default=None
        Seeds the subsampling and the K-means fits.
    n_jobs : int, default=None
        Chunks processed at once (threads by default, or any joblib backend
        in effect, e.g. Dask's). Results do not depend on it.
    verbose : bool, default=False
        Print a line to stderr as each stage of ``fit`` starts (survey,
        dataset level, category level, image level and refinement,
        labelling) and show a progress bar over the images for each pass
        over them (in ``predict`` too).
    labels_path : str or path-like, default=None
        Where the workers of ``fit`` write the training images' object
        regions, region descriptors and classes: a zarr group on a
        filesystem that every worker sees, or at an fsspec URL
        (``s3://bucket/labels.zarr``) for workers that share none, emptied
        at each fit (the masks
        of an earlier fit there can no longer be read; a path that holds
        anything else is refused). ``labels_`` then reads each mask
        from there when indexed, and the process that calls ``fit``
        receives and holds nothing per image: the workers compute the
        images' keys again where they need them, and write each image's
        category beside its mask. The
        workers also keep the category samples there and fit the category
        2-means themselves, and read the fitted state from there rather
        than receive it with every task. ``None`` keeps the masks in
        memory, in ``labels_``. The masks are the same either way.
    labels_options : dict, default=None
        fsspec storage options for a ``labels_path`` URL (an endpoint,
        credentials), as ``ViTPatchTransformer``'s ``store_options``; by
        default the workers' environment supplies them. Like any parameter
        they show in the estimator's repr and in a saved model, and travel
        with every task (and with ``labels_`` and ``categories_``): prefer
        credentials in the workers' environment.

    Attributes
    ----------
    labels_ : LabelMasks or StoredLabelMasks
        Label masks of the training images: a sequence whose item ``i`` is
        the ``(H, W)`` mask of image ``i``, painted when indexed from the
        image's regions, kept as compressed runs of pixels (in memory; with
        ``labels_path``, in the files there, read when indexed).
    n_features_in_ : int
        Dimension of the patch features seen in :meth:`fit`.
    dataset_centroids_ : ndarray of shape (n_dataset_clusters, d)
    dataset_foreground_ : ndarray of shape (n_dataset_clusters,), bool
        Which dataset-level clusters are foreground: those above Otsu's
        threshold on the ``foreground`` rule's score (``-log(ratio + 0.1)``
        of a cluster's border ratio, or its mean attention), weighted by the
        clusters' patch counts; a cluster without patches is background.
    category_centers_ : ndarray of shape (n_categories, d_cls)
        Centres of the image pseudo-categories.
    category_centroids_ : ndarray of shape (n_categories, 2, d)
        Background and foreground centroid of each category's 2-means (a
        category without patches keeps the dataset-wide split).
    categories_ : ndarray or StoredCategories of shape (n_images,)
        Category of each training image (with ``labels_path``, read from
        there: ``np.asarray(categories_)`` reads them all).
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
    foreground_share_ : dict of str to float
        Share of the training patches in the foreground at each level
        (``"dataset"``, ``"category"``, ``"image"``, ``"consensus"``).
    border_foreground_share_ : dict of str to float
        Share of the training images' border patches in the foreground at
        each level. Half or more at the consensus raises a
        :class:`ForegroundWarning`.
    level_agreement_ : dict of str to float
        Intersection over union of the foreground of two levels
        (``"dataset/category"``, ``"category/image"``, ``"dataset/image"``)
        over all training patches. Below 0.4 for a pair raises a
        :class:`ForegroundWarning`.

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
        "refine": [StrOptions({"pamr", "crf"}), None],
        "refine_iter": [Interval(Integral, 0, None, closed="left")],
        "refine_dilations": [tuple, list],
        "refine_max_side": [Interval(Integral, 1, None, closed="left")],
        "crf_radius": [Interval(Integral, 1, None, closed="left")],
        "crf_stride": [Interval(Integral, 1, None, closed="left")],
        "crf_bilateral_weight": [Interval(Real, 0, None, closed="left")],
        "crf_bilateral_xy": [Interval(Real, 0, None, closed="neither")],
        "crf_bilateral_rgb": [Interval(Real, 0, None, closed="neither")],
        "crf_gaussian_weight": [Interval(Real, 0, None, closed="left")],
        "crf_gaussian_xy": [Interval(Real, 0, None, closed="neither")],
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
        "chunk_size": [None, Interval(Integral, 1, None, closed="left")],
        "device": [StrOptions({"auto", "cpu", "cuda", "mps"})],
        "random_state": ["random_state"],
        "n_jobs": [None, Integral],
        "verbose": ["verbose"],
        "labels_path": [None, str, os.PathLike],
        "labels_options": [None, dict],
    }

    def __init__(
        self,
        n_classes=20,
        *,
        max_classes=30,
        n_categories=None,
        n_dataset_clusters=8,
        foreground="border",
        consensus="vote",
        refine="crf",
        refine_iter=10,
        refine_dilations=(1, 2, 4, 8, 12, 24),
        refine_max_side=128,
        crf_radius=6,
        crf_stride=3,
        crf_bilateral_weight=5.0,
        crf_bilateral_xy=5.0,
        crf_bilateral_rgb=0.05,
        crf_gaussian_weight=1.0,
        crf_gaussian_xy=1.0,
        region="pooled",
        region_encoder=None,
        min_region_size=0.01,
        max_samples=20_000,
        max_iter=20,
        n_init="auto",
        metric="cosine",
        batch_size=16,
        chunk_size=None,
        device="auto",
        random_state=None,
        n_jobs=None,
        verbose=False,
        labels_path=None,
        labels_options=None,
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
        self.crf_radius = crf_radius
        self.crf_stride = crf_stride
        self.crf_bilateral_weight = crf_bilateral_weight
        self.crf_bilateral_xy = crf_bilateral_xy
        self.crf_bilateral_rgb = crf_bilateral_rgb
        self.crf_gaussian_weight = crf_gaussian_weight
        self.crf_gaussian_xy = crf_gaussian_xy
        self.region = region
        self.region_encoder = region_encoder
        self.min_region_size = min_region_size
        self.max_samples = max_samples
        self.max_iter = max_iter
        self.n_init = n_init
        self.metric = metric
        self.batch_size = batch_size
        self.chunk_size = chunk_size
        self.device = device
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.verbose = verbose
        self.labels_path = labels_path
        self.labels_options = labels_options

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False  # X is a sequence of per-image features
        return tags

    # ------------------------------------------------------------------ fit
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Fit the three clustering levels and the region classes.

        Parameters
        ----------
        X : sequence of ImageFeatures or ndarray of shape (n_images, h, w, d)
            Patch features (a list, a :class:`FeatureSequence`, a
            :class:`FeatureStore`...); with a 4-D array there are no CLS
            tokens and no pixels, so masks come back at patch resolution,
            unrefined.
        y : ignored
            Accepted so that model selection can pass ground truth to a scorer.

        Returns
        -------
        self : MultilevelSegmenter
        """
        self._check_params()
        X = as_features(X)
        # A refit starts unfitted: one stopped midway must not leave new
        # dataset centroids beside old classes for predict to mix.
        for name in [name for name in vars(self) if name.endswith("_")]:
            del self.__dict__[name]
        expected = self._expected(X)
        seeds = draw_seeds(self.random_state)
        chunks = chunk_ranges(X, self.chunk_size, self.n_jobs)
        output = None if self.labels_path is None \
            else LabelStore.create(self.labels_path, self.labels_options)
        run = self._settings()

        # 1. Survey: every image checked and keyed; bounded, content-keyed
        # samples of patches for the dataset level and of the images'
        # descriptors for their pseudo-categories.
        run.say(f"survey: checking and describing {len(X)} images")
        keys, n_patches, patch_sample, descriptor_sample = run_survey(
            X, chunks, expected, (seeds["dataset"], seeds["categories"]), run,
            send_keys=output is None,
        )

        # 2. Dataset level, the images' pseudo-categories, and which
        # dataset clusters are foreground.
        run.say(f"dataset level: K-means of {len(patch_sample)} sampled patches into "
                f"{self.n_dataset_clusters} clusters, then image categories")
        self.dataset_centroids_ = fit_dataset_level(
            patch_sample, n_patches, self.n_dataset_clusters, seeds["dataset"], run
        )
        self.n_features_in_, self.uses_cls_ = expected.n_features, expected.has_cls
        self.category_centers_, self.n_categories_, scores = fit_categories(
            descriptor_sample, self.n_classes if self.n_categories is None else self.n_categories,
            len(X), self.max_classes, seeds["categories"], run,
        )
        if scores is not None:
            self.n_categories_scores_ = scores
        categories, statistics, category_samples = run_dataset_statistics(
            X, chunks, expected, keys, descriptor_sample, self._state(),
            seeds["category_pairs"], run, output,
        )
        if output is None:  # else the per-image pass writes them beside the masks
            self.categories_ = categories
        self.dataset_foreground_ = dataset_foreground(statistics, self.foreground)
        run.say(f"dataset level: {int(self.dataset_foreground_.sum())} of "
                f"{self.n_dataset_clusters} clusters are foreground")

        # 3. Category level, oriented by the dataset level.
        run.say(f"category level: a 2-means in each of {self.n_categories_} categories")
        self.category_centroids_ = fit_category_level(
            category_samples, statistics, self.dataset_centroids_, self.dataset_foreground_,
            self.n_categories_, chunks, run, output,
        )

        # 4. The per-image path that predict runs: image level, consensus,
        # pixels, regions and their descriptors, with counts of how the
        # levels agree, recorded and warned on. The regions stay here, or
        # with labels_path on the workers' files, until they have classes.
        if self.region == "crop":
            self.region_encoder_ = (
                clone(self.region_encoder).fit() if _needs_fit(self.region_encoder)
                else self.region_encoder
            )
        run.say("image level, consensus and refinement "
                f"({self.refine if self.refine and self.refine_iter else 'none'}), "
                f"then object regions ({self.region} descriptors)")
        with (RegionsInMemory(run, seeds["classes"]) if output is None
              else RegionsOnWorkers(output, run, seeds["classes"])) as regions:
            counts = regions.segment(X, chunks, expected, keys, self._state())
            self.foreground_share_, self.border_foreground_share_, self.level_agreement_ = \
                foreground_diagnostics(counts)
            warn_if_foreground_looks_wrong(self)

            # 5. The classes: K-means of a sample of the region descriptors,
            # then every region's nearest class, which make the masks.
            self.n_classes_, scores, self.class_centroids_ = fit_classes(
                regions.class_sample(), regions.n_regions, self.n_classes, self.max_classes,
                seeds["classes"], run,
            )
            if scores is not None:
                self.n_classes_scores_ = scores
            labels = regions.labels(self.class_centroids_, label_dtype(self.n_classes_))
            if output is not None:
                self.categories_ = regions.categories()
            self.labels_ = labels
        if self.n_classes == "auto":
            run.say(f"labelling: {self.n_classes_} classes chosen (silhouette "
                    f"{self.n_classes_scores_[self.n_classes_]:.3f})")
        return self

    # -------------------------------------------------------------- predict
    def predict(self, X):
        """Label masks for new images with the fitted centroids.

        The dataset-level, category and class centroids are reused; only the
        image-level clustering is computed afresh. It runs the same per-image
        path as :meth:`fit`, so ``predict`` of the training images gives
        ``labels_``.

        Parameters
        ----------
        X : sequence of ImageFeatures or ndarray of shape (n_images, h, w, d)

        Returns
        -------
        labels : LabelMasks
            Item ``i`` is the ``(H, W)`` mask of image ``i``: 0 for
            background, 1..n_classes_ for the classes.
        """
        check_is_fitted(self, "class_centroids_")
        X = as_features(X)
        dtype = label_dtype(self.n_classes_)
        regions, classes = [], []

        def keep(chunk_regions, chunk_descriptors):
            regions.extend(chunk_regions)
            classes.extend(classes_per_image(chunk_descriptors, self.class_centroids_, dtype))

        segment_all(X, chunk_ranges(X, self.chunk_size, self.n_jobs),
                    self._expected(X, fitted=True), self._state(), keep, self._settings())
        return LabelMasks(regions, classes, dtype)

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
        X = as_features(X)
        levels = []
        for per_image in self._settings().map(
            levels_only, X, chunk_ranges(X, self.chunk_size, self.n_jobs),
            self._expected(X, fitted=True), self._state(),
        ):
            levels.extend(per_image)
        return levels

    def fit_predict(self, X, y=None):
        """Fit and return the label masks of the training images.

        Parameters
        ----------
        X : sequence of ImageFeatures or ndarray of shape (n_images, h, w, d)
        y : ignored

        Returns
        -------
        labels : LabelMasks
        """
        return self.fit(X).labels_

    # ----------------------------------------------------------- parameters
    def _check_params(self):
        dilations = self.refine_dilations
        if not dilations or not all(isinstance(d, Integral) and d >= 1 for d in dilations):
            raise ValueError(
                f"refine_dilations={dilations!r} must be a non-empty sequence of positive ints."
            )
        if self.refine == "crf" and self.crf_stride > self.crf_radius:
            raise ValueError(
                f"crf_stride={self.crf_stride} exceeds crf_radius={self.crf_radius}: the "
                "CRF's bilateral kernel would have no neighbour in its window."
            )
        if self.max_samples < self.n_dataset_clusters:
            raise ValueError(
                f"max_samples={self.max_samples} is below n_dataset_clusters="
                f"{self.n_dataset_clusters}: the dataset level's K-means needs at least one "
                "sampled patch per cluster."
            )
        if self.region == "crop" and self.region_encoder is None:
            raise ValueError("region='crop' needs a region_encoder, e.g. a ViTPatchTransformer.")
        resolve_device(self.device)  # an unavailable device fails now, not mid-run

    def _settings(self):
        """What every stage of fit reads of the parameters."""
        return StageSettings(max_samples=self.max_samples, max_iter=self.max_iter,
                             n_init=self.n_init, n_jobs=self.n_jobs, verbose=self.verbose,
                             name=type(self).__name__)

    def _expected(self, X, fitted=False):
        """What every image must have: like image 0 in fit, like fit in predict."""
        if fitted:
            n_features, has_cls = self.n_features_in_, self.uses_cls_
        else:
            first = X[0]
            check_features(first, "X[0]")
            n_features, has_cls = first.patches.shape[2], first.cls is not None
        return Expected(
            n_features, has_cls, self.metric, fitted=fitted,
            needs_attention=self.foreground == "attention" and not fitted,
            needs_pixels="region='crop'" if self.region == "crop" else None,
        )

    def _state(self):
        """What the passes read of this segmenter, fitted so far."""
        refine = None
        if self.refine == "crf" and self.refine_iter > 0:
            refine = functools.partial(
                dense_crf, n_iter=self.refine_iter, radius=self.crf_radius,
                stride=self.crf_stride, bilateral_weight=self.crf_bilateral_weight,
                bilateral_xy=self.crf_bilateral_xy, bilateral_rgb=self.crf_bilateral_rgb,
                gaussian_weight=self.crf_gaussian_weight, gaussian_xy=self.crf_gaussian_xy,
            )
        elif self.refine == "pamr" and self.refine_iter > 0:
            refine = functools.partial(pamr, n_iter=self.refine_iter,
                                       dilations=tuple(self.refine_dilations))
        return FittedState(
            dataset_centroids=self.dataset_centroids_, category_centers=self.category_centers_,
            consensus=self.consensus, max_iter=self.max_iter, device=self.device,
            metric=self.metric, dataset_foreground=getattr(self, "dataset_foreground_", None),
            category_pairs=getattr(self, "category_centroids_", None), refine=refine,
            refine_max_side=self.refine_max_side, batch_size=self.batch_size,
            min_region_size=self.min_region_size, region=self.region,
            region_encoder=getattr(self, "region_encoder_", None),
        )
