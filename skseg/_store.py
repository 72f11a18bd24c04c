"""FeatureStore: a disk-backed, append-only sequence of ImageFeatures on zarr v3.

Layout of a store (a zarr v3 group; every array is indexed by image along its
first axis, except ``patches``/``attention`` which hold one row per patch and
``pixels`` which holds the raw bytes of in-memory images)::

    zarr.json              group attributes: format, committed image count,
                           feature layout, extraction parameters
    patches       (n_rows, d)   patch features of all images, row-major grids
    patch_offsets (n + 1,)      image i owns rows patch_offsets[i]:patch_offsets[i+1]
    attention     (n_rows,)     CLS attention per patch (only if the store has it)
    cls           (n, d_cls)    CLS tokens (only if the store has them)
    grid_shapes   (n, 2)        patch grid (h, w)
    image_shapes  (n, 2)        original image (H, W)
    patch_sizes   (n,)          0 where the record had none
    content_keys  (n,)          one key per image (image digest, or feature digest)
    image_paths   (n,)          absolute path of the image file, "" otherwise
    pixels        (n_bytes,)    raw pixels of images given as arrays
    pixel_offsets (n + 1,)      image i owns bytes pixel_offsets[i]:pixel_offsets[i+1]
    pixel_shapes  (n, 3)        (H, W, channels); channels 0 for a 2-D array
    pixel_dtypes  (n,)          numpy dtype string, "" when no pixels are stored
    checksums     (n, 4)        CRC-32 of patches, cls, attention and pixels

Crash safety rests on one rule: the committed image count in ``zarr.json`` is
written (atomically, by zarr's write-then-rename) only after every array holds
the data it covers, and readers never look past it. Rows past the count are
debris of an interrupted append; the next writer cuts them off.
"""

import json
import os
import shutil
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ._features import ImageFeatures
from ._images import ExtractedImagePath
from ._indexing import positions as _positions

FORMAT_NAME = "skseg-feature-store"
FORMAT_VERSION = 1
_ATTRS_KEY = "skseg_feature_store"

# A few MB per chunk: large enough that reading a range of images is a few
# big reads, small enough that one image's read does not pull in much else.
_CHUNK_BYTES = 2 << 20
_PER_IMAGE_CHUNK = 16384
# Records buffered by extend() before one commit; bounds the writer's memory.
_BATCH_BYTES = 64 << 20
_BATCH_IMAGES = 4096

_FIELDS = ("patches", "cls", "attention", "pixels")  # the columns of ``checksums``
# Per-image arrays read whole at opening; their content is covered by running
# CRC-32s in the group attributes (appends extend a CRC, never recompute it).
_OFFSETS = ("patch_offsets", "pixel_offsets")
_PER_IMAGE = ("grid_shapes", "image_shapes", "patch_sizes", "content_keys", "image_paths",
              "pixel_shapes", "pixel_dtypes", "checksums")
# PIL modes whose array np.asarray gives loads exactly as the PIL image does.
_ARRAY_EXACT_PIL_MODES = ("L", "RGB", "RGBA")
# Beside the arrays, the only file a store holds that zarr does not know.
_LOCK_NAME = ".writer.lock"
# Bounds on what a store's metadata may ask to allocate, far above any real store.
_MAX_WIDTH = 1 << 16
_MAX_CHUNK_BYTES = 1 << 28


class CorruptedStoreError(OSError):
    """Stored data failed its checksum or could not be decoded."""


def _crc(array):
    return zlib.crc32(memoryview(np.ascontiguousarray(array)).cast("B"))


def _index_crc(values, previous=0):
    """Continue the running CRC-32 of an index array with ``values``."""
    if values.dtype.kind in "iu":
        data = np.ascontiguousarray(values, dtype="<i8").tobytes()
    else:  # strings
        data = "".join(f"{value}\0" for value in values.tolist()).encode()
    return zlib.crc32(data, previous)


def _runs(indices):
    """Split sorted-or-not indices into (start, stop) runs of consecutive values."""
    if indices.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(indices) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [indices.size]])
    return [(int(indices[a]), int(indices[b - 1]) + 1) for a, b in zip(starts, stops)]


def _jsonable(params):
    return None if params is None else json.loads(json.dumps(params))


def _describe_difference(recorded, requested):
    keys = sorted(set(recorded) | set(requested))
    differ = [k for k in keys if recorded.get(k) != requested.get(k)]
    return "; ".join(
        f"{k}: store {recorded.get(k)!r}, requested {requested.get(k)!r}" for k in differ
    )


class _Backing:
    """The open zarr group and the in-memory index shared by a store and its views."""

    def __init__(self, path, read_only):
        from zarr.storage import LocalStore

        self.path = path
        self.read_only = read_only
        self.zarr_store = LocalStore(path, read_only=read_only)
        self.reload()

    @property
    def meta(self):
        return self.group.attrs[_ATTRS_KEY]

    def refresh(self):
        """Catch up with appends by other processes; cheap when there were none."""
        import zarr

        group = zarr.open_group(self.zarr_store, mode="r" if self.read_only else "r+")
        meta = _valid_meta(self.path, group.attrs.get(_ATTRS_KEY))
        if (meta["n_images"], meta.get("layout"), meta.get("extraction")) == (
                self.n_images, self.layout, self.extraction):
            self.group = group
            return
        self.reload()

    def reload(self):
        import zarr

        self.group = zarr.open_group(self.zarr_store, mode="r" if self.read_only else "r+")
        meta = dict(_valid_meta(self.path, self.group.attrs.get(_ATTRS_KEY)))
        self.n_images = int(meta["n_images"])
        self.layout = meta.get("layout")
        self.extraction = meta.get("extraction")
        self.arrays = {}
        self.index = {}
        self.key_positions = None
        self.chunk_cache = {}
        if self.layout is None:
            return
        # Arrays are opened by name: listing the group would trip over the
        # lock file and the temporary files of interrupted writes.
        for name, spec in _array_specs(self.layout).items():
            self.arrays[name] = self._open_array(name, spec)
        n = self.n_images
        self._check_committed_files(n)
        for name in _OFFSETS + _PER_IMAGE:
            length = n + 1 if name in _OFFSETS else n
            values = self._read(name, slice(0, length), range(n))
            if values.dtype.kind not in "iu":  # strings, kept as Python str objects
                values = np.array(values.tolist(), dtype=object)
            if _index_crc(values) != meta["index_crc"][name]:
                raise CorruptedStoreError(
                    f"feature store {self.path!r}: its per-image array {name!r} fails "
                    f"its checksum (files under {name}/c); the store is damaged, "
                    "restore it or extract its features again."
                )
            self.index[name] = values
        for name, data in (("patches", "patch_offsets"), ("pixels", "pixel_offsets")):
            offsets = self.index[data]
            if offsets[0] != 0 or np.any(np.diff(offsets) < 0) \
                    or offsets[-1] > self.arrays[name].shape[0]:
                raise self._damaged(data, f"its offsets do not fit {name}")

    def _damaged(self, name, what):
        return CorruptedStoreError(
            f"feature store {self.path!r}: its array {name!r} is damaged ({what}; "
            f"{os.path.join(self.path, name, 'zarr.json')}); restore the store or "
            "extract its features again."
        )

    def _open_array(self, name, spec):
        """Array ``name``, refused unless it has the dtype, row shape and chunk
        size of ``spec`` and lies inside the store: its metadata sizes what
        is read, so it is checked before anything is allocated."""
        folder = os.path.join(self.path, name)
        for part in (folder, os.path.join(folder, "c")):
            _refuse_link(self.path, part)
        try:
            array = self.group[name]
        except KeyError as exc:
            raise CorruptedStoreError(
                f"feature store {self.path!r}: its array {name!r} is missing."
            ) from exc
        except Exception as exc:  # JSON, recursion, codec and value errors alike
            raise self._damaged(name, f"unreadable metadata: {type(exc).__name__}") from exc
        row, _, dtype = spec
        itemsize = 8 if dtype is str else np.dtype(dtype).itemsize  # str: a reference
        chunk_bytes = array.chunks[0] * int(np.prod(row)) * itemsize
        if (array.shape[1:], array.chunks[1:]) != (row, row) \
                or not 0 < chunk_bytes <= _MAX_CHUNK_BYTES:
            raise self._damaged(name, f"shape {array.shape}, chunks {array.chunks}")
        if (array.dtype.kind not in "OTU") if dtype is str else array.dtype != np.dtype(dtype):
            raise self._damaged(name, f"dtype {array.dtype}")
        return array

    def _check_committed_files(self, n):
        """Every committed image has its row in each per-image array, and its
        checksums' chunk file exists (never all zeros, so always written):
        a raised image count is refused before its rows are allocated."""
        for name in _OFFSETS + _PER_IMAGE:
            length = n + 1 if name in _OFFSETS else n
            if self.arrays[name].shape[0] < length:
                raise self._damaged(name, f"{self.arrays[name].shape[0]} rows for {n} images")
        rows = self.arrays["checksums"].chunks[0]
        for chunk in range(-(-n // rows)):
            file = os.path.join(self.path, "checksums", "c", str(chunk), "0")
            if not os.path.isfile(file):
                raise CorruptedStoreError(
                    f"feature store {self.path!r} says it holds {n} images, but the chunk "
                    f"file {file} of their checksums is missing; the store is damaged, "
                    "restore it or extract its features again."
                )

    def refuse_if_gone(self):
        """A store moved or deleted under an open handle is not a damaged one."""
        if not os.path.isfile(os.path.join(self.path, "zarr.json")):
            raise FileNotFoundError(
                f"feature store {self.path!r} is no longer there: it was moved or deleted "
                "while open. Open it again where it is now."
            )

    def refuse_linked_chunks(self, name, start, stop):
        """Refuse a link among the chunk folders of rows [start, stop) of
        ``name`` before they are written or cut (files zarr replaces whole,
        but it writes into whatever folder it finds)."""
        if self.arrays[name].ndim == 2 and stop > start:
            for file in self.chunk_files(name, start, stop):
                _refuse_link(self.path, os.path.join(self.path, os.path.dirname(file)))

    def chunk_files(self, name, start, stop):
        """Chunk files that hold elements [start, stop) of array ``name``."""
        array = self.arrays[name]
        rows = array.chunks[0]
        suffix = "/0" if array.ndim == 2 else ""
        first, last = start // rows, max(start, stop - 1) // rows
        return [f"{name}/c/{c}{suffix}" for c in range(first, last + 1)]

    def _read(self, name, selection, images):
        try:
            return self.arrays[name][selection]
        except Exception as exc:  # zarr raises codec-specific errors
            self.refuse_if_gone()
            images = list(images)
            where = (f"image {images[0]}" if len(images) == 1 else
                     f"images {images[0]}..{images[-1]}" if images else "the store")
            raise CorruptedStoreError(
                f"feature store {self.path!r}: cannot read {name} of {where}: {exc}"
            ) from exc

    def _rows(self, name, low, high, committed):
        """Rows low:high of an array whose first ``committed`` rows are committed.

        A read within one or two chunks reads those chunks whole and keeps
        them, so that reading a store image by image reads each chunk once,
        not once per image. Only committed rows are kept: they never change.
        """
        array = self.arrays[name]
        chunk = array.chunks[0]
        first = low // chunk * chunk
        last = min(-(-high // chunk) * chunk, int(committed))
        if last - first > 2 * chunk:
            return array[low:high]
        cached = self.chunk_cache.get(name)
        if cached is None or not cached[0] <= low <= high <= cached[1]:
            cached = (first, last, array[first:last])
            self.chunk_cache[name] = cached
        return cached[2][low - cached[0]:high - cached[0]].copy()

    def read_range(self, name, offsets, start, stop):
        """Images [start, stop) of an array whose image i is its rows
        ``offsets[i]:offsets[i + 1]``, each verified."""
        try:
            block = self._rows(name, offsets[start], offsets[stop], offsets[self.n_images])
        except Exception:
            # Narrow the failure down to the first image that cannot be read.
            for i in range(start, stop):
                self._read(name, slice(offsets[i], offsets[i + 1]), [i])
            raise
        self.verify(name, block, start, offsets[start:stop + 1] - offsets[start])
        return block

    def read_rows(self, name, start, stop):
        """Rows of a per-patch array for images [start, stop), each verified."""
        return self.read_range(name, self.index["patch_offsets"], start, stop)

    def read_per_image(self, name, start, stop):
        """Rows ``start:stop`` of an array of one row per image, each verified."""
        return self.read_range(name, np.arange(self.n_images + 1), start, stop)

    def verify(self, name, block, start, bounds):
        """Check images start, start+1, ...; image start+k is block[bounds[k]:bounds[k+1]]."""
        column = _FIELDS.index(name)
        expected = self.index["checksums"][start:start + len(bounds) - 1, column]
        first = self.index["pixel_offsets" if name == "pixels" else "patch_offsets"][start]
        for k in range(len(bounds) - 1):
            if _crc(block[bounds[k]:bounds[k + 1]]) != expected[k]:
                self.refuse_if_gone()  # missing chunks read as zeros
                i = start + k
                if name == "cls":
                    files = self.chunk_files(name, i, i + 1)
                else:
                    files = self.chunk_files(name, int(first + bounds[k]),
                                             int(first + bounds[k + 1]))
                raise CorruptedStoreError(
                    f"feature store {self.path!r}: the {name} of image {i} fail their "
                    f"checksum (chunk file {', '.join(files)}); the store is damaged, "
                    "restore it or extract its features again."
                )


class FeatureStore(Sequence):
    """A disk-backed sequence of :class:`ImageFeatures`, on zarr v3.

    Opens the store at ``path``, creating it if absent. Records are appended
    with :meth:`extend`, streaming, and read back lazily: ``store[i]`` reads one
    image's features from disk, and indexing by a slice, a list or an array of
    ints or booleans returns a lazy view of the same store (so scikit-learn's
    cross-validation splitters can split it). A store pickles as its location
    and reopens read-only, so joblib workers read the chunks they need
    themselves.

    Everything an :class:`ImageFeatures` holds is kept: patches of any grid
    size (as one ``(n_patches, d)`` array with per-image offsets, float16 or
    float32), the CLS token, the CLS attention, the image shape, the patch
    size and the image. An image given as a file is kept as its absolute path
    (a view made by :meth:`select` with ``images`` points at the files given
    then); in a store that recorded its extraction, reading such a file
    checks that it still holds the content the features came from. An image
    given as an array is kept as its pixels, byte for byte (a PIL image as its
    array, or, for modes other than L, RGB and RGBA, as the float RGB array
    skseg reads from it). A store also records the parameters of the extraction that made
    it, and one content key per image.

    A writer killed at any moment leaves a store that opens and holds every
    image committed before the kill; extending it again continues from there.
    Writers in several processes take turns: creating the store, recording
    its extraction and every append happen under one lock (``filelock``), so
    processes creating or extending the same store at once lose nothing.
    Every read is checked against per-image CRC-32 checksums, so a damaged
    chunk raises an ``OSError`` naming the image and the chunk file, never
    returns wrong numbers.

    Parameters
    ----------
    path : str or path-like
        A directory: an existing store, an empty directory or a new path.
    extraction : dict, default=None
        The feature-changing parameters of the extraction that wrote (or will
        write) the store, as JSON-compatible values. An empty store records
        them; a store that recorded others is refused with both sets named.
        A store that recorded an extraction is extended only through a handle
        opened with the same one, so that no other records pass for its
        features.
    read_only : bool, default=False
        Open without write access; :meth:`extend` is then refused.

    Attributes
    ----------
    path : str
        Absolute path of the store.
    extraction : dict or None
        The recorded extraction parameters.
    content_keys : ndarray of object
        One content key (str) per image.
    grid_shapes, image_shapes : ndarray of shape (n_images, 2)
        Patch grids and original image sizes, without reading any features.

    See Also
    --------
    ViTPatchTransformer : Its ``store=`` parameter writes features into a store.
    FeatureSequence : The in-memory counterpart.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from skseg import FeatureStore, ImageFeatures
    >>> store = FeatureStore(os.path.join(tempfile.mkdtemp(), "features.zarr"))
    >>> store.extend(ImageFeatures(np.zeros((4, 4, 8), np.float16)) for _ in range(3))
    3
    >>> len(store), store[0].patches.shape, len(store[[0, 2]])
    (3, (4, 4, 8), 2)
    """

    def __init__(self, path, *, extraction=None, read_only=False):
        self.path = os.path.abspath(os.fspath(path))
        self._positions = None  # None: every committed image, in order
        self._images = None  # None, or per position: the file given now for that image
        self._requested = None if extraction is None else _jsonable(dict(extraction))
        _prepare_location(self.path, read_only)
        self._backing = _Backing(self.path, read_only)
        if self._requested is not None:
            self._record_extraction()

    # -- opening -----------------------------------------------------------

    def _record_extraction(self):
        """Record the requested extraction in an empty store, or check it
        against the recorded one."""
        backing = self._backing
        if backing.extraction is None and not backing.n_images and not backing.read_only:
            with _writer_lock(self.path):
                # Another process may have recorded its own extraction (and
                # appended its features) since this one read the store.
                backing.reload()
                if backing.extraction is None and not backing.n_images:
                    meta = dict(backing.meta)
                    meta["extraction"] = self._requested
                    backing.group.attrs[_ATTRS_KEY] = meta
                    backing.reload()
        self._check_extraction()

    def _check_extraction(self):
        """Refuse a store whose recorded extraction is not this handle's."""
        backing = self._backing
        recorded, requested = backing.extraction, self._requested
        if requested is None:
            if recorded is not None:
                raise ValueError(
                    f"feature store {self.path!r} holds the features of the extraction "
                    f"{recorded}; records appended without it would pass for its "
                    "features. Open it with FeatureStore(path, extraction=...) to "
                    "append, or use another store path."
                )
            return
        if recorded is None:
            if backing.n_images:
                raise ValueError(
                    f"feature store {self.path!r} holds {backing.n_images} images of "
                    "unrecorded extraction parameters; it cannot be used with "
                    f"extraction parameters {requested}."
                )
            return
        if recorded != requested:
            raise ValueError(
                f"feature store {self.path!r} was written with other feature-changing "
                f"parameters ({_describe_difference(recorded, requested)}). Recorded: "
                f"{recorded}; requested: {requested}. Use another store path."
            )

    @property
    def extraction(self):
        """dict or None: the recorded extraction parameters."""
        return self._backing.extraction

    def __reduce__(self):
        return (_reopen, (self.path, self._positions, self._images))

    def __repr__(self):
        if self._positions is None:
            return f"FeatureStore({self.path!r}, <{len(self)} images>)"
        return (f"FeatureStore({self.path!r}, <view of {len(self)} of "
                f"{self._backing.n_images} images>)")

    # -- sequence ------------------------------------------------------------

    def __len__(self):
        if self._positions is None:
            return self._backing.n_images
        return len(self._positions)

    def _stored(self, positions):
        """Indices into the whole store for positions of this (maybe view) sequence."""
        if self._positions is None:
            return positions
        return self._positions[positions]

    def __getitem__(self, key):
        positions = _positions(key, len(self), "FeatureStore")
        if isinstance(positions, int):
            return self.records_of(positions, positions + 1)[0]
        view = object.__new__(FeatureStore)
        view.path = self.path
        view._backing = self._backing
        view._requested = self._requested
        view._positions = np.asarray(self._stored(positions), dtype=np.int64)
        view._images = None if self._images is None else \
            tuple(self._images[p] for p in positions.tolist())
        return view

    def _image(self, i, given=None):
        """Image ``i`` of the store; ``given``, a path, names where its file is now."""
        backing = self._backing
        index = backing.index
        if index["image_paths"][i]:
            path = given or str(index["image_paths"][i])
            if backing.extraction is None:  # hand-made records: keys of any kind
                return path
            # Every key of an extraction's store is its image's content_hash.
            return ExtractedImagePath(path, str(index["content_keys"][i]))
        dtype = str(index["pixel_dtypes"][i])
        if not dtype:
            return None
        raw = backing.read_range("pixels", index["pixel_offsets"], i, i + 1)
        shape = tuple(int(s) for s in index["pixel_shapes"][i])
        try:
            return raw.view(np.dtype(dtype)).reshape(shape if shape[2] else shape[:2])
        except (TypeError, ValueError) as exc:  # checksummed, so written this way
            raise CorruptedStoreError(
                f"feature store {self.path!r}: the pixels of image {i} do not fit their "
                f"recorded dtype {dtype!r} and shape {shape}; the store is damaged."
            ) from exc

    # -- bulk reads --------------------------------------------------------------

    def _bulk(self, start, stop, read):
        """Concatenate ``read(first, last)`` over the runs of stored images."""
        start, stop, _ = slice(start, stop).indices(len(self))
        stored = self._stored(np.arange(start, max(start, stop), dtype=np.int64))
        return [read(a, b) for a, b in _runs(stored)], stored

    def patches_of(self, start, stop):
        """Patch features of images ``start:stop`` of this sequence, in one block.

        Reads whole chunks at once (contiguous images of the store are one
        read), verifying each image's checksum.

        Parameters
        ----------
        start, stop : int
            A range of positions, as in ``store[start:stop]``.

        Returns
        -------
        patches : ndarray of shape (n_patches, d)
            The images' patch grids flattened row-major, one after the other.
        offsets : ndarray of shape (n_images + 1,)
            Image ``k`` of the range owns rows ``offsets[k]:offsets[k + 1]``.
        """
        self._require_layout()
        blocks, stored = self._bulk(
            start, stop, lambda a, b: self._backing.read_rows("patches", a, b)
        )
        return self._concatenate(blocks, self._backing.layout["feature_dim"]), \
            self._offsets(stored)

    def attention_of(self, start, stop):
        """CLS attention of images ``start:stop``, flattened like :meth:`patches_of`.

        Returns
        -------
        attention : ndarray of shape (n_patches,)
        offsets : ndarray of shape (n_images + 1,)
        """
        self._require_layout()
        if not self._backing.layout["has_attention"]:
            raise ValueError(f"feature store {self.path!r} holds no CLS attention.")
        blocks, stored = self._bulk(
            start, stop, lambda a, b: self._backing.read_rows("attention", a, b)
        )
        return self._concatenate(blocks, None), self._offsets(stored)

    def cls_of(self, start, stop):
        """CLS tokens of images ``start:stop`` as an ``(n_images, d_cls)`` array."""
        self._require_layout()
        if self._backing.layout["cls_dim"] is None:
            raise ValueError(f"feature store {self.path!r} holds no CLS tokens.")
        blocks, _ = self._bulk(
            start, stop, lambda a, b: self._backing.read_per_image("cls", a, b)
        )
        return self._concatenate(blocks, self._backing.layout["cls_dim"])

    def records_of(self, start, stop):
        """Images ``start:stop`` as :class:`ImageFeatures`, read in bulk.

        The same records as ``[store[i] for i in range(start, stop)]``, with
        each array read once for the whole range (the segmenter's passes
        read chunks this way).
        """
        start, stop, _ = slice(start, stop).indices(len(self))
        if stop <= start:
            return []
        layout = self._backing.layout
        patches, offsets = self.patches_of(start, stop)
        cls = self.cls_of(start, stop) if layout["cls_dim"] is not None else None
        attention = self.attention_of(start, stop)[0] if layout["has_attention"] else None
        index = self._backing.index
        stored = self._stored(np.arange(start, stop, dtype=np.int64))
        given = self._images[start:stop] if self._images is not None else [None] * len(stored)
        records = []
        for k, i in enumerate(stored.tolist()):
            h, w = (int(v) for v in index["grid_shapes"][i])
            rows = slice(offsets[k], offsets[k + 1])
            records.append(ImageFeatures(
                patches=patches[rows].reshape(h, w, -1),
                cls=None if cls is None else cls[k],
                attention=None if attention is None else attention[rows].reshape(h, w),
                image_shape=tuple(int(v) for v in index["image_shapes"][i]),
                image=self._image(i, given[k]),
                patch_size=int(index["patch_sizes"][i]) or None,
                content_key=_record_key(str(index["content_keys"][i])),
            ))
        return records

    def _concatenate(self, blocks, width):
        if blocks:
            return np.concatenate(blocks) if len(blocks) > 1 else blocks[0]
        shape = (0,) if width is None else (0, width)
        return np.zeros(shape, self._backing.layout["patch_dtype"])

    def _offsets(self, stored):
        sizes = np.diff(self._backing.index["patch_offsets"])[stored]
        return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

    def _require_layout(self):
        if self._backing.layout is None:
            raise ValueError(f"feature store {self.path!r} is empty.")

    def _per_image(self, name):
        values = self._backing.index.get(name)
        if values is None:
            return np.zeros((0, 2) if name.endswith("shapes") else (0,), np.int64)
        return values if self._positions is None else values[self._positions]

    @property
    def content_keys(self):
        """ndarray of object: one content key (a str) per image of this sequence."""
        return self._per_image("content_keys").copy()

    @property
    def grid_shapes(self):
        """ndarray of shape (n_images, 2): each image's patch grid ``(h, w)``."""
        return self._per_image("grid_shapes").astype(np.int64)

    @property
    def image_shapes(self):
        """ndarray of shape (n_images, 2): each original image's ``(H, W)``."""
        return self._per_image("image_shapes").astype(np.int64)

    # -- lookup by content ------------------------------------------------------

    def _key_positions(self):
        """Content key -> first stored image holding it."""
        backing = self._backing
        if backing.key_positions is None:
            keys = backing.index.get("content_keys", ())
            backing.key_positions = {}
            for i, key in enumerate(keys):
                backing.key_positions.setdefault(key, i)
        return backing.key_positions

    def missing(self, content_keys):
        """Positions in ``content_keys`` whose key the store does not hold yet.

        Each missing key is listed once, at its first occurrence.

        Parameters
        ----------
        content_keys : sequence of str

        Returns
        -------
        positions : list of int
        """
        stored = self._key_positions()
        seen = set()
        positions = []
        for position, key in enumerate(content_keys):
            if key not in stored and key not in seen:
                seen.add(key)
                positions.append(position)
        return positions

    def select(self, content_keys, images=None):
        """A view of the stored images with these content keys, in this order.

        Parameters
        ----------
        content_keys : sequence of str
        images : sequence, default=None
            The images the keys were computed from, in step with them. A
            record whose stored image is a file then points at the file given
            here (where the input is now), not at the file the store first
            took that content from.

        Returns
        -------
        view : FeatureStore
            The store itself when the keys are exactly its images in order.

        Raises
        ------
        KeyError
            Naming the first key the store does not hold.
        """
        stored = self._key_positions()
        positions = np.empty(len(content_keys), np.int64)
        for position, key in enumerate(content_keys):
            if key not in stored:
                raise KeyError(f"feature store {self.path!r} holds no image with content "
                               f"key {key!r} (position {position}).")
            positions[position] = stored[key]
        if images is None and self._positions is None and \
                np.array_equal(positions, np.arange(len(self))):
            return self
        view = FeatureStore.__getitem__(_whole(self), positions)
        if images is not None:
            view._images = tuple(
                os.path.abspath(os.fspath(image)) if isinstance(image, (str, os.PathLike))
                else None for image in images)
        return view

    # -- writing -------------------------------------------------------------

    def extend(self, records, content_keys=None):
        """Append records, streaming, committing every few thousand images.

        The iterable is consumed one record at a time and never held whole;
        a bounded batch (at most 64 MB of patches) is written and committed
        at a time. If a record is refused, the records before it are stored
        and everything stored before stays intact.

        Parameters
        ----------
        records : iterable of ImageFeatures
            All with the store's feature dimension and dtype family, and with
            CLS and attention present exactly when the store's first record
            had them. Patches are stored in the store's dtype (float16 if its
            first record was float16, else float32).
        content_keys : iterable of str, default=None
            One key per record, in step with ``records`` (the transformer
            passes a digest of each image's content). A record whose given key
            the store already holds, or that an earlier record of this call
            had, is skipped: so two writers racing on the same images store
            each once. Without keys every record is appended, under its own
            ``content_key`` or else a digest of its patch features.

        Returns
        -------
        n_appended : int
            The number of records stored by this call.

        Raises
        ------
        ValueError
            For a record that does not fit the store, naming it.
        """
        if self._positions is not None:
            raise TypeError("a view of a FeatureStore cannot be extended; extend the store.")
        backing = self._backing
        if backing.read_only:
            raise PermissionError(f"feature store {self.path!r} is open read-only.")
        keys = iter(content_keys) if content_keys is not None else None
        with _writer_lock(self.path):
            backing.refresh()  # another process may have appended since we opened
            self._check_extraction()
            stored = self._key_positions()
            writer = _Writer(backing)
            try:
                for number, record in enumerate(records):
                    key = None
                    if keys is not None:
                        key = next(keys, None)
                        if key is None:
                            raise ValueError(
                                f"content_keys ran out at record {number}; give one "
                                "key per record."
                            )
                        if key in stored or key in writer.keys:
                            continue
                    writer.add(record, key, number)
                return writer.n_accepted
            finally:
                # Commit what was accepted even when a record is refused or the
                # iterable raises: a failed append never loses stored images.
                try:
                    writer.flush()
                except BaseException:
                    backing.reload()  # the in-memory index may be ahead of the disk
                    raise


def _whole(store):
    """The whole store behind a (maybe view) store."""
    if store._positions is None:
        return store
    whole = object.__new__(FeatureStore)
    whole.path, whole._backing, whole._positions = store.path, store._backing, None
    whole._images = None
    whole._requested = store._requested
    return whole


def _reopen(path, positions, images):
    store = FeatureStore(path, read_only=True)
    store._positions, store._images = positions, images
    return store


def _prepare_location(path, read_only):
    """Create an empty store at ``path`` if absent; refuse what is not a store."""
    location = Path(path)
    if location.is_file():
        raise ValueError(f"{path!r} is a file, not a feature store.")
    if not (location / "zarr.json").is_file():
        if read_only:
            raise FileNotFoundError(f"no feature store at {path!r}.")
        _refuse_foreign_files(path)  # before the lock file is made there
        location.mkdir(parents=True, exist_ok=True)
        with _writer_lock(path):
            # Checked again under the lock: another process may have created
            # the store meanwhile, and creating it twice would wipe its images.
            if not (location / "zarr.json").is_file():
                _refuse_foreign_files(path)
                _create_group(path)
    _check_format(path)


def _refuse_foreign_files(path):
    location = Path(path)
    if location.is_dir() and any(entry.name != _LOCK_NAME for entry in location.iterdir()):
        raise ValueError(
            f"{path!r} is not a feature store (it has no zarr.json) and is not "
            "empty; give a new path or an existing store."
        )


def _create_group(path):
    import zarr
    from zarr.storage import LocalStore

    # Never open_group(mode="w"): it deletes the folder, lock file included.
    zarr.create_group(LocalStore(path), overwrite=False, attributes={_ATTRS_KEY: {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "n_images": 0,
        "layout": None, "extraction": None,
    }})


def _check_format(path):
    marker = Path(path) / "zarr.json"
    try:
        meta = json.loads(marker.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        raise ValueError(
            f"{path!r} is not a readable feature store: its zarr.json cannot be "
            f"parsed ({exc})."
        ) from exc
    attributes = meta.get("attributes") if isinstance(meta, dict) else None
    info = attributes.get(_ATTRS_KEY) if isinstance(attributes, dict) else None
    if not isinstance(info, dict) or meta.get("zarr_format") != 3 \
            or info.get("format") != FORMAT_NAME:
        raise ValueError(
            f"{path!r} is a zarr store but not a skseg feature store."
        )
    if info.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path!r} is a skseg feature store of format version "
            f"{info.get('format_version')!r}; this skseg reads version "
            f"{FORMAT_VERSION}. Extract the features again into a new store."
        )


def _writer_lock(path):
    """An exclusive lock on the store at ``path``: its creation, the record of
    its extraction and every append happen under it, so writers take turns."""
    from filelock import FileLock

    lock_file = os.path.join(path, _LOCK_NAME)
    # filelock also opens it without following a link: a link planted in a
    # store never creates or truncates its target.
    _refuse_link(path, lock_file)
    return FileLock(lock_file)


def _refuse_link(store, path):
    """Refuse a symbolic link inside a store: writes through it would land
    outside the store."""
    if os.path.islink(path):
        raise CorruptedStoreError(
            f"feature store {store!r}: {path} is a symbolic link; a store holds none "
            "(writes through it would land outside the store). Remove it, or extract "
            "the features into a new store."
        )


class _Writer:
    """Validates records, buffers a bounded batch, and commits it."""

    def __init__(self, backing):
        self.backing = backing
        self.layout = backing.layout
        self.buffer = []
        self.buffered_bytes = 0
        self.keys = set()  # of every record accepted by this writer
        self.n_accepted = 0
        if self.layout is not None:
            self._cut_uncommitted()

    def _cut_uncommitted(self):
        """Drop rows an interrupted append left past the committed count."""
        backing = self.backing
        n = backing.n_images
        lengths = self._lengths(n, backing.index["patch_offsets"][n],
                                backing.index["pixel_offsets"][n])
        cut = False
        for name, array in backing.arrays.items():
            if array.shape[0] != lengths[name]:
                self._cut(name, array, int(lengths[name]))
                cut = True
        if cut:
            for partial in Path(backing.path).rglob("*.partial"):
                partial.unlink(missing_ok=True)

    def _cut(self, name, array, length):
        """Shrink ``array`` to ``length`` rows, deleting the chunk files wholly
        past it. The files are found by listing the folder: zarr's own resize
        enumerates every chunk of the old shape, which a damaged zarr.json
        can make astronomically many."""
        from zarr.core.sync import sync

        folder = os.path.join(self.backing.path, name, "c")
        first_past = -(-length // array.chunks[0])
        for entry in os.listdir(folder) if os.path.isdir(folder) else ():
            if entry.isdigit() and int(entry) >= first_past:
                chunk = os.path.join(folder, entry)
                _refuse_link(self.backing.path, chunk)
                if os.path.isdir(chunk):
                    shutil.rmtree(chunk)
                else:
                    os.unlink(chunk)
        sync(array.async_array.resize((length,) + array.shape[1:],
                                      delete_outside_chunks=False))

    def _lengths(self, n, n_rows, n_bytes):
        lengths = {name: n for name in self.backing.arrays}
        lengths.update(patch_offsets=n + 1, pixel_offsets=n + 1, patches=n_rows,
                       attention=n_rows, pixels=n_bytes)
        return lengths

    def _new_layout(self, record):
        dtype = "float16" if record.patches.dtype == np.float16 else "float32"
        return {
            "feature_dim": int(record.patches.shape[2]),
            "patch_dtype": dtype,
            "cls_dim": None if record.cls is None else int(record.cls.shape[0]),
            "has_attention": record.attention is not None,
        }

    def _check(self, record, number):
        where = f"record {number} (would be image {self.backing.n_images + len(self.buffer)})"
        if not isinstance(record, ImageFeatures):
            raise TypeError(f"{where} is a {type(record).__name__}, not ImageFeatures.")
        for name in ("patches", "cls", "attention"):
            value = getattr(record, name)
            if value is not None and value.dtype.kind not in "fiu":
                raise ValueError(f"{where}: {name} has non-numeric dtype {value.dtype}.")
        layout = self.layout or self._new_layout(record)
        if record.patches.shape[2] != layout["feature_dim"]:
            raise ValueError(
                f"{where} has patch features of dimension {record.patches.shape[2]}; "
                f"the store holds dimension {layout['feature_dim']}."
            )
        cls_dim = None if record.cls is None else record.cls.shape[0]
        if cls_dim != layout["cls_dim"]:
            raise ValueError(
                f"{where} has " + ("no CLS token" if cls_dim is None else
                                   f"a CLS token of dimension {cls_dim}")
                + "; the store holds " + ("none" if layout["cls_dim"] is None else
                                          f"CLS tokens of dimension {layout['cls_dim']}")
                + "."
            )
        if (record.attention is not None) != layout["has_attention"]:
            raise ValueError(
                f"{where} " + ("has" if record.attention is not None else "has no")
                + " CLS attention; the store holds " +
                ("attention for every image." if layout["has_attention"] else "none.")
            )
        return layout

    def add(self, record, key, number):
        layout = self._check(record, number)
        image_path, pixels = _image_reference(record.image, number)
        if key is not None and not isinstance(key, str):
            raise TypeError(f"content key of record {number} is a {type(key).__name__}, "
                            "not str.")
        dtype = np.dtype(layout["patch_dtype"])
        patches = np.ascontiguousarray(
            record.patches.reshape(-1, record.patches.shape[2]), dtype=dtype)
        cls = None if record.cls is None else np.ascontiguousarray(record.cls, dtype=dtype)
        attention = None if record.attention is None else \
            np.ascontiguousarray(record.attention.reshape(-1), dtype=dtype)
        if key is None:
            key = record.content_key or \
                _FEATURE_KEY + _feature_digest(patches, record.grid_shape)
        self.keys.add(key)
        self.n_accepted += 1
        self.layout = layout
        self.buffer.append(dict(
            patches=patches, cls=cls, attention=attention, pixels=pixels,
            grid=record.grid_shape, image_shape=record.image_shape,
            patch_size=record.patch_size or 0, key=key, path=image_path,
        ))
        self.buffered_bytes += patches.nbytes + (0 if pixels is None else pixels.nbytes)
        if self.buffered_bytes >= _BATCH_BYTES or len(self.buffer) >= _BATCH_IMAGES:
            self.flush()

    def _create_arrays(self):
        backing = self.backing
        for name, (row, chunk_rows, array_dtype) in _array_specs(self.layout).items():
            length = 1 if name in _OFFSETS else 0
            # Features are close to incompressible; plain chunks read at disk speed.
            array = backing.group.create_array(
                name, shape=(length, *row), chunks=(chunk_rows, *row), dtype=array_dtype,
                compressors=None,
                fill_value="" if array_dtype is str else 0, overwrite=True,
            )
            if name.endswith("offsets"):
                array[:] = np.zeros(1, np.int64)
            backing.arrays[name] = array
        backing.index["patch_offsets"] = np.zeros(1, np.int64)
        backing.index["pixel_offsets"] = np.zeros(1, np.int64)

    def flush(self):
        if not self.buffer:
            return
        backing = self.backing
        if backing.layout is None:
            self._create_arrays()
        batch, self.buffer, self.buffered_bytes = self.buffer, [], 0
        n0 = backing.n_images
        n1 = n0 + len(batch)
        row0 = int(backing.index["patch_offsets"][n0])
        byte0 = int(backing.index["pixel_offsets"][n0])
        patch_offsets = row0 + np.cumsum([len(r["patches"]) for r in batch])
        pixel_sizes = [0 if r["pixels"] is None else r["pixels"].nbytes for r in batch]
        pixel_offsets = byte0 + np.cumsum(pixel_sizes)
        data = {
            "patches": np.concatenate([r["patches"] for r in batch]),
            "patch_offsets": patch_offsets.astype(np.int64),
            "grid_shapes": np.array([r["grid"] for r in batch], np.int32),
            "image_shapes": np.array([r["image_shape"] for r in batch], np.int64),
            "patch_sizes": np.array([r["patch_size"] for r in batch], np.int32),
            "content_keys": np.array([r["key"] for r in batch], dtype=object),
            "image_paths": np.array([r["path"] or "" for r in batch], dtype=object),
            "pixel_offsets": pixel_offsets.astype(np.int64),
            "pixel_shapes": np.array([_pixel_shape(r["pixels"]) for r in batch], np.int64),
            "pixel_dtypes": np.array(
                ["" if r["pixels"] is None else r["pixels"].dtype.str for r in batch],
                dtype=object),
            "checksums": np.array([[
                _crc(r["patches"]),
                0 if r["cls"] is None else _crc(r["cls"]),
                0 if r["attention"] is None else _crc(r["attention"]),
                0 if r["pixels"] is None else _crc(r["pixels"].reshape(-1).view(np.uint8)),
            ] for r in batch], np.uint32),
        }
        if self.layout["cls_dim"] is not None:
            data["cls"] = np.stack([r["cls"] for r in batch])
        if self.layout["has_attention"]:
            data["attention"] = np.concatenate([r["attention"] for r in batch])
        if any(pixel_sizes):
            data["pixels"] = np.concatenate([
                r["pixels"].reshape(-1).view(np.uint8) for r in batch if r["pixels"] is not None
            ])
        starts = self._lengths(n0, row0, byte0)
        starts.update(patch_offsets=n0 + 1, pixel_offsets=n0 + 1)
        ends = self._lengths(n1, int(patch_offsets[-1]), int(pixel_offsets[-1]))
        # Data first, in any order; readers ignore it until the count moves.
        for name, array in backing.arrays.items():
            backing.refuse_linked_chunks(name, starts[name], ends[name])
            if array.shape[0] != ends[name]:
                array.resize((ends[name],) + array.shape[1:])
            if name in data and ends[name] > starts[name]:
                array[starts[name]:ends[name]] = data[name]
        meta = dict(backing.meta)
        meta.update(n_images=n1, layout=self.layout, index_crc={
            name: _index_crc(data[name], self.index_crc[name])
            for name in _OFFSETS + _PER_IMAGE
        })
        backing.group.attrs[_ATTRS_KEY] = meta  # the commit
        backing.n_images = n1
        backing.layout = self.layout
        self._append_index(data)

    @property
    def index_crc(self):
        """The committed running CRCs (of the leading zero only, for a new store)."""
        crcs = self.backing.meta.get("index_crc")
        if crcs is None:
            crcs = dict.fromkeys(_PER_IMAGE, 0)
            crcs.update({name: _index_crc(np.zeros(1, np.int64)) for name in _OFFSETS})
        return crcs

    def _append_index(self, data):
        backing = self.backing
        index = backing.index
        if backing.key_positions is not None:  # kept up to date: no rebuild per batch
            first = len(index.get("content_keys", ()))
            for position, key in enumerate(data["content_keys"].tolist(), first):
                backing.key_positions.setdefault(key, position)
        for name in _OFFSETS + _PER_IMAGE:
            previous = index.get(name)
            index[name] = data[name] if previous is None or not len(previous) else \
                np.concatenate([previous, data[name]])


def _array_specs(layout):
    """Each array of a store of this layout: ``(row shape, chunk rows, dtype)``."""
    d, dtype = layout["feature_dim"], layout["patch_dtype"]
    rows = max(1, _CHUNK_BYTES // (d * np.dtype(dtype).itemsize))
    specs = {
        "patches": ((d,), rows, dtype),
        "patch_offsets": ((), _PER_IMAGE_CHUNK, "int64"),
        "grid_shapes": ((2,), _PER_IMAGE_CHUNK, "int32"),
        "image_shapes": ((2,), _PER_IMAGE_CHUNK, "int64"),
        "patch_sizes": ((), _PER_IMAGE_CHUNK, "int32"),
        "content_keys": ((), _PER_IMAGE_CHUNK, str),
        "image_paths": ((), _PER_IMAGE_CHUNK, str),
        "pixels": ((), _CHUNK_BYTES, "uint8"),
        "pixel_offsets": ((), _PER_IMAGE_CHUNK, "int64"),
        "pixel_shapes": ((3,), _PER_IMAGE_CHUNK, "int64"),
        "pixel_dtypes": ((), _PER_IMAGE_CHUNK, str),
        "checksums": ((len(_FIELDS),), _PER_IMAGE_CHUNK, "uint32"),
    }
    if layout["cls_dim"] is not None:
        cls_dim = layout["cls_dim"]
        specs["cls"] = ((cls_dim,), max(1, _CHUNK_BYTES // (cls_dim * np.dtype(dtype).itemsize)),
                        dtype)
    if layout["has_attention"]:
        specs["attention"] = ((), rows * d, dtype)
    return specs


def _valid_meta(path, meta):
    """The group attributes, refused unless every value has its type and range:
    they size what is read, so they are checked before anything is allocated."""
    def damaged(what):
        return CorruptedStoreError(
            f"feature store {path!r}: its zarr.json is damaged ({what}); restore the "
            "store or extract its features again."
        )

    if not isinstance(meta, dict):
        raise damaged("no store attributes")
    n = meta.get("n_images")
    if type(n) is not int or n < 0:
        raise damaged(f"n_images is {n!r}")
    layout = meta.get("layout")
    if layout is None:
        if n:
            raise damaged(f"{n} images but no layout")
        return meta
    if not isinstance(layout, dict) or type(layout.get("feature_dim")) is not int \
            or not 0 < layout["feature_dim"] <= _MAX_WIDTH \
            or layout.get("patch_dtype") not in ("float16", "float32") \
            or not (layout.get("cls_dim") is None or type(layout["cls_dim"]) is int
                    and 0 < layout["cls_dim"] <= _MAX_WIDTH) \
            or type(layout.get("has_attention")) is not bool:
        raise damaged(f"layout {str(layout)[:200]}")
    crcs = meta.get("index_crc")
    if not isinstance(crcs, dict) or any(type(crcs.get(name)) is not int
                                         for name in _OFFSETS + _PER_IMAGE):
        raise damaged("its index checksums are missing or not numbers")
    return meta


# Prefix of the content keys the store makes from a record's features.
_FEATURE_KEY = "features-sha1:"


def _record_key(stored_key):
    """A stored key as the ``content_key`` of the record read back: None for
    a key made from the features, so such a record is keyed by its features
    as it was before it was stored."""
    return None if stored_key.startswith(_FEATURE_KEY) else stored_key


def _feature_digest(patches, grid):
    import hashlib

    digest = hashlib.sha1(f"{grid}{patches.dtype.str}".encode())
    digest.update(memoryview(patches).cast("B"))
    return digest.hexdigest()


def _pixel_shape(pixels):
    if pixels is None:
        return (0, 0, 0)
    return (pixels.shape[0], pixels.shape[1], pixels.shape[2] if pixels.ndim == 3 else 0)


def _image_reference(image, number):
    """``(absolute path, None)`` for a file, ``(None, pixels)`` for in-memory pixels."""
    if image is None:
        return None, None
    if isinstance(image, (str, os.PathLike)):
        return os.path.abspath(os.fspath(image)), None
    if hasattr(image, "getbands"):  # a PIL image
        from ._images import load_rgb

        pixels = np.asarray(image) if image.mode in _ARRAY_EXACT_PIL_MODES else load_rgb(image)
        return None, np.ascontiguousarray(pixels)
    if hasattr(image, "detach"):  # a torch tensor, (C, H, W) or (H, W, C)
        from ._images import _tensor_to_array

        image = _tensor_to_array(image, f"record {number}'s image")
    if isinstance(image, np.ndarray):
        if image.ndim not in (2, 3):
            raise ValueError(
                f"record {number}: its image is an array of shape {image.shape}; "
                "expected (H, W) or (H, W, channels)."
            )
        if image.dtype.hasobject:
            raise ValueError(f"record {number}: its image array has dtype object.")
        return None, np.ascontiguousarray(image)
    raise TypeError(
        f"record {number}: its image is a {type(image).__name__}; a store keeps a file "
        "path, a PIL image, a numpy array or a torch tensor."
    )
