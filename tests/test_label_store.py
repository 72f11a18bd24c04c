import os
import pickle

import numpy as np
import pytest

import skseg._chunks
import skseg._segmenter
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
    real = skseg._segmenter.segment

    def recorded(*args):
        result = real(*args)
        returned.append(result[:2])
        return result

    statistics = []
    real_statistics = skseg._segmenter.dataset_statistics

    def recorded_statistics(*args):
        result = real_statistics(*args)
        statistics.append(result[2])
        return result

    monkeypatch.setattr(skseg._segmenter, "segment", recorded)
    monkeypatch.setattr(skseg._segmenter, "dataset_statistics", recorded_statistics)
    path = tmp_path / "labels.zarr"
    seg = _seg(labels_path=path, chunk_size=7, n_jobs=2).fit(planted)
    assert all(isinstance(n, int) and descriptors is None for n, descriptors in returned)
    assert sum(n for n, _ in returned) == sum(
        int(in_memory.labels_.region_map(i).max()) for i in range(len(planted)))
    # The statistics' category samples came back as priorities alone; the
    # category 2-means, fitted on the workers from the rows they kept, are
    # those fitted here on the rows in memory.
    assert all(sample.result().shape[1] == 0
               for samples in statistics for sample in samples.values() if len(sample))
    np.testing.assert_array_equal(seg.category_centroids_, in_memory.category_centroids_)
    assert not os.path.exists(path / "work") and not os.path.exists(path / "shared")
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
        size = len(pickle.dumps(task.args[3:], protocol=5))
        sizes[task.func.__name__] = max(sizes.get(task.func.__name__, 0), size)
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
    with open(shared.path, "r+b") as file:
        file.seek(-1, os.SEEK_END)
        file.write(b"!")
    skseg._label_store._load_shared.cache_clear()
    with pytest.raises(RuntimeError, match="no longer holds"):
        _ = pickle.loads(sent).value
