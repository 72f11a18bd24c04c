"""Reading a feature store's segments: the rows of images' arrays, each
image verified against the CRC-32 its commit carries.

A segment's zarr arrays are opened once and checked against their commit
(shape, chunks, dtype) before anything is read; a read within one or two
chunks keeps those chunks, so that reading a store image by image reads each
chunk once. Which commits hold which images is the snapshot's
(``_store_snapshot``); this module reads what they point at.
"""

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import _store_format
from ._store_format import (
    SEGMENT_ARRAYS,
    CorruptedStoreError,
    array_shape,
    crc,
    cumulative,
)
from ._store_location import one_line, refuse_link


class SegmentReader:
    """The segment arrays of one store, opened as they are read.

    Parameters
    ----------
    location : Location
        The store.
    zarr_store : zarr store
        The store's zarr storage, shared with its snapshot and writer.
    """

    def __init__(self, location, zarr_store):
        self.location = location
        self.zarr = zarr_store
        self.arrays = {}
        self.lock = threading.Lock()  # the reads of one call run in threads
        self.chunk_cache = {}

    def read(self, name, pieces, layout):
        """Rows of segment array ``name`` for the ``(commit, k0, k1)``
        pieces of stored images, each image verified, and the images' row
        offsets in the block."""
        def piece(commit, k0, k1):
            offsets = commit.offsets[SEGMENT_ARRAYS[name].per]
            first, last = commit.first + k0, commit.first + k1 - 1
            where = f"image {first}" if first == last else f"images {first}..{last}"
            block = self._rows(commit, name, layout, int(offsets[k0]), int(offsets[k1]),
                               where)
            bounds = offsets[k0:k1 + 1] - offsets[k0]
            self._verify(commit, name, block, k0, bounds)
            return block, np.diff(bounds)

        if self.location.local or len(pieces) < 2:
            parts = [piece(*p) for p in pieces]
        else:  # object storage answers in tens of milliseconds: overlap the segments
            with ThreadPoolExecutor(min(len(pieces), _store_format.READ_THREADS)) as pool:
                parts = list(pool.map(lambda p: piece(*p), pieces))
        blocks = [block for block, _ in parts]
        sizes = [size for _, size in parts]
        row, _, dtype = array_shape(name, layout)
        block = (np.concatenate(blocks) if len(blocks) > 1 else blocks[0]) if blocks \
            else np.zeros((0, *row), dtype)
        offsets = cumulative(np.concatenate(sizes) if sizes else np.zeros(0, np.int64))
        return block, offsets

    def _array(self, commit, name, layout, where):
        import zarr

        with self.lock:
            found = self.arrays.get((commit.seq, name))
        if found is not None:
            return found
        row, chunk_rows, dtype = array_shape(name, layout)
        length = int(commit.offsets[SEGMENT_ARRAYS[name].per][-1])
        path = f"segments/{commit.segment}/{name}"
        if self.location.local:
            for part in ("segments", f"segments/{commit.segment}", path, f"{path}/c"):
                refuse_link(self.location, self.location.full_path(part))
        try:
            array = zarr.open_array(self.zarr, path=path, mode="r", zarr_format=3)
        except Exception as exc:  # missing, or metadata zarr cannot parse
            self.location.refuse_if_gone()
            raise self._damaged(commit, name, f"unreadable: {one_line(exc)}", where) from None
        # Its metadata sizes what is read: checked before anything is allocated.
        if array.shape != (length, *row) or array.chunks != (chunk_rows, *row) \
                or array.dtype != dtype:
            raise self._damaged(commit, name, f"shape {array.shape}, chunks "
                                f"{array.chunks}, dtype {array.dtype}", where)
        with self.lock:
            self.arrays[(commit.seq, name)] = array
            if len(self.arrays) > 64:  # views over many segments: keep the last opened
                self.arrays.pop(next(iter(self.arrays)))
        return array

    def _damaged(self, commit, name, what, where):
        return CorruptedStoreError(
            f"feature store {self.location.url!r}: cannot read the {name} of {where} "
            f"({what}; segments/{commit.segment}/{name}, commit {commit.seq}); the "
            "store is damaged, restore it or extract its features again."
        )

    def _rows(self, commit, name, layout, low, high, where):
        """Rows low:high of a segment array. A read within one or two chunks
        reads those chunks whole and keeps them, so that reading a store
        image by image reads each chunk once, not once per image."""
        if high <= low:
            row, _, dtype = array_shape(name, layout)
            return np.zeros((0, *row), dtype)
        array = self._array(commit, name, layout, where)
        chunk = array.chunks[0]
        first = low // chunk * chunk
        last = min(-(-high // chunk) * chunk, array.shape[0])
        try:
            if last - first > 2 * chunk:
                return array[low:high]
            cached = self.chunk_cache.get(name)
            if cached is None or cached[0] != commit.seq \
                    or not cached[1] <= low <= high <= cached[2]:
                cached = (commit.seq, first, last, array[first:last])
                self.chunk_cache[name] = cached
        except Exception as exc:  # zarr raises codec-specific errors
            self.location.refuse_if_gone()
            raise self._damaged(commit, name, one_line(exc), where) from None
        return cached[3][low - cached[1]:high - cached[1]].copy()

    def _verify(self, commit, name, block, k0, bounds):
        """Image k0 + k of ``commit`` is block[bounds[k]:bounds[k + 1]]."""
        expected = commit.columns["checksums"][k0:k0 + len(bounds) - 1,
                                               list(SEGMENT_ARRAYS).index(name)]
        for k in range(len(bounds) - 1):
            if crc(block[bounds[k]:bounds[k + 1]]) != expected[k]:
                self.location.refuse_if_gone()  # missing chunks read as zeros
                raise CorruptedStoreError(
                    f"feature store {self.location.url!r}: the {name} of image "
                    f"{commit.first + k0 + k} fail their checksum (in "
                    f"segments/{commit.segment}/{name}); the store is damaged, restore "
                    "it or extract its features again."
                )

