"""Fitted pipelines saved and loaded: pickle (every protocol), skops with
skseg's trusted types, skseg.io.save_model / load_model; LabelMasks as a
user holds it."""

import pickle

import numpy as np
import pytest
from sklearn.pipeline import Pipeline

from skseg import LabelMasks, MultilevelSegmenter, ViTPatchTransformer
from skseg.datasets import make_scenes
from skseg.io import TRUSTED_TYPES, load_model, read_masks, save_model

from .conftest import TINY_MODEL


@pytest.fixture(scope="module")
def fitted():
    images, _ = make_scenes(n_images=6, n_classes=2, image_size=(48, 64), random_state=0)
    pipeline = Pipeline([
        ("vit", ViTPatchTransformer(TINY_MODEL, pretrained=False, image_size=64,
                                    device="cpu")),
        ("seg", MultilevelSegmenter(n_classes=2, refine=None, random_state=0)),
    ])
    pipeline.fit(images)
    new_images, _ = make_scenes(n_images=2, n_classes=2, image_size=(48, 64), random_state=5)
    return pipeline, new_images, list(pipeline.predict(new_images))


def _same_masks(left, right):
    assert len(left) == len(right)
    for mine, theirs in zip(left, right):
        assert mine.dtype == theirs.dtype
        np.testing.assert_array_equal(mine, theirs)


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
@pytest.mark.slow
def test_a_fitted_pipeline_pickles_with_every_protocol(fitted, protocol):
    pipeline, new_images, predicted = fitted
    restored = pickle.loads(pickle.dumps(pipeline, protocol=protocol))
    _same_masks(restored.named_steps["seg"].labels_, pipeline.named_steps["seg"].labels_)
    _same_masks(restored.predict(new_images), predicted)


def test_skops_saves_the_whole_pipeline_trusting_only_skseg_types(fitted):
    import skops.io  # here: 2 s of imports that the other tests need not pay

    pipeline, new_images, predicted = fitted
    data = skops.io.dumps(pipeline)  # labels_ included
    assert set(skops.io.get_untrusted_types(data=data)) <= set(TRUSTED_TYPES)
    restored = skops.io.loads(data, trusted=list(TRUSTED_TYPES))
    _same_masks(restored.named_steps["seg"].labels_, pipeline.named_steps["seg"].labels_)
    _same_masks(restored.predict(new_images), predicted)


@pytest.mark.parametrize("keep_labels", [False, True])
@pytest.mark.slow
def test_save_model_and_load_model_round_trip(fitted, tmp_path, keep_labels):
    pipeline, new_images, predicted = fitted
    save_model(pipeline, tmp_path / "m.skops", keep_labels=keep_labels)
    restored = load_model(tmp_path / "m.skops")
    _same_masks(restored.predict(new_images), predicted)
    assert hasattr(restored.named_steps["seg"], "labels_") is keep_labels
    assert hasattr(pipeline.named_steps["seg"], "labels_")  # the user's pipeline untouched


def test_load_model_refuses_other_files_naming_them(tmp_path):
    import skops.io

    from sklearn.preprocessing import FunctionTransformer

    path = tmp_path / "other.skops"
    path.write_bytes(skops.io.dumps(FunctionTransformer(np.exp)))
    with pytest.raises(ValueError, match=r"other\.skops is not a model saved by skseg"):
        load_model(path)
    with pytest.raises(ValueError, match="cannot be read"):
        load_model(tmp_path / "missing.skops")
    with pytest.raises(ValueError, match="not a fitted"):
        save_model(Pipeline([("seg", MultilevelSegmenter())]), tmp_path / "x.skops")


def test_label_masks_index_save_and_give_region_maps(fitted, tmp_path):
    labels = fitted[0].named_steps["seg"].labels_
    assert isinstance(labels, LabelMasks) and len(labels) == 6
    picked = labels[np.array([False, True, False, False, False, True])]
    _same_masks(picked, [labels[1], labels[5]])
    with pytest.raises(IndexError, match="boolean index of length 2 for 6"):
        labels[np.array([True, False])]
    regions = labels.region_map(1)
    assert regions.shape == labels[1].shape
    # Each region holds one class, and the masks' objects are the regions.
    for region in range(1, regions.max() + 1):
        assert len(np.unique(labels[1][regions == region])) == 1
    np.testing.assert_array_equal(regions > 0, labels[1] > 0)
    paths = labels.save(tmp_path / "masks", names=[f"img{i}.jpg" for i in range(6)])
    assert [p.name for p in paths] == [f"img{i}.png" for i in range(6)]
    _same_masks([m.astype(labels[0].dtype) for m in read_masks(tmp_path / "masks")], labels)
