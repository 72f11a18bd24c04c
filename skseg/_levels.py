"""The three clustering levels, the rules that keep them consistent, and
their consensus.

Each level splits patches into foreground and background. The dataset
level's clusters, more than two, are sorted by a foreground rule (border or
attention, split at Otsu's threshold); the category and image levels are
each 2-means whose foreground cluster is the one that agrees best
(intersection over union) with the level above. An image level that
inherits a foreground covering nearly all of its border is redone from the
border prior.
"""

import threading

import numpy as np
import torch

from ._clustering import batched_two_means, nearest_centroid, second_is_nearer

_ONE_THREAD = threading.Lock()


def agreement(candidate, reference):
    """Intersection over union of two boolean masks along the last axis."""
    inter = (candidate & reference).sum(-1)
    union = (candidate | reference).sum(-1)
    return inter / np.maximum(union, 1)


# ------------------------------------------------------------ dataset level
def split_by_score(scores, weights):
    """Foreground clusters: those on the high side of the best threshold on
    ``scores``.

    The threshold is Otsu's: the split of the clusters, sorted by score, that
    maximises the between-side variance of the scores weighted by the
    clusters' patch counts (the exact optimum of a weighted 1-D 2-means). It
    adapts to the data: many background clusters and few foreground ones (an
    over-clustered dataset level) are split at the widest gap between the two
    groups, not at a fixed value that background clusters leaning slightly
    off the border would cross.

    Both sides always keep at least one cluster. Clusters with equal scores
    are never split apart; of splits equally good (to rounding), the one with
    fewer foreground clusters wins, and with every score equal the first
    cluster alone is foreground. A cluster without patches has no evidence
    either way and is background, unless no cluster with patches is
    foreground.

    Parameters
    ----------
    scores : ndarray of shape (n_clusters,)
        Higher means more foreground-like.
    weights : ndarray of shape (n_clusters,)
        Patches of each cluster.

    Returns
    -------
    foreground : ndarray of shape (n_clusters,), bool
    """
    scores = np.asarray(scores, dtype=np.float64)
    weights = np.maximum(np.asarray(weights, dtype=np.float64), 0)
    order = np.argsort(-scores, kind="stable")  # most foreground-like first
    w, s = weights[order], scores[order]
    w = w + 1e-12 * (w.sum() == 0)  # all empty: split by score alone
    left_weight = np.cumsum(w)[:-1]
    left_sum = np.cumsum(w * s)[:-1]
    right_weight = w.sum() - left_weight
    right_sum = (w * s).sum() - left_sum
    left_mean = left_sum / np.maximum(left_weight, 1e-300)
    right_mean = right_sum / np.maximum(right_weight, 1e-300)
    between = left_weight * right_weight * (left_mean - right_mean) ** 2
    between[s[:-1] == s[1:]] = -np.inf  # no cut between equal scores
    if np.isfinite(between).any():
        # The first split within rounding of the best: fewest foreground.
        n_foreground = 1 + int(np.argmax(between >= between.max() * (1 - 1e-9)))
    else:
        n_foreground = 1
    foreground = np.zeros(len(scores), dtype=bool)
    foreground[order[:n_foreground]] = True
    if (foreground & (weights > 0)).any():
        foreground &= weights > 0
    return foreground


def border_ratios(counts, border_counts):
    """Each cluster's share of border patches over its share of all patches.

    Above 1, a cluster crowds the image border (background-like); well below
    1, it keeps off it (foreground-like).
    """
    share_all = counts / max(counts.sum(), 1)
    share_border = border_counts / max(border_counts.sum(), 1)
    return share_border / np.maximum(share_all, 1e-12)


def border_foreground(counts, border_counts):
    """Clusters that keep off the image border are foreground.

    Clusters are split by :func:`split_by_score` on ``-log(ratio + 0.1)`` of
    their :func:`border_ratios`. The logarithm makes "half as often" and
    "twice as often" on the border equally far from "as often"; the 0.1
    makes every cluster seen on the border less than about a tenth as often
    as by chance alike, so that one cluster that never touches it does not
    stand alone as the only foreground.

    Parameters
    ----------
    counts : ndarray of shape (n_clusters,)
        Patches of each cluster.
    border_counts : ndarray of shape (n_clusters,)
        Patches of each cluster on the border of their image.
    """
    return split_by_score(-np.log(border_ratios(counts, border_counts) + 0.1), counts)


def attention_foreground(counts, attention_sums):
    """Clusters with the higher mean CLS attention are foreground, split by
    :func:`split_by_score` on the clusters' mean attention."""
    return split_by_score(attention_sums / np.maximum(counts, 1), counts)


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
    lands in a split unrelated to foreground, and oriented by agreement.

    Runs on one thread, wherever it runs: torch splits the sums over the
    sample's rows between its threads, so that their rounding depends on
    how many threads the process has (up to 6e-8 between one and two on
    20,000 rows of 64 floats), and a cluster's worker processes, where this
    runs with ``labels_path``, seldom have as many as the fitting process.
    A 2-means of ``max_samples`` rows takes a fraction of a second.
    """
    with _ONE_THREAD:  # the thread count is the process's: one caller at a time
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            _, pair = batched_two_means(torch.from_numpy(patches)[None],
                                        torch.from_numpy(reference)[None], max_iter=max_iter)
        finally:
            torch.set_num_threads(threads)
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
def image_foreground(patches, category_mask, category_foreground_centroids, border, *,
                     max_iter):
    """Image-level 2-means in a batch of images of one grid, kept consistent.

    Each image's 2-means starts from its category-level mask, and its
    foreground cluster is the one that agrees best with that mask. Where the
    category put no patch of the image in the foreground (no agreement to
    compare), the cluster nearer the category's foreground centroid is
    foreground.

    An image whose foreground so found covers 90% of its border or more has
    most likely inherited a background from above: its 2-means is run again
    from the border prior (border patches background, the others
    foreground), the cluster with the smaller share of border patches is
    foreground, and that split replaces the inherited one. A close-up, whose object fills much of the
    border but leaves more than a tenth of it to the background, keeps the
    orientation of the levels above (by the border alone it would be
    inverted).

    Parameters
    ----------
    patches : Tensor of shape (B, N, d)
    category_mask : Tensor of shape (B, N), bool
    category_foreground_centroids : Tensor of shape (B, d)
    border : ndarray of shape (N,), bool
        Patches on the border of the grid.
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
    flip = np.where(tie, nearer == 0, flip)  # keep is 0 on a tie
    foreground = np.where((flip > keep)[:, None], ~split, split)
    wrong = border_share(foreground, border) >= 0.9
    if wrong.any():
        prior = np.tile(~border, (int(wrong.sum()), 1))
        recovered, _ = batched_two_means(
            patches[torch.from_numpy(wrong).to(patches.device)],
            torch.from_numpy(prior).to(patches.device),
            max_iter=max_iter,
        )
        recovered = recovered.cpu().numpy()
        # Oriented by the border: foreground is the side that touches it less.
        recovered = np.where(
            (border_share(recovered, border) > border_share(~recovered, border))[:, None],
            ~recovered, recovered,
        )
        # It touches at most half the border, the inherited mask 90 % of it.
        foreground[wrong] = recovered
    return foreground


def border_share(foreground, border):
    """Share of the border patches in the foreground, along the last axis."""
    return (foreground & border).sum(-1) / max(int(border.sum()), 1)


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


# -------------------------------------------------------------- diagnostics
LEVELS = ("dataset", "category", "image", "consensus")
LEVEL_PAIRS = (("dataset", "category"), ("category", "image"), ("dataset", "image"))


def level_counts(levels, on_border):
    """Patch counts that summarise how the foreground decision went: sums
    over chunks give the dataset's.

    Returns
    -------
    counts : dict of str to ndarray
        ``"patches"`` and ``"border"`` (one value each), ``"foreground"`` and
        ``"border_foreground"`` (one per level of :data:`LEVELS`, the
        consensus thresholded at 0.5), ``"intersection"`` and ``"union"`` of
        the foreground of the levels of each pair of :data:`LEVEL_PAIRS`.
    """
    masks = {name: levels[name] > 0.5 if name == "consensus" else levels[name]
             for name in LEVELS}
    return {
        "patches": np.array([len(on_border)]),
        "border": np.array([on_border.sum()]),
        "foreground": np.array([masks[name].sum() for name in LEVELS]),
        "border_foreground": np.array([(masks[name] & on_border).sum() for name in LEVELS]),
        "intersection": np.array([(masks[a] & masks[b]).sum() for a, b in LEVEL_PAIRS]),
        "union": np.array([(masks[a] | masks[b]).sum() for a, b in LEVEL_PAIRS]),
    }


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
            border_patches((h, w)), max_iter=max_iter,
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
