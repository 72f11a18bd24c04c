"""Out-of-core scale: a FeatureStore of planted features, fitted and predicted.

For each size (default: 10,000, 40,000 and 118,287 images -- COCO train's
count -- of 14 x 14 x 384 float16 patch features, the ViT-S/16 grid, and
20,000 of 28 x 28 x 384, the ViT-S/8 grid) this writes planted features into
a :class:`skseg.FeatureStore`, then fits :class:`skseg.MultilevelSegmenter`
on the store and predicts it, and reports:

- write time (total and per image) and the store's size on disk;
- fit and predict time per image, and each divided by the time per image of
  a ViT-S/16 forward pass at 224 px measured in the same run;
- peak anonymous memory of each phase (``RssAnon`` sampled from
  ``/proc/self/status`` in a thread, so the page cache of the memory-mapped
  store is not counted);
- mIoU against the planted masks.

Targets (issue 9): peak anonymous memory at most 3 GiB at 118,287 images, fit
and predict at most 0.1 x a ViT-S/16 forward per image, and flat in N (the
118k figure within 1.3x of the 10k one).

Planted images come from :func:`skseg.datasets.make_patch_features`: a pool
of planted images, each stored under its eight rotations and flips of the
grid, so up to ``8 x pool`` images are distinct; larger stores repeat them.
Holding the pool costs about 150 MB, freed before the fit.

    python benchmarks/bench_scale.py [--sizes 10000x14 40000x14 118287x14 20000x28]
                                     [--write-only] [--dir DIR] [--keep]

Each size is ``N`` or ``NxG`` (G = grid side, default 14). Stores go into a
temporary folder under ``--dir`` (default: the system's) and are deleted
after each size unless ``--keep``; the 118k store takes about 18 GB.
"""

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from skseg import FeatureStore, ImageFeatures, MultilevelSegmenter
from skseg._backbone import resolve_device
from skseg.datasets import make_patch_features
from skseg.metrics import mean_iou

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_segmenter import vit_seconds_per_image  # noqa: E402

POOL_BYTES = 150 << 20
N_FEATURES = 384


def rss_anon_bytes():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status (this benchmark needs Linux).")


class PeakMemory:
    """Highest RssAnon seen while the block runs, sampled every 5 ms."""

    def __enter__(self):
        self.peak = rss_anon_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_anon_bytes())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_anon_bytes())


def dihedral(array, variant):
    """One of the eight rotations and flips of a square grid (leading two axes)."""
    array = np.rot90(array, variant % 4, axes=(0, 1))
    return array[:, ::-1] if variant >= 4 else array


def planted_pool(n_images, grid, random_state=0):
    """Planted float16 records (at most ``POOL_BYTES`` of patches) and their masks."""
    pool_size = max(1, min(n_images, POOL_BYTES // (grid * grid * N_FEATURES * 2)))
    pool, pool_masks = make_patch_features(
        n_images=pool_size, grid=(grid, grid), n_features=N_FEATURES,
        random_state=random_state,
    )
    pool = [(f.patches.astype(np.float16), f.cls.astype(np.float16),
             f.attention.astype(np.float16)) for f in pool]
    return pool, pool_masks


def planted_stream(n_images, pool, pool_masks, masks_out):
    """Yield ``n_images`` records from the pool; append each one's mask to ``masks_out``."""
    pool_size = len(pool)
    for i in range(n_images):
        patches, cls, attention = pool[i % pool_size]
        variant = (i // pool_size) % 8
        masks_out.append(dihedral(pool_masks[i % pool_size], variant).astype(np.uint8))
        yield ImageFeatures(patches=dihedral(patches, variant), cls=cls,
                            attention=dihedral(attention, variant))


def disk_bytes(path):
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def parse_size(text):
    n, _, grid = text.lower().partition("x")
    return int(n), int(grid or 14)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=parse_size,
                        default=[(10000, 14), (40000, 14), (118287, 14), (20000, 28)],
                        help="N or NxG (grid side G, default 14) per store")
    parser.add_argument("--write-only", action="store_true",
                        help="time writing the store only, no fit or predict")
    parser.add_argument("--dir", default=None, help="where to put the stores")
    parser.add_argument("--keep", action="store_true", help="keep the stores")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    vit = vit_seconds_per_image(device)[0]  # wall seconds per image
    print(f"device={device}  threads={torch.get_num_threads()}  "
          f"ViT-S/16 forward: {1e3 * vit:.2f} ms/image  "
          f"RssAnon before any store: {rss_anon_bytes() / 2**30:.2f} GiB")
    print(f"{'grid':>4s} {'images':>7s} {'write s':>8s} {'ms/img':>7s} {'GiB peak':>8s} "
          f"{'disk GB':>7s} | {'fit ms':>7s} {'/ViT':>5s} {'GiB':>5s} | "
          f"{'pred ms':>7s} {'/ViT':>5s} {'GiB':>5s} | {'mIoU':>5s}")
    for n_images, grid in args.sizes:
        folder = tempfile.mkdtemp(prefix="skseg-bench-scale-", dir=args.dir)
        try:
            masks = []
            pool, pool_masks = planted_pool(n_images, grid)
            store = FeatureStore(os.path.join(folder, "features.zarr"))
            with PeakMemory() as write_memory:
                start = time.perf_counter()
                store.extend(planted_stream(n_images, pool, pool_masks, masks))
                write_s = time.perf_counter() - start
            del pool, pool_masks
            row = (f"{grid:>4d} {n_images:>7d} {write_s:8.1f} {1e3 * write_s / n_images:7.3f} "
                   f"{write_memory.peak / 2**30:8.2f} {disk_bytes(store.path) / 1e9:7.2f}")
            if args.write_only:
                print(row, flush=True)
                continue
            segmenter = MultilevelSegmenter(n_classes=4, refine=None, random_state=0,
                                            device=args.device)
            with PeakMemory() as fit_memory:
                start = time.perf_counter()
                segmenter.fit(store)
                fit_s = (time.perf_counter() - start) / n_images
            with PeakMemory() as predict_memory:
                start = time.perf_counter()
                predicted = segmenter.predict(store)
                predict_s = (time.perf_counter() - start) / n_images
            score = mean_iou(masks, [predicted[i] for i in range(len(predicted))])
            print(f"{row} | {1e3 * fit_s:7.3f} {fit_s / vit:5.3f} "
                  f"{fit_memory.peak / 2**30:5.2f} | {1e3 * predict_s:7.3f} "
                  f"{predict_s / vit:5.3f} {predict_memory.peak / 2**30:5.2f} | "
                  f"{score:5.3f}", flush=True)
        finally:
            if args.keep:
                print(f"  kept {folder}")
            else:
                shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
