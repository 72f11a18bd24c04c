"""Reading a feature store's images back: the rows of stored positions in
bulk, and the :class:`ImageFeatures` rebuilt from them.

Contiguous stored positions are read as one run, so a range of a store (or
of a view of it) reads each segment's chunks once rather than once per
image. A record's image is its file (where a view was told it is now),
checked against the content its features came from when the store recorded
its extraction, or its stored pixels.
"""

import os

import numpy as np

from ._features import ImageFeatures
from ._image_decoding import ExtractedImagePath
from ._store_format import (
    FEATURE_KEY,
    IMAGE_COLUMNS,
    CorruptedStoreError,
    array_shape,
    runs,
)


def read_rows(snapshot, name, stored):
    """Segment array ``name`` of the ``stored`` positions, read run by run.

    Returns
    -------
    data : ndarray
        The positions' rows, one image after the other.
    offsets : ndarray of shape (len(stored) + 1,)
        Image ``k`` owns rows ``offsets[k]:offsets[k + 1]``.
    """
    blocks, offsets = [], [np.zeros(1, np.int64)]
    for a, b in runs(stored):
        block, block_offsets = snapshot.read(name, a, b)
        blocks.append(block)
        offsets.append(block_offsets[1:] + offsets[-1][-1])
    row, _, dtype = array_shape(name, snapshot.layout)
    data = (np.concatenate(blocks) if len(blocks) > 1 else blocks[0]) if blocks \
        else np.zeros((0, *row), dtype)
    return data, np.concatenate(offsets)


def read_records(snapshot, stored, given=None):
    """The :class:`ImageFeatures` of the ``stored`` positions, each array
    read once for them all.

    Parameters
    ----------
    snapshot : Snapshot
    stored : ndarray of int
        Stored positions, not empty.
    given : sequence of str or None, default=None
        Per position, where its image's file is now (a view's inputs), or
        None for the path the store holds.

    Returns
    -------
    records : list of ImageFeatures
    """
    layout = snapshot.layout
    patches, offsets = read_rows(snapshot, "patches", stored)
    cls = read_rows(snapshot, "cls", stored)[0] if layout["cls_dim"] is not None else None
    attention = read_rows(snapshot, "attention", stored)[0] if layout["has_attention"] \
        else None
    columns = {name: snapshot.column(name, stored) for name in IMAGE_COLUMNS}
    given = [None] * len(stored) if given is None else given
    records = []
    for k, i in enumerate(stored.tolist()):
        h, w = (int(v) for v in columns["grid_shapes"][k])
        rows = slice(offsets[k], offsets[k + 1])
        records.append(ImageFeatures(
            patches=patches[rows].reshape(h, w, -1),
            cls=None if cls is None else cls[k],
            attention=None if attention is None else attention[rows].reshape(h, w),
            image_shape=tuple(int(v) for v in columns["image_shapes"][k]),
            image=_stored_image(snapshot, i, columns, k, given[k]),
            patch_size=int(columns["patch_sizes"][k]) or None,
            content_key=_record_key(str(columns["content_keys"][k])),
        ))
    return records


def moved_paths(snapshot, positions, images):
    """Per stored position, the absolute path of the file given for it now,
    or None where that is the path the store holds (or the image is not a
    file); None when no file has moved.

    Kept only where it differs from the stored path: a view of a dataset at
    its extraction's place pickles small.
    """
    stored_paths = snapshot.column("image_paths", positions)
    given = tuple(
        path if path != stored else None
        for path, stored in zip((os.path.abspath(os.fspath(image))
                                 if isinstance(image, (str, os.PathLike)) else None
                                 for image in images), stored_paths))
    return None if all(path is None for path in given) else given


def _stored_image(snapshot, i, columns, k, given=None):
    """Image ``k`` of ``columns`` (stored image ``i``); ``given``, a path,
    names where its file is now."""
    if columns["image_paths"][k]:
        path = given or str(columns["image_paths"][k])
        if snapshot.extraction is None:  # hand-made records: keys of any kind
            return path
        # Every key of an extraction's store is its image's content_hash.
        return ExtractedImagePath(path, str(columns["content_keys"][k]))
    dtype = str(columns["pixel_dtypes"][k])
    if not dtype:
        return None
    raw, _ = snapshot.read("pixels", i, i + 1)
    shape = tuple(int(s) for s in columns["pixel_shapes"][k])
    try:
        return raw.view(np.dtype(dtype)).reshape(shape if shape[2] else shape[:2])
    except (TypeError, ValueError) as exc:  # checksummed, so written this way
        raise CorruptedStoreError(
            f"feature store {snapshot.location.url!r}: the pixels of image {i} do not fit "
            f"their recorded dtype {dtype!r} and shape {shape}; the store is damaged."
        ) from exc


def _record_key(stored_key):
    """A stored key as the ``content_key`` of the record read back: None for
    a key made from the features, so such a record is keyed by its features
    as it was before it was stored."""
    return None if stored_key.startswith(FEATURE_KEY) else stored_key
