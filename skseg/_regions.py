"""Object regions of binary masks, their descriptors, and the label masks
made from the class of each region.

Regions are found and kept as runs: maximal stretches of foreground pixels
along an image row. A mask of a few blobs has one or two runs per row, so
after one pass over the pixels to find the runs, labelling the connected
regions, measuring them, pooling patch features over them and storing them
all cost work in the number of runs, not of pixels.
"""

import zlib
from collections.abc import Sequence

import numpy as np
from scipy import sparse
from scipy.sparse import csgraph

from ._indexing import positions


def mask_runs(masks):
    """The runs of True along the rows of a stack of masks.

    Parameters
    ----------
    masks : ndarray of shape (n_rows, W), bool

    Returns
    -------
    rows, starts, stops : ndarray of int
        Each run's row and its columns ``starts:stops``, in raster order.
    """
    n_rows, width = masks.shape
    # A background column on each side: every row then changes value an even
    # number of times, a run starting at each odd change and ending at the next.
    framed = np.zeros((n_rows, width + 2), bool)
    framed[:, 1:-1] = masks
    changes = np.flatnonzero(framed[:, 1:] != framed[:, :-1])
    rows, columns = np.divmod(changes, width + 1)
    return rows[::2], columns[::2], columns[1::2]


def _run_components(rows, starts, stops, width, joins_next_row):
    """The 8-connected component of every run, numbered in raster order,
    and the first run of each component.

    Runs in consecutive rows touch when their column spans, each widened by
    one pixel for the diagonals, overlap; ``joins_next_row`` is False for
    runs on the last row of an image, so that stacked images stay apart.
    """
    n_runs = len(rows)
    # Runs in raster order, as positions on a line with room for every
    # column of a row: the runs touching run i are then one contiguous range.
    stride = width + 2
    below = (rows + 1) * stride
    first = np.searchsorted(rows * stride + stops, below + starts, "left")
    last = np.searchsorted(rows * stride + starts, below + stops, "right")
    counts = np.where(joins_next_row, last - first, 0)
    touching = np.repeat(np.arange(n_runs), counts)
    touched = np.arange(len(touching)) + np.repeat(first - np.cumsum(counts) + counts, counts)
    graph = sparse.csr_matrix(
        (np.ones(len(touching), bool), (touching, touched)), shape=(n_runs, n_runs)
    )
    _, labels = csgraph.connected_components(graph, directed=False)
    _, first_run, labels = np.unique(labels, return_index=True, return_inverse=True)
    order = np.argsort(first_run)
    raster_rank = np.empty_like(order)
    raster_rank[order] = np.arange(len(order))
    return raster_rank[labels], first_run[order]


def object_regions(masks, min_size):
    """The connected foreground regions (8 neighbours) of each mask that
    have at least ``min_size`` pixels.

    Parameters
    ----------
    masks : ndarray of shape (n_masks, H, W), bool
    min_size : int

    Returns
    -------
    regions : list of Regions
        One per mask; its regions are numbered ``1..n_regions`` in raster
        order of their first pixel.
    """
    n_masks, height, width = masks.shape
    rows, starts, stops = mask_runs(masks.reshape(n_masks * height, width))
    component, first_run = _run_components(rows, starts, stops, width,
                                           rows % height != height - 1)
    sizes = np.bincount(component, weights=stops - starts, minlength=len(first_run))
    keep = sizes >= min_size
    # Kept components renumbered from 1 within their mask (components are in
    # raster order of the stack, hence grouped by mask).
    mask_of = rows[first_run] // height
    kept_before = np.concatenate([[0], np.cumsum(np.bincount(mask_of[keep], minlength=n_masks))])
    region = np.where(keep, np.cumsum(keep) - kept_before[mask_of], 0)[component]
    bounds = np.searchsorted(rows, np.arange(n_masks + 1) * height)
    regions = []
    for index, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
        kept = start + np.flatnonzero(region[start:stop])
        regions.append(Regions(
            (height, width), rows[kept] - index * height, starts[kept], stops[kept],
            region[kept], int(kept_before[index + 1] - kept_before[index]),
        ))
    return regions


def paint_runs(shape, rows, starts, stops, values, dtype):
    """The ``(H, W)`` map with ``values[k]`` on run ``k`` (runs in raster
    order), 0 elsewhere."""
    height, width = shape
    rows = np.asarray(rows, np.int64)
    # The image as alternating stretches of background and runs.
    bounds = np.empty(2 * len(rows) + 2, np.int64)
    bounds[0], bounds[-1] = 0, height * width
    bounds[1:-1:2] = rows * width + starts
    bounds[2:-1:2] = rows * width + stops
    stretch_values = np.zeros(2 * len(rows) + 1, dtype)
    stretch_values[1::2] = values
    return np.repeat(stretch_values, np.diff(bounds)).reshape(shape)


class Regions:
    """The object regions of one image, kept compressed as runs of pixels.

    Under a kilobyte for a VOC-size photo's mask (a full-size map of bytes
    would be 187 KB); :meth:`paint` makes the full-size map.

    Parameters
    ----------
    shape : tuple of int
        ``(H, W)`` of the image.
    rows, starts, stops : ndarray of int
        Each run's row and columns ``starts:stops``, in raster order.
    ids : ndarray of int
        Each run's region, ``1..n_regions``.
    n_regions : int
    """

    __slots__ = ("shape", "n_regions", "_data", "_dtype")

    def __init__(self, shape, rows, starts, stops, ids, n_regions):
        self.shape = tuple(shape)
        self.n_regions = n_regions
        # Row steps and columns are small numbers that repeat from row to row,
        # which zlib shrinks several times over.
        self._dtype = np.uint16 if max(*shape, n_regions) < 1 << 16 else np.uint32
        columns = np.stack([np.diff(rows, prepend=0), starts, stops, ids])
        self._data = zlib.compress(columns.astype(self._dtype).tobytes(), 1)

    # A plain dict of built-in values as the state: every pickle protocol
    # (0 and 1 cannot pickle slots by themselves) and skops, which rebuilds
    # an object from its state without running any other code, can save it.
    def __getstate__(self):
        return {"shape": list(self.shape), "n_regions": int(self.n_regions),
                "data": self._data, "dtype": np.dtype(self._dtype).str}

    def __setstate__(self, state):
        self.shape = tuple(int(side) for side in state["shape"])
        self.n_regions = int(state["n_regions"])
        self._data = bytes(state["data"])
        self._dtype = np.dtype(state["dtype"]).type

    def runs(self):
        """Each run's ``rows, starts, stops, ids``, as given."""
        columns = np.frombuffer(zlib.decompress(self._data), self._dtype)
        row_steps, starts, stops, ids = columns.reshape(4, -1).astype(np.int64)
        return np.cumsum(row_steps), starts, stops, ids

    def paint(self, values, dtype):
        """The ``(H, W)`` map with ``values[k - 1]`` on region ``k``, 0 elsewhere."""
        rows, starts, stops, ids = self.runs()
        return paint_runs(self.shape, rows, starts, stops, np.asarray(values)[ids - 1], dtype)

    def region_map(self):
        """The ``(H, W)`` int32 map: 0 for background, ``k`` on region ``k``."""
        return self.paint(np.arange(1, self.n_regions + 1), np.int32)

    def boxes(self):
        """Each region's bounding box, as ``(rows, columns)`` slices."""
        rows, starts, stops, ids = self.runs()
        height, width = self.shape
        top, bottom = np.full(self.n_regions, height), np.zeros(self.n_regions, np.int64)
        left, right = np.full(self.n_regions, width), np.zeros(self.n_regions, np.int64)
        np.minimum.at(top, ids - 1, rows)
        np.maximum.at(bottom, ids - 1, rows + 1)
        np.minimum.at(left, ids - 1, starts)
        np.maximum.at(right, ids - 1, stops)
        return [(slice(t, b), slice(l, r)) for t, b, l, r in zip(top, bottom, left, right)]


def _patch_of(n_pixels, n_patches):
    """The patch under each pixel along one axis of a grid covering it."""
    return np.arange(n_pixels) * n_patches // n_pixels


def pixel_to_patch(image_shape, grid_shape):
    """Index of the patch under every pixel, for a grid covering the image."""
    (height, width), (h, w) = image_shape, grid_shape
    return _patch_of(height, h)[:, None] * w + _patch_of(width, w)[None, :]


def pooled_descriptors(regions, patches):
    """Mean patch feature of each region, weighted by pixel coverage.

    Parameters
    ----------
    regions : Regions
    patches : ndarray of shape (h, w, d)

    Returns
    -------
    descriptors : ndarray of shape (n_regions, d)
    """
    h, w, d = patches.shape
    (height, width), n_regions = regions.shape, regions.n_regions
    rows, starts, stops, ids = regions.runs()
    # A run lies in one patch row; it covers part of its first and last patch
    # columns and all of those between. Counts per (region, patch row,
    # patch column) cell, in work proportional to the runs, not to their
    # lengths or to the patch columns.
    column_of = _patch_of(width, w)
    column_bounds = np.searchsorted(column_of, np.arange(w + 1))
    first, last = column_of[starts], column_of[stops - 1]
    cell = ((ids - 1) * h + _patch_of(height, h)[rows]) * w
    n_cells = n_regions * h * w
    one_column = first == last
    partial = np.bincount(
        np.concatenate([cell + first, (cell + last)[~one_column]]),
        weights=np.concatenate([
            np.where(one_column, stops, column_bounds[first + 1]) - starts,
            (stops - column_bounds[last])[~one_column],
        ]),
        minlength=n_cells,
    )
    # Columns strictly between first and last: +1 from first + 1, -1 from
    # last, summed along each (region, patch row).
    between = first + 1 < last
    steps = np.bincount(cell[between] + first[between] + 1, minlength=n_cells) \
        - np.bincount(cell[between] + last[between], minlength=n_cells)
    full = np.cumsum(steps.reshape(-1, w), axis=1) * np.diff(column_bounds)
    coverage = (partial.reshape(-1, w) + full).reshape(n_regions, h * w)
    coverage = coverage.astype(np.float32)
    coverage /= coverage.sum(1, keepdims=True)
    return coverage @ patches.reshape(h * w, d).astype(np.float32)


def _grown(span, limit, min_side):
    side = min(max(span.stop - span.start, min_side), limit)
    centre = (span.start + span.stop) // 2
    start = min(max(0, centre - side // 2), limit - side)
    return slice(start, start + side)


def region_crops(rgb, regions, min_side):
    """Bounding-box crops of each region, grown to at least ``min_side``."""
    return [
        rgb[_grown(rows, regions.shape[0], min_side), _grown(cols, regions.shape[1], min_side)]
        for rows, cols in regions.boxes()
    ]


def encode_crops(encoder, crops_per_image):
    """CLS token of every region crop, encoded in one batched call.

    Parameters
    ----------
    encoder : fitted ViTPatchTransformer
    crops_per_image : list of list of ndarray
        The crops of each image's regions.

    Returns
    -------
    descriptors : list of ndarray of shape (n_regions, d_cls)
    """
    flat = [crop for crops in crops_per_image for crop in crops]
    if not flat:
        return [np.zeros((0, 1), np.float32) for _ in crops_per_image]
    tokens = np.stack([f.cls for f in encoder.transform(flat)]).astype(np.float32)
    bounds = np.cumsum([0] + [len(crops) for crops in crops_per_image])
    return [tokens[start:stop] for start, stop in zip(bounds[:-1], bounds[1:])]


class LabelMasks(Sequence):
    """The label masks of a set of images, each produced when indexed.

    Holds the compressed regions of each image and the class of each region,
    so memory stays small whatever the number of images; ``masks[i]`` is the
    full-size ``(H, W)`` label array of image ``i`` (0 for background,
    ``1..n_classes`` for the classes). Integer, slice and array indexing as
    for :class:`FeatureSequence`. It pickles (every protocol) and saves with
    :mod:`skops.io` (see :data:`skseg.io.TRUSTED_TYPES`).

    See Also
    --------
    skseg.io.save_masks : Write masks as palette PNGs.
    skseg.io.read_masks : Read them back, lazily, with the same indexing.
    """

    def __init__(self, regions, classes, dtype):
        self._regions = list(regions)
        self._classes = list(classes)
        self._dtype = dtype

    def __len__(self):
        return len(self._regions)

    def __getitem__(self, key):
        indices = positions(key, len(self), "LabelMasks")
        if isinstance(indices, int):
            return self._regions[indices].paint(self._classes[indices], self._dtype)
        return LabelMasks(
            [self._regions[i] for i in indices.tolist()],
            [self._classes[i] for i in indices.tolist()], self._dtype,
        )

    def __repr__(self):
        return f"LabelMasks(<{len(self)} images>)"

    def __getstate__(self):
        # The dtype by name: skops then needs to trust no numpy type object.
        return {"regions": self._regions, "classes": self._classes,
                "dtype": np.dtype(self._dtype).str}

    def __setstate__(self, state):
        self._regions = list(state["regions"])
        self._classes = [np.asarray(classes) for classes in state["classes"]]
        self._dtype = np.dtype(state["dtype"]).type

    def region_map(self, index):
        """The object regions of image ``index``, without their classes.

        Returns
        -------
        regions : ndarray of shape (H, W), int32
            0 for background, ``1..n_regions`` on the image's connected object
            regions (numbered in raster order of their first pixel);
            ``masks[index]`` paints each region with its class.
        """
        return self._regions[positions(index, len(self), "LabelMasks")].region_map()

    def save(self, folder, names=None, palette=None):
        """Write every mask as a palette PNG below ``folder``.

        :func:`skseg.io.save_masks` applied to these masks, each made only
        when it is written.

        Parameters
        ----------
        folder : path-like
        names : sequence of str or path-like, default=None
            Relative file names, e.g. the images' (their suffix becomes
            ``.png``); ``None``: ``0.png``, ``1.png``...
        palette : {None, "clusters", "voc"} or array-like, default=None
            The PNGs' colours; ``None``: :func:`skseg.io.cluster_palette`.

        Returns
        -------
        paths : list of pathlib.Path
        """
        from ._io import save_masks

        return save_masks(self, folder, names=names, palette=palette)
