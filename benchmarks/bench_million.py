"""The fitting process at a million images: what it holds and receives.

The real :meth:`MultilevelSegmenter.fit` runs on a sequence of ``N`` images
that pickles as its length (as a store pickles as its location), with its
passes replaced by stand-ins that return results of the real types and
sizes for ViT-S/16 features (14 x 14 patches of 384 floats a 224-pixel
image, two object regions of a VOC-size photo each) without reading
anything, on 100 joblib threads, so that everything around the passes is
measured as it runs: the merging of the samples, the K-means fits, the
per-image results kept for the labels.

Printed per size, each measured in a fresh process: peak anonymous memory
of the process during ``fit`` (``RssAnon``, sampled in a thread) above what
it held before, that per image, the megabytes of pickled task results
entering the process per pass (survey, statistics, the category 2-means,
per-image path, the region sample), and the largest pickled task argument.
With ``--labels-path``, the fit writes its masks to a temporary
``labels_path``, as the workers would: the statistics' stand-in then sends
back only the priorities of its category samples, the category 2-means'
stand-ins (on the workers) only the pairs, the per-image path's only the
number of regions and the priorities of its region sample, a pass over the
chunks that hold the sample's regions their descriptors, and a last pass,
whose stand-in does nothing, would write the classes.

With ``--store``, a real fit instead: ``N`` small planted images (6 x 6
patches of 16 floats, no pixels) appended to a :class:`FeatureStore`, then
fitted with ``labels_path`` on 2 loky worker processes, every pass real (on
threads, the workers' chunks, which grow with the images up to about 32 MB
of features, would count as the fitting process's). Printed per size: the
time to write the store and to fit it, and the growth of the fitting
process's anonymous memory during the fit (peak, and held after it).

Targets (issue 19): at most 4 GiB at 1M images and flat within 10% from
100k to 1M, at most 100 MB entering per pass at 1M, task arguments at most
10 KB; in a real fit, at most 150 MiB more growth at 300,000 images than at
20,000.

    python benchmarks/bench_million.py [--sizes 10000 100000 1000000] [--labels-path]
    python benchmarks/bench_million.py --store --sizes 20000 100000 300000
"""

import argparse
import functools
import os
import pickle
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence

import joblib
import numpy as np

import skseg._chunks
import skseg._fit_stages
import skseg._per_image_path
from skseg import FeatureStore, ImageFeatures, MultilevelSegmenter
from skseg._clustering import BoundedSample, nearest_centroid, unit_rows
from skseg._label_store import value_of
from skseg._regions import Regions
from skseg.datasets import make_patch_features

GRID, N_FEATURES, PHOTO = (14, 14), 384, (375, 500)
N_PATCHES = GRID[0] * GRID[1]


class Images(Sequence):
    """``n`` images, each of them the same small record; pickles as ``n``."""

    def __init__(self, n):
        self.n = n
        rng = np.random.default_rng(0)
        self.record = ImageFeatures(
            patches=rng.standard_normal((*GRID, N_FEATURES)).astype(np.float16),
            cls=rng.standard_normal(N_FEATURES).astype(np.float32),
        )

    def __reduce__(self):
        return Images, (self.n,)

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        return self.record


def descriptors(start, stop):
    """The same unit CLS descriptors of images start..stop in every pass:
    a few planted categories plus noise."""
    rng = np.random.default_rng(start)
    centres = np.random.default_rng(0).standard_normal((6, N_FEATURES)).astype(np.float32)
    picked = centres[rng.integers(0, 6, stop - start)]
    return unit_rows(picked + 0.3 * rng.standard_normal(picked.shape, dtype=np.float32))


def uniform_priorities(rng, n):
    return rng.integers(0, np.iinfo(np.uint64).max, n, dtype=np.uint64, endpoint=True)


def survey(X, start, stop, expected, seeds, max_samples, patches_below=None,
           descriptors_below=None, send_keys=True):
    below = (patches_below, descriptors_below)
    n = stop - start
    rng = np.random.default_rng(start + 1)
    sample = BoundedSample(max_samples, below[0])
    priorities = uniform_priorities(rng, n * N_PATCHES)
    kept = priorities < below[0] if below[0] is not None else slice(None)
    priorities = priorities[kept]
    sample.offer(priorities, rng.standard_normal((len(priorities), N_FEATURES),
                                                 dtype=np.float32))
    keys = np.arange(start, stop, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    described = BoundedSample(max_samples, below[1])
    described.offer(uniform_priorities(rng, n),
                    np.column_stack([descriptors(start, stop), np.full(n, N_PATCHES, np.float32)]))
    return keys if send_keys else None, n * N_PATCHES, sample, described


def dataset_statistics(X, start, stop, expected, keys, state, seed, max_samples, below=None,
                       output=None):
    n = stop - start
    rng = np.random.default_rng(start + 2)
    state = value_of(state)
    n_clusters = len(state.dataset_centroids)
    statistics = {"counts": np.bincount(rng.integers(0, n_clusters, n * N_PATCHES),
                                        minlength=n_clusters)}
    statistics["border"] = statistics["counts"] // 4
    categories = nearest_centroid(descriptors(start, stop), state.category_centers)
    category = np.repeat(categories, N_PATCHES)
    statistics["category_patches"] = np.bincount(category,
                                                 minlength=len(state.category_centers))
    priorities = uniform_priorities(rng, n * N_PATCHES)
    samples = {}
    for c in np.unique(category):
        mine = priorities[category == c]
        if below is not None and below[c] is not None:
            mine = mine[mine < below[c]]
        samples[c] = BoundedSample(max_samples, None if below is None else below[c])
        # With a labels group the rows stay on the worker (not written here:
        # the 2-means' stand-ins do not read them).
        samples[c].offer(mine, np.zeros((len(mine), 0), np.float32) if output is not None
                         else rng.standard_normal((len(mine), N_FEATURES), dtype=np.float32))
    # With a labels group the categories stay on the worker too.
    return None if output is not None else categories, statistics, samples


def gather_category_rows(store, first, last, starts, largest):
    """Reads and writes rows on the worker: nothing comes back."""


def fit_category_pairs(store, first, last, dataset, max_samples, max_iter, groups):
    rng = np.random.default_rng(first)
    return {c: unit_rows(rng.standard_normal((2, N_FEATURES), dtype=np.float32))
            for c in range(first, last)}


def photo_regions(rng):
    """Two blobs of a VOC-size photo as runs: about a hundred rows each."""
    rows, starts, stops, ids = [], [], [], []
    for region, top in ((1, 40), (2, 200)):
        height = int(rng.integers(80, 120))
        left = int(rng.integers(10, 200))
        widths = rng.integers(100, 180, height)
        rows.append(np.arange(top, top + height))
        starts.append(np.full(height, left))
        stops.append(left + widths)
        ids.append(np.full(height, region))
    return Regions(PHOTO, *map(np.concatenate, (rows, starts, stops, ids)), 2)


def segment(X, start, stop, expected, state, keys=None, output=None, seed=None,
            max_samples=None, below=None):
    rng = np.random.default_rng(start + 3)
    n = stop - start
    regions = [photo_regions(rng) for _ in range(n)]
    described = list(unit_rows(rng.standard_normal((n, 2, N_FEATURES), dtype=np.float32)
                               .reshape(-1, N_FEATURES)).reshape(n, 2, N_FEATURES))
    counts = {"patches": np.array([n * N_PATCHES]), "border": np.array([n * 52]),
              "foreground": np.full(4, n * 40), "border_foreground": np.full(4, n * 2),
              "intersection": np.full(3, n * 35), "union": np.full(3, n * 45)}
    if output is None:
        return regions, described, 0, counts
    # Written by the worker: their number and a sample of their priorities,
    # each with the chunk's start, come back.
    sample = BoundedSample(max_samples, below)
    sample.offer(region_priorities(start, n), np.full(2 * n, start, np.int64))
    return 2 * n, None, 0, counts, sample


def region_priorities(start, n):
    return uniform_priorities(np.random.default_rng((start, 4)), 2 * n)


def region_rows(store, start, stop, largest, max_samples):
    priorities = region_priorities(start, stop - start)
    mine = priorities[priorities <= largest]
    sample = BoundedSample(max_samples)
    sample.offer(mine, unit_rows(np.random.default_rng(start).standard_normal(
        (len(mine), N_FEATURES), dtype=np.float32)))
    return sample


def label_regions(store, start, stop, class_centroids, dtype):
    """The classes, written by the worker beside the regions it did not write."""


def rss_anon():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024


def measure(n_images, labels_path=None):
    stand_ins = (survey, dataset_statistics, gather_category_rows, fit_category_pairs, segment,
                 region_rows, label_regions)
    received = {function.__name__: [] for function in stand_ins}
    arguments = []
    real_delayed = skseg._chunks.delayed

    def counted(function):
        @functools.wraps(function)
        def run(*args):
            result = function(*args)
            received[function.__name__].append(len(pickle.dumps(result, protocol=5)))
            return result
        return run

    def measured_delayed(task):
        arguments.append(max(len(pickle.dumps(arg, protocol=5)) for arg in task.task.args))
        return real_delayed(task)

    for function in stand_ins:  # where the stages look them up
        for stages in (skseg._fit_stages, skseg._per_image_path):
            if hasattr(stages, function.__name__):
                setattr(stages, function.__name__, counted(function))
    skseg._chunks.delayed = measured_delayed
    peak, stop = [0], threading.Event()

    def sample_memory():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_anon())
            time.sleep(0.05)

    X = Images(n_images)
    before = rss_anon()
    sampler = threading.Thread(target=sample_memory, daemon=True)
    sampler.start()
    start = time.perf_counter()
    segmenter = MultilevelSegmenter(n_classes=8, refine=None, random_state=0, n_jobs=100,
                                    labels_path=labels_path)
    segmenter.fit(X)
    seconds = time.perf_counter() - start
    held_after = rss_anon() - before
    stop.set()
    sampler.join()
    del segmenter
    return dict(peak=peak[0] - before, after=held_after, seconds=seconds,
                received={name: sum(sizes) for name, sizes in received.items()},
                argument=max(arguments))


def planted_records(n_images, pool_size=500):
    """``n_images`` small planted records, each a pool image in one of eight
    rotations and flips, plus noise of its own, so that no two are alike."""
    pool = make_patch_features(n_images=pool_size, grid=(6, 6), n_features=16,
                               random_state=0)[0]
    rng = np.random.default_rng(1)
    for i in range(n_images):
        f = pool[i % pool_size]
        variant = (i // pool_size) % 8
        patches = np.rot90(f.patches, variant % 4)
        patches = patches[:, ::-1] if variant >= 4 else patches
        noise = 0.01 * rng.standard_normal(patches.shape, dtype=np.float32)
        yield ImageFeatures(patches=(patches + noise).astype(np.float16),
                            cls=f.cls.astype(np.float16))


def measure_store(n_images, folder):
    store = FeatureStore(os.path.join(folder, "features.zarr"))
    start = time.perf_counter()
    store.extend(planted_records(n_images))
    write_seconds = time.perf_counter() - start
    store = FeatureStore(os.path.join(folder, "features.zarr"), read_only=True)
    peak, stop = [0], threading.Event()

    def sample_memory():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_anon())
            time.sleep(0.05)

    before = rss_anon()
    sampler = threading.Thread(target=sample_memory, daemon=True)
    sampler.start()
    start = time.perf_counter()
    with joblib.parallel_config(backend="loky"):
        MultilevelSegmenter(n_classes=4, refine=None, random_state=0, n_jobs=2, device="cpu",
                            labels_path=os.path.join(folder, "labels.zarr")).fit(store)
    seconds = time.perf_counter() - start
    after = rss_anon() - before
    stop.set()
    sampler.join()
    return {"peak": peak[0] - before, "after": after, "seconds": seconds, "write": write_seconds}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--labels-path", action="store_true",
                        help="fit with labels_path (a temporary folder): the workers keep "
                             "the per-image results")
    parser.add_argument("--store", action="store_true",
                        help="a real fit of small planted images in a FeatureStore")
    parser.add_argument("--row", type=int, help=argparse.SUPPRESS)  # one size, here
    args = parser.parse_args()
    if args.row is None and args.store:
        print(f"{'images':>9} {'write s':>8} {'fit s':>6} {'peak MiB':>9} {'kept MiB':>9}",
              flush=True)
        for n_images in args.sizes:
            subprocess.run([sys.executable, __file__, "--store", "--row", str(n_images)],
                           check=True)
        return
    if args.row is None:
        print(f"{'images':>9} {'peak MiB':>9} {'B/img':>6} {'kept MiB':>9} {'survey MB':>10}"
              f" {'stats MB':>9} {'pairs MB':>9} {'per-image MB':>13} {'regions MB':>11}"
              f" {'max arg KB':>11} {'fit s':>6}", flush=True)
        # Each size in a fresh process: memory that a smaller size freed but
        # the allocator kept would otherwise hide part of a larger one's peak.
        for n_images in args.sizes:
            subprocess.run([sys.executable, __file__, "--row", str(n_images)]
                           + ["--labels-path"] * args.labels_path, check=True)
        return
    n_images = args.row
    if args.store:
        with tempfile.TemporaryDirectory() as folder:
            m = measure_store(n_images, folder)
        print(f"{n_images:>9,} {m['write']:>8.0f} {m['seconds']:>6.0f}"
              f" {m['peak'] / 2**20:>9.0f} {m['after'] / 2**20:>9.0f}", flush=True)
        return
    with tempfile.TemporaryDirectory() as folder:
        m = measure(n_images, os.path.join(folder, "labels.zarr") if args.labels_path
                    else None)
    pairs = m["received"]["gather_category_rows"] + m["received"]["fit_category_pairs"]
    print(f"{n_images:>9,} {m['peak'] / 2**20:>9.0f} {m['peak'] / n_images:>6.0f}"
          f" {m['after'] / 2**20:>9.0f} {m['received']['survey'] / 1e6:>10.1f}"
          f" {m['received']['dataset_statistics'] / 1e6:>9.1f}"
          f" {pairs / 1e6:>9.1f}"
          f" {m['received']['segment'] / 1e6:>13.1f}"
          f" {m['received']['region_rows'] / 1e6:>11.1f} {m['argument'] / 1e3:>11.1f}"
          f" {m['seconds']:>6.0f}", flush=True)


if __name__ == "__main__":
    main()
