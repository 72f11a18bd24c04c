"""The three clustering levels, the rules that keep them consistent, and
their consensus.

Each level splits patches into foreground and background. The dataset
level's clusters are labelled by a foreground rule (border or attention);
the category and image levels are each 2-means whose foreground cluster is
the one that agrees best (intersection over union) with the level above.
"""

import numpy as np
import torch

from ._clustering import batched_two_means, nearest_centroid, second_is_nearer


def agreement(candidate, reference):
    """Intersection over union of two boolean masks along the last axis."""
    inter = (candidate & reference).sum(-1)
    union = (candidate | reference).sum(-1)
    return inter / np.maximum(union, 1)


# ------------------------------------------------------------ dataset level
def border_foreground(counts, border_counts):
    """Clusters under-represented on the image border are foreground.

    A cluster is background when its share of border patches exceeds its
    share of all patches.

    Parameters
    ----------
    counts : ndarray of shape (n_clusters,)
        Patches of each cluster.
    border_counts : ndarray of shape (n_clusters,)
        Patches of each cluster on the border of their image.
    """
    share_all = counts / max(counts.sum(), 1)
    share_border = border_counts / max(border_counts.sum(), 1)
    ratio = share_border / np.maximum(share_all, 1e-12)
    return _at_least_one_each(ratio <= 1.0, -ratio)


def attention_foreground(counts, attention_sums):
    """Clusters whose mean CLS attention is above the overall mean are foreground."""
    means = attention_sums / np.maximum(counts, 1)
    overall = attention_sums.sum() / max(counts.sum(), 1)
    return _at_least_one_each(means > overall, means)


def _at_least_one_each(foreground, score):
    """Keep both a foreground and a background cluster, decided by score."""
    foreground = foreground.copy()
    if foreground.all():
        foreground[np.argmin(score)] = False
    if not foreground.any():
        foreground[np.argmax(score)] = True
    return foreground


def border_patches(grid_shape):
    """Which patches of an ``(h, w)`` grid lie on its border, flattened."""
    border = np.ones(grid_shape, dtype=bool)
    border[1:-1, 1:-1] = False
    return border.ravel()


# ----------------------------------------------------------- category level
def oriented_pair(pair, patches, reference):
    """``pair`` ordered (background, foreground) by agreement with ``reference``.

    Consistency with the level above: of the two clusters, the one whose
    patches agree best with the reference foreground mask is foreground.
    """
    split = nearest_centroid(patches, pair) == 1
    if agreement(~split, reference) > agreement(split, reference):
        return pair[::-1]
    return pair


def category_pair(patches, reference, *, max_iter):
    """A category's (background, foreground) centroids: the 2-means of its
    patches, started from the dataset level's split ``reference`` (as each
    image's 2-means starts from its category's), so that no random start
    lands in a split unrelated to foreground, and oriented by agreement."""
    _, pair = batched_two_means(torch.from_numpy(patches)[None],
                                torch.from_numpy(reference)[None], max_iter=max_iter)
    return oriented_pair(pair[0].numpy(), patches, reference)


def category_foreground(patches, pairs, categories):
    """Foreground at the category level: nearer the category's second centroid.

    Parameters
    ----------
    patches : ndarray of shape (n, d)
    pairs : ndarray of shape (n_categories, 2, d)
        Background and foreground centroid of each category.
    categories : ndarray of shape (n,)
        Category of each patch's image.
    """
    direction, offset = second_is_nearer(pairs)
    scores = np.einsum("ij,ij->i", patches, direction[categories])
    return scores > offset[categories]


# -------------------------------------------------------------- image level
def image_foreground(patches, category_mask, category_foreground_centroids, *, max_iter):
    """Image-level 2-means in a batch of images of one grid, kept consistent.

    Each image's 2-means starts from its category-level mask, and its
    foreground cluster is the one that agrees best with that mask. Where the
    category put no patch of the image in the foreground (no agreement to
    compare), the cluster nearer the category's foreground centroid is
    foreground.

    Parameters
    ----------
    patches : Tensor of shape (B, N, d)
    category_mask : Tensor of shape (B, N), bool
    category_foreground_centroids : Tensor of shape (B, d)
    max_iter : int

    Returns
    -------
    foreground : ndarray of shape (B, N), bool
    """
    split, centroids = batched_two_means(patches, category_mask, max_iter=max_iter)
    nearer = ((centroids - category_foreground_centroids[:, None]) ** 2).sum(-1).argmin(1)
    split, init = split.cpu().numpy(), category_mask.cpu().numpy()
    keep = agreement(split, init)
    flip = agreement(~split, init)
    tie = (keep == 0) & (flip == 0)
    nearer = nearer.cpu().numpy()
    flip = np.where(tie, nearer == 0, flip)
    keep = np.where(tie, nearer == 1, keep)
    return np.where((flip > keep)[:, None], ~split, split)


# ---------------------------------------------------------------- consensus
def combine_levels(dataset, category, image, rule):
    """Soft foreground score of every patch from the three level masks.

    ``"vote"``: the fraction of levels that say foreground (foreground where
    at least two agree, at the 0.5 threshold); ``"intersection"``: 1 where all
    three agree; ``"image"``: the image level alone.
    """
    if rule == "vote":
        return (dataset.astype(np.float32) + category + image) / 3
    if rule == "intersection":
        return (dataset & category & image).astype(np.float32)
    return image.astype(np.float32)


# ------------------------------------------------------- a chunk of images
def chunk_levels(chunk, dataset_centroids, dataset_foreground, category_centers,
                 category_pairs, *, consensus, max_iter, device):
    """The three level masks of a chunk of images, their consensus, and each
    image's category, from the fitted centroids.

    Parameters
    ----------
    chunk : Chunk
        Checked patches of the images, their descriptors and grids.
    dataset_centroids : ndarray of shape (n_dataset_clusters, d)
    dataset_foreground : ndarray of shape (n_dataset_clusters,), bool
    category_centers : ndarray of shape (n_categories, d_descriptor)
    category_pairs : ndarray of shape (n_categories, 2, d)
    consensus : {"vote", "intersection", "image"}
    max_iter : int
        Iterations of the image-level 2-means.
    device : torch.device

    Returns
    -------
    levels : dict
        ``"dataset"``, ``"category"``, ``"image"`` (bool, one per patch),
        ``"consensus"`` (float, one per patch), ``"category_index"`` (one
        per image).
    """
    dataset = dataset_foreground[nearest_centroid(chunk.patches, dataset_centroids)]
    categories = nearest_centroid(chunk.descriptors, category_centers)
    category = category_foreground(chunk.patches, category_pairs,
                                   categories[chunk.image_of_patch])
    image = np.empty_like(category)
    # Images of one grid size run their 2-means together, as one batch.
    for (h, w), members in group_indices(chunk.grids):
        rows = np.concatenate([np.arange(chunk.offsets[j], chunk.offsets[j + 1])
                               for j in members])
        image[rows] = image_foreground(
            _to_tensor(chunk.patches[rows], device).view(len(members), h * w, -1),
            _to_tensor(category[rows], device).view(len(members), h * w),
            _to_tensor(category_pairs[categories[members], 1], device),
            max_iter=max_iter,
        ).ravel()
    return {
        "dataset": dataset, "category": category, "image": image,
        "consensus": combine_levels(dataset, category, image, consensus),
        "category_index": categories,
    }


def _to_tensor(array, device):
    return torch.from_numpy(np.ascontiguousarray(array)).to(device)


def group_indices(values):
    """``(value, [indices])`` for each distinct value, in order of appearance."""
    groups = {}
    for index, value in enumerate(values):
        groups.setdefault(value, []).append(index)
    return list(groups.items())
