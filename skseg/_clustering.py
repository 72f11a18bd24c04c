"""Clustering kernels of the segmenter: content-keyed bounded samples,
K-means fits, chunked nearest-centroid assignment, and a 2-means batched over
many images.

Every random choice is derived from a seed and the *content* of an image
(the digest of the image it came from, else its features' bytes), never from
its position in a list, so the same set of images in any order, split into
any chunks, on any number of workers, gives the same result.
"""

import math
import warnings

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning
from sklearn.preprocessing import normalize

from ._working_memory import DISTANCE_BLOCK, rows_within

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def unit_rows(X):
    """Rows of ``X`` scaled to unit length in place (zero rows stay zero)."""
    return normalize(X, copy=False) if len(X) else X


def _splitmix64(values):
    """Vectorised SplitMix64: a fast, well-mixed 64-bit hash of each value."""
    with np.errstate(over="ignore"):
        z = values + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def patch_priorities(seed, key, n_patches):
    """Pseudo-random priorities of the patches of one image.

    A patch's priority depends only on ``seed``, the image's content ``key``
    and the patch's position in its image: the patches with the smallest
    priorities form a uniform random sample that no chunking or image order
    changes.
    """
    base = _splitmix64(np.array([seed], dtype=np.uint64))[0] ^ np.uint64(key)
    with np.errstate(over="ignore"):
        return _splitmix64(base + np.arange(n_patches, dtype=np.uint64) * _GOLDEN)


def image_priorities(seed, keys):
    """One priority per image, from its content key (as :func:`patch_priorities`)."""
    base = _splitmix64(np.array([seed], dtype=np.uint64))[0]
    return _splitmix64(base ^ np.asarray(keys, dtype=np.uint64))


def priority_bound(size, n_rows, margin=1):
    """A priority under which the ``size`` smallest of ``n_rows`` priorities
    lie, but for a chance far below 1e-9; None when it would keep every row.

    Priorities are uniform 64-bit hashes, so the count under a fraction
    ``q`` of their range is binomial with mean ``n_rows * q``: the bound
    expects ``margin * size`` rows plus eight standard deviations. A pass's
    tasks then send back about that many rows in all, however many images
    they read, and the sample is the same as without the bound. A caller
    whose ``n_rows`` is an estimate gives a larger ``margin``, checks that
    the merged sample filled up, and runs again without the bound if not.
    """
    expected = margin * size + 8 * math.sqrt(size)
    if n_rows <= expected:
        return None
    return np.uint64(int(expected / n_rows * 2.0**64))


class BoundedSample:
    """The ``size`` rows of smallest priority among all rows offered to it.

    Rows arrive chunk by chunk; memory stays about twice ``size`` rows
    whatever their total, and once the sample is full only rows that beat its
    largest priority are kept at all. The result is sorted by priority, so it
    does not depend on the order in which rows were offered.

    Rows at or above ``below`` (a :func:`priority_bound`) are never kept,
    and a sample travels (pickles) with at most ``size`` rows.
    """

    def __init__(self, size, below=None):
        self.size = size
        self._parts = []
        self._pending = 0
        self._threshold = below

    def __getstate__(self):
        if self._pending > self.size:
            self._compact()
        return self.__dict__

    def offer(self, priorities, rows):
        if self._threshold is not None:
            better = priorities < self._threshold
            priorities, rows = priorities[better], rows[better]
        if len(priorities):
            self._parts.append((priorities, rows))
            self._pending += len(priorities)
            if self._pending >= 2 * self.size:
                self._compact()

    def merge(self, other):
        """Offer every row that another sample holds."""
        for priorities, rows in other._parts:
            self.offer(priorities, rows)

    def _compact(self):
        """Keep the ``size`` rows of smallest priority.

        Only the kept rows are copied, each part's in one block: the parts'
        rows are never concatenated, which for a sample of a ViT's patches
        would mean tens of megabytes per compaction.
        """
        priorities = np.concatenate([p for p, _ in self._parts])
        if len(priorities) > self.size:
            keep = np.sort(np.argpartition(priorities, self.size - 1)[:self.size])
            self._threshold = priorities[keep].max()
        else:
            keep = np.arange(len(priorities))
        self._parts = [(priorities[keep], self._rows_at(keep))]
        self._pending = len(keep)

    def _rows_at(self, positions):
        """The rows at sorted ``positions`` of the parts taken end to end."""
        starts = np.cumsum([0] + [len(p) for p, _ in self._parts])
        bounds = np.searchsorted(positions, starts)
        dtype = np.result_type(*(part_rows.dtype for _, part_rows in self._parts))
        rows = np.empty((len(positions),) + self._parts[0][1].shape[1:], dtype)
        for part, (_, part_rows) in enumerate(self._parts):
            block = slice(bounds[part], bounds[part + 1])
            np.take(part_rows.astype(dtype, copy=False), positions[block] - starts[part],
                    axis=0, out=rows[block])
        return rows

    def __len__(self):
        return min(self._pending, self.size)

    @property
    def bound(self):
        """A priority at or above which no row offered from now on can be
        kept (None while any can): the ``below`` of a pass whose tasks offer
        their rows to this sample. Compacts a sample holding more than its
        size first, so that the bound is the tightest its rows give."""
        if self._pending > self.size:
            self._compact()
        return self._threshold

    def items(self):
        """The sampled rows' priorities and the rows, in order of priority."""
        if not self._parts:
            return np.empty(0, np.uint64), np.empty((0,))
        if len(self._parts) > 1 or self._pending > self.size:
            self._compact()
        priorities, rows = self._parts[0]
        order = np.argsort(priorities, kind="stable")
        return priorities[order], rows[order]

    def result(self):
        """The sampled rows, in order of priority."""
        return self.items()[1]

    def largest(self):
        """The largest priority in the sample (None when it is empty). Of
        the rows that were offered to it, those at or under this priority
        are the sample: offered them again, from wherever they were kept, a
        sample of this size holds the same rows."""
        priorities, _ = self.items()
        return int(priorities[-1]) if len(priorities) else None


def fit_kmeans(X, n_clusters, *, n_init, max_iter, seed):
    """K-means centroids of the rows of ``X`` (float32, ``(n_clusters, d)``):
    the best of ``n_init`` k-means++ starts by inertia, each run for at most
    ``max_iter`` iterations."""
    kmeans = KMeans(n_clusters=n_clusters, n_init=n_init, max_iter=max_iter, random_state=seed)
    with warnings.catch_warnings():
        # Fewer distinct rows than clusters leaves duplicate centroids, which
        # the levels handle (an empty dataset cluster is background).
        warnings.simplefilter("ignore", ConvergenceWarning)
        return kmeans.fit(X).cluster_centers_.astype(np.float32)


def nearest_centroid(X, centroids):
    """Index of the nearest centroid (squared Euclidean) for every row of X."""
    X = np.asarray(X)
    centroids = np.asarray(centroids, dtype=X.dtype)
    # argmin ||x - c||^2 = argmax (x.c - ||c||^2 / 2): one matrix product
    # per block of rows (numpy's BLAS is several times faster than torch's
    # CPU matmul for so few centroids).
    half_norms = 0.5 * (centroids * centroids).sum(1)
    out = np.empty(len(X), dtype=np.intp)
    block = rows_within(DISTANCE_BLOCK, len(centroids) * X.dtype.itemsize)
    for start in range(0, len(X), block):
        out[start:start + block] = (X[start:start + block] @ centroids.T - half_norms).argmax(1)
    return out


def second_is_nearer(pairs):
    """The linear rule equivalent to "nearer the second of two centroids".

    ``||x - c1||^2 < ||x - c0||^2`` iff ``x . (c1 - c0) > (|c1|^2 - |c0|^2) / 2``,
    so one product per point decides instead of two distances. Works on
    numpy arrays and torch tensors of shape (..., 2, d).

    Returns
    -------
    direction : array of shape (..., d)
    offset : array of shape (...)
    """
    direction = pairs[..., 1, :] - pairs[..., 0, :]
    offset = 0.5 * ((pairs[..., 1, :] ** 2).sum(-1) - (pairs[..., 0, :] ** 2).sum(-1))
    return direction, offset


def _cluster_means(X, assignment, previous):
    """Means of the two clusters of every image, by one batched product.

    A cluster left without patches keeps its ``previous`` centroid.
    """
    weights = torch.stack([~assignment, assignment], 1).to(X.dtype)  # (B, 2, N)
    counts = weights.sum(2, keepdim=True)
    means = torch.bmm(weights, X) / counts.clamp_min(1)
    return torch.where(counts > 0, means, previous)


def batched_two_means(X, init_foreground, *, max_iter):
    """2-means run at once in every image of a batch.

    Each image is started from the split given by ``init_foreground`` (the
    level above), so results are deterministic and the two clusters start out
    as foreground and background.

    Parameters
    ----------
    X : Tensor of shape (B, N, d)
    init_foreground : Tensor of shape (B, N), bool
    max_iter : int

    Returns
    -------
    assignment : Tensor of shape (B, N), bool
        Membership of cluster 1 (the one started from the foreground).
    centroids : Tensor of shape (B, 2, d)
    """
    # Start from the split of the level above. Where it put every patch on
    # one side, start the empty side from the patch farthest from the other.
    start = _cluster_means(X, init_foreground, torch.zeros_like(X[:, :2]))
    counts = torch.stack([(~init_foreground).sum(1), init_foreground.sum(1)], 1)
    for side in (0, 1):
        empty = counts[:, side] == 0
        if empty.any():
            far = ((X[empty] - start[empty, 1 - side, None]) ** 2).sum(-1).argmax(1)
            start[empty, side] = X[empty][torch.arange(int(empty.sum())), far]
    centroids = start
    assignment = init_foreground
    for _ in range(max_iter):
        direction, offset = second_is_nearer(centroids)
        # One row times the transposed patches: on CPU as fast as or several
        # times faster than bmm with one column, and with no temporary the
        # size of X (as vecdot makes).
        projection = torch.bmm(direction[:, None, :], X.transpose(1, 2))[:, 0]
        new_assignment = projection > offset[:, None]
        converged = torch.equal(new_assignment, assignment)
        assignment = new_assignment
        centroids = _cluster_means(X, assignment, centroids)
        if converged:
            break
    return assignment, centroids
