"""Appending to a feature store: a segment written whole, then one commit.

The only step that can meet another writer is the commit: it claims the next
number by an exclusive create, and on losing that race takes the number after.
A writer killed before its commit leaves a segment no commit names: invisible,
and never read.
"""

import json
import os
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import _store_format
from ._digest import array_digest
from ._features import check_features
from ._store_format import (
    FEATURE_KEY,
    IMAGE_COLUMNS,
    MAX_SEGMENT_BYTES,
    SEGMENT_ARRAYS,
    Commit,
    array_shape,
    body_crc,
    commit_key,
    crc,
    extraction_digest,
)
from ._store_location import refuse_link
from ._working_memory import STORE_BATCH, budget

# Records buffered by extend() before one segment is written: as many bytes
# as a share of the working memory allows, and at most this many images
# (each has a line in the commit's JSON).
BATCH_IMAGES = 4096
_END = object()
# PIL modes whose array np.asarray gives loads exactly as the PIL image does.
_ARRAY_EXACT_PIL_MODES = ("L", "RGB", "RGBA")


class Writer:
    """Validates records, buffers a bounded batch, and commits it."""

    def __init__(self, snapshot):
        self.snapshot = snapshot
        self.layout = snapshot.layout
        self.buffer = []
        self.buffered_bytes = 0
        self.keys = set()  # of every record accepted by this writer
        self.n_accepted = 0
        self.n_committed = 0
        # Capped well below what a reader accepts of one segment.
        self.batch_bytes = min(budget(STORE_BATCH), MAX_SEGMENT_BYTES // 16)

    def _check(self, record, number):
        where = f"record {number}"
        check_features(record, where)
        layout = self.layout or {
            "feature_dim": int(record.patches.shape[2]),
            "patch_dtype": "float16" if record.patches.dtype == np.float16 else "float32",
            "cls_dim": None if record.cls is None else int(record.cls.shape[0]),
            "has_attention": record.attention is not None,
        }
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

    def append(self, records, content_keys, stored):
        """Add records (and their keys, if given) and commit them; a key
        in ``stored`` or seen before in this call is skipped. The number
        of records accepted."""
        keys = iter(content_keys) if content_keys is not None else None
        try:
            for number, record in enumerate(records):
                key = None
                if keys is not None:
                    key = next(keys, _END)
                    if key is _END:
                        raise ValueError(
                            f"content_keys ran out at record {number}; give one "
                            "key per record."
                        )
                    if not isinstance(key, str):
                        raise TypeError(f"content key of record {number} is a "
                                        f"{type(key).__name__}, not str.")
                    if key in stored or key in self.keys:
                        continue
                self.add(record, key, number)
            if keys is not None and next(keys, _END) is not _END:
                raise ValueError("more content_keys than records; give one key per "
                                 "record (the records were stored).")
            return self.n_accepted
        finally:
            # Commit what was accepted even when a record is refused or the
            # iterable raises: a failed append never loses stored images.
            self.flush()

    def add(self, record, key, number):
        layout = self._check(record, number)
        image_path, pixels = _image_reference(record.image, number)
        dtype = np.dtype(layout["patch_dtype"])
        data = {
            "patches": record.patches.reshape(-1, record.patches.shape[2]),
            "attention": None if record.attention is None else record.attention.reshape(-1),
            "cls": record.cls,
            "pixels": None if pixels is None else pixels.reshape(-1).view(np.uint8),
        }
        data = {name: None if value is None else
                np.ascontiguousarray(value, dtype=np.uint8 if name == "pixels" else dtype)
                for name, value in data.items()}
        if key is None:
            key = record.content_key or FEATURE_KEY + array_digest(
                data["patches"], header=str(tuple(record.grid_shape)))
        self.keys.add(key)
        self.n_accepted += 1
        self.layout = layout
        self.buffer.append((data, {
            "content_keys": key,
            "image_paths": image_path or "",
            "pixel_dtypes": "" if pixels is None else pixels.dtype.str,
            "grid_shapes": [int(v) for v in record.grid_shape],
            "image_shapes": [int(v) for v in record.image_shape],
            "patch_sizes": int(record.patch_size or 0),
            "pixel_shapes": list(_pixel_shape(pixels)),
            "checksums": [0 if data[name] is None else crc(data[name])
                          for name in SEGMENT_ARRAYS],
        }))
        self.buffered_bytes += sum(v.nbytes for v in data.values() if v is not None)
        if self.buffered_bytes >= self.batch_bytes or len(self.buffer) >= BATCH_IMAGES:
            self.flush()

    def flush(self):
        """Write the buffered records as one segment and commit it."""
        if not self.buffer:
            return
        batch, self.buffer, self.buffered_bytes = self.buffer, [], 0
        segment = uuid.uuid4().hex
        self._write_segment(segment, [data for data, _ in batch])
        # On disk before the commit that names it: after a power cut a
        # commit never names data that was lost.
        self.snapshot.location.sync_folder(f"segments/{segment}")
        images = {name: [columns[name] for _, columns in batch] for name in IMAGE_COLUMNS}
        self._commit(segment, images)
        self.n_committed += len(batch)

    def _write_segment(self, segment, records):
        import zarr

        location = self.snapshot.location
        if location.local:
            for part in ("segments", f"segments/{segment}"):
                refuse_link(location, location.full_path(part))

        def write(name):
            row, chunk_rows, dtype = array_shape(name, self.layout)
            values = np.concatenate([record[name] for record in records
                                     if record[name] is not None]).reshape(-1, *row)
            with location.errors(f"segments/{segment}/{name}"):
                # Features are close to incompressible; plain chunks read at disk speed.
                zarr.create_array(
                    self.snapshot.zarr, name=f"segments/{segment}/{name}",
                    data=values.astype(dtype, copy=False), chunks=(chunk_rows, *row),
                    compressors=None, fill_value=0, overwrite=False, zarr_format=3,
                )

        names = [name for name in SEGMENT_ARRAYS if array_shape(name, self.layout)
                 and any(record[name] is not None for record in records)]
        if location.local:
            for name in names:
                write(name)
        else:  # object storage answers in tens of milliseconds: overlap the arrays
            with ThreadPoolExecutor(len(names)) as pool:
                list(pool.map(write, names))

    def _commit(self, segment, images):
        """Claim the next commit number for ``segment``: created exclusively,
        so of two writers claiming one number, the second takes the next."""
        snapshot = self.snapshot
        location = snapshot.location
        seq = snapshot.find_head(snapshot.n_commits)
        while True:
            if seq and snapshot.layout is None:
                snapshot.layout = snapshot.commit(0).layout
            if snapshot.layout is not None and snapshot.layout != self.layout:
                raise ValueError(
                    f"feature store {location.url!r} holds features of layout "
                    f"{snapshot.layout}; these records have {self.layout} (another "
                    "writer appended first)."
                )
            first = snapshot.commit(seq - 1).stop if seq else 0
            body = {"segment": segment, "first": first, "layout": self.layout,
                    "extraction": extraction_digest(snapshot.extraction),
                    "images": images}
            data = json.dumps({"body": body, "crc": body_crc(body)}).encode()
            if location.create(commit_key(seq), data):
                break
            seq += 1
        snapshot.published(Commit(seq, body), self.layout)
        size = _store_format.CHECKPOINT_COMMITS
        if (seq + 1) % size == 0:  # the last commit of a checkpoint
            snapshot.write_checkpoint(seq // size)
        # Only a hint for readers' probes: a stale one costs them a few more.
        location.put("head.json", json.dumps({"commits": seq + 1}).encode())


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
        from ._image_decoding import load_rgb

        pixels = np.asarray(image) if image.mode in _ARRAY_EXACT_PIL_MODES else load_rgb(image)
        return None, np.ascontiguousarray(pixels)
    if hasattr(image, "detach"):  # a torch tensor, (C, H, W) or (H, W, C)
        from ._images import tensor_to_array

        image = tensor_to_array(image, f"record {number}'s image")
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
