"""Passes over chunks of X: what each task of ``fit`` and ``predict`` reads,
checks and computes.

The pass functions take small arguments (X, which pickles as its location
when it is a store, a range of images, a frozen :class:`FittedState` of
centroids and parameters, never the estimator), so that any joblib backend
(threads, processes, Dask) can run them where the data lies, and each
returns only small per-image results and bounded samples. In a fit with
``labels_path``, the tasks write their larger results into its
:class:`LabelStore` and read the fitted state from there once per process
(as a :class:`Shared` reference), so that what enters and leaves the fitting
process per task is a few kilobytes. :mod:`skseg._chunks` cuts X into
chunks and runs a pass over them.
"""

import math
from dataclasses import dataclass
from numbers import Integral

import numpy as np

from ._backbone import resolve_device
from ._chunks import Chunk
from ._clustering import (
    BoundedSample,
    image_priorities,
    nearest_centroid,
    patch_priorities,
    unit_rows,
)
from ._image_decoding import load_rgb
from ._label_store import value_of
from ._levels import (
    category_pair,
    chunk_levels,
    group_indices,
    level_counts,
)
from ._refine import foreground_masks
from ._regions import encode_crops, object_regions, pooled_descriptors, region_crops


@dataclass(frozen=True)
class FittedState:
    """What the passes read of a segmenter fitted so far: its centroids and
    the parameters of the per-image path. Small (kilobytes of centroids), it
    travels with every task; the estimator itself never does."""

    dataset_centroids: np.ndarray
    category_centers: np.ndarray
    consensus: str
    max_iter: int
    device: str
    metric: str
    dataset_foreground: np.ndarray = None
    category_pairs: np.ndarray = None
    refine: object = None  # foreground_masks' refine, its parameters bound; None: off
    refine_max_side: int = 128
    batch_size: int = 16
    min_region_size: object = 1  # pixels (int) or a share of the image (float)
    region: str = "pooled"
    region_encoder: object = None  # fitted, for region="crop"

    def min_region_pixels(self, height, width):
        if isinstance(self.min_region_size, Integral):
            return int(self.min_region_size)
        return max(1, math.ceil(self.min_region_size * height * width))


def chunk_state_levels(chunk, state):
    """The three level masks of a chunk, their consensus and each image's category."""
    state = value_of(state)
    return chunk_levels(
        chunk, state.dataset_centroids, state.dataset_foreground, state.category_centers,
        state.category_pairs, consensus=state.consensus, max_iter=state.max_iter,
        device=resolve_device(state.device),
    )


def chunk_regions(chunk, soft, state):
    """Upsample, refine and split into regions; describe each region. Also
    returns how many images carried no pixels to refine with."""
    state = value_of(state)
    device = resolve_device(state.device)
    soft = chunk.split(soft)
    regions, described = [None] * len(chunk), [None] * len(chunk)
    groups = group_indices([(f.image_shape, f.grid_shape, f.image is None)
                            for f in chunk.records])
    for (image_shape, _, no_pixels), members in groups:
        for start in range(0, len(members), state.batch_size):
            batch = members[start:start + state.batch_size]
            masks = foreground_masks(
                np.stack([soft[j] for j in batch]), image_shape,
                None if no_pixels or state.refine is None
                else [chunk.records[j].image for j in batch],
                refine=state.refine, max_side=state.refine_max_side, device=device,
            )
            batch_regions = object_regions(masks, state.min_region_pixels(*image_shape))
            for j, image_regions in zip(batch, batch_regions):
                regions[j] = image_regions
                if state.region == "crop":
                    described[j] = region_crops(
                        load_rgb(chunk.records[j].image, image_shape), image_regions,
                        state.region_encoder.patch_size_,
                    )
                else:
                    described[j] = pooled_descriptors(image_regions, chunk.records[j].patches)
    if state.region == "crop":
        described = encode_crops(state.region_encoder, described)
    if state.metric == "cosine":  # all the chunk's regions at once
        counts = [len(d) for d in described]
        described = np.split(unit_rows(np.concatenate(described).astype(np.float32)),
                             np.cumsum(counts)[:-1])
    no_pixels = sum(f.image is None for f in chunk.records)
    return regions, described, no_pixels


# ---------------------------------------------------------------- passes

def survey(X, start, stop, expected, seeds, max_samples, patches_below=None,
           descriptors_below=None, send_keys=True):
    """Pass 1: checks, keys, the patch count, the dataset sample of patches
    and a sample of the images' descriptors, each with the image's patch
    count as a last column; ``seeds`` draw the two samples, of the rows whose
    priority is under ``patches_below`` and ``descriptors_below``. Without
    ``send_keys`` the keys do not come back (None): the later passes of a
    fit with ``labels_path`` compute them again on the workers."""
    chunk = Chunk(X, start, stop, expected)
    patches = BoundedSample(max_samples, patches_below)
    patches.offer(chunk.priorities(seeds[0]), chunk.patches)
    descriptors = BoundedSample(max_samples, descriptors_below)
    descriptors.offer(image_priorities(seeds[1], chunk.keys),
                      np.column_stack([chunk.descriptors,
                                       np.diff(chunk.offsets).astype(chunk.descriptors.dtype)]))
    return chunk.keys if send_keys else None, int(chunk.offsets[-1]), patches, descriptors


def dataset_statistics(X, start, stop, expected, keys, state, seed, max_samples,
                       below=None, output=None):
    """Pass 2: each image's category; per dataset cluster, patch counts (all,
    on the border) and CLS attention; per category, its patch count and its
    sample (of the patches under ``below[category]``, as in :func:`survey`).

    With ``output`` (a :class:`LabelStore`), the samples' rows are written
    there, for :func:`gather_category_rows`, each category's sample comes
    back as its priorities alone (rows of width 0): tens of kilobytes,
    where the rows of every category would be hundreds of megabytes per
    pass; and the categories do not come back (None): :func:`segment`
    writes them beside the masks.
    """
    state = value_of(state)
    chunk = Chunk(X, start, stop, expected, None if keys is None else keys[start:stop])
    n_clusters = len(state.dataset_centroids)
    assignment = nearest_centroid(chunk.patches, state.dataset_centroids)
    statistics = {
        "counts": np.bincount(assignment, minlength=n_clusters),
        "border": np.bincount(assignment[chunk.on_border()], minlength=n_clusters),
    }
    if expected.needs_attention:
        statistics["attention"] = np.bincount(
            assignment, weights=chunk.attention(), minlength=n_clusters
        )
    categories = nearest_centroid(chunk.descriptors, state.category_centers)
    patch_category = categories[chunk.image_of_patch]
    statistics["category_patches"] = np.bincount(
        patch_category, minlength=len(state.category_centers)
    )
    priorities = chunk.priorities(seed)
    samples = {}
    for category in np.unique(patch_category):
        rows = patch_category == category
        samples[category] = BoundedSample(max_samples, None if below is None else below[category])
        samples[category].offer(priorities[rows], chunk.patches[rows])
    if output is None:
        return categories, statistics, samples
    kept = {category: sample.items() for category, sample in samples.items()}
    output.write_part(
        "category_samples", start,
        category=np.concatenate([np.full(len(p), c, np.int32) for c, (p, _) in kept.items()]
                                + [np.zeros(0, np.int32)]),
        priority=np.concatenate([p for p, _ in kept.values()] + [np.zeros(0, np.uint64)]),
        rows=np.concatenate([r for _, r in kept.values() if r.ndim == 2]
                            + [np.zeros((0, chunk.patches.shape[1]), np.float32)]),
    )
    for category, (kept_priorities, _) in kept.items():
        samples[category] = BoundedSample(max_samples)
        samples[category].offer(kept_priorities, np.zeros((len(kept_priorities), 0), np.float32))
    return None, statistics, samples


def gather_category_rows(store, first, last, starts, largest):
    """Step 3 on the workers, first half: the rows that
    :func:`dataset_statistics` wrote for chunks ``first..last`` (at
    ``starts``), those of each category's final sample (priority at most
    ``largest[category]``), written per category for
    :func:`fit_category_pairs`. A tree of two steps, so that no task opens
    every chunk's rows, nor writes a file per chunk and category."""
    priorities, rows = {}, {}
    for start in starts[first:last]:
        part = store.read_part("category_samples", int(start))
        for category in np.unique(part["category"]):
            mine = (part["category"] == category) & (part["priority"] <= largest[category])
            priorities.setdefault(category, []).append(part["priority"][mine])
            rows.setdefault(category, []).append(part["rows"][mine])
    for category, parts in priorities.items():
        store.write_part(f"categories/{category}", first, priority=np.concatenate(parts),
                         rows=np.concatenate(rows[category]))


def fit_category_pairs(store, first, last, dataset, max_samples, max_iter, groups):
    """Step 3 on the workers, second half: the 2-means of categories
    ``first..last`` (:func:`category_pair`) on their samples, merged from
    what :func:`gather_category_rows` wrote for the ``groups`` (their first
    chunks' positions); ``dataset`` holds the dataset
    level's centroids and foreground. The same pairs as fitted on the
    samples sent to the fitting process. Categories of fewer than two
    sampled patches are left out."""
    centroids, foreground = value_of(dataset)
    pairs = {}
    for category in range(first, last):
        sample = BoundedSample(max_samples)
        for group in groups:
            part = store.read_part(f"categories/{category}", group)
            if part is not None:  # the group had rows of this category
                sample.offer(part["priority"], part["rows"])
        if len(sample) < 2:
            continue
        patches = sample.result()
        reference = foreground[nearest_centroid(patches, centroids)]
        pairs[category] = category_pair(patches, reference, max_iter=max_iter)
    return pairs


def segment(X, start, stop, expected, state, keys=None, output=None, seed=None,
            max_samples=None, below=None):
    """The per-image path of fit and predict: levels, consensus, pixels,
    regions and their descriptors for images ``start..stop``, and the
    chunk's :func:`level_counts`.

    With ``output`` (a :class:`LabelStore`: a fit with ``labels_path``),
    the regions, descriptors, the regions' sampling priorities (from
    ``seed``, see :func:`region_priorities`) and the images' categories
    are written there, and the
    task returns in their place the chunk's number of regions, None, and
    after the counts its sample of those priorities under ``below``, each
    with ``start`` as its row: :func:`region_rows` then fetches the
    descriptors of the final sample from the chunks that hold them.
    """
    chunk = Chunk(X, start, stop, expected, None if keys is None else keys[start:stop])
    levels = chunk_state_levels(chunk, state)
    regions, described, no_pixels = chunk_regions(chunk, levels["consensus"], state)
    counts = level_counts(levels, chunk.on_border())
    if output is None:
        return regions, described, no_pixels, counts
    priorities = region_priorities(seed, chunk.keys, described)
    output.write_regions(start, regions, described, priorities, levels["category_index"])
    sample = BoundedSample(max_samples, below)
    sample.offer(priorities, np.full(len(priorities), start, np.int64))
    return sum(r.n_regions for r in regions), None, no_pixels, counts, sample


def region_rows(store, start, stop, largest, max_samples):
    """The region descriptors of the chunk at ``start`` whose priority
    (written by :func:`segment`) is at most ``largest``: its share of the
    sample for the classes."""
    priorities = store.priorities(start)
    mine = priorities <= largest
    sample = BoundedSample(max_samples)
    sample.offer(priorities[mine], store.descriptors(start)[mine])
    return sample


def region_priorities(seed, keys, descriptors):
    """The sampling priority of each region of some images (descriptors as
    one array per image, one content key per image).

    A region's priority follows from ``seed``, its image's content key and
    its number in the image, as a patch's does: the sample is the same
    whichever process draws it, for any chunking and order.
    """
    return np.concatenate([patch_priorities(seed, key, len(d))
                           for key, d in zip(keys, descriptors)] + [np.zeros(0, np.uint64)])


def offer_regions(sample, seed, keys, descriptors):
    """Offer the region descriptors of some images (one array per image, one
    content key per image) to the sample for the classes, each with its
    :func:`region_priorities`."""
    if sum(len(d) for d in descriptors):
        sample.offer(region_priorities(seed, keys, descriptors),
                     np.concatenate([d for d in descriptors if len(d)]))


def classes_of(descriptors, class_centroids, dtype):
    """The class of each region, ``1..n_classes`` (0 is the background),
    from its descriptor (the rows of ``descriptors``)."""
    if not len(descriptors):
        return np.zeros(0, dtype)
    return (1 + nearest_centroid(descriptors, class_centroids)).astype(dtype)


def label_regions(store, start, stop, class_centroids, dtype):
    """The last pass of a fit with ``labels_path``: the class of each region
    of the chunk, from the descriptors that :func:`segment` wrote to
    ``store``, written beside them."""
    store.write_classes(start, classes_of(store.descriptors(start), value_of(class_centroids),
                                          dtype))


def levels_only(X, start, stop, expected, state):
    chunk = Chunk(X, start, stop, expected)
    levels = chunk_state_levels(chunk, state)
    per_level = {name: chunk.split(values) for name, values in levels.items()
                 if name != "category_index"}
    return [
        {**{name: maps[j] for name, maps in per_level.items()},
         "category_index": int(levels["category_index"][j])}
        for j in range(len(chunk))
    ]
