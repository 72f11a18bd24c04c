"""The stages of :meth:`MultilevelSegmenter.fit` but the per-image path
(:mod:`skseg._per_image_path`), each a function of what it reads that
returns what it computes; ``fit`` assigns the fitted attributes.

The stages that read the images run a pass of :mod:`skseg._passes` over
the chunks of X (through :meth:`StageSettings.map`) and merge what its
tasks send back; the others fit K-means, in this process, on the bounded
samples those passes drew.

With ``labels_path`` (an ``output``, a :class:`LabelStore`), the fitted
state the tasks read is written there once and each task gets a reference
to it (:func:`shared`), the images' keys are computed again where a task
needs them, and the category 2-means are fitted on the workers
(:func:`pairs_on_workers`): the fitting process holds nothing per image,
and each task's arguments and results are a few kilobytes.
"""

import sys
import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.utils import check_random_state

from ._chunks import CurrentBound, PerImage, map_chunks
from ._clustering import BoundedSample, fit_kmeans, nearest_centroid, priority_bound
from ._label_store import shared
from ._levels import attention_foreground, border_foreground, category_pair
from ._n_classes import choose_n_clusters
from ._passes import dataset_statistics, fit_category_pairs, gather_category_rows, survey

# Streams of random draws, one per use, derived from one seed.
SEEDS = ("dataset", "categories", "category_pairs", "classes")


def draw_seeds(random_state):
    """The seed of each stream in :data:`SEEDS`, from one draw of ``random_state``."""
    master = check_random_state(random_state).randint(np.iinfo(np.int32).max)
    return dict(zip(SEEDS, np.random.SeedSequence(master).generate_state(len(SEEDS))))


@dataclass(frozen=True)
class StageSettings:
    """The parameters that every stage reads besides its data: the bound of
    every K-means sample, the K-means fits' iterations and starts, and how
    the passes run (jobs, progress bars) and say which stage starts."""

    max_samples: int
    max_iter: int
    n_init: object  # "auto" or an int
    n_jobs: object = None
    verbose: bool = False
    name: str = "MultilevelSegmenter"  # the estimator's, to start each line said

    def starts(self, level="descriptors"):
        """K-means starts of a fit (see ``n_init``)."""
        if self.n_init != "auto":
            return self.n_init
        return 3 if level == "dataset" else 10

    def map(self, function, X, chunks, *args, progress=None):
        """:func:`map_chunks` with these jobs, and its progress bar when ``verbose``."""
        return map_chunks(function, X, chunks, *args, n_jobs=self.n_jobs,
                          progress=progress if self.verbose else None)

    def say(self, message):
        """With ``verbose``, say which stage of the fit starts."""
        if self.verbose:
            print(f"{self.name}: {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------ 1. survey
def run_survey(X, chunks, expected, seeds, settings, send_keys=True):
    """Pass 1 (:func:`survey`): the images' keys (None without
    ``send_keys``), their number of patches, and the samples of patches and
    of image descriptors, drawn with ``seeds``.

    Its tasks send back only the rows under a priority bound: descriptors
    from the number of images, patches from the patch count that image 0
    suggests (twice the sample expected, in case the images are smaller),
    or the bound of the sample merged so far where it is tighter; again
    without the first in the rare case they were much smaller and the
    sample did not fill up.
    """
    max_samples = settings.max_samples
    estimate = len(X) * int(np.prod(X[0].grid_shape))
    for below in ((priority_bound(max_samples, estimate, margin=2),
                   priority_bound(max_samples, len(X))), (None, None)):
        keys, n_patches = [], 0
        patches, descriptors = BoundedSample(max_samples), BoundedSample(max_samples)
        for chunk_keys, chunk_patches, chunk_sample, chunk_descriptors in settings.map(
            survey, X, chunks, expected, seeds, max_samples,
            CurrentBound(patches, below[0]), CurrentBound(descriptors, below[1]), send_keys,
            progress="survey",
        ):
            if send_keys:
                keys.append(chunk_keys)
            n_patches += chunk_patches
            patches.merge(chunk_sample)
            descriptors.merge(chunk_descriptors)
        if len(patches) == min(max_samples, n_patches) \
                and len(descriptors) == min(max_samples, len(X)):
            break
    return np.concatenate(keys) if send_keys else None, n_patches, patches, descriptors


# ------------------------------------------------------ 2. dataset level
def fit_dataset_level(patch_sample, n_patches, n_clusters, seed, settings):
    """The dataset level's centroids: K-means of the sample of patches."""
    if n_patches < n_clusters:
        raise ValueError(
            f"X has {n_patches} patches in all, fewer than n_dataset_clusters={n_clusters}."
        )
    return fit_kmeans(patch_sample.result(), n_clusters, n_init=settings.starts("dataset"),
                      max_iter=settings.max_iter, seed=seed)


def fit_categories(descriptor_sample, requested, n_images, max_classes, seed, settings):
    """The images' pseudo-categories (:func:`fit_clusters` of the sample of
    their descriptors): their centres, their number and the silhouette of
    each number tried (None unless chosen)."""
    sample = descriptor_sample.result()[:, :-1]  # the last column is the patch count
    n_categories, scores, centers = fit_clusters(
        sample, requested, n_images, max_classes, seed, settings, rows_name="images",
        parameter="n_categories",
    )
    return centers, n_categories, scores


def fit_clusters(sample, requested, n_rows, max_classes, seed, settings, *, rows_name,
                 parameter):
    """K-means of a bounded ``sample`` of ``n_rows`` rows into ``requested``
    clusters (the parameter named ``parameter``), chosen by the silhouette
    where ``"auto"``, capped at the rows with a warning. Returns the number,
    the silhouette of each number tried (None unless chosen) and the
    centroids."""
    scores = None
    if requested == "auto":
        requested, scores = choose_n_clusters(
            sample, max_classes, random_state=seed, max_samples=settings.max_samples,
            n_init=settings.starts(), max_iter=settings.max_iter, rows_name=rows_name,
            parameter=parameter,
        )
    chosen = min(requested, n_rows)
    if chosen < requested:
        warnings.warn(f"{parameter}={requested} exceeds the {n_rows} {rows_name}; using "
                      f"{chosen}.", UserWarning)
    centroids = fit_kmeans(sample, chosen, n_init=settings.starts(), max_iter=settings.max_iter,
                           seed=seed)
    return chosen, scores, centroids


def run_dataset_statistics(X, chunks, expected, keys, descriptor_sample, state, seed,
                           settings, output=None):
    """Pass 2 (:func:`dataset_statistics`): each image's category (None with
    ``output``: the per-image pass writes them beside the masks), the
    summed statistics of the dataset clusters and categories, and each
    category's sample of patches (with ``output``, their priorities alone:
    the rows stay there).

    Each category's patch count is estimated from the sample of images and
    their patch counts (low by eight standard deviations of the count of
    its images in the sample), so that its sample is bounded as in
    :func:`run_survey`; again without the bounds in the rare case one did
    not fill up.
    """
    max_samples, n_categories = settings.max_samples, len(state.category_centers)
    task_state = shared(state, output)
    sample = descriptor_sample.result()
    category = nearest_centroid(sample[:, :-1], state.category_centers)
    estimates = np.bincount(category, weights=sample[:, -1],
                            minlength=n_categories) * (len(X) / len(sample))
    if len(sample) < len(X):
        sampled = np.bincount(category, minlength=n_categories)
        estimates *= np.maximum(1 - 8 / np.sqrt(np.maximum(sampled, 1)), 0)
    for below in ([priority_bound(max_samples, n) for n in estimates], None):
        categories, statistics, samples = [], {}, {}
        for chunk_categories, chunk_statistics, chunk_samples in settings.map(
            dataset_statistics, X, chunks, expected,
            None if keys is None else PerImage(keys), task_state,
            seed, max_samples, below, output, progress="dataset level",
        ):
            categories.append(chunk_categories)
            for name, values in chunk_statistics.items():
                statistics[name] = statistics.get(name, 0) + values
            for category, sample in chunk_samples.items():
                samples.setdefault(category, BoundedSample(max_samples)).merge(sample)
        if all(len(samples.get(c, ())) == min(max_samples, n)
               for c, n in enumerate(statistics["category_patches"]) if n):
            break
    return (np.concatenate(categories) if output is None else None), statistics, samples


def dataset_foreground(statistics, rule):
    """Which dataset clusters are foreground, by the ``foreground`` rule."""
    if rule == "border":
        return border_foreground(statistics["counts"], statistics["border"])
    return attention_foreground(statistics["counts"], statistics["attention"])


# ------------------------------------------------------ 3. category level
def fit_category_level(samples, statistics, dataset_centroids, foreground, n_categories,
                       chunks, settings, output=None):
    """Each category's 2-means (:func:`category_pair`), started from and
    oriented by the dataset level; with ``output``, on the workers, from the
    rows that the statistics pass left there."""
    # A category with fewer than two patches (no image is nearest its
    # centre) keeps the dataset-wide split: the mean of the dataset
    # centroids on each side, weighted by their patch counts.
    sides = np.stack([~foreground, foreground]) * statistics["counts"].astype(np.float64)
    fallback = sides @ dataset_centroids / np.maximum(sides.sum(1, keepdims=True), 1)
    fallback = fallback.astype(np.float32)
    pairs = np.repeat(fallback[None], n_categories, axis=0)
    if output is not None:
        fitted = pairs_on_workers(samples, n_categories, dataset_centroids, foreground,
                                  chunks, settings, output)
        for category, pair in fitted.items():
            pairs[category] = pair
        return pairs
    for category, sample in sorted(samples.items()):
        if len(sample) < 2:
            continue
        patches = sample.result()
        reference = foreground[nearest_centroid(patches, dataset_centroids)]
        pairs[category] = category_pair(patches, reference, max_iter=settings.max_iter)
    return pairs


def pairs_on_workers(samples, n_categories, dataset_centroids, foreground, chunks, settings,
                     output):
    """The category 2-means fitted by tasks on the workers, in a tree of
    two steps over the rows that the statistics pass wrote to ``output``
    (:func:`gather_category_rows`, :func:`fit_category_pairs`), by
    category."""
    largest = np.zeros(n_categories, np.uint64)
    for category, sample in samples.items():
        if len(sample):
            largest[category] = sample.largest()
    starts = np.array([start for start, _ in chunks], np.int64)
    per_group = max(1, int(np.ceil(np.sqrt(len(starts)))))
    groups = [(first, min(first + per_group, len(starts)))
              for first in range(0, len(starts), per_group)]
    for _ in settings.map(gather_category_rows, output, groups, PerImage(starts), largest):
        pass
    pairs = {}
    for fitted in settings.map(
        fit_category_pairs, output,
        [(c, c + 1) for c, sample in sorted(samples.items()) if len(sample) >= 2],
        shared((dataset_centroids, foreground), output),
        settings.max_samples, settings.max_iter, [first for first, _ in groups],
    ):
        pairs.update(fitted)
    output.remove("work")
    return pairs


# ------------------------------------------------------ 5. classes
def fit_classes(sample, n_regions, n_classes, max_classes, seed, settings):
    """The region classes: their number (``n_classes``, chosen by the
    silhouette where ``"auto"``, capped at the regions), the silhouette of
    each number tried (None unless chosen) and the centroids, from the
    bounded ``sample`` of the ``n_regions`` region descriptors."""
    settings.say(f"labelling: {n_regions} object regions into "
                 + ("a number of classes chosen by the silhouette"
                    if n_classes == "auto" else f"{n_classes} classes"))
    if n_regions == 0:
        raise ValueError(
            "No foreground region was found in any image; lower min_region_size or "
            "check the features."
        )
    return fit_clusters(sample.result(), n_classes, n_regions, max_classes, seed, settings,
                        rows_name="object regions", parameter="n_classes")
