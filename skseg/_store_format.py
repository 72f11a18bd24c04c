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

import json
import os
import zlib
from dataclasses import dataclass

import numpy as np

from ._digest import json_digest

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


# -- opening a store -------------------------------------------------------------


def prepare(location):
    """Create an empty store at ``location`` if absent; refuse what is not a store."""
    if location.local and os.path.isfile(location.path):
        raise ValueError(f"{location.path!r} is a file, not a feature store.")
    data = location.read("zarr.json")
    if data is None:
        if location.read_only:
            raise FileNotFoundError(f"no feature store at {location.url!r}.")
        if location.read("zarr.json") is None:  # not made by another process meanwhile
            refuse_foreign_files(location)
        # Exclusive: a store created by another process meanwhile is kept.
        location.create("zarr.json", group_metadata())
        data = location.read("zarr.json")
    return check_format(location, data)


def refuse_foreign_files(location):
    # A store being created by another process has only its zarr.json's
    # temporary file so far.
    names = location.list("") if not location.local else \
        os.listdir(location.path) if os.path.isdir(location.path) else []
    # Another process's store may appear between the listing and now.
    # A writer checks the server's conditional writes (probes/) before it
    # creates zarr.json.
    if any(not name.endswith(".partial") and name != "probes" for name in names) \
            and location.read("zarr.json") is None:
        raise ValueError(
            f"{location.url!r} is not a feature store (it has no zarr.json) and is not "
            "empty; give a new path or an existing store."
        )


def _describe_difference(recorded, requested):
    keys = sorted(set(recorded) | set(requested))
    differ = [k for k in keys if recorded.get(k) != requested.get(k)]
    return "; ".join(
        f"{k}: store {recorded.get(k)!r}, requested {requested.get(k)!r}" for k in differ
    )


def check_extraction(path, snapshot, requested):
    """Refuse a store whose recorded extraction is not ``requested`` (a
    handle's, None for records appended by hand)."""
    recorded = snapshot.extraction
    if not snapshot.recorded:
        if snapshot.n_commits:
            raise CorruptedStoreError(
                f"feature store {path!r} holds images but its extraction.json "
                "is missing; restore the store or extract its features again."
            )
        return
    if requested is None:
        if recorded is not None:
            raise ValueError(
                f"feature store {path!r} holds the features of the extraction "
                f"{recorded}; records appended without it would pass for its "
                "features. Open it with FeatureStore(path, extraction=...) to "
                "append, or use another store path."
            )
        return
    if recorded is None:
        raise ValueError(
            f"feature store {path!r} holds images of unrecorded extraction "
            "parameters (appended by hand); it cannot be used with extraction "
            f"parameters {requested}."
        )
    if recorded != requested:
        raise ValueError(
            f"feature store {path!r} was written with other feature-changing "
            f"parameters ({_describe_difference(recorded, requested)}). Recorded: "
            f"{recorded}; requested: {requested}. Use another store path."
        )


def record_extraction(location, snapshot, requested):
    """Record ``requested`` (a handle's extraction, None for records
    appended by hand) if the store has none yet, then check it against the
    recorded one. Done at opening with an extraction and before every
    append, so no commit is ever made under another extraction than the
    store's."""
    if not snapshot.recorded and not location.read_only:
        # Exclusive: of two writers recording theirs at once, one wins
        # and the other is checked against it below.
        location.create("extraction.json", json.dumps(
            {"extraction": requested}, sort_keys=True).encode())
        snapshot.recorded, snapshot.extraction = snapshot.read_extraction()
    check_extraction(location.url, snapshot, requested)


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
            "patch": cumulative(grids[:, 0] * grids[:, 1]),
            "image": np.arange(self.n_images + 1, dtype=np.int64),
            "byte": cumulative(shapes[:, 0] * shapes[:, 1] * np.maximum(shapes[:, 2], 1)
                                * np.array(itemsizes, np.int64)),
        }

    @property
    def stop(self):
        return self.first + self.n_images


def cumulative(sizes):
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

def extraction_digest(extraction):
    if extraction is None:
        return None
    return json_digest(extraction)


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
