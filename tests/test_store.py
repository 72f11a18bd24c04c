import dataclasses
import json
import multiprocessing
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from PIL import Image
from sklearn.base import clone
from sklearn.model_selection import KFold
from sklearn.utils import _safe_indexing

import skseg._store_format
import skseg._store_location
import skseg._store_writer
from skseg import FeatureStore, ImageFeatures, MultilevelSegmenter, ViTPatchTransformer
from skseg._store import CorruptedStoreError

from .conftest import TINY_MODEL, n_images_through_vit


def _record(i, dtype=np.float32, d=8, cls=True, attention=True, image=None):
    """Record ``i``: a grid whose size and values depend on i, so mix-ups show."""
    rng = np.random.default_rng(i)
    h, w = 2 + i % 3, 3 + i % 2
    return ImageFeatures(
        patches=rng.standard_normal((h, w, d)).astype(dtype),
        cls=rng.standard_normal(d).astype(dtype) if cls else None,
        attention=rng.random((h, w)).astype(dtype) if attention else None,
        image_shape=(10 * h + i, 10 * w),
        image=image,
        patch_size=None if i % 4 == 3 else 8,
    )


def _assert_same(stored, original, dtype=None):
    dtype = dtype or original.patches.dtype
    assert stored.patches.dtype == dtype
    np.testing.assert_array_equal(stored.patches, original.patches.astype(dtype))
    for name in ("cls", "attention"):
        a, b = getattr(stored, name), getattr(original, name)
        assert (a is None) == (b is None)
        if b is not None:
            np.testing.assert_array_equal(a, b.astype(dtype))
    assert stored.image_shape == original.image_shape
    assert stored.patch_size == original.patch_size


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("cls,attention", [(True, True), (False, False), (True, False)])
def test_round_trip_of_every_field(tmp_path, dtype, cls, attention):
    records = [_record(i, dtype, cls=cls, attention=attention) for i in range(7)]
    store = FeatureStore(tmp_path / "s")
    store.extend(iter(records))
    reopened = FeatureStore(tmp_path / "s")
    assert len(reopened) == 7
    for stored, original in zip(reopened, records):
        _assert_same(stored, original)
    patches, offsets = reopened.patches_of(2, 6)
    np.testing.assert_array_equal(
        patches, np.concatenate([r.patches.reshape(-1, 8) for r in records[2:6]]))
    np.testing.assert_array_equal(np.diff(offsets),
                                  [r.patches.shape[0] * r.patches.shape[1] for r in records[2:6]])
    assert reopened.grid_shapes.tolist() == [list(r.grid_shape) for r in records]
    assert reopened.image_shapes.tolist() == [list(r.image_shape) for r in records]
    if cls:
        np.testing.assert_array_equal(reopened.cls_of(0, 7), np.stack([r.cls for r in records]))
    else:
        with pytest.raises(ValueError, match="no CLS"):
            reopened.cls_of(0, 7)
    if attention:
        values, _ = reopened.attention_of(1, 3)
        np.testing.assert_array_equal(
            values, np.concatenate([r.attention.ravel() for r in records[1:3]]))


def test_dtype_is_fixed_by_the_first_record(tmp_path):
    store = FeatureStore(tmp_path / "half")
    store.extend([_record(0, np.float16), _record(1, np.float32)])
    _assert_same(store[1], _record(1, np.float32), dtype=np.float16)
    store = FeatureStore(tmp_path / "double")
    store.extend([_record(0, np.float64)])
    _assert_same(store[0], _record(0, np.float64), dtype=np.float32)


def test_images_are_kept_as_paths_or_exact_pixels(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    images = [
        "photos/a.png",  # a relative path is kept absolute
        rng.integers(0, 256, (9, 7, 3), dtype=np.uint8),
        rng.integers(0, 65536, (9, 7), dtype=np.uint16),
        rng.random((5, 6, 4)).astype(">f8"),
        Image.fromarray(rng.integers(0, 256, (6, 5), dtype=np.uint8), mode="L"),
        Image.fromarray(rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)).convert("P"),
        None,
        torch.from_numpy(rng.integers(0, 256, (3, 6, 5), dtype=np.uint8)),  # (C, H, W)
    ]
    store = FeatureStore("s")
    store.extend(_record(i, image=image) for i, image in enumerate(images))
    stored = [f.image for f in FeatureStore("s")]
    assert stored[0] == str(tmp_path / "photos" / "a.png")
    for i in (1, 2, 3):
        assert stored[i].dtype == images[i].dtype
        np.testing.assert_array_equal(stored[i], images[i])
    np.testing.assert_array_equal(stored[4], np.asarray(images[4]))
    # A palette image is kept as the RGB skseg reads from it, not its indices.
    np.testing.assert_array_equal(
        stored[5], np.asarray(images[5].convert("RGB"), dtype=np.float32) / 255)
    assert stored[6] is None
    np.testing.assert_array_equal(stored[7], images[7].permute(1, 2, 0).numpy())


def test_lazy_views_index_like_a_feature_sequence(tmp_path):
    records = [_record(i) for i in range(6)]
    store = FeatureStore(tmp_path / "s")
    store.extend(records)
    _assert_same(store[-1], records[5])
    view = store[[4, 1, 1, 5]]
    assert isinstance(view, FeatureStore) and len(view) == 4
    _assert_same(view[0], records[4])
    _assert_same(view[2], records[1])
    nested = view[np.array([False, True, False, True])]
    assert [f.image_shape for f in nested] == [records[1].image_shape, records[5].image_shape]
    assert [f.image_shape for f in store[4:1:-1]] == [records[i].image_shape for i in (4, 3, 2)]
    patches, offsets = view.patches_of(1, 4)
    np.testing.assert_array_equal(
        patches, np.concatenate([records[i].patches.reshape(-1, 8) for i in (1, 1, 5)]))
    assert offsets[-1] == len(patches)
    np.testing.assert_array_equal(view.cls_of(0, 4),
                                  np.stack([records[i].cls for i in (4, 1, 1, 5)]))
    for train, test in KFold(3).split(store):
        part = _safe_indexing(store, train)
        assert len(part) == 4
        _assert_same(part[0], records[train[0]])
    for bad in (6, -7, [0, 6], np.array([0.5]), np.array([True, False])):
        with pytest.raises(IndexError):
            store[bad]
    with pytest.raises(TypeError, match="view"):
        view.extend([records[0]])


def test_reading_image_by_image_reads_each_chunk_once(tmp_path, monkeypatch):
    monkeypatch.setattr(skseg._store_format, "CHUNK_BYTES", 8 * 4 * 16)  # 16 rows a chunk
    records = [_record(i) for i in range(20)]
    FeatureStore(tmp_path / "s").extend(records)
    store = FeatureStore(tmp_path / "s")
    reads = []
    real = zarr.Array.__getitem__
    monkeypatch.setattr(zarr.Array, "__getitem__",
                        lambda self, key: reads.append(self.basename) or real(self, key))
    for stored, original in zip(store, records):
        _assert_same(stored, original)
    n_rows = sum(r.patches.shape[0] * r.patches.shape[1] for r in records)
    n_chunks = -(-n_rows // 16)
    # One read per chunk, not one per image (20 images over 13 chunks).
    assert reads.count("patches") == n_chunks < len(records)


def test_pickles_as_its_location_and_reopens_read_only(tmp_path):
    records = [_record(i) for i in range(4)]
    store = FeatureStore(tmp_path / "s")
    store.extend(records)
    payload = pickle.dumps(store[[3, 0]])
    assert len(payload) < 1000  # the location and the positions, never the data
    restored = pickle.loads(payload)
    _assert_same(restored[0], records[3])
    _assert_same(restored[1], records[0])
    whole = pickle.loads(pickle.dumps(store))
    assert len(whole) == 4
    with pytest.raises(PermissionError, match="read-only"):
        whole.extend([records[0]])
    # zarr readers (Dask, fsspec) see plain arrays.
    patches = zarr.open_array(os.fspath(_segment(tmp_path / "s") / "patches"), mode="r")
    np.testing.assert_array_equal(patches[:6], records[0].patches.reshape(-1, 8))


def test_extending_again_continues_in_order(tmp_path):
    FeatureStore(tmp_path / "s").extend(_record(i) for i in range(3))
    FeatureStore(tmp_path / "s").extend(_record(i) for i in range(3, 5))
    store = FeatureStore(tmp_path / "s")
    assert len(store) == 5
    for i, stored in enumerate(store):
        _assert_same(stored, _record(i))


def test_commits_in_bounded_batches_without_holding_the_iterable(tmp_path, monkeypatch):
    monkeypatch.setattr(skseg._store_writer, "BATCH_IMAGES", 3)
    store = FeatureStore(tmp_path / "s")
    committed = []

    def records():
        for i in range(8):
            committed.append(len(FeatureStore(tmp_path / "s", read_only=True)))
            yield _record(i)

    store.extend(records())
    # Another reader sees batches of three appear while the iterable is consumed.
    assert committed == [0, 0, 0, 3, 3, 3, 6, 6]
    assert len(store) == 8


def test_content_keys_find_stored_images(tmp_path):
    store = FeatureStore(tmp_path / "s")
    store.extend([_record(0), _record(1)], content_keys=["a", "b"])
    store.extend([_record(2)])
    keys = list(store.content_keys)
    assert keys[:2] == ["a", "b"] and keys[2].startswith("features-sha1:")
    assert store.missing(["b", "c", "a", "c", "d"]) == [1, 4]
    view = store.select(["b", "a", "b"])
    _assert_same(view[0], _record(1))
    _assert_same(view[1], _record(0))
    assert store.select(keys) is store
    with pytest.raises(KeyError, match="'zz'"):
        store.select(["a", "zz"])
    with pytest.raises(ValueError, match="ran out at record 1"):
        store.extend([_record(3), _record(4)], content_keys=["k"])
    assert len(store) == 4  # the record with a key was stored
    # Given keys already stored (by this call or before) are skipped, so two
    # writers racing on the same images store each once; unkeyed records are not.
    assert store.extend([_record(5), _record(6), _record(7)], content_keys=["a", "n", "n"]) == 1
    assert store.extend([_record(0), _record(0)]) == 2
    assert list(FeatureStore(tmp_path / "s").content_keys)[4] == "n"
    assert len(store) == 7
    # Records read back carry their key; a record's own key is stored as given.
    assert [record.content_key for record in store[:3]] == ["a", "b", None]
    store.extend([dataclasses.replace(_record(8), content_key="own")])
    assert FeatureStore(tmp_path / "s")[7].content_key == "own"
    # Keys this handle has not seen stored (another writer's) are appended
    # again, and read once.
    other = FeatureStore(tmp_path / "s")
    assert other.extend([_record(9), _record(1)], content_keys=["m", "b"]) == 2
    assert list(FeatureStore(tmp_path / "s").content_keys).count("b") == 1
    _assert_same(FeatureStore(tmp_path / "s").select(["m"])[0], _record(9))
    assert len(FeatureStore(tmp_path / "s")) == 9


@pytest.mark.slow
def test_concurrent_writers_store_each_image_once(tmp_path, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(skseg._store_writer, "BATCH_IMAGES", 2)
    FeatureStore(tmp_path / "s")
    keys = [f"image-{i}" for i in range(12)]

    def write(order):
        store = FeatureStore(tmp_path / "s")  # each writer its own handle, as processes
        return store.extend((_record(i) for i in order), content_keys=[keys[i] for i in order])

    with ThreadPoolExecutor(2) as pool:
        appended = list(pool.map(write, [range(12), range(11, -1, -1)]))
    store = FeatureStore(tmp_path / "s")
    # Each writer appends what it has not seen stored; what both appended is
    # read once, at its first commit.
    assert 12 <= sum(appended) <= 24 and len(store) == 12
    assert sorted(store.content_keys) == sorted(keys)
    for key, stored in zip(store.content_keys, store):
        _assert_same(stored, _record(int(key.split("-")[1])))


# -- processes racing ---------------------------------------------------------------

def _delay_store_writes(seed):
    """Sleep a little before each object of a store is read or created, so
    that what one process read is stale when it acts on it."""
    rng = random.Random(seed)
    location = skseg._store_location.Location
    for name in ("read", "create"):
        real = getattr(location, name)

        def delayed(*args, _real=real, **kwargs):
            time.sleep(rng.uniform(0, 0.03))
            return _real(*args, **kwargs)

        setattr(location, name, delayed)


def _create_and_append(root, n_stores, worker, barrier):
    _delay_store_writes(worker)
    for k in range(n_stores):
        barrier.wait(timeout=60)
        FeatureStore(Path(root) / f"s{k}").extend([_record(worker)], content_keys=[f"w{worker}"])


def _record_extraction_and_append(root, n_stores, layer, results, barrier):
    _delay_store_writes(layer)
    for k in range(n_stores):
        barrier.wait(timeout=60)
        try:
            store = FeatureStore(Path(root) / f"s{k}", extraction={"layer": layer})
            store.extend([_record(layer)], content_keys=[f"layer{layer}"])
            results.put((k, layer, "ok"))
        except ValueError as exc:
            results.put((k, layer, str(exc)))


def _fork_context():
    # Forked children have skseg imported already: they race from the first
    # second instead of after seconds of importing torch.
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("needs the fork start method")
    return multiprocessing.get_context("fork")


def _race(target, arguments):
    """Run ``target(*arguments[i], barrier)`` in one new process per worker;
    return their exit codes."""
    context = _fork_context()
    barrier = context.Barrier(len(arguments))
    processes = [context.Process(target=target, args=(*args, barrier)) for args in arguments]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
    return [process.exitcode for process in processes]


@pytest.mark.slow
def test_processes_creating_a_store_at_once_lose_nothing(tmp_path):
    n_stores = 6
    assert _race(_create_and_append, [(tmp_path, n_stores, w) for w in (0, 1)]) == [0, 0]
    for k in range(n_stores):
        store = FeatureStore(tmp_path / f"s{k}")
        assert sorted(store.content_keys) == ["w0", "w1"]
        for key, stored in zip(store.content_keys, store):
            _assert_same(stored, _record(int(key[1])))


@pytest.mark.slow
def test_two_extractions_recorded_at_once_one_is_refused(tmp_path):
    n_stores = 3
    for k in range(n_stores):
        FeatureStore(tmp_path / f"s{k}")  # created empty: both see no extraction
    results = _fork_context().Queue()
    assert _race(_record_extraction_and_append,
                 [(tmp_path, n_stores, layer, results) for layer in (1, 2)]) == [0, 0]
    outcomes = [results.get(timeout=10) for _ in range(2 * n_stores)]
    for k in range(n_stores):
        (winner,) = [layer for store, layer, outcome in outcomes
                     if store == k and outcome == "ok"]
        (refusal,) = [outcome for store, layer, outcome in outcomes
                      if store == k and layer != winner]
        assert f"layer: store {winner}, requested {3 - winner}" in refusal
        store = FeatureStore(tmp_path / f"s{k}", extraction={"layer": winner})
        assert list(store.content_keys) == [f"layer{winner}"]


def test_records_appended_without_the_extraction_of_the_store_are_refused(tmp_path):
    path = tmp_path / "s"
    FeatureStore(path, extraction={"layer": 1}).extend([_record(0)])
    with pytest.raises(ValueError, match=r"holds the features of the extraction "
                                         r"\{'layer': 1\}.*extraction=\.\.\."):
        FeatureStore(path).extend([_record(1)])
    # A handle opened before the extraction was recorded is refused too.
    other = tmp_path / "t"
    early = FeatureStore(other)
    FeatureStore(other, extraction={"layer": 1})
    with pytest.raises(ValueError, match="holds the features of the extraction"):
        early.extend([_record(1)])
    assert len(FeatureStore(path)) == 1 and len(FeatureStore(other)) == 0


# -- crash safety ---------------------------------------------------------------

_WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    import skseg._store_writer
    from skseg import FeatureStore
    from tests.test_store import _record

    skseg._store_writer.BATCH_IMAGES = 2
    store = FeatureStore(sys.argv[1])
    start = len(store)
    print(start, flush=True)
    store.extend(_record(i) for i in range(start, 10**6))
""")


def _committed(path):
    """Images committed by the writer, which commits two at a time."""
    commits = Path(path) / "commits"
    return 2 * len(list(commits.glob("*.json"))) if commits.is_dir() else 0


@pytest.mark.slow
def test_a_writer_killed_at_any_moment_leaves_every_committed_image(tmp_path):
    path = tmp_path / "s"
    root = Path(__file__).resolve().parent.parent
    rng = np.random.default_rng(0)
    previous = 0
    for round_ in range(2):
        child = subprocess.Popen(
            [sys.executable, "-c", _WRITER, os.fspath(path)], cwd=root,
            env={**os.environ, "PYTHONPATH": os.fspath(root)},
            stdout=subprocess.PIPE, text=True,
        )
        try:
            assert int(child.stdout.readline()) == previous  # resumed where it stopped
            deadline = time.monotonic() + 60
            while _committed(path) < previous + 6 and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(rng.uniform(0, 0.05))  # somewhere inside a later batch
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
            child.stdout.close()
        store = FeatureStore(path)
        assert len(store) >= previous + 6
        for i in range(len(store)):
            _assert_same(store[i], _record(i))
        previous = len(store)
    store.extend([_record(previous)])
    _assert_same(FeatureStore(path)[previous], _record(previous))


class _Crash(Exception):
    pass


def _interrupt_writes(monkeypatch, fail_at):
    """Make the write number ``fail_at`` of the store (zarr's metadata and
    chunk writes, the commit, the hint) raise; return the writes made."""
    from zarr.storage import LocalStore

    writes = []

    def counted(name):
        writes.append(name)
        if len(writes) > fail_at:
            raise _Crash

    real_set = LocalStore.set

    async def set_(self, key, value):
        counted(key)
        return await real_set(self, key, value)

    monkeypatch.setattr(LocalStore, "set", set_)
    location = skseg._store_location.Location
    for name in ("create", "put"):
        real = getattr(location, name)

        def write(self, key, data, _real=real):
            counted(key)
            return _real(self, key, data)

        monkeypatch.setattr(location, name, write)
    return writes


# An append of three records writes 8 objects: three arrays' metadata and
# chunk, the commit, the hint.
@pytest.mark.parametrize("fail_at", range(9))
@pytest.mark.slow
def test_an_append_interrupted_at_any_write_keeps_the_committed_images(
        tmp_path, monkeypatch, fail_at):
    # Every write of an append, in turn, is the last one to happen.
    path = tmp_path / "s"
    FeatureStore(path).extend(_record(i) for i in range(3))
    writes = _interrupt_writes(monkeypatch, fail_at)
    try:
        FeatureStore(path).extend(_record(i) for i in range(3, 6))
    except _Crash:
        pass
    monkeypatch.undo()
    committed = any(key.startswith("commits/") for key in writes[:fail_at])
    store = FeatureStore(path)
    assert len(store) == (6 if committed else 3)
    assert (len(writes) <= fail_at) == (fail_at == 8)  # every write was a last one
    store.extend(_record(i) for i in range(len(store), 8))
    store = FeatureStore(path)
    assert len(store) == 8
    for i in range(8):
        _assert_same(store[i], _record(i))


# -- corruption ------------------------------------------------------------------

def _segment(path, k=0):
    """The folder of commit ``k``'s segment."""
    commit = json.loads((Path(path) / "commits" / f"{k:012d}.json").read_text())
    return Path(path) / "segments" / commit["body"]["segment"]


def _chunk_file(path, name):
    return next(f for f in sorted((_segment(path) / name / "c").rglob("*")) if f.is_file())


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_a_damaged_chunk_names_the_image_never_returns_garbage(tmp_path, damage):
    path = tmp_path / "s"
    FeatureStore(path).extend(_record(i) for i in range(4))
    chunk = _chunk_file(path, "patches")
    data = bytearray(chunk.read_bytes())
    offset = 8 * 4 * (6 + 12)  # inside image 2 (images 0 and 1 own 6 and 12 rows)
    if damage == "flip":
        data[offset] ^= 0xFF
        chunk.write_bytes(bytes(data))
    elif damage == "truncate":
        chunk.write_bytes(bytes(data[:offset]))
    else:
        chunk.unlink()
    store = FeatureStore(path)
    first_bad = {"flip": "image 2", "truncate": r"images 0\.\.3", "delete": "image 0"}[damage]
    with pytest.raises(CorruptedStoreError, match=first_bad) as error:
        store.patches_of(0, 4)
    assert "patches" in str(error.value) and _segment(path).name in str(error.value)
    with pytest.raises(CorruptedStoreError, match="image 2"):
        store[2]
    if damage == "flip":
        _assert_same(store[1], _record(1))  # the undamaged images still read
        _assert_same(store[3], _record(3))


def test_a_damaged_cls_chunk_names_the_image(tmp_path):
    path = tmp_path / "s"
    FeatureStore(path).extend(_record(i) for i in range(3))
    chunk = _chunk_file(path, "cls")
    data = bytearray(chunk.read_bytes())
    data[8 * 4 + 1] ^= 0x40  # image 1's CLS token
    chunk.write_bytes(bytes(data))
    with pytest.raises(CorruptedStoreError, match=r"cls of image 1 .*segments/[0-9a-f]+/cls"):
        FeatureStore(path).cls_of(0, 3)


@pytest.mark.parametrize("edit", [
    lambda text: text.replace('"grid_shapes": [[2, 3]', '"grid_shapes": [[3, 3]'),
    lambda text: text.replace('"b"', '"c"'),
    lambda text: text[:len(text) // 2],
])
def test_a_damaged_commit_is_an_error_at_opening(tmp_path, edit):
    path = tmp_path / "s"
    FeatureStore(path).extend([_record(i) for i in range(3)], content_keys=["a", "b", "z"])
    commit = path / "commits" / f"{0:012d}.json"
    text = commit.read_text()
    assert edit(text) != text
    commit.write_text(edit(text))
    with pytest.raises(CorruptedStoreError, match=r"commit 0 is damaged .*000000000000\.json"):
        FeatureStore(path)


def _edit_json(file, edit):
    meta = json.loads(file.read_text())
    edit(meta)
    file.write_text(json.dumps(meta))


def _edit_commit(path, edit):
    """Edit commit 0's body and sign it again: hostile, not damaged."""
    from skseg._store_format import body_crc

    def signed(record):
        edit(record["body"])
        record["crc"] = body_crc(record["body"])

    _edit_json(Path(path) / "commits" / f"{0:012d}.json", signed)


def _nested(depth):
    return "[" * depth + "]" * depth


_HOSTILE_METADATA = {
    "a huge patch grid": (
        lambda path: _edit_commit(path, lambda b: b["images"]["grid_shapes"].__setitem__(
            0, [65536, 65536])),
        r"commit 0 is damaged \(grid or image shapes"),
    "a huge grid": (
        lambda path: _edit_commit(path, lambda b: b["images"]["pixel_shapes"][0].__setitem__(
            0, 10**7)),
        r"commit 0 is damaged \(grid or image shapes"),
    "no images": (
        lambda path: _edit_commit(path, lambda b: b["images"].update(content_keys=[])),
        r"commit 0 is damaged \(no images"),
    "a layout of another type": (
        lambda path: _edit_commit(path, lambda b: b.update(layout=[1])),
        r"commit 0 is damaged \(layout \[1\]"),
    "a string dtype": (
        lambda path: _edit_json(_segment(path) / "patches" / "zarr.json", lambda m: m.update(
            data_type="string", fill_value="", codecs=[{"name": "vlen-utf8"}])),
        r"cannot read the patches of images 0\.\.2 \(shape \(\d+, 8\), .*dtype StringDType"),
    "huge chunks": (
        lambda path: _edit_json(_segment(path) / "patches" / "zarr.json", lambda m: m[
            "chunk_grid"]["configuration"].update(chunk_shape=[10**12, 8])),
        r"patches of images 0\.\.2 \(shape \(\d+, 8\), chunks \(1000000000000, 8\)"),
    "a huge shape": (
        lambda path: _edit_json(_segment(path) / "patches" / "zarr.json", lambda m: m.update(
            shape=[10**15, 8])),
        r"patches of images 0\.\.2 \(shape \(1000000000000000, 8\)"),
}


@pytest.mark.parametrize("case", sorted(_HOSTILE_METADATA))
def test_hostile_metadata_is_refused_before_anything_is_allocated(tmp_path, case):
    path = tmp_path / "s"
    FeatureStore(path).extend(_record(i) for i in range(3))
    edit, message = _HOSTILE_METADATA[case]
    edit(path)
    with pytest.raises(CorruptedStoreError, match=message):
        FeatureStore(path).patches_of(0, 3)


def test_a_wrong_hint_costs_a_count_never_an_image(tmp_path):
    path = tmp_path / "s"
    store = FeatureStore(path)
    for i in range(3):
        store.extend([_record(i)])
    for hint in ({"commits": 10**15}, {"commits": 1}, "garbage"):
        (path / "head.json").write_text(json.dumps(hint))
        assert len(FeatureStore(path)) == 3
    store.extend([_record(3)])  # a stale handle commits after the others
    assert [s.image_shape for s in FeatureStore(path)] == [_record(i).image_shape
                                                          for i in range(4)]


@pytest.mark.parametrize("file,message", [
    ("zarr.json", "its zarr.json cannot be parsed"),
    ("patches/zarr.json", r"cannot read the patches of images 0\.\.2 \(unreadable: "),
])
@pytest.mark.parametrize("damage", ["nested", "truncated"])
def test_unparsable_metadata_is_one_error_naming_the_file(tmp_path, file, message, damage):
    path = tmp_path / "s"
    FeatureStore(path).extend(_record(i) for i in range(3))
    target = path / file if file == "zarr.json" else _segment(path) / file
    target.write_text(_nested(100_000) if damage == "nested" else target.read_text()[:50])
    with pytest.raises((CorruptedStoreError, ValueError), match=message) as error:
        FeatureStore(path).patches_of(0, 3)
    assert "\n" not in str(error.value)


def test_links_in_a_store_are_refused_and_nothing_lands_outside(tmp_path):
    path, outside = tmp_path / "s", tmp_path / "outside"
    outside.mkdir()
    FeatureStore(path).extend(_record(i) for i in range(3))
    for folder in ("segments", "commits"):
        (path / folder).rename(outside / folder)
        (path / folder).symlink_to(outside / folder)
        with pytest.raises(CorruptedStoreError, match=rf"/s/{folder} is a symbolic link"):
            FeatureStore(path).extend(_record(i) for i in range(3, 10))
        (path / folder).unlink()
        (outside / folder).rename(path / folder)
    assert not list(outside.iterdir())
    assert len(FeatureStore(path)) == 3
    # A linked array folder is refused when read.
    segment = _segment(path)
    (segment / "cls").rename(outside / "cls")
    (segment / "cls").symlink_to(outside / "cls")
    with pytest.raises(CorruptedStoreError, match=r"/cls is a symbolic link"):
        FeatureStore(path, read_only=True).cls_of(0, 3)


def test_a_store_moved_while_open_says_so(tmp_path):
    FeatureStore(tmp_path / "s").extend(_record(i) for i in range(3))
    store = FeatureStore(tmp_path / "s")
    (tmp_path / "s").rename(tmp_path / "moved")
    with pytest.raises(FileNotFoundError, match="is no longer there: it was moved or deleted"):
        store.patches_of(0, 3)
    _assert_same(FeatureStore(tmp_path / "moved")[2], _record(2))


# -- bad input -------------------------------------------------------------------

def test_what_is_not_a_store_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        FeatureStore(tmp_path / "file")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"x")
    with pytest.raises(ValueError, match="not a feature store"):
        FeatureStore(tmp_path / "photos")
    assert os.listdir(tmp_path / "photos") == ["a.jpg"]
    zarr.open_group(os.fspath(tmp_path / "other"), mode="w")
    with pytest.raises(ValueError, match="zarr store but not a skseg feature store"):
        FeatureStore(tmp_path / "other")
    with pytest.raises(FileNotFoundError, match="no feature store"):
        FeatureStore(tmp_path / "absent", read_only=True)
    assert not (tmp_path / "absent").exists()
    FeatureStore(tmp_path / "s").extend([_record(0)])
    meta_file = tmp_path / "s" / "zarr.json"
    meta = json.loads(meta_file.read_text())
    meta["attributes"]["skseg_feature_store"]["format_version"] = 99
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="format version 99; this skseg reads version 2"):
        FeatureStore(tmp_path / "s")


@pytest.mark.parametrize("bad,message", [
    (lambda: _record(2, d=16), "record 1 .*dimension 16; the store holds dimension 8"),
    (lambda: _record(2, cls=False), "record 1 .*has no CLS token"),
    (lambda: _record(2, attention=False), "record 1 .*has no CLS attention"),
    (lambda: np.zeros((2, 2, 8)), "record 1 .*ndarray, not ImageFeatures"),
    (lambda: _record(2, image=3.5), "record 1: its image is a float"),
])
def test_a_refused_record_loses_nothing(tmp_path, bad, message):
    store = FeatureStore(tmp_path / "s")
    store.extend([_record(0)])
    with pytest.raises((ValueError, TypeError), match=message):
        store.extend([_record(1), bad(), _record(3)])
    # The record before the refused one is stored; nothing earlier is lost.
    reopened = FeatureStore(tmp_path / "s")
    assert len(reopened) == 2
    _assert_same(reopened[0], _record(0))
    _assert_same(reopened[1], _record(1))


def test_a_record_without_attention_is_refused_by_a_store_with_it(tmp_path):
    store = FeatureStore(tmp_path / "s")
    store.extend([_record(0, attention=False)])
    with pytest.raises(ValueError, match="record 0 .*has CLS attention; the store holds none"):
        store.extend([_record(1)])
    assert len(FeatureStore(tmp_path / "s")) == 1


def test_recorded_extraction_parameters_are_checked(tmp_path):
    params = {"model": "m", "facet": "key", "image_size": [224, 224]}
    store = FeatureStore(tmp_path / "s", extraction=params)
    store.extend([_record(0)])
    assert FeatureStore(tmp_path / "s").extraction == params
    FeatureStore(tmp_path / "s", extraction=dict(params, image_size=(224, 224)))
    with pytest.raises(ValueError, match=r"facet: store 'key', requested 'value'.*"
                                         r"Recorded: .*requested: "):
        FeatureStore(tmp_path / "s", extraction=dict(params, facet="value"))
    unrecorded = FeatureStore(tmp_path / "u")
    unrecorded.extend([_record(0)])
    with pytest.raises(ValueError, match="unrecorded extraction parameters"):
        FeatureStore(tmp_path / "u", extraction=params)


# -- the transformer's store= ------------------------------------------------------

def _vit(**kwargs):
    params = dict(model=TINY_MODEL, pretrained=False, image_size=64, device="cpu",
                  batch_size=2)
    params.update(kwargs)
    return ViTPatchTransformer(**params)


@pytest.mark.slow
def test_transformer_writes_a_store_and_skips_stored_images(
        tmp_path, rgb_images, vit_forwards):
    plain = _vit().fit().transform(rgb_images)
    assert n_images_through_vit(vit_forwards) == 4
    first = _vit(store=tmp_path / "s").fit().transform(rgb_images[:2] + rgb_images[:1])
    assert n_images_through_vit(vit_forwards) == 6  # the repeated image ran once
    assert isinstance(first, FeatureStore) and len(first) == 3
    second = _vit(store=tmp_path / "s").fit().transform(rgb_images[::-1])
    assert n_images_through_vit(vit_forwards) == 8  # two new images only
    assert len(FeatureStore(tmp_path / "s")) == 4
    for stored, expected, image in zip(second, plain[::-1], rgb_images[::-1]):
        np.testing.assert_allclose(stored.patches, expected.patches, atol=1e-5)
        np.testing.assert_allclose(stored.cls, expected.cls, atol=1e-5)
        assert stored.image_shape == expected.image_shape and stored.patch_size == 16
        np.testing.assert_array_equal(stored.image, image)
    again = _vit(store=tmp_path / "s").fit().transform(rgb_images)
    assert n_images_through_vit(vit_forwards) == 8
    assert again is not None and len(again) == 4
    changed = rgb_images[0].copy()
    changed[0, 0, 0] ^= 1
    _vit(store=tmp_path / "s").fit().transform([changed])
    assert n_images_through_vit(vit_forwards) == 9


@pytest.mark.filterwarnings("ignore:ViTPatchTransformer\\(memory=:FutureWarning")
def test_transformer_refuses_a_store_of_other_parameters(tmp_path, rgb_images, vit_forwards):
    _vit(store=tmp_path / "s").fit().transform(rgb_images[:1])
    with pytest.raises(ValueError, match=r"facet: store 'key', requested 'query'.*"
                                         r"Recorded: \{.*\}; requested: \{.*\}"):
        _vit(store=tmp_path / "s", facet="query").fit().transform(rgb_images)
    with pytest.raises(ValueError, match="either memory= .* or store="):
        _vit(store=tmp_path / "s", memory=tmp_path / "m").fit()
    assert n_images_through_vit(vit_forwards) == 1


@pytest.mark.slow
def test_records_point_at_the_inputs_given_and_never_read_another_file(
        tmp_path, rgb_images, vit_forwards):
    from skseg._image_decoding import load_rgb
    from skseg._images import ImageError
    from skseg._refine import working_pixels

    a, b = tmp_path / "a.png", tmp_path / "b.png"
    Image.fromarray(rgb_images[0]).save(a)
    Image.fromarray(rgb_images[1]).save(b)
    _vit(store=tmp_path / "s").fit().transform([a, b])
    # The two files swap names: the store holds both contents already.
    a.rename(tmp_path / "c.png")
    b.rename(a)
    (tmp_path / "c.png").rename(b)
    features = _vit(store=tmp_path / "s").fit().transform([a, b])
    assert n_images_through_vit(vit_forwards) == 2
    assert [os.fspath(f.image) for f in features] == [str(a), str(b)]
    np.testing.assert_array_equal(load_rgb(features[0].image), load_rgb(rgb_images[1]))
    # The same through a view, and through a pickled view (as joblib workers get it).
    view = pickle.loads(pickle.dumps(features[[1, 0]]))
    assert [os.fspath(f.image) for f in view] == [str(b), str(a)]
    # A file changed since: its pixels are refused, naming it and both contents.
    Image.fromarray(rgb_images[2]).save(a)
    for read in (load_rgb, lambda image: working_pixels(image, (8, 8))):
        with pytest.raises(ImageError, match=f"{a}.* is not the image its features were "
                                             "extracted from .*its content is [0-9a-f]{40}, "
                                             "the features' image was [0-9a-f]{40}"):
            read(features[0].image)
    np.testing.assert_array_equal(load_rgb(features[1].image), load_rgb(rgb_images[0]))
    # The store's own paths are checked too.
    with pytest.raises(ImageError, match="not the image its features were extracted from"):
        load_rgb(FeatureStore(tmp_path / "s", read_only=True)[1].image)


@pytest.mark.slow
def test_segmenter_fits_and_cross_validates_on_a_store(tmp_path, rgb_images):
    features = _vit(store=tmp_path / "s").fit().transform(rgb_images)
    segmenter = MultilevelSegmenter(n_classes=2, refine=None, random_state=0, device="cpu")
    in_memory = [features[i] for i in range(len(features))]
    for a, b in zip(segmenter.fit(features).labels_, segmenter.fit(in_memory).labels_):
        np.testing.assert_array_equal(a, b)
    restored = pickle.loads(pickle.dumps(features))
    train, test = next(KFold(2).split(restored))
    fitted = MultilevelSegmenter(n_classes=2, refine=None, random_state=0, device="cpu")
    masks = fitted.fit(_safe_indexing(restored, train)).predict(_safe_indexing(restored, test))
    # The same split of the records in memory gives the same masks.
    expected = clone(fitted).fit([in_memory[i] for i in train]).predict(
        [in_memory[i] for i in test])
    assert len(masks) == len(test)
    for got, want in zip(masks, expected):
        np.testing.assert_array_equal(got, want)


def test_whole_index_reads_checkpoints_and_a_damaged_one_falls_back(tmp_path, monkeypatch):
    monkeypatch.setattr(skseg._store_format, "CHECKPOINT_COMMITS", 2)
    path = tmp_path / "s"
    for i in range(5):  # five commits: two checkpoints' worth and one more
        FeatureStore(path).extend([_record(i)], content_keys=[f"k{i}"])
    shutil.rmtree(path / "checkpoints")  # as if writers had not made them
    assert len(FeatureStore(path, read_only=True)) == 5
    assert not (path / "checkpoints").exists()  # a read-only reader writes nothing
    assert list(FeatureStore(path).content_keys) == [f"k{i}" for i in range(5)]
    assert sorted(p.name for p in (path / "checkpoints").iterdir()) == [
        f"{0:012d}.json", f"{1:012d}.json"]
    reads = []
    real = skseg._store_location.Location.read_many
    monkeypatch.setattr(skseg._store_location.Location, "read_many",
                        lambda self, keys: reads.extend(keys) or real(self, keys))
    store = FeatureStore(path)
    assert list(store.content_keys) == [f"k{i}" for i in range(5)]
    # Commits 0-3 came from the checkpoints (0 was read at opening); only
    # the commit after them was read on its own.
    assert [key for key in reads if key.startswith("commits/")] == [f"commits/{4:012d}.json"]
    checkpoint = path / "checkpoints" / f"{1:012d}.json"
    checkpoint.write_text(checkpoint.read_text().replace('"k2"', '"kX"'))
    store = FeatureStore(path)
    assert list(store.content_keys) == [f"k{i}" for i in range(5)]
    _assert_same(store.select(["k2"])[0], _record(2))


def test_urls_file_is_local_and_a_filesystem_without_exclusive_create_is_refused(tmp_path):
    store = FeatureStore(f"file://{tmp_path}/s")
    store.extend([_record(0)])
    assert store.path == os.fspath(tmp_path / "s")
    _assert_same(FeatureStore(tmp_path / "s")[0], _record(0))
    # fsspec's in-memory filesystem checks then writes: two writers could
    # both pass, so writing is refused before anything is written.
    with pytest.raises(OSError, match=r"'memory://bucket/s': .*created exclusively and "
                                      r"atomically.*read_only=True") as error:
        FeatureStore("memory://bucket/s")
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="storage_options are for URLs"):
        FeatureStore(tmp_path / "s", storage_options={"key": "x"})
    with pytest.raises(ValueError, match=r"'nosuchfs://x': .*nosuchfs"):
        FeatureStore("nosuchfs://x")


def test_a_commit_whose_success_was_not_heard_is_not_published_twice(tmp_path, monkeypatch):
    # NFS may answer a retransmitted link() that had succeeded with EEXIST.
    path = tmp_path / "s"
    FeatureStore(path).extend([_record(0)])
    real = os.link

    def lost_reply(source, target):
        real(source, target)
        if "commits" in os.fspath(target):
            raise FileExistsError(target)

    monkeypatch.setattr(os, "link", lost_reply)
    assert FeatureStore(path).extend([_record(1), _record(2)]) == 2
    monkeypatch.undo()
    store = FeatureStore(path)
    assert len(store) == 3 and len(list((path / "commits").iterdir())) == 2


def test_pickles_stay_small_and_name_their_store(tmp_path):
    path = tmp_path / "s"
    keys = [f"k{i}" for i in range(300)]
    FeatureStore(path).extend((_record(i % 7) for i in range(300)), content_keys=keys)
    # Keys appended again by another writer (a retried task): scattered duplicates.
    FeatureStore(path).extend((_record(i % 7) for i in range(0, 300, 2)),
                              content_keys=keys[::2])
    store = FeatureStore(path)
    assert len(store) == 300
    view = store.select(keys[10:12], images=[tmp_path / "a.png", tmp_path / "b.png"])
    assert len(pickle.dumps(view)) < 1000
    # Images given where the store has them already are not carried.
    same = store.select(keys[:100], images=[None] * 100)
    assert same._images is None and len(pickle.dumps(same)) < 1000
    payload = pickle.dumps(store[5:7])
    shutil.rmtree(path)
    FeatureStore(path).extend([_record(i) for i in range(10)])  # another store, same place
    with pytest.raises(FileNotFoundError, match="was replaced since"):
        pickle.loads(payload)


def test_a_handle_that_has_seen_the_keys_skips_them_after_other_writers(tmp_path):
    path = tmp_path / "s"
    mine = FeatureStore(path)
    mine.extend([_record(0)], content_keys=["a"])
    assert mine.missing(["a", "b"]) == [1]
    FeatureStore(path).extend([_record(1)], content_keys=["b"])  # another writer
    assert mine.extend([_record(0), _record(1)], content_keys=["a", "b"]) == 0
    assert len(list((path / "commits").iterdir())) == 2


def test_keys_and_images_must_pair_with_records(tmp_path):
    store = FeatureStore(tmp_path / "s")
    with pytest.raises(TypeError, match="content key of record 1 is a NoneType"):
        store.extend([_record(0), _record(1)], content_keys=["a", None])
    with pytest.raises(ValueError, match="more content_keys than records"):
        store.extend([_record(2)], content_keys=["c", "d"])
    assert list(FeatureStore(tmp_path / "s").content_keys) == ["a", "c"]
    with pytest.raises(ValueError, match="1 images for 2 content keys"):
        store.select(["a", "c"], images=["x.png"])


def test_damaged_hints_and_misplaced_checkpoints_cost_reads_never_images(
        tmp_path, monkeypatch):
    monkeypatch.setattr(skseg._store_format, "CHECKPOINT_COMMITS", 2)
    path = tmp_path / "s"
    for i in range(4):
        FeatureStore(path).extend([_record(i)], content_keys=[f"k{i}"])
    # Writers gather each full run of commits into a checkpoint.
    assert len(list((path / "checkpoints").iterdir())) == 2
    (path / "head.json").write_text('{"commits": 1e400}')
    checkpoint = path / "checkpoints" / f"{1:012d}.json"
    records = json.loads(checkpoint.read_text())["commits"]
    checkpoint.write_text(json.dumps({"commits": records[::-1]}))  # each still signed
    store = FeatureStore(path)
    assert list(store.content_keys) == ["k0", "k1", "k2", "k3"]
    _assert_same(store[3], _record(3))


def test_a_store_in_a_linked_folder_is_created(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    FeatureStore(tmp_path / "link").extend([_record(0)])
    _assert_same(FeatureStore(tmp_path / "real")[0], _record(0))


def test_tasks_of_a_process_share_what_they_read_of_a_store(tmp_path, monkeypatch):
    path = tmp_path / "s"
    FeatureStore(path).extend([_record(i) for i in range(6)])
    payloads = [pickle.dumps(FeatureStore(path)[k:k + 2]) for k in (0, 2, 4)]
    pickle.loads(payloads[0]).records_of(0, 2)
    reads = []
    real = skseg._store_location.Location.read
    monkeypatch.setattr(skseg._store_location.Location, "read",
                        lambda self, key: reads.append(key) or real(self, key))
    for k, payload in zip((2, 4), payloads[1:]):
        for stored, i in zip(pickle.loads(payload), (k, k + 1)):
            _assert_same(stored, _record(i))
    assert reads == ["zarr.json", "zarr.json"]  # only the check that it is the same store
    FeatureStore(path).extend([_record(6)])  # a new snapshot is read afresh
    assert len(pickle.loads(pickle.dumps(FeatureStore(path)))) == 7


def test_an_append_commits_whenever_its_buffer_fills_the_working_memory_share(tmp_path):
    import sklearn

    # 8 x 8 x 256 float32 patches: 64 KiB a record, a sixteenth of 1 MiB.
    records = [ImageFeatures(np.full((8, 8, 256), i, np.float32)) for i in range(5)]
    with sklearn.config_context(working_memory=1):
        FeatureStore(tmp_path / "small").extend(records)
    FeatureStore(tmp_path / "default").extend(records)
    assert len(list((tmp_path / "small" / "commits").iterdir())) == 5
    assert len(list((tmp_path / "default" / "commits").iterdir())) == 1
    for name in ("small", "default"):
        assert [f.patches[0, 0, 0] for f in FeatureStore(tmp_path / name)] == list(range(5))
