"""FeatureStore: an append-only sequence of ImageFeatures on zarr v3, on a
local disk or object storage, written by many processes at once without a
lock.

This is the public class: opening, views, lookup by content, and pickling.
Its layout and commits are in ``_store_format``, paths and URLs in
``_store_location``, the commits a reader sees in ``_store_snapshot``, the
rows they point at in ``_store_segments``, records read back in
``_store_records``, and appending in ``_store_writer``.
"""

import json
from collections.abc import Sequence

import numpy as np

from ._indexing import positions as _positions
from ._store_format import (
    CorruptedStoreError,
    pack,
    prepare,
    record_extraction,
    unpack,
)
from ._store_location import Location
from ._store_records import moved_paths, read_records, read_rows
from ._store_snapshot import Snapshot, pinned_snapshot
from ._store_writer import Writer

__all__ = ["CorruptedStoreError", "FeatureStore"]



class FeatureStore(Sequence):
    """A sequence of :class:`ImageFeatures` on disk or object storage, on zarr v3.

    Opens the store at ``location`` (a path or an fsspec URL such as
    ``s3://bucket/features.zarr``), creating it if absent. Records are appended
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

    Writers need no lock, on a local disk as on object storage: each append
    writes its images as a new segment, then publishes it by creating the
    next numbered commit exclusively (``link()`` locally and on NFS, a
    conditional PUT on S3); of two writers claiming one number, the second
    takes the next. A writer killed at any moment leaves a store that opens
    and holds every image committed before the kill, and nothing of the
    rest. An image appended twice (two writers racing on the same images, a
    retried task) is read once: the store is the sequence of its distinct
    content keys, each at its first commit. Every read is checked against
    per-image CRC-32 checksums, so damaged data raises a
    :class:`CorruptedStoreError` naming the image and the file, never
    returns wrong numbers.

    Parameters
    ----------
    location : str or path-like
        A directory (an existing store, an empty directory or a new path), or
        an fsspec URL (``s3://bucket/features.zarr``, ``file://``). Any fsspec
        URL can be read; writing needs atomic exclusive creation of objects,
        which skseg knows of on S3 (``skseg[s3]`` installs ``s3fs``); writing
        elsewhere is refused with an error that says so.
    extraction : dict, default=None
        The feature-changing parameters of the extraction that wrote (or will
        write) the store, as JSON-compatible values. An empty store records
        them; a store that recorded others is refused with both sets named.
        A store that recorded an extraction is extended only through a handle
        opened with the same one, so that no other records pass for its
        features.
    read_only : bool, default=False
        Open without write access; :meth:`extend` is then refused.
    storage_options : dict, default=None
        Passed to the fsspec filesystem of a URL (e.g. ``endpoint_url``,
        ``key``, ``secret``); credentials otherwise come from the environment
        and the filesystem's own configuration.

    Attributes
    ----------
    path : str
        Absolute path of a local store, or its URL.
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

    def __init__(self, location, *, extraction=None, read_only=False, storage_options=None):
        self._location = Location(location, storage_options, read_only)
        self.path = self._location.url
        self._positions = None  # None: every distinct stored image, in order
        self._images = None  # None, or per position: the file given now for that image
        self._requested = None if extraction is None else _jsonable(dict(extraction))
        self._store_id = prepare(self._location)
        self._snapshot = Snapshot(self._location)
        if self._requested is not None:
            record_extraction(self._location, self._snapshot, self._requested)

    # -- opening -----------------------------------------------------------

    @property
    def extraction(self):
        """dict or None: the recorded extraction parameters."""
        return self._snapshot.extraction

    def __reduce__(self):
        # A snapshot pins what the task sees. A view carries its positions;
        # the whole store carries its distinct images' positions, computed
        # here once rather than in every task.
        unique = pack(self._snapshot.unique_positions()) if self._positions is None else None
        return (_reopen, (self.path, self._location.storage_options, self._store_id,
                          self._snapshot.n_commits, unique, pack(self._positions),
                          self._images, self._requested))

    def __repr__(self):
        if self._positions is None:
            return f"FeatureStore({self.path!r}, <{len(self)} images>)"
        return (f"FeatureStore({self.path!r}, <view of {len(self)} of "
                f"{len(self._snapshot.unique_positions())} images>)")

    # -- sequence ------------------------------------------------------------

    def _stored_positions(self):
        if self._positions is None:
            return self._snapshot.unique_positions()
        return self._positions

    def __len__(self):
        return len(self._stored_positions())

    def _stored(self, positions):
        """Stored positions for positions of this (maybe view) sequence."""
        return self._stored_positions()[positions]

    def __getitem__(self, key):
        positions = _positions(key, len(self), "FeatureStore")
        if isinstance(positions, int):
            return self.records_of(positions, positions + 1)[0]
        return self._view(self._stored(positions), None if self._images is None else
                          tuple(self._images[p] for p in positions.tolist()))

    def _view(self, stored, images):
        view = object.__new__(FeatureStore)
        view._location, view.path = self._location, self.path
        view._snapshot, view._store_id = self._snapshot, self._store_id
        view._requested = self._requested
        view._positions = np.asarray(stored, dtype=np.int64)
        view._images = images
        return view

    # -- bulk reads --------------------------------------------------------------

    def _bulk(self, start, stop, name):
        """Array ``name`` of positions start:stop, read run by run of stored images."""
        start, stop, _ = slice(start, stop).indices(len(self))
        stored = self._stored(np.arange(start, max(start, stop), dtype=np.int64))
        data, offsets = read_rows(self._snapshot, name, stored)
        return data, offsets, stored

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
        patches, offsets, _ = self._bulk(start, stop, "patches")
        return patches, offsets

    def attention_of(self, start, stop):
        """CLS attention of images ``start:stop``, flattened like :meth:`patches_of`.

        Returns
        -------
        attention : ndarray of shape (n_patches,)
        offsets : ndarray of shape (n_images + 1,)
        """
        self._require_layout()
        if not self._snapshot.layout["has_attention"]:
            raise ValueError(f"feature store {self.path!r} holds no CLS attention.")
        attention, offsets, _ = self._bulk(start, stop, "attention")
        return attention, offsets

    def cls_of(self, start, stop):
        """CLS tokens of images ``start:stop`` as an ``(n_images, d_cls)`` array."""
        self._require_layout()
        if self._snapshot.layout["cls_dim"] is None:
            raise ValueError(f"feature store {self.path!r} holds no CLS tokens.")
        return self._bulk(start, stop, "cls")[0]

    def records_of(self, start, stop):
        """Images ``start:stop`` as :class:`ImageFeatures`, read in bulk.

        The same records as ``[store[i] for i in range(start, stop)]``, with
        each array read once for the whole range (the segmenter's passes
        read chunks this way).
        """
        start, stop, _ = slice(start, stop).indices(len(self))
        if stop <= start:
            return []
        stored = self._stored(np.arange(start, stop, dtype=np.int64))
        return read_records(self._snapshot, stored,
                            None if self._images is None else self._images[start:stop])

    def _require_layout(self):
        if self._snapshot.layout is None:
            raise ValueError(f"feature store {self.path!r} is empty.")

    def _column(self, name):
        return self._snapshot.column(name, self._stored_positions())

    @property
    def content_keys(self):
        """ndarray of object: one content key (a str) per image of this sequence."""
        return self._column("content_keys").copy()

    @property
    def grid_shapes(self):
        """ndarray of shape (n_images, 2): each image's patch grid ``(h, w)``."""
        return self._column("grid_shapes").astype(np.int64)

    @property
    def image_shapes(self):
        """ndarray of shape (n_images, 2): each original image's ``(H, W)``."""
        return self._column("image_shapes").astype(np.int64)

    # -- lookup by content ------------------------------------------------------

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
        _, stored, _ = self._snapshot.index()
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
        _, stored, _ = self._snapshot.index()
        positions = np.empty(len(content_keys), np.int64)
        for position, key in enumerate(content_keys):
            if key not in stored:
                raise KeyError(f"feature store {self.path!r} holds no image with content "
                               f"key {key!r} (position {position}).")
            positions[position] = stored[key]
        if images is not None:
            if len(images) != len(content_keys):
                raise ValueError(f"{len(images)} images for {len(content_keys)} content "
                                 "keys; give one image per key.")
            images = moved_paths(self._snapshot, positions, images)
        if images is None and self._positions is None and \
                np.array_equal(positions, self._snapshot.unique_positions()):
            return self
        return self._view(positions, images)

    # -- writing -------------------------------------------------------------

    def extend(self, records, content_keys=None):
        """Append records, streaming, committing every few thousand images.

        The iterable is consumed one record at a time and never held whole;
        a bounded batch (a sixteenth of scikit-learn's ``working_memory``, 64
        MiB by default) is written and committed at a time. If a record is
        refused, the records before it are stored and everything stored
        before stays intact.

        Parameters
        ----------
        records : iterable of ImageFeatures
            All with the store's feature dimension and dtype family, and with
            CLS and attention present exactly when the store's first record
            had them. Patches are stored in the store's dtype (float16 if its
            first record was float16, else float32).
        content_keys : iterable of str, default=None
            One key per record, in step with ``records`` (the transformer
            passes a digest of each image's content). A record whose key an
            earlier record of this call had, or that this handle has seen in
            the store (after :meth:`missing`, :meth:`select` or reading its
            keys), is skipped. A key that reaches the store twice all the
            same (two writers racing on the same images) is read once.
            Without keys every record is appended, under its own
            ``content_key`` or else a digest of its patch features.

        Returns
        -------
        n_appended : int
            The number of records stored by this call.

        Raises
        ------
        ValueError
            For a record that does not fit the store, naming it.
        TypeError
            For a record that is not :class:`ImageFeatures` of real numbers,
            or a content key that is not a str, naming it.
        """
        if self._positions is not None:
            raise TypeError("a view of a FeatureStore cannot be extended; extend the store.")
        self._location.refuse_read_only()
        snapshot = self._snapshot
        had_index = snapshot.has_index
        snapshot.refresh()  # another writer may have appended since we opened
        record_extraction(self._location, self._snapshot, self._requested)
        # The keys this handle has seen stored, brought up to date if it had them.
        stored = snapshot.index()[1] if had_index else {}
        return Writer(snapshot).append(records, content_keys, stored)


def _reopen(path, storage_options, store_id, n_commits, unique, positions, images,
            requested):
    store = object.__new__(FeatureStore)
    store._location = Location(path, storage_options, read_only=True)
    store.path = store._location.url
    store._store_id = prepare(store._location)
    if store._store_id != store_id:
        raise FileNotFoundError(
            f"feature store {store.path!r} is not the store this handle was made from: "
            "it was replaced since. Open the store where it is now."
        )
    snapshot = pinned_snapshot(store._location, store_id, n_commits)
    if unique is not None:
        snapshot.unique = unpack(unique)
    store._snapshot = snapshot
    store._positions, store._images = unpack(positions), images
    store._requested = requested
    return store


def _jsonable(params):
    return None if params is None else json.loads(json.dumps(params))

