"""MultilevelSegmenter's passes on a local Dask cluster: 1 then 2 workers.

Planted features (``make_patch_features`` in pieces: the same planted scenes
with fresh noise per piece, so every image has its own content) at the
ViT-S/16 grid, 14 x 14 x 384 float16, are written to a memory-mapped file
in a temporary folder and read through a sequence that pickles as its
folder, as a feature store would: each task gets a location and a range of
images, never the data. ``fit`` (three passes) and ``predict`` (one) then
run under joblib's Dask backend on a local cluster of 1, then 2, worker
processes of one thread each; the masks of the two runs must be identical.

Figures: wall time and speed-up; per pass, the tasks' compute time from the
cluster's task stream, and two overheads per task as a share of the mean
task time: the gaps between a worker's consecutive tasks (scheduling,
transfer, deserialisation) and all idle worker time in the pass (the gaps
plus the end-of-pass imbalance). Targets (issue 10): speed-up >= 1.6 with 2
workers, gaps under 5% of the task time. On a machine shared with other
work, read the load average printed first.

With ``--store``, the same features are written to a :class:`FeatureStore`
instead and read through it: each task then reopens the store (its
snapshot, and only the commits its chunk reads), the per-task cost of a
real run that a memory-mapped file hides.

    python benchmarks/bench_dask.py [--n-images 4000] [--piece 500] [--store]

The issue's set is 40,000 images (a 6 GB file: ``--n-images 40000``); the
figures in docs/scaling_out.rst are from the default 4,000 on a shared,
loaded 2-core machine.
"""

import argparse
import os
import re
import shutil
import tempfile
import time
from collections.abc import Sequence

import joblib
import numpy as np
from distributed import Client, LocalCluster, get_task_stream
from joblib._dask import DaskDistributedBackend

from skseg import FeatureStore, ImageFeatures, MultilevelSegmenter
from skseg.datasets import make_patch_features

GRID, N_FEATURES = (14, 14), 384


class MemmapFeatures(Sequence):
    """ImageFeatures read from ``patches.npy`` and ``cls.npy`` in ``folder``;
    pickles as the folder's path."""

    def __init__(self, folder):
        self.folder = folder
        self._open()

    def _open(self):
        self.patches = np.load(os.path.join(self.folder, "patches.npy"), mmap_mode="r")
        self.cls = np.load(os.path.join(self.folder, "cls.npy"), mmap_mode="r")

    def __getstate__(self):
        return {"folder": self.folder}

    def __setstate__(self, state):
        self.folder = state["folder"]
        self._open()

    def __len__(self):
        return len(self.patches)

    def __getitem__(self, index):
        return ImageFeatures(patches=np.array(self.patches[index]),
                             cls=np.array(self.cls[index]))


class EveryWorkerBackend(DaskDistributedBackend):
    """joblib runs a single job in the calling process, so a 1-worker cluster
    would never see a task: count at least 2 jobs, so that 1 and 2 workers
    are measured on the same Dask path (chunks are capped by size anyway)."""

    def effective_n_jobs(self, n_jobs):
        return max(2, super().effective_n_jobs(n_jobs))


def planted_pieces(n_images, piece):
    """The planted images, a piece at a time: lists of ImageFeatures."""
    scenes, _ = make_patch_features(n_images=piece, grid=GRID, n_features=N_FEATURES,
                                    random_state=0)
    rng = np.random.default_rng(0)
    for start in range(0, n_images, piece):
        yield [ImageFeatures(
            patches=(scenes[i - start].patches + 0.2 * rng.standard_normal(
                scenes[i - start].patches.shape, dtype=np.float32)).astype(np.float16),
            cls=scenes[i - start].cls.astype(np.float16),
        ) for i in range(start, min(start + piece, n_images))]


def write_store(folder, n_images, piece):
    store = FeatureStore(os.path.join(folder, "features.zarr"))
    for records in planted_pieces(n_images, piece):
        store.extend(records)
    return store


def write_planted(folder, n_images, piece):
    patches = np.lib.format.open_memmap(
        os.path.join(folder, "patches.npy"), mode="w+", dtype=np.float16,
        shape=(n_images, *GRID, N_FEATURES),
    )
    cls = np.lib.format.open_memmap(os.path.join(folder, "cls.npy"), mode="w+",
                                    dtype=np.float16, shape=(n_images, N_FEATURES))
    records = (record for records in planted_pieces(n_images, piece) for record in records)
    for i, record in enumerate(records):
        patches[i], cls[i] = record.patches, record.cls
    patches.flush()
    cls.flush()
    return MemmapFeatures(folder)


def pass_figures(stream, n_workers):
    """Per pass: tasks, compute seconds, gap and idle seconds per task."""
    tasks = {}
    for task in stream:
        name = re.match(r"(?:mixed_)?batch_of_(.+)_\d+_calls-", task["key"]).group(1)
        compute = [s for s in task["startstops"] if s["action"] == "compute"]
        tasks.setdefault(name, []).append(
            (task["worker"], compute[0]["start"], compute[-1]["stop"],
             sum(s["stop"] - s["start"] for s in compute))
        )
    figures = {}
    for name, runs in tasks.items():
        compute = sum(r[3] for r in runs)
        span = max(r[2] for r in runs) - min(r[1] for r in runs)
        gaps = 0.0
        for worker in {r[0] for r in runs}:
            mine = sorted((r[1], r[2]) for r in runs if r[0] == worker)
            gaps += sum(max(0.0, b[0] - a[1]) for a, b in zip(mine, mine[1:]))
        mean = compute / len(runs)
        figures[name] = dict(
            tasks=len(runs), compute=compute, mean=mean,
            gap=gaps / len(runs) / mean, idle=(n_workers * span - compute) / len(runs) / mean,
        )
    return figures


def run_in_process(X):
    """The same fit and predict in this process with n_jobs=1 (torch with
    its default threads): the baseline without Dask."""
    segmenter = MultilevelSegmenter(n_classes=4, refine=None, random_state=0, n_jobs=1)
    start = time.perf_counter()
    segmenter.fit(X)
    fitted = time.perf_counter()
    masks = segmenter.predict(X)
    done = time.perf_counter()
    return dict(fit=fitted - start, predict=done - fitted, total=done - start, masks=masks)


def run(X, n_workers):
    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        client.run(__import__, "skseg._segmenter")  # imports are not the figure
        segmenter = MultilevelSegmenter(n_classes=4, refine=None, random_state=0)
        with joblib.parallel_config(backend=EveryWorkerBackend(client=client)):
            start = time.perf_counter()
            with get_task_stream(client) as fit_stream:
                segmenter.fit(X)
            fitted = time.perf_counter()
            with get_task_stream(client) as predict_stream:
                masks = segmenter.predict(X)
            done = time.perf_counter()
        passes = {f"fit {name}": figures for name, figures
                  in pass_figures(fit_stream.data, n_workers).items()}
        passes.update({f"predict {name}": figures for name, figures
                       in pass_figures(predict_stream.data, n_workers).items()})
        return dict(fit=fitted - start, predict=done - fitted, total=done - start,
                    passes=passes, masks=masks)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=4000)
    parser.add_argument("--piece", type=int, default=500,
                        help="images per make_patch_features call")
    parser.add_argument("--store", action="store_true",
                        help="read the features from a FeatureStore, not a memory-mapped file")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}  cores: {os.cpu_count()}")
    folder = tempfile.mkdtemp(prefix="bench_dask_")
    try:
        start = time.perf_counter()
        X = (write_store if args.store else write_planted)(folder, args.n_images, args.piece)
        print(f"{args.n_images} images of {GRID[0]}x{GRID[1]}x{N_FEATURES} float16 "
              f"written {'to a FeatureStore' if args.store else 'to a memory-mapped file'} "
              f"in {time.perf_counter() - start:.1f} s")
        results = {0: run_in_process(X)}
        print(f"\nin process, n_jobs=1: fit {results[0]['fit']:.1f} s, predict "
              f"{results[0]['predict']:.1f} s, total {results[0]['total']:.1f} s")
        for n_workers in (1, 2):
            results[n_workers] = result = run(X, n_workers)
            print(f"\n{n_workers} worker(s): fit {result['fit']:.1f} s, predict "
                  f"{result['predict']:.1f} s, total {result['total']:.1f} s "
                  f"(load average now {os.getloadavg()[0]:.1f})")
            print(f"  {'pass':<28}{'tasks':>6}{'compute s':>11}{'s/task':>8}"
                  f"{'gap/task':>10}{'idle/task':>11}")
            for name, f in result["passes"].items():
                print(f"  {name:<28}{f['tasks']:>6}{f['compute']:>11.1f}{f['mean']:>8.2f}"
                      f"{f['gap']:>10.1%}{f['idle']:>11.1%}")
        same = all(np.array_equal(a, b) and np.array_equal(a, c) for a, b, c in zip(
            results[0]["masks"], results[1]["masks"], results[2]["masks"]))
        print(f"\nspeed-up with 2 workers: {results[1]['total'] / results[2]['total']:.2f}x "
              f"(fit {results[1]['fit'] / results[2]['fit']:.2f}x, predict "
              f"{results[1]['predict'] / results[2]['predict']:.2f}x); "
              f"masks identical in all three runs: {same}")
        print(f"2 workers against n_jobs=1 in process: "
              f"{results[0]['total'] / results[2]['total']:.2f}x")
        print(f"load average after: {os.getloadavg()}")
    finally:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
