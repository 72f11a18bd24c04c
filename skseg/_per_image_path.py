"""Step 4 of the method, the per-image path over X, which ``fit`` and
``predict`` both run, and where the training images' regions stay until
step 5 has given them classes.

:func:`segment_all` runs the :func:`segment` pass over the chunks of X and
hands each chunk's regions and region descriptors to its caller as they
come. In ``fit`` they go to :class:`RegionsInMemory`, which keeps the
regions and spills the descriptors to a temporary file, or, with
``labels_path``, stay in the workers' files, of which
:class:`RegionsOnWorkers` fetches only the sample for the classes; either
then labels every region with its nearest class. ``predict`` labels them as
they come.
"""

import tempfile
import warnings

import numpy as np

from ._chunks import CurrentBound, PerImage
from ._clustering import BoundedSample
from ._label_store import SpilledRows, StoredCategories, StoredLabelMasks, shared
from ._passes import classes_of, label_regions, offer_regions, region_rows, segment
from ._regions import LabelMasks


def label_dtype(n_classes):
    """The dtype of the label masks: the smaller that holds every class."""
    return np.uint8 if n_classes < 256 else np.int32


def segment_all(X, chunks, expected, state, keep, settings, keys=None, output=None,
                seed=None):
    """The per-image path over X (:func:`segment`), chunk by chunk, for fit
    and predict: ``keep`` gets each chunk's regions and region descriptors
    (one array per image) as they come, so that this process need not hold
    them all; ``settings`` (a :class:`StageSettings`) runs the pass.
    Returns the summed level counts and, with ``output``, the sample of
    region priorities (else None).

    With ``output`` (a :class:`LabelStore`) and ``seed``, the tasks write
    the regions and descriptors there and ``keep`` gets the chunk's number
    of regions; the tasks' samples of region priorities (each row the start
    of the chunk that holds the region) are merged, each task sending only
    those under the bound of the sample when it is dispatched.
    """
    counts, no_pixels = {}, 0
    task_state = shared(state, output)
    keys = None if keys is None else PerImage(keys)
    if output is None:
        sample, args = None, (expected, task_state, keys)
    else:
        sample = BoundedSample(settings.max_samples)
        args = (expected, task_state, keys, output, seed, settings.max_samples,
                CurrentBound(sample))
    for result in settings.map(segment, X, chunks, *args, progress="image level + refinement"):
        chunk_regions, chunk_descriptors, chunk_no_pixels, chunk_counts = result[:4]
        keep(chunk_regions, chunk_descriptors)
        if sample is not None:
            sample.merge(result[4])
        no_pixels += chunk_no_pixels
        for name, values in chunk_counts.items():
            counts[name] = counts.get(name, 0) + values
    if no_pixels and state.refine is not None:  # None: refinement is off
        warnings.warn(
            f"{no_pixels} of {len(X)} images carry no pixels "
            "(ImageFeatures.image is None), so refinement is skipped for them.",
            UserWarning,
        )
    return counts, sample


def classes_per_image(descriptors, class_centroids, dtype):
    """The classes of the regions of a chunk's images, from their
    descriptors (one array per image)."""
    filled = [d for d in descriptors if len(d)]
    classes = classes_of(np.concatenate(filled) if filled else (), class_centroids, dtype)
    return np.split(classes, np.cumsum([len(d) for d in descriptors])[:-1])


class RegionsInMemory:
    """The training images' regions kept in the fitting process, from the
    per-image path to their classes: the regions as they come in, their
    descriptors in a temporary file (closed on leaving the ``with``) until
    the classes are fitted, and the sample for the classes drawn here (the
    descriptors come here anyway)."""

    def __init__(self, settings, seed):
        self._settings, self._seed = settings, seed
        self._regions, self._sample = [], BoundedSample(settings.max_samples)
        self._spill = tempfile.TemporaryFile()
        self._descriptors = SpilledRows(self._spill)

    def __enter__(self):
        return self

    def __exit__(self, *exception):
        self._spill.close()

    def segment(self, X, chunks, expected, keys, state):
        """Run the per-image path; return its level counts."""
        def keep(chunk_regions, chunk_descriptors):
            first = len(self._regions)
            self._regions.extend(chunk_regions)
            self._descriptors.append(chunk_descriptors)
            offer_regions(self._sample, self._seed, keys[first:len(self._regions)],
                          chunk_descriptors)

        counts, _ = segment_all(X, chunks, expected, state, keep, self._settings, keys)
        return counts

    @property
    def n_regions(self):
        """Object regions found in all the images."""
        return sum(r.n_regions for r in self._regions)

    def class_sample(self):
        """The bounded sample of region descriptors for the classes."""
        return self._sample

    def labels(self, class_centroids, dtype):
        """The label masks, every region given its nearest class."""
        classes = [c for chunk in self._descriptors
                   for c in classes_per_image(chunk, class_centroids, dtype)]
        return LabelMasks(self._regions, classes, dtype)


class RegionsOnWorkers:
    """The training images' regions written by the workers to ``output``
    (a :class:`LabelStore`), from the per-image path to their classes: the
    tasks of the per-image pass write regions, descriptors and their
    priorities, and send back a bounded sample of the priorities; the tasks
    of a light pass over the chunks that hold the sample's regions send
    back their descriptors; those of a last pass write the classes."""

    def __init__(self, output, settings, seed):
        self._output, self._settings, self._seed = output, settings, seed

    def __enter__(self):
        return self

    def __exit__(self, *exception):
        pass

    def segment(self, X, chunks, expected, keys, state):
        """Run the per-image path; return its level counts."""
        self._chunks, self._n_images = chunks, len(X)
        self._starts = [start for start, _ in chunks]
        n_regions = []
        counts, self._priorities = segment_all(
            X, chunks, expected, state, lambda n, _: n_regions.append(n), self._settings,
            keys, self._output, self._seed,
        )
        self.n_regions = sum(n_regions)
        return counts

    def class_sample(self):
        """The bounded sample of region descriptors for the classes, fetched
        from the chunks that hold its regions (:func:`region_rows`)."""
        regions = BoundedSample(self._settings.max_samples)
        if len(self._priorities):
            holding = set(self._priorities.result().tolist())
            for rows in self._settings.map(
                region_rows, self._output, [c for c in self._chunks if c[0] in holding],
                self._priorities.largest(), self._settings.max_samples,
            ):
                regions.merge(rows)
        return regions

    def labels(self, class_centroids, dtype):
        """The label masks, read from ``output`` once a last pass
        (:func:`label_regions`) has written every region's class there."""
        for _ in self._settings.map(label_regions, self._output, self._chunks,
                                    shared(class_centroids, self._output), dtype,
                                    progress="labelling"):
            pass
        self._output.remove("shared")
        return StoredLabelMasks(self._output, self._starts, self._n_images, dtype)

    def categories(self):
        """Each image's category, which the per-image pass wrote beside its mask."""
        return StoredCategories(self._output, self._starts, self._n_images)
