"""mIoU as a scikit-learn scorer, for GridSearchCV and cross_val_score."""

from ._iou import mean_iou


def make_miou_scorer(**kwargs):
    """A scorer ``scorer(estimator, X, y)`` returning :func:`mean_iou`.

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
    return _MIoUScorer(kwargs)


class _MIoUScorer:
    """A picklable scorer (GridSearchCV with n_jobs sends it to workers)."""

    def __init__(self, kwargs):
        mean_iou([[[0]]], [[[0]]], **kwargs)  # refuse bad keyword arguments now
        self.kwargs = kwargs

    def __call__(self, estimator, X, y):
        return mean_iou(y, estimator.predict(X), **self.kwargs)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"make_miou_scorer({args})"


miou_scorer = make_miou_scorer()
