"""Mean intersection over union for unsupervised segmentation.

Predicted ids are arbitrary, so they are matched to ground-truth classes
before IoU is computed. The field's protocol is one confusion matrix over all
pixels of all images and a one-to-one Hungarian matching of ids to classes.
"""

import numpy as np
from scipy.optimize import linear_sum_assignment

MATCHINGS = ("hungarian", "majority", "none")


def _as_masks(masks, name):
    if isinstance(masks, np.ndarray):
        if masks.ndim == 2:
            raise ValueError(
                f"{name} is a single 2-D mask; pass a list of masks or an (n, H, W) stack."
            )
        if masks.ndim != 3:
            raise ValueError(f"{name} must be a list of 2-D masks or an (n, H, W) stack.")
        return list(masks)
    if isinstance(masks, (str, bytes)) or not hasattr(masks, "__len__"):
        raise TypeError(f"{name} must be a sequence of integer masks.")
    return list(masks)


def _checked_pairs(y_true, y_pred, ignore_index):
    y_true = _as_masks(y_true, "y_true")
    y_pred = _as_masks(y_pred, "y_pred")
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} masks but y_pred has {len(y_pred)}.")
    if not y_true:
        raise ValueError("y_true and y_pred are empty.")
    pairs = []
    for index, (truth, pred) in enumerate(zip(y_true, y_pred)):
        truth, pred = np.asarray(truth), np.asarray(pred)
        for name, mask in (("y_true", truth), ("y_pred", pred)):
            if mask.dtype.kind not in "iub":
                raise TypeError(
                    f"{name}[{index}] has dtype {mask.dtype}; masks must be integers."
                )
            if mask.ndim != 2:
                raise ValueError(f"{name}[{index}] has shape {mask.shape}; masks are 2-D.")
        if truth.shape != pred.shape:
            raise ValueError(
                f"mask {index}: y_true has shape {truth.shape} but y_pred has {pred.shape}."
            )
        for name, mask in (("y_true", truth), ("y_pred", pred)):
            if mask.size and mask.min() < 0 and (mask[mask < 0] != ignore_index).any():
                raise ValueError(
                    f"{name}[{index}] has negative labels other than ignore_index={ignore_index}."
                )
        pairs.append((truth.view(np.uint8) if truth.dtype == bool else truth,
                      pred.view(np.uint8) if pred.dtype == bool else pred))
    return pairs


def confusion_matrix(y_true, y_pred, *, ignore_index=255):
    """Pixel counts of every (true class, predicted id) pair over all masks.

    Parameters
    ----------
    y_true, y_pred : sequence of ndarray of shape (H, W), or ndarray (n, H, W)
        Integer masks, pairwise of equal shape.
    ignore_index : int, default=255
        Ground-truth label of pixels left out (void).

    Returns
    -------
    matrix : ndarray of shape (n_true_ids, n_pred_ids), int64
        ``matrix[t, p]`` pixels of ``true_ids[t]`` predicted as ``pred_ids[p]``.
    true_ids, pred_ids : ndarray
        Labels present in the kept pixels, sorted.
    """
    pairs = _checked_pairs(y_true, y_pred, ignore_index)
    high_true, low, high = 0, None, None
    for truth, pred in pairs:  # first pass: the id ranges, nothing copied
        valid = truth != ignore_index
        if valid.any():
            high_true = max(high_true, int(truth.max(where=valid, initial=0)))
            limits = np.iinfo(pred.dtype)
            p_low = int(pred.min(where=valid, initial=limits.max))
            p_high = int(pred.max(where=valid, initial=limits.min))
            low = p_low if low is None else min(low, p_low)
            high = p_high if high is None else max(high, p_high)
    low = 0 if low is None else low
    high = low if high is None else high
    if high - low < 1 << 16:
        column_ids = np.arange(low, high + 1)
    else:  # sparse, huge ids: index them by rank instead
        column_ids = np.unique(np.concatenate([p[t != ignore_index] for t, p in pairs]))
    width = len(column_ids)
    n_bins = (high_true + 1) * width
    # One bincount per image over a combined (true, pred) index; void pixels
    # go to one extra bin that is dropped.
    counts = np.zeros(n_bins + 1, dtype=np.int64)
    for truth, pred in pairs:
        column = pred - low if width == high - low + 1 else np.searchsorted(column_ids, pred)
        index = truth.astype(np.int64) * width + column
        index[truth == ignore_index] = n_bins
        counts += np.bincount(index.ravel(), minlength=n_bins + 1)
    counts = counts[:n_bins].reshape(high_true + 1, width)
    true_ids = np.flatnonzero(counts.sum(1))
    present = np.flatnonzero(counts.sum(0))
    return counts[np.ix_(true_ids, present)], true_ids, column_ids[present]


def _match(matrix, matching):
    """For each predicted column, the true row it is matched to (-1: none)."""
    n_true, n_pred = matrix.shape
    assigned = np.full(n_pred, -1)
    if matching == "hungarian":
        rows, cols = linear_sum_assignment(matrix, maximize=True)
        assigned[cols] = rows
    elif matching == "majority":
        if n_true:
            assigned = matrix.argmax(0)
    else:
        raise ValueError(f"matching={matching!r}; expected one of {MATCHINGS}.")
    return assigned


def segmentation_report(y_true, y_pred, *, ignore_index=255, matching="hungarian"):
    """Everything behind the mIoU: confusion matrix, matching, per-class IoU.

    Parameters
    ----------
    y_true, y_pred : sequence of ndarray of shape (H, W), or ndarray (n, H, W)
        Ground truth (classes, ``ignore_index`` for void) and predictions
        (arbitrary non-negative ids).
    ignore_index : int, default=255
    matching : {"hungarian", "majority", "none"}, default="hungarian"
        ``"hungarian"``: predicted ids matched one-to-one to classes so as to
        maximise the matched pixels (the standard protocol); unmatched ids
        count as errors. ``"majority"``: each id goes to the class it overlaps
        most (many-to-one, for over-clustering). ``"none"``: ids are classes.

    Returns
    -------
    report : dict
        ``confusion_matrix`` (true x predicted ids), ``true_ids``,
        ``pred_ids``, ``matching`` (dict predicted id -> class, or -1),
        ``iou`` (dict class -> IoU, classes present in the ground truth),
        ``mean_iou``, ``pixel_accuracy``.
    """
    matrix, true_ids, pred_ids = confusion_matrix(y_true, y_pred, ignore_index=ignore_index)
    if matching == "none":
        row_of = {t: r for r, t in enumerate(true_ids.tolist())}
        assigned = np.array([row_of.get(p, -1) for p in pred_ids.tolist()], dtype=int)
    else:
        assigned = _match(matrix, matching)
    # Merge predicted columns into the classes they were matched to.
    merged = np.zeros((len(true_ids), len(true_ids)), dtype=np.int64)
    matched = assigned >= 0
    np.add.at(merged.T, assigned[matched], matrix[:, matched].T)
    tp = np.diag(merged)
    predicted_as = matrix.sum(0)
    # Pixels predicted with an unmatched id are false negatives of their class.
    fp = np.bincount(assigned[matched], weights=predicted_as[matched],
                     minlength=len(true_ids)) - tp
    fn = matrix.sum(1) - tp
    iou = tp / np.maximum(tp + fp + fn, 1)
    total = matrix.sum()
    return {
        "confusion_matrix": matrix,
        "true_ids": true_ids,
        "pred_ids": pred_ids,
        "matching": {int(p): int(true_ids[a]) if a >= 0 else -1
                     for p, a in zip(pred_ids, assigned)},
        "iou": {int(t): float(v) for t, v in zip(true_ids, iou)},
        "mean_iou": float(iou.mean()) if len(iou) else 0.0,
        "pixel_accuracy": float(tp.sum() / total) if total else 0.0,
    }


def mean_iou(y_true, y_pred, *, ignore_index=255, matching="hungarian"):
    """Mean IoU over the ground-truth classes, after matching predicted ids.

    One confusion matrix over all pixels of all images, then one matching for
    the whole dataset (see :func:`segmentation_report`). This is the number
    unsupervised segmentation papers report; :func:`per_image_mean_iou`
    matches each image separately and gives higher, non-comparable scores.

    Parameters
    ----------
    y_true, y_pred : sequence of ndarray of shape (H, W), or ndarray (n, H, W)
    ignore_index : int, default=255
    matching : {"hungarian", "majority", "none"}, default="hungarian"

    Returns
    -------
    score : float in [0, 1]

    Examples
    --------
    >>> import numpy as np
    >>> from skseg.metrics import mean_iou
    >>> truth = [np.array([[0, 0], [1, 1]])]
    >>> mean_iou(truth, [np.array([[7, 7], [3, 3]])])
    1.0
    """
    return segmentation_report(
        y_true, y_pred, ignore_index=ignore_index, matching=matching
    )["mean_iou"]


def per_class_iou(y_true, y_pred, *, ignore_index=255, matching="hungarian"):
    """IoU of each ground-truth class, as a dict class -> IoU."""
    return segmentation_report(
        y_true, y_pred, ignore_index=ignore_index, matching=matching
    )["iou"]


def pixel_accuracy(y_true, y_pred, *, ignore_index=255, matching="hungarian"):
    """Fraction of kept pixels whose matched prediction is right."""
    return segmentation_report(
        y_true, y_pred, ignore_index=ignore_index, matching=matching
    )["pixel_accuracy"]


def per_image_mean_iou(y_true, y_pred, *, ignore_index=255, matching="hungarian"):
    """Mean over images of each image's own matched mIoU.

    Matching each image separately lets every image pick its best
    assignment, which inflates scores: report it apart from
    :func:`mean_iou`, and say so.
    """
    pairs = _checked_pairs(y_true, y_pred, ignore_index)
    scores = [
        mean_iou([t], [p], ignore_index=ignore_index, matching=matching)
        for t, p in pairs if (t != ignore_index).any()
    ]
    return float(np.mean(scores)) if scores else 0.0
