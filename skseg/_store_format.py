"""The feature store's format and its reader.

A store is a folder or an object-storage prefix (any fsspec URL) holding::

    zarr.json                a zarr v3 group: the format name and version
    extraction.json          the extraction parameters, when recorded
    segments/<id>/<array>    one immutable zarr group per append: the arrays
                             of ``SEGMENT_ARRAYS`` for its images
    commits/<seq>.json       commit ``seq``: which segment, its first position,
                             and the per-image columns of ``IMAGE_COLUMNS``
    head.json                a hint: how many commits there were lately

Nothing is ever rewritten, so nothing needs a lock: a writer writes its
segment, then publishes it by creating the next commit object *exclusively*
(``link()`` on a local disk or NFS, a conditional PUT ``If-None-Match: *`` on
S3). Of two writers claiming the same number one wins, the other takes the
next. The commits are numbered densely, so a reader finds the last one by
probing forward from the hint, and a pickled store names its snapshot by its
commit count alone. A segment without a commit (a writer killed mid-append)
is never read.

Every record and every image's data is covered by a CRC-32: a commit's JSON
carries the CRC of its body and the CRC of each of its images' arrays, so a
damaged byte raises :class:`CorruptedStoreError` naming the image and file.
"""

import hashlib
import itertools
import json
import os
import random
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

FORMAT_NAME = "skseg-feature-store"
FORMAT_VERSION = 2
ATTRS_KEY = "skseg_feature_store"


@dataclass(frozen=True)
class SegmentArray:
    """One array of a segment: its rows are one per ``per`` (patch, image or
    pixel byte); its row width and dtype are read from the store's layout."""

    per: str
    width: str | None
    dtype: str
    present: str | None = None  # the layout entry that says whether it exists


# The layout, declared once: creating, writing, reading and verifying a
# segment all loop over these tables.
SEGMENT_ARRAYS = {
    "patches": SegmentArray(per="patch", width="feature_dim", dtype="patch_dtype"),
    "attention": SegmentArray(per="patch", width=None, dtype="patch_dtype",
                              present="has_attention"),
    "cls": SegmentArray(per="image", width="cls_dim", dtype="patch_dtype",
                        present="cls_dim"),
    "pixels": SegmentArray(per="byte", width=None, dtype="uint8"),
}
# Per-image columns of a commit: (kind, row shape). ``checksums`` holds the
# CRC-32 of each image's slice of every SEGMENT_ARRAYS entry, in table order.
IMAGE_COLUMNS = {
    "content_keys": ("str", ()),
    "image_paths": ("str", ()),
    "pixel_dtypes": ("str", ()),
    "grid_shapes": ("int", (2,)),
    "image_shapes": ("int", (2,)),
    "patch_sizes": ("int", ()),
    "pixel_shapes": ("int", (3,)),
    "checksums": ("int", (len(SEGMENT_ARRAYS),)),
}
LAYOUT_KEYS = ("feature_dim", "patch_dtype", "cls_dim", "has_attention")
# Prefix of the keys the store makes from a record's features when it was
# given none: such records are appended every time, never taken for one image.
FEATURE_KEY = "features-sha1:"

# A few MB per chunk: reading a range of images is a few big reads, and one
# image's read does not pull in much else.
CHUNK_BYTES = 2 << 20
# Bounds on what a store's metadata may ask to allocate, far above any real store.
MAX_WIDTH = 1 << 16
MAX_SEGMENT_IMAGES = 1 << 20
MAX_SIDE = 1 << 20
MAX_GRID_SIDE = 1 << 12
MAX_CHANNELS = 4
MAX_SEGMENT_BYTES = 1 << 34
# Segments read at once from object storage by one call.
READ_THREADS = 8


class CorruptedStoreError(OSError):
    """Stored data failed its checksum or could not be decoded."""


def crc(array):
    return zlib.crc32(memoryview(np.ascontiguousarray(array)).cast("B"))


def body_crc(body):
    return zlib.crc32(json.dumps(body, sort_keys=True).encode())


def array_shape(name, layout):
    """``(row shape, chunk rows, dtype)`` of segment array ``name``, or None
    when a store of this layout has no such array."""
    spec = SEGMENT_ARRAYS[name]
    if spec.present is not None and not layout[spec.present]:
        return None
    dtype = np.dtype(layout.get(spec.dtype, spec.dtype))
    row = () if spec.width is None else (int(layout[spec.width]),)
    chunk_rows = max(1, CHUNK_BYTES // (int(np.prod(row)) * dtype.itemsize))
    return row, chunk_rows, dtype


def commit_key(seq):
    return f"commits/{seq:012d}.json"


# Commits gathered into one checkpoint object: a reader of the whole index
# makes one read per checkpoint instead of one per commit.
CHECKPOINT_COMMITS = 256


def checkpoint_key(k):
    return f"checkpoints/{k:012d}.json"


# -- where a store lives --------------------------------------------------------


def _one_line(exc):
    return " ".join(str(exc).split()) or type(exc).__name__


class Location:
    """A store's folder or URL: small JSON objects written exclusively, and
    the zarr store its segments' arrays live in."""

    def __init__(self, url, storage_options=None, read_only=False):
        url = os.fspath(url)
        self.read_only = read_only
        self.storage_options = dict(storage_options or {})
        protocol = url.split("://", 1)[0] if "://" in url else "file"
        if protocol == "file":
            if self.storage_options:
                raise ValueError(f"storage_options are for URLs; {url!r} is a local path.")
            self.local = True
            self.path = os.path.abspath(url.split("://", 1)[-1])
            self.url = self.path
            self.fs = None
        else:
            self.local = False
            self.protocol = protocol
            self.url = url.rstrip("/")
            self.fs, self.path = _filesystem(self.url, self.storage_options)

    def __repr__(self):
        return repr(self.url)

    def _full(self, key):
        return os.path.join(self.path, *key.split("/")) if self.local else f"{self.path}/{key}"

    def read(self, key):
        """The bytes of object ``key``, or None if there is none."""
        with self.errors(key):
            try:
                if self.local:
                    refuse_link(self, self._full(key))
                    with open(self._full(key), "rb") as handle:
                        return handle.read()
                return self.fs.cat_file(self._full(key))
            except FileNotFoundError:
                return None

    def exists(self, key):
        with self.errors(key):
            if self.local:
                return os.path.isfile(self._full(key))
            return self.fs.exists(self._full(key))

    def create(self, key, data):
        """Create object ``key`` holding ``data``, whole or not at all, unless
        it exists; True if this call created it."""
        self.refuse_read_only()
        full = self._full(key)
        if not self.local and self.protocol not in ATOMIC_CREATE:
            raise OSError(
                f"feature store {self.url!r}: skseg writes a store only where an object "
                "can be created exclusively and atomically (a local disk, NFS, S3); "
                f"fsspec's {self.protocol!r} filesystem is not known to offer that, and "
                "writers there could lose each other's images. Write the store to one "
                "of those, or open this one with read_only=True."
            )
        with self.errors(key):
            if not self.local:
                self.check_conditional_writes()
                for attempt in range(_CONFLICT_RETRIES):
                    try:
                        self.fs.pipe_file(full, data, mode="create")
                        return True
                    except FileExistsError:
                        # A retried PUT whose first try succeeded answers 412
                        # too: ours if it holds our bytes (each is unique).
                        return self.fs.cat_file(full) == data
                    except OSError as exc:
                        # AWS answers overlapping conditional PUTs with 409
                        # ConditionalRequestConflict: "try again".
                        if "ConditionalRequestConflict" not in str(exc):
                            raise
                        time.sleep(0.05 * 2 ** attempt * (1 + random.random()))
                return self.fs.exists(full) and self.fs.cat_file(full) == data
            folder = os.path.dirname(full)
            if folder != self.path:  # the store's own folder may be a link
                refuse_link(self, folder)
            os.makedirs(folder, exist_ok=True)
            temporary = f"{full}.{os.getpid()}.{os.urandom(6).hex()}.partial"
            try:
                with open(temporary, "xb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.link(temporary, full)  # atomic, and fails if ``full`` exists
            except FileExistsError:
                # NFS may answer a retransmitted link that had succeeded with
                # EEXIST: ours if it holds our bytes (each is unique).
                return self.read(key) == data
            except OSError as exc:
                raise OSError(
                    f"feature store {self.url!r}: cannot create {key!r} exclusively "
                    f"({_one_line(exc)}); the store needs a filesystem with hard links "
                    "(a local disk or NFS), or S3."
                ) from exc
            finally:
                if os.path.lexists(temporary):
                    os.unlink(temporary)
            return True

    def check_conditional_writes(self):
        """Refuse a server that ignores ``If-None-Match`` (some S3-compatible
        ones do; s3fs itself vouches only for AWS): there, two writers would
        both "create" a commit and one's images would be silently lost. Tried
        once per location and process, on an object of its own."""
        verdict = _CONDITIONAL_WRITES.get(self.url)
        if verdict is None:
            probe = f"{self.path}/probes/{os.getpid()}-{os.urandom(8).hex()}"
            self.fs.pipe_file(probe, b"1", mode="create")
            try:
                self.fs.pipe_file(probe, b"2", mode="create")
                verdict = False
            except FileExistsError:
                verdict = True
            finally:
                try:
                    self.fs.rm_file(probe)
                except OSError:
                    pass
            _CONDITIONAL_WRITES[self.url] = verdict
        if not verdict:
            raise OSError(
                f"feature store {self.url!r}: its object storage ignores conditional "
                "writes (If-None-Match), so concurrent writers could silently lose each "
                "other's images; skseg writes stores only where they are honoured (AWS "
                "S3, a local disk, NFS). Open it with read_only=True to read."
            )

    def sync_folder(self, prefix):
        """Flush a local folder's files to disk (object storage has no cache
        to flush: an object is there once its PUT has answered)."""
        if not self.local:
            return
        for folder, _, files in os.walk(self._full(prefix)):
            for name in [*files, "."]:
                descriptor = os.open(os.path.join(folder, name), os.O_RDONLY)
                try:
                    os.fsync(descriptor)
                finally:
                    os.close(descriptor)

    def put(self, key, data):
        """Write object ``key``, replacing it (only for hints)."""
        self.refuse_read_only()
        with self.errors(key):
            if not self.local:
                self.fs.pipe_file(self._full(key), data)
                return
            full = self._full(key)
            refuse_link(self, full)
            temporary = f"{full}.{os.getpid()}.{os.urandom(6).hex()}.partial"
            with open(temporary, "xb") as handle:
                handle.write(data)
            os.replace(temporary, full)

    def list(self, prefix):
        """Names of the objects directly under ``prefix``."""
        with self.errors(prefix):
            if self.local:
                folder = self._full(prefix)
                return sorted(os.listdir(folder)) if os.path.isdir(folder) else []
            try:
                return sorted(p.rsplit("/", 1)[-1] for p in self.fs.ls(self._full(prefix),
                                                                      detail=False))
            except FileNotFoundError:
                return []

    def read_many(self, keys):
        """``{key: bytes or None}``, fetched concurrently from object storage."""
        if self.local or not keys:
            return {key: self.read(key) for key in keys}
        with self.errors(keys[0]):
            found = self.fs.cat([self._full(key) for key in keys], on_error="return")
        return {key: (None if isinstance(found[self._full(key)], Exception)
                      else found[self._full(key)]) for key in keys}

    def zarr_store(self):
        from zarr.storage import FsspecStore, LocalStore

        if self.local:
            return LocalStore(self.path, read_only=self.read_only)
        return FsspecStore.from_url(self.url, storage_options=self.storage_options,
                                    read_only=self.read_only)

    def refuse_read_only(self):
        if self.read_only:
            raise PermissionError(f"feature store {self.url!r} is open read-only.")

    def errors(self, key):
        return _TranslatedErrors(self, key)


class _TranslatedErrors:
    """Object-storage failures as one line that names the store: the bucket
    that is not there, credentials that are missing or refused."""

    def __init__(self, location, key):
        self.location, self.key = location, key

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, traceback):
        if exc is None or self.location.local or isinstance(exc, CorruptedStoreError):
            return False
        url = self.location.url
        name = type(exc).__name__
        if name in ("NoCredentialsError", "PartialCredentialsError", "NoAuthTokenError") \
                or "credential" in str(exc).lower() and not isinstance(exc, FileNotFoundError):
            raise PermissionError(
                f"feature store {url!r}: no credentials for its object storage "
                f"({_one_line(exc)}); set them in the environment (e.g. AWS_ACCESS_KEY_ID "
                "and AWS_SECRET_ACCESS_KEY) or pass storage_options."
            ) from None
        if isinstance(exc, PermissionError):
            raise PermissionError(
                f"feature store {url!r}: access denied to {self.key!r} "
                f"({_one_line(exc)}); the credentials in use may not read or write there."
            ) from None
        if isinstance(exc, FileNotFoundError):
            bucket = self.location.path.split("/", 1)[0]
            raise FileNotFoundError(
                f"feature store {url!r}: its bucket or container {bucket!r} does not "
                f"exist ({_one_line(exc)}); create it first."
            ) from None
        if isinstance(exc, (OSError, ValueError)) and not isinstance(exc, FileExistsError):
            raise OSError(
                f"feature store {url!r}: object storage failed on {self.key!r}: "
                f"{_one_line(exc)}"
            ) from exc
        return False


# fsspec filesystems whose pipe_file(mode="create") is one atomic request
# (s3fs sends a conditional PUT, If-None-Match: *); fsspec's generic
# fallback checks then writes, which two writers can both pass.
ATOMIC_CREATE = {"s3", "s3a"}
# Per location, whether its server honours conditional writes (see
# Location.check_conditional_writes), and how often a 409 is retried.
_CONDITIONAL_WRITES = {}
_CONFLICT_RETRIES = 6
_EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "az": "azure",
           "abfs": "azure", "abfss": "azure"}


def _filesystem(url, storage_options):
    from fsspec.core import url_to_fs

    try:
        return url_to_fs(url, **storage_options)
    except ImportError as exc:
        protocol = url.split("://", 1)[0]
        extra = _EXTRAS.get(protocol)
        hint = (f"pip install 'skseg[{extra}]'" if extra else
                "install the fsspec filesystem package for it")
        raise ImportError(
            f"feature store {url!r} needs a filesystem package for {protocol!r} that is "
            f"not installed ({_one_line(exc)}): {hint}."
        ) from None
    except ValueError as exc:
        raise ValueError(f"feature store {url!r}: {_one_line(exc)}") from None


def refuse_link(location, path):
    """Refuse a symbolic link inside a local store: writes through it would
    land outside the store."""
    if location.local and os.path.islink(path):
        raise CorruptedStoreError(
            f"feature store {location.url!r}: {path} is a symbolic link; a store holds "
            "none (writes through it would land outside the store). Remove it, or "
            "extract the features into a new store."
        )


def group_metadata():
    return json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {ATTRS_KEY: {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION,
        # Names this store, not another made later at the same place, in pickles.
        "store_id": os.urandom(16).hex()}}}).encode()


def check_format(location, data):
    """The store's id, once its zarr.json is checked to be a store of this format."""
    try:
        meta = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ValueError(
            f"{location.url!r} is not a readable feature store: its zarr.json cannot be "
            f"parsed ({exc})."
        ) from exc
    attributes = meta.get("attributes") if isinstance(meta, dict) else None
    info = attributes.get(ATTRS_KEY) if isinstance(attributes, dict) else None
    if not isinstance(info, dict) or meta.get("zarr_format") != 3 \
            or info.get("format") != FORMAT_NAME:
        raise ValueError(f"{location.url!r} is a zarr store but not a skseg feature store.")
    if info.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{location.url!r} is a skseg feature store of format version "
            f"{info.get('format_version')!r}; this skseg reads version "
            f"{FORMAT_VERSION}. Extract the features again into a new store."
        )
    return info.get("store_id")


# -- commits --------------------------------------------------------------------


class Commit:
    """One published segment: its images' columns and where their rows lie."""

    def __init__(self, seq, body):
        self.seq = seq
        self.segment = body["segment"]
        self.first = body["first"]
        self.layout = body["layout"]
        self.extraction = body["extraction"]
        self.columns = {}
        for name, (kind, row) in IMAGE_COLUMNS.items():
            values = body["images"][name]
            self.columns[name] = (np.array(values, dtype=object) if kind == "str"
                                  else np.array(values, dtype=np.int64).reshape(-1, *row))
        self.n_images = len(self.columns["content_keys"])
        grids = self.columns["grid_shapes"]
        shapes = self.columns["pixel_shapes"]
        itemsizes = [np.dtype(d).itemsize if d else 0 for d in self.columns["pixel_dtypes"]]
        self.offsets = {
            "patch": _cumulative(grids[:, 0] * grids[:, 1]),
            "image": np.arange(self.n_images + 1, dtype=np.int64),
            "byte": _cumulative(shapes[:, 0] * shapes[:, 1] * np.maximum(shapes[:, 2], 1)
                                * np.array(itemsizes, np.int64)),
        }

    @property
    def stop(self):
        return self.first + self.n_images


def _cumulative(sizes):
    return np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)


def parse_commit(location, seq, data, where=None):
    """Commit ``seq`` from its bytes (or its parsed record), refused unless
    every value has its type and range: they size what is read, so they are
    checked first."""
    where = f"{location.url}/{where or commit_key(seq)}"

    def damaged(what):
        return CorruptedStoreError(
            f"feature store {location.url!r}: commit {seq} is damaged ({what}; {where}); "
            "restore the store or extract its features again."
        )

    try:
        record = json.loads(data) if isinstance(data, bytes) else data
    except (ValueError, RecursionError) as exc:
        raise damaged(f"unparsable: {exc}") from None
    body = record.get("body") if isinstance(record, dict) else None
    if not isinstance(body, dict) or record.get("crc") != body_crc(body):
        raise damaged("it fails its checksum")
    # Written by a writer that checked these; a checksummed body is trusted
    # as to types, its sizes are bounded all the same.
    images = body.get("images")
    keys = images.get("content_keys") if isinstance(images, dict) else None
    if not isinstance(keys, list) or not 0 < len(keys) <= MAX_SEGMENT_IMAGES:
        raise damaged("no images")
    layout = body.get("layout")
    if not isinstance(layout, dict) or sorted(layout) != sorted(LAYOUT_KEYS) \
            or not 0 < layout["feature_dim"] <= MAX_WIDTH \
            or layout["patch_dtype"] not in ("float16", "float32") \
            or not (layout["cls_dim"] is None or 0 < layout["cls_dim"] <= MAX_WIDTH):
        raise damaged(f"layout {str(layout)[:200]}")
    try:
        commit = Commit(seq, body)
    except (KeyError, TypeError, ValueError) as exc:
        raise damaged(f"{type(exc).__name__}: {exc}") from None
    for name, (kind, row) in IMAGE_COLUMNS.items():
        values = commit.columns[name]
        if len(values) != commit.n_images or kind == "int" and (
                values.size and (values.min() < 0 or values.max() >= 1 << 32)):
            raise damaged(f"column {name}")
    grids, pixels = commit.columns["grid_shapes"], commit.columns["pixel_shapes"]
    if np.any(grids < 1) or np.any(grids > MAX_GRID_SIDE) \
            or np.any(pixels[:, :2] > MAX_SIDE) or np.any(pixels[:, 2] > MAX_CHANNELS) \
            or commit.offsets["byte"][-1] > MAX_SEGMENT_BYTES:
        raise damaged("grid or image shapes")
    if type(commit.first) is not int or commit.first < 0 \
            or not (isinstance(commit.segment, str) and len(commit.segment) == 32
                    and all(c in "0123456789abcdef" for c in commit.segment)):
        raise damaged("its first position or segment name")
    return commit


# -- reading ----------------------------------------------------------------------


class Snapshot:
    """A store as it was when opened: its first ``n_commits`` commits.

    Commits are read as they are needed (a task that reads 100 images reads
    the few commits that hold them, found by bisection on their first
    positions); the per-image index of the whole store only when asked for.
    """

    def __init__(self, location, n_commits=None):
        self.location = location
        self.zarr = location.zarr_store()
        self.commits = {}
        self.probed = {}  # commits' bytes read while probing, not yet parsed
        self.arrays = {}
        self.lock = threading.Lock()  # the reads of one call run in threads
        self.chunk_cache = {}
        self._index = None
        self.unique = None  # the distinct images' positions, when known
        self.recorded, self.extraction = self._read_extraction()
        self.n_commits = self.find_head() if n_commits is None else int(n_commits)
        self.layout = self.commit(0).layout if self.n_commits else None

    def _read_extraction(self):
        """``(recorded, extraction)``: whether extraction.json exists, and the
        parameters it records (None for records appended by hand). It is
        created once, exclusively, before the first commit, so every writer
        is checked against the same one."""
        data = self.location.read("extraction.json")
        if data is None:
            return False, None
        try:
            record = json.loads(data)
            extraction = record["extraction"]
            if not (extraction is None or isinstance(extraction, dict)):
                raise TypeError(f"a {type(extraction).__name__}")
        except (ValueError, RecursionError, TypeError, KeyError) as exc:
            raise CorruptedStoreError(
                f"feature store {self.location.url!r}: its extraction.json is damaged "
                f"({_one_line(exc)}); restore the store or extract its features again."
            ) from None
        return True, extraction

    def find_head(self, known=0):
        """The number of commits: probed forward from the hint (or ``known``)."""
        n = known
        hint = self.location.read("head.json")
        try:
            hinted = int(json.loads(hint)["commits"]) if hint else 0
        except (ValueError, KeyError, TypeError, RecursionError, OverflowError):
            hinted = 0
        # Probed by reading, not asking whether they exist: one request
        # each, and the last one is needed anyway.
        if hinted > n:
            if self._probe(hinted - 1):
                n = hinted
            else:  # a hint ahead of the commits: damaged; count them
                n = len([name for name in self.location.list("commits")
                         if name.endswith(".json")])
        while self._probe(n):
            n += 1
        return n

    def _probe(self, seq):
        """Whether commit ``seq`` exists; its bytes are kept for :meth:`commit`."""
        if seq in self.commits or seq in self.probed:
            return True
        data = self.location.read(commit_key(seq))
        if data is not None:
            self.probed[seq] = data
        return data is not None

    def refresh(self):
        """Catch up with commits made since; cheap when there were none."""
        n = self.find_head(self.n_commits)
        if n != self.n_commits:
            self.n_commits = n
            self._index = self.unique = None
            if self.layout is None:
                self.layout = self.commit(0).layout
        if not self.recorded:
            self.recorded, self.extraction = self._read_extraction()

    @property
    def n_stored(self):
        """Images over all commits, duplicates included."""
        return self.commit(self.n_commits - 1).stop if self.n_commits else 0

    def commit(self, seq):
        commit = self.commits.get(seq)
        if commit is None:
            data = self.probed.pop(seq, None) or self.location.read(commit_key(seq))
            if data is None:
                self.refuse_if_gone()
                raise CorruptedStoreError(
                    f"feature store {self.location.url!r}: commit {seq} of "
                    f"{self.n_commits} is missing ({commit_key(seq)}); the store is "
                    "damaged, restore it or extract its features again."
                )
            commit = self.accept(parse_commit(self.location, seq, data))
        return commit

    def accept(self, commit):
        """Keep a parsed commit, refused if it does not belong to this store."""
        if commit.seq and commit.layout != self.layout:
            raise CorruptedStoreError(
                f"feature store {self.location.url!r}: commit {commit.seq} has the layout "
                f"{commit.layout}, the store {self.layout}; it is damaged."
            )
        if commit.extraction != extraction_digest(self.extraction):
            raise CorruptedStoreError(
                f"feature store {self.location.url!r}: commit {commit.seq} was written "
                "without the store's recorded extraction (two writers with different "
                "extraction parameters met); extract its features into a new store."
            )
        # Checked against its neighbours when they are at hand: reading one
        # commit never reads all those before it.
        before, after = self.commits.get(commit.seq - 1), self.commits.get(commit.seq + 1)
        if (commit.seq == 0 and commit.first != 0) \
                or before is not None and commit.first != before.stop \
                or after is not None and after.first != commit.stop:
            raise CorruptedStoreError(
                f"feature store {self.location.url!r}: commit {commit.seq} starts at "
                f"image {commit.first}, which does not continue its neighbours; it is "
                "damaged."
            )
        self.commits[commit.seq] = commit
        return commit

    def commit_at(self, position):
        """The commit holding stored image ``position``, found by bisection."""
        low, high = 0, self.n_commits
        while high - low > 1:
            middle = (low + high) // 2
            if self.commit(middle).first <= position:
                low = middle
            else:
                high = middle
        return self.commit(low)

    def pieces(self, start, stop):
        """``(commit, k0, k1)`` covering stored images [start, stop)."""
        pieces = []
        while start < stop:
            commit = self.commit_at(start)
            if not commit.first <= start < commit.stop:
                raise CorruptedStoreError(
                    f"feature store {self.location.url!r} holds no image {start} (its "
                    f"{self.n_commits} commits end at {self.n_stored}): the store was "
                    "replaced or damaged since this handle was made."
                )
            end = min(stop, commit.stop)
            pieces.append((commit, start - commit.first, end - commit.first))
            start = end
        return pieces

    # -- the whole index ---------------------------------------------------------

    def index(self):
        """Every commit's columns over the whole store, the first position
        of each content key, and the distinct images' positions (None when
        all are): a content key stored twice is read once."""
        if self._index is None:
            self._read_all_commits()
            commits = [self.commit(seq) for seq in range(self.n_commits)]
            columns = {name: (np.concatenate([c.columns[name] for c in commits])
                              if commits else _empty_column(name))
                       for name in IMAGE_COLUMNS}
            first, repeated = {}, []
            for position, key in enumerate(columns["content_keys"].tolist()):
                if first.setdefault(key, position) != position \
                        and not key.startswith(FEATURE_KEY):
                    repeated.append(position)
            unique = None  # no duplicates: every stored image, in order
            if repeated:
                unique = np.setdiff1d(np.arange(len(columns["content_keys"])), repeated)
            self._index = columns, first, unique
        return self._index

    def _read_all_commits(self):
        """Every commit, through checkpoints where they exist; a writable
        reader makes the checkpoints that are missing, for the next one."""
        size = CHECKPOINT_COMMITS
        n_full = self.n_commits // size
        wanted = [k for k in range(n_full)
                  if any(seq not in self.commits for seq in range(k * size, (k + 1) * size))]
        found = self.location.read_many([checkpoint_key(k) for k in wanted])
        for k in wanted:
            data = found[checkpoint_key(k)]
            try:
                records = json.loads(data)["commits"] if data is not None else None
            except (ValueError, RecursionError, TypeError, KeyError):
                records = None  # damaged: the commits themselves are the truth
            if not isinstance(records, list) or len(records) != size:
                continue
            try:
                parsed = [parse_commit(self.location, k * size + offset, record,
                                       checkpoint_key(k))
                          for offset, record in enumerate(records)]
            except CorruptedStoreError:
                continue  # a damaged checkpoint: the commits themselves are the truth
            known = [self.commits.get(c.seq) for c in parsed]
            if any(a.stop != b.first for a, b in itertools.pairwise(parsed)) or any(
                    c is not None and (c.first, c.segment) != (p.first, p.segment)
                    for c, p in zip(known, parsed)):
                continue  # records out of place: the commits are the truth
            for commit in parsed:
                if commit.seq not in self.commits:
                    self.accept(commit)
        missing = [seq for seq in range(self.n_commits) if seq not in self.commits]
        fetched = self.location.read_many([commit_key(seq) for seq in missing])
        for seq in missing:  # in order: each is checked against the one before
            data = fetched[commit_key(seq)]
            if data is None:
                self.commit(seq)  # raises, naming it
            self.accept(parse_commit(self.location, seq, data))
        if self.location.read_only:
            return
        for k in sorted({seq // size for seq in missing if seq < n_full * size}):
            self.write_checkpoint(k, fetched)

    def write_checkpoint(self, k, fetched=None):
        """Gather commits of checkpoint ``k`` into one object, if this
        location can be written: a reader's service to the next, never a
        reason for a read to fail."""
        keys = [commit_key(seq) for seq in range(k * CHECKPOINT_COMMITS,
                                                 (k + 1) * CHECKPOINT_COMMITS)]
        try:
            records = [json.loads((fetched or {}).get(key) or self.location.read(key))
                       for key in keys]
            self.location.create(checkpoint_key(k), json.dumps({"commits": records}).encode())
        except (OSError, ValueError, TypeError):
            pass

    def unique_positions(self):
        if self.unique is None:
            columns, _, unique = self.index()
            self.unique = np.arange(len(columns["content_keys"]), dtype=np.int64) \
                if unique is None else unique
        return self.unique

    def column(self, name, positions):
        """Column ``name`` at stored positions, from the whole index when it
        is loaded, else from the commits holding them."""
        if self._index is not None:
            return self._index[0][name][positions]
        parts = []
        for a, b in runs(positions):
            for commit, k0, k1 in self.pieces(a, b):
                parts.append(commit.columns[name][k0:k1])
        return np.concatenate(parts) if parts else _empty_column(name)

    # -- data ----------------------------------------------------------------------

    def read(self, name, start, stop):
        """Rows of segment array ``name`` for stored images [start, stop),
        each image verified, and the images' row offsets in the block."""
        def piece(commit, k0, k1):
            offsets = commit.offsets[SEGMENT_ARRAYS[name].per]
            first, last = commit.first + k0, commit.first + k1 - 1
            where = f"image {first}" if first == last else f"images {first}..{last}"
            block = self._rows(commit, name, int(offsets[k0]), int(offsets[k1]), where)
            bounds = offsets[k0:k1 + 1] - offsets[k0]
            self._verify(commit, name, block, k0, bounds)
            return block, np.diff(bounds)

        pieces = self.pieces(start, stop)
        if self.location.local or len(pieces) < 2:
            parts = [piece(*p) for p in pieces]
        else:  # object storage answers in tens of milliseconds: overlap the segments
            with ThreadPoolExecutor(min(len(pieces), READ_THREADS)) as pool:
                parts = list(pool.map(lambda p: piece(*p), pieces))
        blocks = [block for block, _ in parts]
        sizes = [size for _, size in parts]
        row, _, dtype = array_shape(name, self.layout)
        block = (np.concatenate(blocks) if len(blocks) > 1 else blocks[0]) if blocks \
            else np.zeros((0, *row), dtype)
        offsets = _cumulative(np.concatenate(sizes) if sizes else np.zeros(0, np.int64))
        return block, offsets

    def _array(self, commit, name, where):
        import zarr

        with self.lock:
            found = self.arrays.get((commit.seq, name))
        if found is not None:
            return found
        row, chunk_rows, dtype = array_shape(name, self.layout)
        length = int(commit.offsets[SEGMENT_ARRAYS[name].per][-1])
        path = f"segments/{commit.segment}/{name}"
        if self.location.local:
            for part in ("segments", f"segments/{commit.segment}", path, f"{path}/c"):
                refuse_link(self.location, self.location._full(part))
        try:
            array = zarr.open_array(self.zarr, path=path, mode="r", zarr_format=3)
        except Exception as exc:  # missing, or metadata zarr cannot parse
            self.refuse_if_gone()
            raise self._damaged(commit, name, f"unreadable: {_one_line(exc)}", where) from None
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

    def _rows(self, commit, name, low, high, where):
        """Rows low:high of a segment array. A read within one or two chunks
        reads those chunks whole and keeps them, so that reading a store
        image by image reads each chunk once, not once per image."""
        if high <= low:
            row, _, dtype = array_shape(name, self.layout)
            return np.zeros((0, *row), dtype)
        array = self._array(commit, name, where)
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
            self.refuse_if_gone()
            raise self._damaged(commit, name, _one_line(exc), where) from None
        return cached[3][low - cached[1]:high - cached[1]].copy()

    def _verify(self, commit, name, block, k0, bounds):
        """Image k0 + k of ``commit`` is block[bounds[k]:bounds[k + 1]]."""
        expected = commit.columns["checksums"][k0:k0 + len(bounds) - 1,
                                               list(SEGMENT_ARRAYS).index(name)]
        for k in range(len(bounds) - 1):
            if crc(block[bounds[k]:bounds[k + 1]]) != expected[k]:
                self.refuse_if_gone()  # missing chunks read as zeros
                raise CorruptedStoreError(
                    f"feature store {self.location.url!r}: the {name} of image "
                    f"{commit.first + k0 + k} fail their checksum (in "
                    f"segments/{commit.segment}/{name}); the store is damaged, restore "
                    "it or extract its features again."
                )

    def refuse_if_gone(self):
        """A store moved or deleted under an open handle is not a damaged one."""
        if not self.location.exists("zarr.json"):
            raise FileNotFoundError(
                f"feature store {self.location.url!r} is no longer there: it was moved "
                "or deleted while open. Open it again where it is now."
            )


def _empty_column(name):
    kind, row = IMAGE_COLUMNS[name]
    return np.zeros(0, object) if kind == "str" else np.zeros((0, *row), np.int64)


def extraction_digest(extraction):
    if extraction is None:
        return None
    return hashlib.sha1(json.dumps(extraction, sort_keys=True).encode()).hexdigest()


def runs(indices):
    """Split indices into (start, stop) runs of consecutive values."""
    indices = np.asarray(indices, dtype=np.int64)
    if indices.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(indices) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [indices.size]])
    return [(int(indices[a]), int(indices[b - 1]) + 1) for a, b in zip(starts, stops)]


def pack(positions):
    """Positions as runs when that is smaller, for pickling views."""
    if positions is None:
        return None
    pieces = runs(positions)
    if 2 * len(pieces) < len(positions):
        return ("runs", np.array(pieces, dtype=np.int64).reshape(-1, 2))
    return positions


def unpack(packed):
    if packed is None or isinstance(packed, np.ndarray):
        return packed
    _, pieces = packed
    return np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in pieces]) \
        if len(pieces) else np.zeros(0, np.int64)

