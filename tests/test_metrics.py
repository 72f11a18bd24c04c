import pickle

import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.metrics import confusion_matrix as sk_confusion

from skseg.metrics import (
    confusion_matrix,
    make_miou_scorer,
    mean_iou,
    miou_scorer,
    per_class_iou,
    per_image_mean_iou,
    pixel_accuracy,
    segmentation_report,
)


def _pair(seed=0, n=6, shape=(20, 30), n_true=4, n_pred=6):
    rng = np.random.default_rng(seed)
    truth = [rng.integers(0, n_true, shape) for _ in range(n)]
    pred = [rng.integers(0, n_pred, shape) for _ in range(n)]
    return truth, pred


def test_permuted_ids_score_perfectly():
    truth, _ = _pair()
    renamed = [np.choose(t, [17, 3, 250, 9]) for t in truth]
    assert mean_iou(truth, renamed) == 1.0
    assert pixel_accuracy(truth, renamed) == 1.0
    report = segmentation_report(truth, renamed)
    assert report["matching"] == {3: 1, 9: 3, 17: 0, 250: 2}


def test_hungarian_matches_a_brute_force_definition():
    from itertools import permutations

    truth, pred = _pair(n_true=3, n_pred=3)
    flat_t = np.concatenate([t.ravel() for t in truth])
    flat_p = np.concatenate([p.ravel() for p in pred])
    best = 0.0
    for perm in permutations(range(3)):
        mapped = np.array(perm)[flat_p]
        cm = sk_confusion(flat_t, mapped, labels=[0, 1, 2])
        # the protocol maximises matched pixels, then reports the IoU
        matched = np.trace(cm)
        iou = np.diag(cm) / (cm.sum(0) + cm.sum(1) - np.diag(cm))
        if matched > best:
            best, expected = matched, iou.mean()
    assert mean_iou(truth, pred) == pytest.approx(expected)


def test_confusion_matrix_agrees_with_scikit_learn_and_ignores_void():
    truth, pred = _pair()
    truth[0][:5] = 255
    matrix, true_ids, pred_ids = confusion_matrix(truth, pred)
    keep = np.concatenate([t.ravel() for t in truth]) != 255
    flat_t = np.concatenate([t.ravel() for t in truth])[keep]
    flat_p = np.concatenate([p.ravel() for p in pred])[keep]
    np.testing.assert_array_equal(matrix, sk_confusion(flat_t, flat_p)[:4])
    assert list(true_ids) == [0, 1, 2, 3] and list(pred_ids) == list(range(6))
    # Huge, sparse ids are handled by rank.
    sparse = [p * 10**9 for p in pred]
    np.testing.assert_array_equal(confusion_matrix(truth, sparse)[0], matrix)


def test_more_and_fewer_predicted_ids_than_classes():
    truth = [np.array([[0, 0, 1, 1], [2, 2, 3, 3]])]
    over = [np.array([[0, 5, 1, 1], [2, 2, 3, 3]])]
    iou = per_class_iou(truth, over)
    assert iou[0] == pytest.approx(0.5) and iou[1] == iou[2] == iou[3] == 1.0
    assert mean_iou(truth, over, matching="majority") == 1.0
    under = [np.array([[0, 0, 0, 0], [1, 1, 1, 1]])]
    # Two ids for four classes: two classes are matched at IoU 2/4, two get 0.
    assert sorted(per_class_iou(truth, under).values()) == [0.0, 0.0, 0.5, 0.5]
    assert mean_iou(truth, under) == pytest.approx(0.25)


def test_matching_none_takes_ids_as_classes():
    truth = [np.array([[0, 0, 1, 1]])]
    assert mean_iou(truth, [np.array([[1, 1, 0, 0]])], matching="none") == 0.0
    assert mean_iou(truth, [np.array([[1, 1, 0, 0]])]) == 1.0
    assert mean_iou(truth, [np.array([[0, 0, 7, 7]])], matching="none") == 0.5


def test_per_image_matching_is_higher_and_separate():
    truth = [np.array([[0, 1]]), np.array([[0, 1]])]
    pred = [np.array([[0, 1]]), np.array([[1, 0]])]
    assert mean_iou(truth, pred) < 0.5
    assert per_image_mean_iou(truth, pred) == 1.0


def test_stacked_arrays_and_bool_masks():
    truth, pred = _pair()
    assert mean_iou(np.stack(truth), np.stack(pred)) == mean_iou(truth, pred)
    assert mean_iou([np.eye(3, dtype=bool)], [np.eye(3, dtype=int)]) == 1.0


@pytest.mark.parametrize(
    "truth, pred, error, message",
    [
        ([np.zeros((2, 2), int)], [np.zeros((2, 3), int)], ValueError, "mask 0"),
        ([np.zeros((2, 2), int)] * 2, [np.zeros((2, 2), int)], ValueError, "2 masks"),
        ([], [], ValueError, "empty"),
        ([np.zeros((2, 2), int)], [np.zeros((2, 2))], TypeError, r"y_pred\[0\].*float"),
        ([np.zeros((2, 2), int), -np.ones((2, 2), int)], [np.zeros((2, 2), int)] * 2,
         ValueError, r"y_true\[1\] has negative"),
        (np.zeros((2, 2), int), np.zeros((2, 2), int), ValueError, "single 2-D mask"),
    ],
)
def test_bad_input(truth, pred, error, message):
    with pytest.raises(error, match=message):
        mean_iou(truth, pred)


def test_negative_ignore_index_is_allowed():
    truth = [np.array([[0, -1, 1]])]
    assert mean_iou(truth, [np.array([[4, 9, 2]])], ignore_index=-1) == 1.0


def test_scorer_uses_predict_and_pickles():
    class Fixed(ClusterMixin, BaseEstimator):
        def predict(self, X):
            return [np.array([[5, 5, 6]])]

    y = [np.array([[0, 0, 1]])]
    assert miou_scorer(Fixed(), None, y) == 1.0
    scorer = pickle.loads(pickle.dumps(make_miou_scorer(matching="majority")))
    assert scorer(Fixed(), None, y) == 1.0
    with pytest.raises(ValueError, match="matching"):
        make_miou_scorer(matching="greedy")
