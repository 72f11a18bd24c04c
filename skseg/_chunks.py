"""X in chunks: checking its images, one chunk's arrays ready to cluster,
and running a pass over every chunk.

:func:`chunk_ranges` cuts X into chunks of a share of the working memory;
:func:`map_chunks` runs a pass function (:mod:`skseg._passes`) on each, on
the joblib backend in effect, a bounded window of tasks at a time, each task
carrying only its own chunk's share of X and of per-image arguments.
"""

import functools
import math
from dataclasses import dataclass

import numpy as np
from joblib import Parallel, delayed, effective_n_jobs
from scipy import sparse
from sklearn import config_context, get_config

from ._clustering import patch_priorities, unit_rows
from ._digest import sampling_key
from ._features import FeatureSequence, ImageFeatures, check_features
from ._levels import border_patches
from ._working_memory import PASS_CHUNK, rows_within

# Chunks per job at least, so that a slow or lost worker holds up a small
# share of a pass and the others take up the rest.
CHUNKS_PER_JOB = 4
# Tasks per window of map_chunks, per job: two rounds, so that workers are
# still busy while the caller merges the first round's results (a worker
# idles only at the end of a window, while its slowest task finishes), and
# the finished results the caller holds stay a handful.
IN_FLIGHT_PER_JOB = 2


def as_features(X):
    """X as a sequence of ImageFeatures (a 4-D array becomes one)."""
    if isinstance(X, np.ndarray):
        if X.ndim != 4:
            raise ValueError(
                f"X as an array must be 4-D (n_images, h, w, d), got shape {X.shape}."
            )
        return FeatureSequence(ImageFeatures(patches=patches) for patches in X)
    if isinstance(X, (str, bytes)) or not hasattr(X, "__len__") \
            or not hasattr(X, "__getitem__"):
        raise TypeError(
            "X must be a sequence of ImageFeatures (ViTPatchTransformer's output) or "
            f"a 4-D array of patch features, got {type(X).__name__}."
        )
    if len(X) == 0:
        raise ValueError("X is empty: at least one image is needed.")
    return X


@dataclass(frozen=True)
class Expected:
    """What every image of X must have: what image 0 has in ``fit``, what
    the fitted segmenter saw in ``predict``."""

    n_features: int
    has_cls: bool
    metric: str
    fitted: bool = False
    needs_attention: bool = False
    needs_pixels: str = None  # the parameter that needs them, if any

    def check(self, index, f):
        check_features(f, f"X[{index}]")
        if f.patches.shape[2] != self.n_features:
            raise ValueError(
                f"image {index} has {f.patches.shape[2]}-dimensional features, but "
                + (f"MultilevelSegmenter was fitted on {self.n_features}."
                   if self.fitted else
                   f"image 0 has {self.n_features}: all images must come from one "
                   "extractor.")
            )
        if (f.cls is not None) != self.has_cls:
            raise ValueError(
                f"image {index} {'has' if f.cls is not None else 'lacks'} a CLS token "
                f"but {'the images seen in fit' if self.fitted else 'image 0'} "
                f"{'had' if self.has_cls else 'lacked'} one; give CLS tokens for all "
                "images or for none."
            )
        if f.grid_shape[0] * f.grid_shape[1] < 2:
            raise ValueError(
                f"image {index} has a {f.grid_shape} patch grid: at least 2 patches "
                "are needed to split foreground from background."
            )
        if self.needs_attention and f.attention is None:
            raise ValueError(
                f"image {index} has no attention map, needed by foreground='attention'; "
                "extract with ViTPatchTransformer(attention=True)."
            )
        if self.needs_pixels and f.image is None:
            raise ValueError(
                f"image {index} carries no pixels (ImageFeatures.image is None), "
                f"needed by {self.needs_pixels}."
            )
        for name in ("cls", "attention"):
            values = getattr(f, name)
            if values is not None and not np.isfinite(values).all():
                raise ValueError(f"image {index} has NaN or infinite {name}.")


class Chunk:
    """The checked features of images ``start..stop`` of X, ready to cluster:
    all patches as one (n_patches, d) float32 matrix (unit rows with the
    cosine metric), one descriptor and one content key per image."""

    def __init__(self, X, start, stop, expected, keys=None):
        # A FeatureStore reads a range of images in bulk.
        self.records = X.records_of(start, stop) if hasattr(X, "records_of") \
            else [X[i] for i in range(start, stop)]
        for index, f in enumerate(self.records, start):
            expected.check(index, f)
        self.grids = [f.grid_shape for f in self.records]
        sizes = np.array([h * w for h, w in self.grids])
        self.offsets = np.concatenate([[0], np.cumsum(sizes)])
        self.image_of_patch = np.repeat(np.arange(len(self.records)), sizes)
        # Squared norms first, image by image: a NaN or inf makes a squared
        # norm non-finite, and so does a value whose square overflows.
        flat = [f.patches.reshape(-1, expected.n_features).astype(np.float32, copy=False)
                for f in self.records]
        squares = np.concatenate([np.einsum("ij,ij->i", p, p) for p in flat])
        bad = ~np.isfinite(squares)
        if bad.any():
            index = int(self.image_of_patch[np.argmax(bad)])
            problem = "NaN or infinite" \
                if not np.isfinite(self.records[index].patches).all() \
                else "too large (their squares overflow float32)"
            raise ValueError(f"image {start + index} has {problem} patches.")
        # Then one copy into the chunk's matrix, scaled to unit rows on the
        # way with the cosine metric.
        n_patches = len(squares)
        self.patches = np.empty((n_patches, expected.n_features), np.float32)
        norms = np.maximum(np.sqrt(squares), 1e-12)[:, None]
        for j, p in enumerate(flat):
            rows = self.rows(j)
            if expected.metric == "cosine":
                np.divide(p, norms[rows], out=self.patches[rows])
            else:
                self.patches[rows] = p
        if expected.has_cls:
            descriptors = np.stack([f.cls for f in self.records]).astype(np.float32)
        else:  # no global token: an image is described by its mean patch
            per_image = sparse.csr_matrix(
                (np.ones(n_patches, np.float32), np.arange(n_patches), self.offsets),
                shape=(len(sizes), n_patches),
            )
            descriptors = np.asarray(per_image @ self.patches) / sizes[:, None]
        self.descriptors = unit_rows(descriptors) if expected.metric == "cosine" \
            else descriptors
        if keys is not None:  # computed by an earlier pass
            self.keys = keys

    @functools.cached_property
    def keys(self):
        """One content key per image; only the passes of fit need them.

        From the image's own digest where the record has one: the ViT's
        features of one image differ in their last bits with the batch it ran
        in and the number of threads, and a key of their bytes would then
        re-seed every draw of the image.
        """
        return np.array([sampling_key(f.content_key, (f.patches, f.cls))
                         for f in self.records], dtype=np.uint64)

    def __len__(self):
        return len(self.records)

    def rows(self, j):
        return slice(self.offsets[j], self.offsets[j + 1])

    def priorities(self, seed):
        """Every patch's sampling priority, keyed to its image's content."""
        return np.concatenate([
            patch_priorities(seed, key, h * w) for key, (h, w) in zip(self.keys, self.grids)
        ])

    def on_border(self):
        return np.concatenate([border_patches(grid) for grid in self.grids])

    def attention(self):
        return np.concatenate([f.attention.ravel() for f in self.records]).astype(np.float64)

    def split(self, values):
        """Per-image (h, w) views of a per-patch vector."""
        return [values[self.rows(j)].reshape(self.grids[j]) for j in range(len(self))]


class PerImage:
    """Marks a pass argument with one item per image of X, so that each task
    is sent only its chunk's items."""

    def __init__(self, values):
        self.values = values

    def for_task(self, start, stop):
        return Window(self.values, start, stop)


class CurrentBound:
    """Marks the pass argument that is the priority bound of a sample as
    merged so far: read as each task is dispatched, it spares the task
    sending back rows that can no longer enter the sample, whatever the
    number of rows is (unknown until the pass ends). With ``below``, a
    bound computed beforehand, the tighter of the two."""

    def __init__(self, sample, below=None):
        self.sample = sample
        self.below = below

    def for_task(self, start, stop):
        bounds = [b for b in (self.sample.bound, self.below) if b is not None]
        return min(bounds) if bounds else None


class Window:
    """Items ``start..stop`` of a per-image sequence, indexed (by position or
    by slice) as in the whole sequence: what one task needs of in-memory data."""

    def __init__(self, values, start, stop):
        self.start = start
        self.values = values[start:stop]

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.values[index.start - self.start:index.stop - self.start]
        return self.values[index - self.start]


# ------------------------------------------------------------ running them

def chunk_ranges(X, chunk_size, n_jobs):
    """Ranges of images read together (``chunk_size`` images, or as many
    as a share of the working memory holds in float32 features, and at least
    :data:`CHUNKS_PER_JOB` chunks per job); results do not depend on them."""
    n_images = len(X)
    per_chunk = chunk_size
    if per_chunk is None:
        check_features(X[0], "X[0]")  # predict's first look at X: a path gets a clear error
        per_chunk = rows_within(PASS_CHUNK, 4 * X[0].patches.size)
        per_chunk = min(per_chunk, math.ceil(
            n_images / (CHUNKS_PER_JOB * effective_n_jobs(n_jobs))
        ))
    return [(start, min(start + per_chunk, n_images))
            for start in range(0, n_images, per_chunk)]


def map_chunks(function, X, chunks, *args, n_jobs=None, progress=None):
    """``function(X, start, stop, *args)`` for every chunk, results in
    order, on the joblib backend in effect (threads by default; under
    Dask's, every worker thread of the cluster); with ``progress``, a
    progress bar over the images of that name.

    Each task gets only its chunk's share of per-image data: of X when it is
    in memory (a store travels as its location), and of any ``PerImage``
    argument (any argument with a ``for_task`` method is resolved so, when
    its task is dispatched).

    Tasks are dispatched in windows of :data:`IN_FLIGHT_PER_JOB` per job,
    a window only once the results of the one before it were consumed: the
    caller never holds more than a window of finished results, however slow
    it is to merge them. (joblib alone dispatches a new task whenever one
    finishes, so that results would pile up in the caller.)
    """
    in_memory = isinstance(X, (list, tuple, FeatureSequence))
    config = get_config()

    def task(start, stop):
        # Arguments bound in a partial: joblib's Dask backend scatters a
        # large array argument to one worker, and the task could not be
        # rerun once that worker died; a task carrying its own arguments
        # can be rerun anywhere.
        bound = functools.partial(
            function, Window(X, start, stop) if in_memory else X, start, stop,
            *(arg.for_task(start, stop) if hasattr(arg, "for_task") else arg
              for arg in args),
        )
        return delayed(Configured(bound, config, function))()

    def windows():
        size = IN_FLIGHT_PER_JOB * effective_n_jobs(n_jobs)
        with Parallel(n_jobs=n_jobs, prefer="threads", return_as="generator") as parallel:
            for first in range(0, len(chunks), size):
                yield from parallel(task(start, stop)
                                    for start, stop in chunks[first:first + size])

    results = windows()
    return results if progress is None else _with_progress(results, chunks, progress)


class Configured:
    """A task that runs under the scikit-learn settings of the caller
    (``working_memory`` sizes its buffers), in a worker thread, process or
    on a Dask worker; named after its pass, on Dask's dashboard and in its
    logs.

    scikit-learn's own ``Parallel`` and ``delayed`` do this too, but they
    also capture the warning filters at each call, and on threads a running
    task empties those (they are global to the process) while it installs
    them: the next window's tasks then caught an empty list and warned,
    thousands of times at a million images.
    """

    def __init__(self, task, config, function):
        self.task = task
        self.config = config
        self.__name__ = getattr(function, "__name__", type(function).__name__)

    def __call__(self):
        with config_context(**self.config):
            return self.task()


def _with_progress(results, chunks, description):
    """The results of a pass over ``chunks``, counted on a progress bar."""
    from tqdm.auto import tqdm

    with tqdm(total=sum(stop - start for start, stop in chunks), desc=description,
              unit="img") as bar:
        for (start, stop), result in zip(chunks, results):
            bar.update(stop - start)
            yield result
