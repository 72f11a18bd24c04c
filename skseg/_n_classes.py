"""Choosing the number of classes (or image categories) without labels.

The criterion is the mean silhouette coefficient
(:func:`sklearn.metrics.silhouette_score`) of a K-means partition for every
candidate count, computed on a bounded random sample of the descriptors after
projecting them on their leading principal components. The count with the
highest silhouette wins. ``benchmarks/bench_n_classes.py`` compares it with
the other criteria scikit-learn offers on planted data; the user guide gives
the figures.
"""

import warnings
from numbers import Integral

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import silhouette_score
from sklearn.utils import check_random_state
from threadpoolctl import threadpool_limits

# Rows the silhouette is computed on: its cost is quadratic in them, so it
# is bounded apart from the K-means sample (whose cost is linear).
SILHOUETTE_ROWS = 1000


def choose_n_clusters(descriptors, max_clusters, *, random_state=None, max_samples=1000,
                      n_init=10, max_iter=300, rows_name="descriptors",
                      parameter="n_clusters"):
    """Number of clusters in ``descriptors`` by the silhouette criterion.

    Every count ``k`` from 2 to ``max_clusters`` is tried: K-means with ``k``
    clusters, then the mean silhouette coefficient of that partition. The
    count with the highest silhouette is chosen (the smallest one on a tie).

    K-means runs on at most ``max_samples`` rows drawn at random, projected
    on their first ``max_clusters`` principal components; the silhouette on
    at most :data:`SILHOUETTE_ROWS` of them. Any ``max_clusters``
    centroids lie in a subspace of that dimension, so the projection keeps
    what separates the candidate clusters and drops most of the isotropic
    noise of the other directions, which otherwise flattens the silhouette
    of high-dimensional descriptors.

    Parameters
    ----------
    descriptors : ndarray of shape (n_rows, d)
        Region (or image) descriptors, normalised as the segmenter clusters
        them.
    max_clusters : int
        Largest count tried; at least 2. Capped at ``n_rows - 1`` (the
        silhouette is undefined when every row is its own cluster).
    random_state : int, RandomState instance or None, default=None
        Seeds the sample, the projection and the K-means fits.
    max_samples : int, default=1000
        Rows the K-means fits see. Bounds the cost whatever the number of rows.
    n_init : int, default=10
        K-means restarts per candidate, so that a poor local minimum does not
        decide the count.
    max_iter : int, default=300
        Iterations of each K-means run.
    rows_name, parameter : str, default="descriptors", "n_clusters"
        What the rows are and which parameter asked for the choice, for the
        error message when there are too few rows.

    Returns
    -------
    n_clusters : int
        The chosen count.
    scores : dict of int to float
        Mean silhouette coefficient (from -1 to 1, higher is better) of every
        candidate count, in increasing order of the count.

    Raises
    ------
    ValueError
        If ``max_clusters`` is below 2, or there are fewer than 3 rows, or
        some are NaN or infinite.
    """
    if not isinstance(max_clusters, Integral) or isinstance(max_clusters, bool) \
            or max_clusters < 2:
        raise ValueError(
            f"max_clusters={max_clusters!r} must be an integer of at least 2: choosing a "
            "number of clusters compares two or more."
        )
    descriptors = np.asarray(descriptors)
    if descriptors.ndim != 2:
        raise ValueError(
            f"descriptors must be a 2-D array (n_rows, d), got shape {descriptors.shape}."
        )
    n_rows = len(descriptors)
    if n_rows < 3:
        raise ValueError(
            f"Only {n_rows} {rows_name} found: {parameter}='auto' needs at least 3 to "
            f"compare two or more clusters. Give {parameter} as an integer."
        )
    if not np.isfinite(descriptors).all():
        raise ValueError(f"The {rows_name}' descriptors contain NaN or infinite values.")
    rng = check_random_state(random_state)
    if n_rows > max_samples:
        descriptors = descriptors[np.sort(rng.choice(n_rows, size=max_samples, replace=False))]
    sample = descriptors.astype(np.float64)
    # The silhouette needs fewer clusters than the rows it is computed on.
    largest = min(int(max_clusters), len(sample) - 1, SILHOUETTE_ROWS - 1)
    n_components = min(int(max_clusters), *sample.shape)
    projected = PCA(n_components, random_state=_seed(rng)).fit_transform(sample)
    scored = (np.sort(rng.choice(len(sample), size=SILHOUETTE_ROWS, replace=False))
              if len(sample) > SILHOUETTE_ROWS else slice(None))
    scores = {}
    for k in range(2, largest + 1):
        kmeans = KMeans(k, n_init=n_init, max_iter=max_iter, random_state=_seed(rng))
        with warnings.catch_warnings(), _one_openmp_thread():
            # Raised when there are fewer distinct rows than k; scored below.
            warnings.simplefilter("ignore", ConvergenceWarning)
            labels = kmeans.fit_predict(projected)
        # Fewer distinct rows than k leaves a cluster empty: no partition
        # into k clusters exists, so k gets the worst silhouette.
        scores[k] = (float(silhouette_score(projected[scored], labels[scored]))
                     if len(np.unique(labels)) == k and len(np.unique(labels[scored])) > 1
                     else -1.0)
    best = max(scores, key=lambda k: (scores[k], -k))
    return best, scores


def _one_openmp_thread():
    """OpenMP at one thread, in the calling thread and for the duration only.

    The candidates' K-means run on at most ``max_samples`` rows of at most
    ``max_clusters`` dimensions: each Lloyd iteration opens parallel regions
    of a few hundred rows, where a second thread saves no time, and on a busy
    machine every region waits for it to be scheduled. With torch imported,
    scikit-learn's OpenMP calls reach torch's runtime, so all OpenMP runtimes
    are limited, but only here: torch keeps its threads elsewhere. On 2
    shared cores under load, choosing among 2..30 clusters of 400 rows took
    76 s with two threads and 13 s with one, with the same scores.
    """
    return threadpool_limits(limits=1, user_api="openmp")


def _seed(rng):
    return rng.randint(np.iinfo(np.int32).max)
