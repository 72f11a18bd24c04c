"""mIoU as a scikit-learn scorer, for GridSearchCV and cross_val_score."""

from sklearn.metrics import make_scorer

from ._iou import mean_iou


def make_miou_scorer(**kwargs):
    """A scorer ``scorer(estimator, X, y)`` returning :func:`mean_iou`.

    It is scikit-learn's ``make_scorer(mean_iou, **kwargs)``, with the
    keyword arguments checked at once rather than at the first score.

    The estimator (a :class:`~skseg.MultilevelSegmenter` or a Pipeline ending
    in one) predicts masks for ``X``; ``y`` holds the ground-truth masks.

    Parameters
    ----------
    **kwargs
        Passed to :func:`mean_iou` (``ignore_index``, ``matching``).

    Returns
    -------
    scorer : callable

    Examples
    --------
    >>> from skseg.metrics import make_miou_scorer
    >>> scorer = make_miou_scorer(matching="majority")
    """
    mean_iou([[[0]]], [[[0]]], **kwargs)  # refuse bad keyword arguments now
    return make_scorer(mean_iou, **kwargs)


miou_scorer = make_miou_scorer()
