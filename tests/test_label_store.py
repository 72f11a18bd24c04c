import os
import pickle

import numpy as np
import pytest

import skseg._chunks
import skseg._fit_stages
import skseg._per_image_path
from skseg import MultilevelSegmenter
from skseg._label_store import LabelStore
from skseg.datasets import make_patch_features

pytestmark = pytest.mark.usefixtures("one_blas_and_openmp_thread")


@pytest.fixture(scope="module")
def planted():
    return make_patch_features(n_images=40, n_classes=3, random_state=0)[0]


def _seg(**kwargs):
    return MultilevelSegmenter(n_classes=3, refine=None, random_state=0, device="cpu",
                               max_samples=30, **kwargs)


# Fitted once per module for the tests that only read them.
@pytest.fixture(scope="module")
def in_memory(planted, one_blas_and_openmp_thread):
    return _seg().fit(planted)


@pytest.fixture(scope="module")
def stored(planted, one_blas_and_openmp_thread, tmp_path_factory):
    path = tmp_path_factory.mktemp("stored") / "labels.zarr"
    # A str path: skops trusts no pathlib type by itself.
    return _seg(labels_path=str(path), chunk_size=6).fit(planted)


def test_masks_written_by_the_workers_are_those_kept_in_memory(planted, in_memory, tmp_path,
                                                               monkeypatch):
    # With labels_path, the per-image pass's tasks write regions and
    # descriptors and send back only their number, a light last pass writes
    # the classes, and labels_ reads the masks back: the same masks, from
    # any chunking and number of jobs.
    returned = []
    real = skseg._per_image_path.segment

    def recorded(*args):
        result = real(*args)
        returned.append(result[:2])
        return result

    statistics, surveyed = [], []
    real_statistics, real_survey = skseg._fit_stages.dataset_statistics, skseg._fit_stages.survey

    def recorded_statistics(*args):
        result = real_statistics(*args)
        statistics.append(result)
        return result

    def recorded_survey(*args):
        result = real_survey(*args)
        surveyed.append(result)
        return result

    monkeypatch.setattr(skseg._per_image_path, "segment", recorded)
    monkeypatch.setattr(skseg._fit_stages, "dataset_statistics", recorded_statistics)
    monkeypatch.setattr(skseg._fit_stages, "survey", recorded_survey)
    path = tmp_path / "labels.zarr"
    seg = _seg(labels_path=path, chunk_size=7, n_jobs=2).fit(planted)
    assert all(isinstance(n, int) and descriptors is None for n, descriptors in returned)
    assert sum(n for n, _ in returned) == sum(
        int(in_memory.labels_.region_map(i).max()) for i in range(len(planted)))
    # The statistics' category samples came back as priorities alone; the
    # category 2-means, fitted on the workers from the rows they kept, are
    # those fitted here on the rows in memory.
    assert all(sample.result().shape[1] == 0
               for *_, samples in statistics for sample in samples.values() if len(sample))
    # Nothing per image comes back: no keys from the survey (the workers
    # compute them again), no categories from the statistics (the per-image
    # pass writes them beside the masks, where categories_ reads them).
    assert all(keys is None for keys, *_ in surveyed)
    assert all(categories is None for categories, *_ in statistics)
    np.testing.assert_array_equal(seg.categories_, in_memory.categories_)
    assert len(seg.categories_) == len(planted)
    assert seg.categories_[-1] == in_memory.categories_[-1]
    np.testing.assert_array_equal(seg.categories_[5:9], in_memory.categories_[5:9])
    np.testing.assert_array_equal(seg.category_centroids_, in_memory.category_centroids_)
    assert sorted(os.listdir(path)) == ["chunks", "zarr.json"]  # work and shared state gone
    np.testing.assert_array_equal(seg.class_centroids_, in_memory.class_centroids_)
    assert len(seg.labels_) == len(planted)
    for i in range(len(planted)):
        np.testing.assert_array_equal(seg.labels_[i], in_memory.labels_[i])
        np.testing.assert_array_equal(seg.labels_.region_map(i), in_memory.labels_.region_map(i))
    assert seg.labels_[0].dtype == in_memory.labels_[0].dtype
    monkeypatch.undo()
    for i, mask in zip(range(len(planted)), seg.predict(planted)):
        np.testing.assert_array_equal(mask, seg.labels_[i])


def test_stored_masks_index_pickle_and_save_like_masks_in_memory(in_memory, stored, tmp_path):
    in_memory, stored = in_memory.labels_, stored.labels_
    subset = stored[3:30][::4][[0, -1]]
    np.testing.assert_array_equal(subset[0], in_memory[3])
    np.testing.assert_array_equal(subset[1], in_memory[27])
    np.testing.assert_array_equal(stored[np.arange(40) % 2 == 1][0], in_memory[1])
    with pytest.raises(IndexError):
        stored[40]
    again = pickle.loads(pickle.dumps(stored))
    np.testing.assert_array_equal(again[-1], in_memory[-1])
    paths = stored[:3].save(tmp_path / "masks")
    assert [p.name for p in paths] == ["0.png", "1.png", "2.png"]


def test_a_segmenter_with_stored_masks_saves_and_loads_through_skops(stored):
    import skops.io

    from skseg.io import TRUSTED_TYPES

    seg = stored
    data = skops.io.dumps(seg)
    assert set(skops.io.get_untrusted_types(data=data)) <= set(TRUSTED_TYPES)
    loaded = skops.io.loads(data, trusted=TRUSTED_TYPES)
    np.testing.assert_array_equal(loaded.labels_[17], seg.labels_[17])
    np.testing.assert_array_equal(loaded.categories_, seg.categories_)


def test_labels_path_is_replaced_at_each_fit_but_never_holding_anything_else(planted,
                                                                            tmp_path):
    path = tmp_path / "labels.zarr"
    first = _seg(labels_path=path, chunk_size=5).fit(planted)
    second = _seg(labels_path=path, chunk_size=9).fit(planted[:20])
    in_memory = _seg().fit(planted[:20])
    assert len(second.labels_) == 20
    np.testing.assert_array_equal(second.labels_[19], in_memory.labels_[19])
    with pytest.raises(RuntimeError, match="replaced by a later fit"):
        first.labels_[0]
    taken = tmp_path / "mine"
    taken.mkdir()
    (taken / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="does not hold the masks of an earlier fit"):
        _seg(labels_path=taken).fit(planted)
    assert (taken / "notes.txt").read_text() == "keep me"


# Tiny planted images: whether the foreground looks right is not the point.
@pytest.mark.filterwarnings("ignore::skseg.ForegroundWarning")
def test_task_arguments_stay_small_when_the_fitted_state_is_large(tmp_path, monkeypatch):
    # 512-dimensional features: the centroids the tasks read are 16 kB and
    # more, sent with every task in memory; with labels_path they are
    # written once and each task gets a reference, at most 10 kB in all.
    X = make_patch_features(n_images=12, n_features=512, n_classes=3, random_state=0)[0]
    sizes = {}
    real = skseg._chunks.delayed

    def measured(task):
        # X travels as itself or as its location, the store's affair.
        size = len(pickle.dumps(task.task.args[3:], protocol=5))
        sizes[task.__name__] = max(sizes.get(task.__name__, 0), size)
        return real(task)

    monkeypatch.setattr(skseg._chunks, "delayed", measured)
    in_memory = _seg(chunk_size=4).fit(X)
    assert max(sizes.values()) > 16_000
    sizes.clear()
    seg = _seg(chunk_size=4, labels_path=tmp_path / "labels.zarr").fit(X)
    assert {"dataset_statistics", "gather_category_rows", "fit_category_pairs", "segment",
            "region_rows", "label_regions"} <= set(sizes)
    assert max(sizes.values()) <= 10_000
    for i in range(len(X)):
        np.testing.assert_array_equal(seg.labels_[i], in_memory.labels_[i])


def test_a_shared_value_is_read_once_per_process_and_checked(tmp_path):
    store = LabelStore.create(tmp_path / "labels.zarr")
    value = {"centroids": np.arange(10_000, dtype=np.float32)}
    shared = store.share(value)
    assert shared.value is value
    sent = pickle.dumps(shared)
    assert len(sent) < 500
    skseg._label_store._load_shared.cache_clear()
    received = pickle.loads(sent)
    np.testing.assert_array_equal(received.value["centroids"], value["centroids"])
    assert pickle.loads(sent).value is received.value  # one read per process
    with open(tmp_path / "labels.zarr" / f"shared-{store.fit}" / shared.digest, "r+b") as file:
        file.seek(-1, os.SEEK_END)
        file.write(b"!")
    skseg._label_store._load_shared.cache_clear()
    with pytest.raises(RuntimeError, match="no longer holds"):
        _ = pickle.loads(sent).value


@pytest.mark.slow
def test_labels_path_on_object_storage_gives_the_masks_kept_in_memory(planted, s3,
                                                                      monkeypatch):
    # Workers that share no filesystem write their chunks to S3 (moto's
    # server here, reached through labels_options alone): the same masks
    # and categories, the work and shared state deleted afterwards, and the
    # masks read back after pickling.
    from . import _s3

    in_memory = _seg().fit(planted[:20])
    for name in s3.server.environment():
        monkeypatch.delenv(name)
    _s3.clear_filesystem_caches()
    url = s3.url("labels.zarr")
    seg = _seg(labels_path=url, labels_options=s3.server.storage_options(), chunk_size=7,
               n_jobs=2).fit(planted[:20])
    assert seg.labels_._store.path == url
    for i in (0, 9, 19):
        np.testing.assert_array_equal(seg.labels_[i], in_memory.labels_[i])
    np.testing.assert_array_equal(seg.categories_, in_memory.categories_)
    keys = s3.keys()
    assert keys and all(k.startswith("labels.zarr/") for k in keys)
    assert {k.split("/")[1] for k in keys} == {"chunks", "zarr.json"}
    again = pickle.loads(pickle.dumps(seg.labels_))
    np.testing.assert_array_equal(again[19], in_memory.labels_[19])
    # A path that holds something else is refused, not emptied.
    s3.server.client().put_object(Bucket=s3.name, Key="other/data.bin", Body=b"x")
    with pytest.raises(ValueError, match="does not hold the masks"):
        LabelStore.create(s3.url("other"), s3.server.storage_options())
    assert "other/data.bin" in s3.keys()


# ------------------------------------------------- the store by itself


def _regions(shape, ids):
    """Regions of a small ``shape`` from a map of region ids (0: none)."""
    from skseg._regions import Regions

    rows, starts, stops, runs = [], [], [], []
    for row, line in enumerate(np.asarray(ids)):
        column = 0
        while column < len(line):
            end = column
            while end < len(line) and line[end] == line[column]:
                end += 1
            if line[column]:
                rows.append(row), starts.append(column), stops.append(end)
                runs.append(line[column])
            column = end
    return Regions(shape, *map(np.array, (rows, starts, stops, runs)), int(np.max(ids)))


def test_a_chunk_reads_back_its_regions_classes_and_categories(tmp_path):
    store = LabelStore.create(tmp_path / "labels.zarr")
    first = _regions((2, 4), [[1, 1, 0, 2], [0, 0, 0, 2]])
    empty = _regions((3, 2), np.zeros((3, 2), int))
    last = _regions((1, 3), [[0, 1, 1]])
    descriptors = [np.ones((2, 3), np.float32), np.zeros((0, 3), np.float32),
                   np.full((1, 3), 2, np.float32)]
    store.write_regions(10, [first, empty, last], descriptors, np.array([5, 7, 6]),
                        np.array([2, 0, 1]))
    store.write_classes(10, np.array([3, 1, 1], np.uint8))
    store.write_classes(10, np.array([3, 1, 2], np.uint8))  # the last pass, run again
    read = store.read(10)
    assert [shape for shape, _, _ in read] == [(2, 4), (3, 2), (1, 3)]
    assert [runs.tolist() for _, runs, _ in read] \
        == [[[0, 0, 2, 1], [0, 3, 4, 2], [1, 3, 4, 2]], [], [[0, 1, 3, 1]]]
    assert [classes.tolist() for _, _, classes in read] == [[3, 1], [], [2]]
    assert store.categories(10).tolist() == [2, 0, 1]
    priorities = store.priorities(10)
    assert priorities.tolist() == [5, 7, 6] and priorities.dtype == np.uint64
    stored = store.descriptors(10)
    np.testing.assert_array_equal(stored, [[1, 1, 1], [1, 1, 1], [2, 2, 2]])
    assert stored.dtype == np.float32
    # A chunk without regions: no descriptors, no priorities.
    store.write_regions(20, [empty], [np.zeros((0, 3), np.float32)], [], [1])
    assert len(store.descriptors(20)) == 0 and store.descriptors(20).dtype == np.float32
    assert len(store.priorities(20)) == 0 and store.categories(20).tolist() == [1]
    # The masks of a fit are no longer read once a later fit took the path.
    LabelStore.create(tmp_path / "labels.zarr")
    with pytest.raises(RuntimeError, match="replaced by a later fit to the same labels_path"):
        store.read(10)


def test_stored_categories_index_like_an_array_and_pickle_as_their_place(tmp_path):
    from skseg._label_store import StoredCategories

    store = LabelStore.create(tmp_path / "labels.zarr")
    categories = np.array([4, 0, 2, 2, 1, 3, 0])
    for start, stop in ((0, 3), (3, 5), (5, 7)):
        n = stop - start
        store.write_regions(start, [_regions((1, 1), [[0]])] * n,
                            [np.zeros((0, 2), np.float32)] * n, [], categories[start:stop])
    stored = StoredCategories(store, [0, 3, 5], 7)
    assert len(stored) == 7
    np.testing.assert_array_equal(stored, categories)
    assert np.asarray(stored).dtype == np.int64
    assert np.asarray(stored, dtype=np.float32).dtype == np.float32
    assert [stored[i] for i in range(7)] == categories.tolist()
    assert stored[-1] == 0 and stored[4] == 1 and stored[3] == 2
    np.testing.assert_array_equal(stored[2:6], categories[2:6])
    np.testing.assert_array_equal(stored[[6, 0]], [0, 4])
    with pytest.raises(IndexError):
        stored[7]
    with pytest.raises(IndexError, match="categories_ indices"):
        stored["a"]
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(stored)), categories)
    assert "7 images" in repr(stored)
    # Compared, iterated and shaped as the array they stand for; iterating
    # reads each chunk once.
    np.testing.assert_array_equal(stored == 2, categories == 2)
    np.testing.assert_array_equal(stored != 2, categories != 2)
    assert stored.shape == (7,)
    reads = []
    real_categories = store.categories
    store.categories = lambda start: reads.append(start) or real_categories(start)
    assert list(stored) == categories.tolist() and reads == [0, 3, 5]
    # Not read once a later fit took the path.
    LabelStore.create(tmp_path / "labels.zarr")
    store.categories = real_categories
    with pytest.raises(RuntimeError, match="replaced by a later fit"):
        np.asarray(stored)


def test_parts_pass_from_task_to_task_of_one_fit_until_removed(tmp_path):
    store = LabelStore.create(tmp_path / "labels.zarr")
    assert store.read_part("rows", 10) is None
    store.write_part("rows", 20, priority=np.array([3], np.uint64))
    store.write_part("rows", 10, priority=np.array([1, 2], np.uint64))
    store.write_part("rows", 10, priority=np.array([9], np.uint64))  # a task run again
    assert store.read_part("rows", 10)["priority"].tolist() == [9]
    assert store.read_part("rows", 20)["priority"].tolist() == [3]
    # A fit started at the same path meanwhile neither sees them nor is seen.
    later = LabelStore(tmp_path / "labels.zarr", "another fit")
    assert later.read_part("rows", 20) is None
    later.write_part("rows", 20, priority=np.array([7], np.uint64))
    assert store.read_part("rows", 20)["priority"].tolist() == [3]
    store.remove("work")
    assert store.read_part("rows", 20) is None
    assert later.read_part("rows", 20)["priority"].tolist() == [7]
    store.remove("work")  # nothing there: no error


def test_a_store_pickles_as_its_place_and_fit(tmp_path):
    import zarr

    store = LabelStore.create(tmp_path / "labels.zarr")
    assert dict(zarr.open_group(tmp_path / "labels.zarr", mode="r").attrs) \
        == {"format": "skseg.labels", "version": 2, "fit": store.fit}
    again = pickle.loads(pickle.dumps(store))
    assert again == store and hash(again) == hash(store) and again.path == store.path
    later = LabelStore.create(tmp_path / "labels.zarr")
    assert later != store and later.fit != store.fit and hash(later) != hash(store)
    assert store != store.path
    for taken in (tmp_path / "a file", tmp_path / "a folder" / "notes.txt"):
        taken.parent.mkdir(exist_ok=True)
        taken.write_text("keep me")
        with pytest.raises(ValueError, match="does not hold the masks of an earlier fit; "
                                             "give a new path"):
            LabelStore.create(tmp_path / taken.relative_to(tmp_path).parts[0])
        assert taken.read_text() == "keep me"
    LabelStore.create(tmp_path / "empty")  # a new path is fine, and so is an empty folder
    (tmp_path / "empty folder").mkdir()
    LabelStore.create(tmp_path / "empty folder")
    with pytest.raises(ValueError, match="storage_options are for URLs"):
        LabelStore.create(tmp_path / "options", storage_options={"anon": True})
    assert not (tmp_path / "options").exists()  # refused before anything is written
    (tmp_path / "link").symlink_to(tmp_path / "labels.zarr")
    with pytest.raises(ValueError, match="is a symbolic link; give the folder it points to"):
        LabelStore.create(tmp_path / "link")
    with pytest.raises(ValueError, match="storage_options are for URLs"):
        LabelStore(tmp_path / "labels.zarr", store.fit, storage_options={"anon": True})


def test_a_store_at_a_url_carries_its_storage_options_and_names_itself(tmp_path):
    # fsspec's in-memory filesystem stands for object storage here.
    store = LabelStore.create("memory://skseg-tests/labels.zarr",
                              storage_options={"skip_instance_cache": True})
    assert store.location.storage_options == {"skip_instance_cache": True}
    again = pickle.loads(pickle.dumps(store))
    assert again.location.storage_options == {"skip_instance_cache": True}
    with pytest.raises(ValueError, match="labels_path 'nosuch://bucket/labels.zarr': Protocol"):
        LabelStore.create("nosuch://bucket/labels.zarr")
    with pytest.raises(ValueError, match="labels_path 'nosuch://bucket/labels.zarr': Protocol"):
        LabelStore("nosuch://bucket/labels.zarr", store.fit)


def test_shared_values_live_side_by_side(tmp_path):
    store = LabelStore.create(tmp_path / "labels.zarr")
    one, two = store.share([1]), store.share([2])
    assert one.digest != two.digest and store.share([1]).digest == one.digest
    skseg._label_store._load_shared.cache_clear()
    assert [pickle.loads(pickle.dumps(s)).value for s in (one, two)] == [[1], [2]]


def test_stored_masks_paint_each_image_from_its_chunk(tmp_path):
    from skseg._label_store import StoredLabelMasks

    store = LabelStore.create(tmp_path / "labels.zarr")
    maps = [np.array([[1, 1, 0], [0, 2, 2]]), np.array([[0, 0], [1, 0]]),
            np.array([[1, 0, 1]])]
    classes = [[4, 2], [1], [3]]
    for start, (region_map, image_classes) in enumerate(zip(maps, classes)):  # a chunk each
        store.write_regions(start, [_regions(region_map.shape, region_map)],
                            [np.zeros((len(image_classes), 2), np.float32)], [], [0])
        store.write_classes(start, np.array(image_classes, np.uint8))
    masks = StoredLabelMasks(store, [0, 1, 2], 3, np.uint8)
    sent = len(pickle.dumps(masks))
    expected = [np.choose(m, [0, *c]) for m, c in zip(maps, classes)]
    assert len(masks) == 3
    for i in (2, 0, 1, -1):
        np.testing.assert_array_equal(masks[i], expected[i])
        assert masks[i].dtype == np.uint8
        np.testing.assert_array_equal(masks.region_map(i), maps[i])
        assert masks.region_map(i).dtype == np.int32
    assert len(pickle.dumps(masks)) == sent  # not the chunk it last read
    later = masks[1:][::-1]  # a view of a view, in its own order
    assert len(later) == 2
    np.testing.assert_array_equal(later[0], expected[2])
    assert later[0].dtype == np.uint8
    np.testing.assert_array_equal(later.region_map(1), maps[1])
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(later))[1], expected[1])
    with pytest.raises(IndexError):
        masks[3]
    for index in (lambda key: masks[key], masks.region_map):
        with pytest.raises(IndexError, match="StoredLabelMasks indices"):
            index("a")
    assert "3 images" in repr(masks)
    # Read in order, each chunk is read once.
    store = LabelStore.create(tmp_path / "one chunk.zarr")
    store.write_regions(0, [_regions(m.shape, m) for m in maps],
                        [np.zeros((len(c), 2), np.float32) for c in classes], [], [0, 0, 0])
    store.write_classes(0, np.concatenate(classes).astype(np.uint8))
    reads = []
    real_read = store.read
    store.read = lambda start: reads.append(start) or real_read(start)
    masks = StoredLabelMasks(store, [0], 3, np.uint8)
    for i in range(3):
        np.testing.assert_array_equal(masks[i], expected[i])
    assert reads == [0]
