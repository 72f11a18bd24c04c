"""Label masks that the workers of a fit write to disk, read back lazily.

With ``MultilevelSegmenter(labels_path=...)``, each task of the per-image
pass writes its chunk's object regions (as runs) and region descriptors into
a zarr group of its own, ``chunks/<start>`` below ``labels_path``, and a
second, light pass writes each region's class beside them: the process that
calls ``fit`` receives none of it, only counts and a bounded sample.
:class:`StoredLabelMasks` paints a mask from there when it is indexed.

The same group carries what the tasks of the fit need but the fitting
process should neither receive nor send in every task: the rows of the
category samples (``work-<fit>/``), which tasks on the workers merge and fit
the category 2-means on, and the fitted state that every task reads
(``shared-<fit>/``), which a task receives as a small :class:`Shared` reference;
both are deleted once the fit no longer needs them.

A task that is run again (its worker died) rewrites its own group whole, so
the result does not depend on which run of a task finished. The group is a
local folder, or an fsspec URL (``s3://...``) for workers that share no
filesystem: every object a task writes is its own, so no write needs to be
exclusive.
"""

import functools
import os
import pickle
import uuid
from collections.abc import Sequence

import numpy as np

from ._digest import bytes_digest
from ._indexing import positions
from ._regions import paint_runs
from ._store_location import Location

FORMAT = "skseg.labels"
VERSION = 2


class LabelStore:
    """The zarr group at ``path`` (a folder or an fsspec URL) that the tasks
    of one fit write to.

    Pickles as its path, storage options and the fit's id: every worker must
    reach the same storage there.
    """

    def __init__(self, path, fit, storage_options=None):
        self.location = Location(path, storage_options, kind="labels_path")
        self.fit = fit

    @property
    def path(self):
        return self.location.url

    def __getstate__(self):
        return {"path": self.path, "fit": self.fit,
                "storage_options": self.location.storage_options}

    def __setstate__(self, state):
        self.__init__(**state)

    def __eq__(self, other):
        return isinstance(other, LabelStore) and (self.path, self.fit) == (other.path, other.fit)

    def __hash__(self):
        return hash((self.path, self.fit))

    @classmethod
    def create(cls, path, storage_options=None):
        """An empty group at ``path`` for a new fit, replacing the masks an
        earlier fit wrote there; any other content is refused, not deleted."""
        import zarr

        location = Location(path, storage_options, kind="labels_path")
        if location.local and os.path.islink(location.path):
            raise ValueError(
                f"labels_path={location.url!r} is a symbolic link; give the folder it "
                f"points to ({os.path.realpath(location.path)!r}) or a new path."
            )
        with location.errors(""):
            fmt = FORMAT  # nothing there yet
            if location.local and os.path.exists(location.path) \
                    and not os.path.isdir(location.path) or location.list(""):
                try:
                    fmt = zarr.open_group(location.zarr_store(), mode="r").attrs.get("format")
                except (FileNotFoundError, NotADirectoryError, zarr.errors.GroupNotFoundError):
                    fmt = None
        if fmt != FORMAT:
            raise ValueError(
                f"labels_path={location.url!r} exists and does not hold the masks of an "
                "earlier fit; give a new path (it is emptied at every fit)."
            )
        with location.errors(""):
            root = zarr.open_group(location.zarr_store(), mode="w")
            fit = uuid.uuid4().hex
            root.attrs.update({"format": FORMAT, "version": VERSION, "fit": fit})
            # Made once here: else every task's first write would make it too.
            root.create_group("chunks")
        return cls(path, fit, storage_options)

    @functools.cached_property
    def _zarr_store(self):
        return self.location.zarr_store()

    def _group(self, path, mode="r"):
        import zarr

        return zarr.open_group(self._zarr_store, path=path, mode=mode)

    def _chunk(self, start, mode="r"):
        return self._group(f"chunks/{start}", mode)

    def write_regions(self, start, regions, descriptors, priorities, categories):
        """The regions of the images from ``start`` on, their descriptors
        (one array per image), the sampling priority of each region and
        each image's category."""
        runs = [r.runs() for r in regions]
        images = np.array([(*r.shape, r.n_regions, len(rows), category)
                           for r, (rows, *_), category
                           in zip(regions, runs, categories, strict=True)],
                          np.int64)
        group = self._chunk(start, mode="w")
        group.create_array("images", data=images.reshape(-1, 5))
        group.create_array("runs", data=np.concatenate(
            [np.stack(r, axis=1) for r in runs] + [np.zeros((0, 4), np.int64)]
        ).astype(np.int32))
        filled = [d for d in descriptors if len(d)]
        group.create_array("descriptors", data=np.concatenate(filled).astype(np.float32)
                           if filled else np.zeros((0, 1), np.float32))
        group.create_array("priorities", data=np.asarray(priorities, np.uint64))

    def categories(self, start):
        self._check_fit()
        return self._chunk(start)["images"][:, 4]

    def descriptors(self, start):
        return self._chunk(start)["descriptors"][:]

    def priorities(self, start):
        return self._chunk(start)["priorities"][:]

    # ------------------------------------------- what the tasks pass on
    # Under the fit's own id (``work-<fit>/``, ``shared-<fit>/``): a fit
    # started at the same path meanwhile never reads this one's, nor this
    # one its.
    def write_part(self, name, key, **arrays):
        """Arrays that a task leaves for the tasks of a later step, under
        ``work-<fit>/<name>/<key>`` (rewritten whole by a task run again)."""
        group = self._group(f"work-{self.fit}/{name}/{key}", mode="w")
        for array_name, values in arrays.items():
            group.create_array(array_name, data=values)

    def read_part(self, name, key):
        """What :meth:`write_part` left under ``name`` and ``key``, as a dict of
        arrays, or None if no task wrote it. Read by key, never by listing:
        object storage's listings can be cached, and stale."""
        import zarr

        try:
            group = self._group(f"work-{self.fit}/{name}/{key}")
        except (FileNotFoundError, zarr.errors.GroupNotFoundError):
            return None
        return {array_name: array[:] for array_name, array in group.arrays()}

    def remove(self, name):
        """Delete what this fit's tasks passed on (``"work"``) or read
        (``"shared"``), once the fit no longer needs it."""
        self.location.remove(f"{name}-{self.fit}")

    def share(self, value):
        """``value`` written once for every task of the fit to read: a
        :class:`Shared` reference to it, which pickles in well under a
        kilobyte whatever the value's size."""
        data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        digest = bytes_digest(data)
        key = f"shared-{self.fit}/{digest}"
        if not self.location.exists(key):
            # Whole or not at all (a renamed file, one PUT): a task never
            # reads a part-written one.
            if self.location.local:
                os.makedirs(self.location.full_path(f"shared-{self.fit}"), exist_ok=True)
            self.location.put(key, data)
        return Shared(self, digest, value)

    def write_classes(self, start, classes):
        group = self._chunk(start, mode="r+")
        group.create_array("classes", data=classes, overwrite=True)

    def _check_fit(self):
        """A later fit to the same path replaced these masks: say so, rather
        than read its chunks as this fit's."""
        if self._group("").attrs.get("fit") != self.fit:
            raise RuntimeError(
                f"the masks at {self.path!r} were replaced by a later fit to the same "
                "labels_path; fit again, or give each fit its own path."
            )

    def read(self, start):
        """Per image of the chunk at ``start``: (H, W), its runs and the class of
        each of its regions."""
        self._check_fit()
        group = self._chunk(start)
        images, runs, classes = (group[name][:] for name in ("images", "runs", "classes"))
        runs = runs.astype(np.int64)
        run_bounds = np.concatenate([[0], np.cumsum(images[:, 3])])
        region_bounds = np.concatenate([[0], np.cumsum(images[:, 2])])
        return [
            ((int(h), int(w)), runs[run_bounds[j]:run_bounds[j + 1]],
             classes[region_bounds[j]:region_bounds[j + 1]])
            for j, (h, w, *_) in enumerate(images)
        ]


class Shared:
    """A value that the tasks of a fit read from its labels group: in the
    process that made it, the value itself; pickled, the group and the
    value's digest, which each process resolves once (:func:`_load_shared`
    keeps the last few it read), so that the value is not sent with every
    task."""

    def __init__(self, store, digest, value=None):
        self.store = store
        self.digest = digest
        self._value = value

    def __getstate__(self):
        return {"store": self.store, "digest": self.digest, "_value": None}

    @property
    def value(self):
        if self._value is None:
            self._value = _load_shared(self.store, self.digest)
        return self._value


@functools.lru_cache(maxsize=8)
def _load_shared(store, digest):
    key = f"shared-{store.fit}/{digest}"
    data = store.location.read(key)
    # The digest came with the task from the fitting process, which wrote
    # these bytes: they are unpickled only if they are the very bytes it
    # pickled (as joblib would have sent them), never a file someone else made.
    if data is None or bytes_digest(data) != digest:
        raise RuntimeError(
            f"{store.location.full_path(key)!r} no longer holds the state that the fit "
            "wrote there; was its labels_path reused by another fit at the same time?"
        )
    return pickle.loads(data)


def shared(value, store):
    """``value`` as a pass's tasks get it: itself, or with a ``store`` (a fit
    with ``labels_path``) written there once and sent as a reference;
    :func:`value_of` undoes it."""
    return value if store is None else store.share(value)


def value_of(argument):
    """A pass argument's value, whether it came as itself or as :class:`Shared`."""
    return argument.value if isinstance(argument, Shared) else argument


def _chunk_start(starts, index):
    """The start of the chunk that holds image ``index`` of the fit."""
    return int(starts[np.searchsorted(starts, index, side="right") - 1])


class StoredLabelMasks(Sequence):
    """The label masks of a fit's images, read from its ``labels_path``.

    Same use as :class:`LabelMasks`: ``masks[i]`` is the ``(H, W)`` label
    array of image ``i``, painted when indexed; integer, slice and array
    indexing (a subset is another view of the same files);
    :meth:`region_map` and :meth:`save`. It pickles as the path and the
    chunk layout, so the files must stay where the fit wrote them; the
    masks of the last chunk read are kept, so reading them in order reads
    each chunk once.
    """

    def __init__(self, store, starts, n_images, dtype, indices=None):
        self._store = store
        self._starts = np.asarray(starts, np.int64)
        self._n_images = n_images
        self._dtype = np.dtype(dtype).type
        self._indices = indices
        self._cached = (None, None)

    def __len__(self):
        return self._n_images if self._indices is None else len(self._indices)

    def _image(self, index):
        """(H, W), runs and classes of image ``index`` of the fit."""
        if self._indices is not None:
            index = int(self._indices[index])
        start = _chunk_start(self._starts, index)
        if self._cached[0] != start:
            self._cached = (start, self._store.read(start))
        return self._cached[1][index - start]

    def __getitem__(self, key):
        indices = positions(key, len(self), "StoredLabelMasks")
        if isinstance(indices, int):
            shape, runs, classes = self._image(indices)
            return paint_runs(shape, *runs.T[:3], classes[runs[:, 3] - 1], self._dtype)
        if self._indices is not None:
            indices = self._indices[indices]
        return StoredLabelMasks(self._store, self._starts, self._n_images, self._dtype,
                                indices)

    def region_map(self, index):
        """The object regions of image ``index`` (as :meth:`LabelMasks.region_map`)."""
        shape, runs, _ = self._image(positions(index, len(self), "StoredLabelMasks"))
        return paint_runs(shape, *runs.T[:3], runs[:, 3], np.int32)

    def __repr__(self):
        return f"StoredLabelMasks(<{len(self)} images at {self._store.path!r}>)"

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_cached"] = (None, None)
        return state

    def save(self, folder, names=None, palette=None):
        """Write every mask as a palette PNG below ``folder``
        (:meth:`LabelMasks.save`)."""
        from ._io import save_masks

        return save_masks(self, folder, names=names, palette=palette)


class StoredCategories(Sequence):
    """The category of each image of a fit with ``labels_path``, read from
    there, so that the fitting process need not hold one per image:
    ``categories[i]`` reads the chunk of image ``i``, iterating reads one
    chunk at a time, and ``np.asarray(categories)`` (what a slice, an
    array of indices or a comparison also gives) reads them all."""

    def __init__(self, store, starts, n_images):
        self._store = store
        self._starts = np.asarray(starts, np.int64)
        self._n_images = n_images

    def __len__(self):
        return self._n_images

    def __getitem__(self, key):
        index = positions(key, len(self), "categories_")
        if not isinstance(index, int):
            return np.asarray(self)[index]
        start = _chunk_start(self._starts, index)
        return int(self._store.categories(start)[index - start])

    @property
    def shape(self):
        return (self._n_images,)

    def __iter__(self):
        for start in self._starts:
            yield from self._store.categories(int(start)).tolist()

    def __eq__(self, other):
        return np.asarray(self) == other

    def __ne__(self, other):
        return np.asarray(self) != other

    __hash__ = None  # compared elementwise, as an array

    def __array__(self, dtype=None, copy=None):
        # A new array either way; numpy casts it to ``dtype`` itself.
        return np.concatenate([self._store.categories(int(start)) for start in self._starts]
                              + [np.zeros(0, np.int64)])

    def __repr__(self):
        return f"StoredCategories(<{len(self)} images at {self._store.path!r}>)"


class SpilledRows:
    """Chunks of per-image arrays of rows (all of one width and dtype),
    written to a (temporary) binary file as they are appended and read back
    chunk by chunk: the region descriptors of a fit, which the fitting
    process would otherwise hold for every image until the classes are
    fitted."""

    def __init__(self, file):
        self._file = file
        self._chunks = []  # per chunk: rows per image, row shape, dtype

    def append(self, arrays):
        n_rows = np.array([len(a) for a in arrays], np.int32)
        filled = [a for a in arrays if len(a)]
        rows = np.ascontiguousarray(np.concatenate(filled)) if filled \
            else np.zeros((0,), np.float32)
        self._file.write(rows.data)
        self._chunks.append((n_rows, rows.shape[1:], rows.dtype))

    def __iter__(self):
        self._file.seek(0)
        for n_rows, shape, dtype in self._chunks:
            count = int(n_rows.sum())
            rows = np.frombuffer(self._file.read(count * int(np.prod(shape)) * dtype.itemsize),
                                 dtype).reshape(count, *shape)
            yield np.split(rows, np.cumsum(n_rows)[:-1])
