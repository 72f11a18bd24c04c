"""What the passes of ``MultilevelSegmenter.fit`` send back to the process
that calls it: bytes per pass, without and with the priority bound.

Each task of the survey and statistics passes returns a content-keyed sample
of patches. Without a bound, a task's sample holds every patch of its chunk
that could be among the ``max_samples`` of smallest priority (up to
``max_samples`` rows a task); with the priority bound the tasks send back
about twice ``max_samples`` rows for the dataset sample and for each
category's, whatever the number of images, and the fit is the same.

Planted features at the ViT-S/16 grid (14 x 14 x 384, float16), the default
chunking (about 111 images a task), two threads. Prints, per pass and size,
the bytes of pickled task results (samples, per-image keys and categories)
without and with the bound, their
ratio, and whether the fitted centroids are identical.

    python benchmarks/bench_traffic.py [--sizes 1000 4000]
"""

import argparse
import pickle
import time

import numpy as np

import skseg._fit_stages
from skseg import ImageFeatures, MultilevelSegmenter
from skseg.datasets import make_patch_features

GRID, N_FEATURES, PIECE = (14, 14), 384, 500


def planted(n_images):
    scenes, _ = make_patch_features(n_images=PIECE, grid=GRID, n_features=N_FEATURES,
                                    random_state=0)
    rng = np.random.default_rng(0)
    return [ImageFeatures(
        patches=(scenes[i % PIECE].patches + 0.2 * rng.standard_normal(
            scenes[i % PIECE].patches.shape, dtype=np.float32)).astype(np.float16),
        cls=scenes[i % PIECE].cls,
    ) for i in range(n_images)]


def measured_fit(X, bounded):
    """The fit, and the pickled bytes of each pass's task results."""
    sent = {"survey": [], "dataset_statistics": []}  # appends: atomic across threads
    real = {name: getattr(skseg._fit_stages, name) for name in sent}
    real_bound = skseg._fit_stages.priority_bound

    def counting(name):
        def run(*args):
            result = real[name](*args)
            sent[name].append(len(pickle.dumps(result, protocol=5)))
            return result
        return run

    try:
        for name in sent:
            setattr(skseg._fit_stages, name, counting(name))
        if not bounded:
            skseg._fit_stages.priority_bound = lambda size, n_rows, margin=1: None
        start = time.perf_counter()
        segmenter = MultilevelSegmenter(n_classes=4, refine=None, random_state=0,
                                        n_jobs=2).fit(X)
        seconds = time.perf_counter() - start
    finally:
        for name in sent:
            setattr(skseg._fit_stages, name, real[name])
        skseg._fit_stages.priority_bound = real_bound
    return segmenter, {name: sum(sizes) for name, sizes in sent.items()}, seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000])
    args = parser.parse_args()
    print(f"{'images':>7} {'pass':>19} {'without MB':>11} {'with MB':>8} {'ratio':>6}"
          f" {'fit s without/with':>19} same fit")
    for n_images in args.sizes:
        X = planted(n_images)
        without, sent_without, s_without = measured_fit(X, bounded=False)
        with_, sent_with, s_with = measured_fit(X, bounded=True)
        same = all(np.array_equal(getattr(without, name), getattr(with_, name))
                   for name in ("dataset_centroids_", "category_centers_",
                                "class_centroids_"))
        for name in sent_with:
            print(f"{n_images:>7} {name:>19} {sent_without[name] / 1e6:>11.1f}"
                  f" {sent_with[name] / 1e6:>8.1f}"
                  f" {sent_without[name] / max(sent_with[name], 1):>6.1f}"
                  f" {s_without:>9.1f} / {s_with:<7.1f} {same}")


if __name__ == "__main__":
    main()
