"""ImageFeatures, FeatureSequence and the one check of features that the
segmenter and the feature store share."""

import pickle

import numpy as np
import pytest

from skseg import FeatureSequence, FeatureStore, ImageFeatures, MultilevelSegmenter
from skseg.datasets import make_patch_features


def _as(records, dtype):
    return [ImageFeatures(patches=np.asarray(f.patches > 0 if dtype is bool else f.patches,
                                             dtype=dtype), cls=f.cls) for f in records]


@pytest.mark.filterwarnings("ignore::skseg.ForegroundWarning")  # tiny data, 2 clusters
@pytest.mark.parametrize("dtype,accepted", [
    (bool, True), (np.int8, True), (np.float16, True),
    (np.complex64, False), ("U3", False), (object, False),
])
def test_the_segmenter_and_the_store_accept_the_same_features(tmp_path, dtype, accepted):
    X, _ = make_patch_features(n_images=6, grid=(6, 6), n_features=8, n_classes=2,
                               random_state=0)
    X = _as(X, dtype)
    segmenter = MultilevelSegmenter(n_classes=2, n_dataset_clusters=2, refine=None,
                                    random_state=0)
    store = FeatureStore(tmp_path / "features.zarr")
    if accepted:
        assert len(segmenter.fit(X).labels_) == 6
        assert store.extend(X) == 6
        # The store keeps them as floats: what the segmenter computes on.
        np.testing.assert_array_equal(store[2].patches,
                                      X[2].patches.astype(store[2].patches.dtype))
    else:
        with pytest.raises(TypeError, match=r"X\[0\] has patches of dtype .*real numbers"):
            segmenter.fit(X)
        with pytest.raises(TypeError, match="record 0 has patches of dtype .*real numbers"):
            store.extend(X)
        assert len(FeatureStore(tmp_path / "features.zarr")) == 0


def test_a_record_is_checked_when_it_is_made():
    with pytest.raises(ValueError, match=r"non-empty \(h, w, d\) array, got shape \(4, 8\)"):
        ImageFeatures(np.zeros((4, 8)))
    with pytest.raises(ValueError, match="attention has shape \\(2, 2\\), but the patch "
                                         "grid is \\(4, 4\\)"):
        ImageFeatures(np.zeros((4, 4, 8)), attention=np.zeros((2, 2)))
    assert ImageFeatures(np.zeros((4, 5, 8)), patch_size=16).image_shape == (64, 80)


def test_a_feature_sequence_indexes_like_a_list_and_pickles():
    records = [ImageFeatures(np.full((2, 2, 3), i, np.float32)) for i in range(5)]
    X = FeatureSequence(records)
    assert X[3] is records[3]
    assert [f.patches[0, 0, 0] for f in X[[4, 0]]] == [4, 0]
    assert [f.patches[0, 0, 0] for f in X[np.array([True, False] * 2 + [True])]] == [0, 2, 4]
    with pytest.raises(IndexError):
        X[np.array([True, False])]
    assert [f.patches[0, 0, 0] for f in pickle.loads(pickle.dumps(X[1:3]))] == [1, 2]
    with pytest.raises(TypeError, match="item 1 is a str, not ImageFeatures"):
        FeatureSequence([records[0], "x"])
