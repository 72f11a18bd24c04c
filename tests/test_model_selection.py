import pickle

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score
from sklearn.pipeline import Pipeline

from skseg import MultilevelSegmenter, ViTPatchTransformer
from skseg.datasets import make_patch_features, make_scenes
from skseg.metrics import mean_iou, miou_scorer

from .conftest import TINY_MODEL, n_images_through_vit


@pytest.fixture(scope="module")
def scenes():
    return make_scenes(n_images=9, n_classes=2, image_size=(64, 64), random_state=0)


def _pipeline(**vit_params):
    vit = ViTPatchTransformer(TINY_MODEL, pretrained=False, image_size=64, device="cpu",
                              **vit_params)
    seg = MultilevelSegmenter(n_classes=2, refine_iter=2, random_state=0, device="cpu")
    return Pipeline([("vit", vit), ("seg", seg)])


@pytest.mark.slow
def test_grid_search_over_a_pipeline_on_images(scenes, vit_forwards, tmp_path):
    images, masks = scenes
    search = GridSearchCV(
        _pipeline(store=tmp_path / "features.zarr"),
        param_grid={"seg__n_classes": [1, 2], "seg__n_categories": [1, 2]},
        scoring=miou_scorer, cv=KFold(3), error_score="raise",
    ).fit(images, masks)
    assert len(search.cv_results_["params"]) == 4
    scores = search.cv_results_["mean_test_score"]
    assert np.all((scores >= 0) & (scores <= 1))
    # 4 candidates x 3 folds + the refit, yet each image went through the ViT once.
    assert n_images_through_vit(vit_forwards) == len(images)
    labels = search.predict(images[:2])
    assert labels[0].shape == masks[0].shape
    # The scorer is mean IoU of the fitted pipeline's predictions.
    best = search.best_estimator_
    assert search.score(images, masks) == pytest.approx(mean_iou(masks, best.predict(images)))


@pytest.mark.slow
def test_search_the_segmenter_on_features_extracted_once():
    # Three planted classes: the search must prefer n_classes=3 over 1.
    X, masks = make_patch_features(n_images=45, n_classes=3, random_state=0)
    search = GridSearchCV(
        MultilevelSegmenter(refine=None, random_state=0, device="cpu"),
        param_grid={"n_classes": [1, 3]}, scoring=miou_scorer, cv=KFold(3),
        error_score="raise",
    ).fit(X, masks)
    assert search.best_params_ == {"n_classes": 3}
    assert search.best_score_ > 0.85


@pytest.mark.slow
def test_cross_val_score_clone_pickle_and_parallel_search(scenes, tmp_path):
    images, masks = scenes
    scores = cross_val_score(_pipeline(), images, masks, scoring=miou_scorer, cv=KFold(3),
                             error_score="raise")
    assert scores.shape == (3,) and np.all((scores >= 0) & (scores <= 1))
    fitted = _pipeline().fit(images, masks)
    restored = pickle.loads(pickle.dumps(fitted))
    for a, b in zip(restored.predict(images[:3]), fitted.predict(images[:3])):
        np.testing.assert_array_equal(a, b)
    unfitted = clone(fitted)
    assert not hasattr(unfitted.named_steps["seg"], "labels_")
    parallel = GridSearchCV(
        _pipeline(store=tmp_path / "features.zarr"), {"seg__n_categories": [1, 2]},
        scoring=miou_scorer, cv=KFold(3), n_jobs=2, error_score="raise",
    ).fit(images, masks)
    # The workers extract in other batches and with other thread counts than
    # this process, so features differ in their last bits; the segmenter's
    # draws are keyed by the images' digests, so the scores do not.
    serial = GridSearchCV(
        _pipeline(), {"seg__n_categories": [1, 2]}, scoring=miou_scorer, cv=KFold(3),
        error_score="raise",
    ).fit(images, masks)
    np.testing.assert_allclose(parallel.cv_results_["mean_test_score"],
                               serial.cv_results_["mean_test_score"], atol=1e-6)
