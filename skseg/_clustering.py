"""Clustering kernels of the segmenter: bounded K-means fits, chunked
nearest-centroid assignment, and a 2-means batched over many images."""

import numpy as np
import torch
from sklearn.cluster import KMeans

# Rows per matrix product when assigning patches to centroids: bounds the
# temporary (rows x n_centroids) distance block, not the data.
_CHUNK = 65536


def fit_kmeans(X, n_clusters, *, max_samples, n_init, random_state):
    """K-means on at most ``max_samples`` rows drawn at random from ``X``.

    Returns
    -------
    centroids : ndarray of shape (n_clusters, d)
    """
    if len(X) > max_samples:
        rows = random_state.choice(len(X), size=max_samples, replace=False)
        rows.sort()  # the same sample gives the same fit whatever its order
        X = X[rows]
    seed = random_state.randint(np.iinfo(np.int32).max)
    kmeans = KMeans(n_clusters=n_clusters, n_init=n_init, random_state=seed)
    return kmeans.fit(X).cluster_centers_.astype(np.float32)


def nearest_centroid(X, centroids):
    """Index of the nearest centroid (squared Euclidean) for every row of X."""
    X = torch.as_tensor(X)
    centroids = torch.as_tensor(centroids, dtype=X.dtype, device=X.device)
    # argmin ||x - c||^2 = argmax (x.c - ||c||^2 / 2): one matrix product.
    half_norms = 0.5 * (centroids * centroids).sum(1)
    out = torch.empty(len(X), dtype=torch.long, device=X.device)
    for start in range(0, len(X), _CHUNK):
        block = X[start:start + _CHUNK]
        out[start:start + _CHUNK] = (block @ centroids.T - half_norms).argmax(1)
    return out.cpu().numpy()


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
        new_assignment = torch.bmm(X, direction[:, :, None])[..., 0] > offset[:, None]
        converged = torch.equal(new_assignment, assignment)
        assignment = new_assignment
        centroids = _cluster_means(X, assignment, centroids)
        if converged:
            break
    return assignment, centroids


def agreement(candidate, reference):
    """Intersection over union of two boolean masks along the last axis."""
    inter = (candidate & reference).sum(-1)
    union = (candidate | reference).sum(-1)
    return inter / np.maximum(union, 1)


def border_foreground(assignment, on_border, n_clusters):
    """Clusters under-represented on the image border are foreground.

    A cluster is background when its share of border patches exceeds its
    share of all patches.
    """
    share_all = np.bincount(assignment, minlength=n_clusters) / len(assignment)
    border = assignment[on_border]
    share_border = np.bincount(border, minlength=n_clusters) / max(len(border), 1)
    ratio = share_border / np.maximum(share_all, 1e-12)
    return _at_least_one_each(ratio <= 1.0, -ratio)


def attention_foreground(assignment, attention, n_clusters):
    """Clusters with above-average CLS attention are foreground."""
    counts = np.bincount(assignment, minlength=n_clusters)
    sums = np.bincount(assignment, weights=attention, minlength=n_clusters)
    means = sums / np.maximum(counts, 1)
    return _at_least_one_each(means > attention.mean(), means)


def _at_least_one_each(foreground, score):
    """Keep both a foreground and a background cluster, decided by score."""
    foreground = foreground.copy()
    if foreground.all():
        foreground[np.argmin(score)] = False
    if not foreground.any():
        foreground[np.argmax(score)] = True
    return foreground
