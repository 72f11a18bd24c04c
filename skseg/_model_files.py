"""Fitted pipelines saved and loaded in the skops format.

:mod:`skops.io` builds only the types it is told to trust and never runs code
from the file. The public face of this module is :mod:`skseg.io`.
"""

from pathlib import Path

from ._io import write_atomically

# Every type a saved skseg pipeline holds that skops does not trust by itself
# (it trusts scikit-learn's and numpy's): what skseg.io.load_model trusts, and
# what a user passes to skops.io.load.
TRUSTED_TYPES = (
    "skseg._transformer.ViTPatchTransformer",
    "skseg._segmenter.MultilevelSegmenter",
    "skseg._regions.LabelMasks",
    "skseg._regions.Regions",
    "skseg._label_store.LabelStore",
    "skseg._label_store.StoredCategories",
    "skseg._label_store.StoredLabelMasks",
)


def _check_pipeline(pipeline, what):
    """A fitted ViTPatchTransformer + MultilevelSegmenter pipeline, or an error
    saying ``what`` is not one."""
    from sklearn.pipeline import Pipeline

    from ._segmenter import MultilevelSegmenter
    from ._transformer import ViTPatchTransformer

    steps = getattr(pipeline, "steps", None)
    if (not isinstance(pipeline, Pipeline) or len(steps) != 2
            or not isinstance(steps[0][1], ViTPatchTransformer)
            or not isinstance(steps[1][1], MultilevelSegmenter)
            or not hasattr(steps[1][1], "class_centroids_")):
        raise ValueError(f"{what} (not a fitted ViTPatchTransformer + MultilevelSegmenter "
                         "pipeline).")


def save_model(pipeline, path, *, keep_labels=False):
    """Save a fitted pipeline in the skops format, which loads without
    running code from the file.

    What ``skseg segment --save-model`` writes; :func:`load_model` (or
    ``skops.io.load(path, trusted=skseg.io.TRUSTED_TYPES)``) reads it. The
    file is written atomically. The ViT itself is never saved, only its
    name and parameters: loading builds it again (from the same weights
    file, stored as an absolute path, or the hub cache).

    Parameters
    ----------
    pipeline : sklearn.pipeline.Pipeline
        A fitted :class:`~skseg.ViTPatchTransformer` +
        :class:`~skseg.MultilevelSegmenter` pipeline.
    path : path-like
        The file written (``.skops`` by convention).
    keep_labels : bool, default=False
        Also save the training masks (``labels_``, compressed). Predicting
        needs only the centroids, and the masks can outweigh them many times.

    Raises
    ------
    ValueError
        ``pipeline`` is not a fitted skseg pipeline.

    See Also
    --------
    load_model : Read it back.
    """
    import copy

    import skops.io

    _check_pipeline(pipeline, f"cannot save {type(pipeline).__name__} as a skseg model")
    saved = pipeline
    if not keep_labels:
        segmenter = copy.copy(pipeline.steps[-1][1])
        # Predicting needs the centroids, not the training masks.
        vars(segmenter).pop("labels_", None)
        saved = copy.copy(pipeline)
        saved.steps = [*pipeline.steps[:-1], (pipeline.steps[-1][0], segmenter)]
    data = skops.io.dumps(saved)
    write_atomically(path, lambda handle: handle.write(data))


def load_model(path):
    """Read a pipeline saved by :func:`save_model` (or ``skseg segment
    --save-model``).

    Only the types of :data:`TRUSTED_TYPES` and those skops trusts by itself
    (scikit-learn's, numpy's) are built, and no code from the file ever runs:
    any other file is refused.

    Parameters
    ----------
    path : path-like

    Returns
    -------
    pipeline : sklearn.pipeline.Pipeline
        The fitted pipeline, ready to ``predict``.

    Raises
    ------
    ValueError
        The file cannot be read, or is not a skseg model (one line, naming
        the file and, for a skops file, the foreign types it holds).
    """
    import skops.io

    not_a_model = f"{path} is not a model saved by skseg"
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{path} cannot be read: {exc.strerror}.") from None
    try:
        untrusted = skops.io.get_untrusted_types(data=data)
    except Exception:  # skops raises zip, JSON and key errors alike for foreign files
        raise ValueError(f"{not_a_model}.") from None
    foreign = sorted(set(untrusted) - set(TRUSTED_TYPES))
    if foreign:
        raise ValueError(f"{not_a_model}: it holds types a saved skseg model never holds "
                         f"({', '.join(foreign[:3])}); refusing to load it.")
    try:
        pipeline = skops.io.loads(data, trusted=untrusted)
    except Exception as exc:
        raise ValueError(f"{not_a_model} ({type(exc).__name__}).") from None
    _check_pipeline(pipeline, not_a_model)
    return pipeline
