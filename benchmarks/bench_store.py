"""What a feature store's everyday operations cost as it grows.

A store of N small planted images is written the way the transformer writes
one (a commit per 16-image batch), then, at each size, timed in one run:

- append: one more 16-image batch through a handle opened earlier (it
  catches up with the commits made since, writes its segment, claims the
  next commit);
- open + read 100: a pickled view of 100 images, unpickled and read, as a
  Dask task does;
- open: ``FeatureStore(path)`` alone.

The ratios at the largest size over the smallest are what to read: flat
means the cost does not grow with the number of stored images. Run::

    python benchmarks/bench_store.py [--sizes 20000 300000] [--repeat 20]
"""

import argparse
import os
import pickle
import shutil
import tempfile
import time

import numpy as np

from skseg import FeatureStore, ImageFeatures

BATCH = 16
GRID = (2, 2)
DIM = 64


def _batch(start, size=BATCH):
    rng = np.random.default_rng(start)
    return [ImageFeatures(rng.standard_normal((*GRID, DIM)).astype(np.float16),
                          cls=rng.standard_normal(DIM).astype(np.float16),
                          image_shape=(32, 32), patch_size=16)
            for _ in range(size)]


def _grow(store, n, size=BATCH):
    while store._snapshot.n_stored < n:
        start = store._snapshot.n_stored
        store.extend(_batch(start, size),
                     content_keys=[f"img-{start + k}" for k in range(size)])


def _median_time(operation, repeat):
    times = []
    for _ in range(repeat):
        begin = time.perf_counter()
        operation()
        times.append(time.perf_counter() - begin)
    return float(np.median(times))


def measure(path, n, repeat, grow_batch):
    writer = FeatureStore(path)
    _grow(writer, n, grow_batch)
    stale = FeatureStore(path)  # opened before the other writer's appends below
    counter = iter(range(10**9))

    def append():
        _grow(writer, writer._snapshot.n_stored + BATCH)  # "another writer"
        key = next(counter)
        stale.extend(_batch(10**8 + key),
                     content_keys=[f"extra-{key}-{k}" for k in range(BATCH)])

    # Views pickled beforehand, as the client does; a task unpickles and reads.
    whole = FeatureStore(path, read_only=True)
    starts = np.random.default_rng(0).integers(0, n - 100, size=repeat)
    payloads = iter([pickle.dumps(whole[start:start + 100]) for start in starts])

    def open_and_read():
        pickle.loads(next(payloads)).records_of(0, 100)

    return {
        "append 16": _median_time(append, repeat),
        "open+read 100": _median_time(open_and_read, repeat),
        "open": _median_time(lambda: FeatureStore(path, read_only=True), repeat),
        "task bytes": len(pickle.dumps(whole[:100])),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 300_000])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--grow-batch", type=int, default=64,
                        help="images per commit when growing past the smallest size "
                             "(the smallest is grown 16 at a time, as the transformer "
                             "writes); only the commit count's logarithm matters to reads")
    parser.add_argument("--folder", default=None,
                        help="where to build the stores (default: a temporary folder)")
    args = parser.parse_args()
    folder = args.folder or tempfile.mkdtemp(prefix="bench-store-")
    path = os.path.join(folder, "store.zarr")
    results = {}
    try:
        for n in sorted(args.sizes):  # one store, grown from size to size
            begin = time.perf_counter()
            grow_batch = BATCH if n == min(args.sizes) else args.grow_batch
            results[n] = measure(path, n, args.repeat, grow_batch)
            n_commits = FeatureStore(path, read_only=True)._snapshot.n_commits
            print(f"{n:>9,} images in {n_commits:,} commits "
                  f"({time.perf_counter() - begin:.0f} s to build and "
                  f"measure): " + ", ".join(
                      f"{name} {value * 1e3:.1f} ms" if name != "task bytes"
                      else f"{name} {value}" for name, value in results[n].items()),
                  flush=True)
    finally:
        if args.folder is None:
            shutil.rmtree(folder, ignore_errors=True)
    small, large = min(results), max(results)
    print(f"\nratio at {large:,} over {small:,} images (flat is 1.0):")
    for name in ("append 16", "open+read 100", "open"):
        print(f"  {name:<15} {results[large][name] / results[small][name]:.2f}")


if __name__ == "__main__":
    main()
