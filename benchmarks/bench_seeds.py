"""How much the mIoU varies with the segmenter's random_state: worst,
median and best of 10 seeds.

On planted patch features with 1, 3 and 6 kinds of background (7 object
classes; also with a weaker foreground signal, ``objectness=1``), the
features are made once and the segmenter refitted for every seed
(``reproduce_voc.py --seeds`` does the same on VOC). On the demo, each seed
is one ``skseg demo --random-state SEED``: new scenes, random-weight ViT
features, the segmenter and plain K-means on the patches, as the demo
prints them. A change that helps the median and hurts the worst seed is a
regression. The user guide quotes the figures.

    python benchmarks/bench_seeds.py [--seeds 0 1 ... 9] [--skip-demo]
"""

import argparse
import warnings

import numpy as np
from sklearn.base import clone

from skseg import MultilevelSegmenter, ViTPatchTransformer
from skseg._demo import DEMO_MODEL, _kmeans_baseline
from skseg.datasets import make_patch_features, make_scenes
from skseg.metrics import mean_iou


def planted(n_backgrounds, **data):
    """A planted set: 150 images, 7 classes, ``n_backgrounds`` kinds of background."""
    return make_patch_features(n_images=150, n_classes=7, n_backgrounds=n_backgrounds,
                               random_state=0, **data)


def planted_scores(X, masks, seeds, **params):
    segmenter = MultilevelSegmenter(n_classes=7, refine=None, device="cpu", **params)
    scores = []
    for seed in seeds:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            labels = clone(segmenter).set_params(random_state=seed).fit_predict(X)
        scores.append(mean_iou(masks, labels))
    return np.array(scores)


def demo_scores(seed, **params):
    """(skseg, plain K-means) mIoU of ``skseg demo --random-state seed``."""
    images, truths = make_scenes(n_images=24, n_classes=3, image_size=(160, 160),
                                 random_state=seed)
    features = ViTPatchTransformer(DEMO_MODEL, pretrained=False, image_size=224,
                                   device="cpu").fit_transform(images)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        labels = MultilevelSegmenter(n_classes=3, random_state=seed, device="cpu",
                                     **params).fit_predict(features)
    return mean_iou(truths, labels), mean_iou(truths, _kmeans_baseline(features, 4, seed))


def summary(name, scores):
    scores = 100 * np.asarray(scores)
    print(f"{name}: worst {scores.min():.1f}, median {np.median(scores):.1f}, "
          f"best {scores.max():.1f}; per seed: {' '.join(f'{v:.1f}' for v in scores)}",
          flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--params", default="",
                        help="segmenter parameters to compare, e.g. "
                             "'n_dataset_clusters=2,n_init=1' (ints only)")
    args = parser.parse_args(argv)
    params = {key: int(value) for key, value in
              (item.split("=") for item in args.params.split(",") if item)}
    results = {}
    for n_backgrounds in (1, 3, 6):
        for data in ({}, {"objectness": 1.0}):
            name = f"planted, {n_backgrounds} background kind(s)" + \
                (", objectness=1" if data else "")
            results[name] = planted_scores(*planted(n_backgrounds, **data), args.seeds, **params)
            summary(name, results[name])
    if not args.skip_demo:
        pairs = np.array([demo_scores(seed, **params) for seed in args.seeds])
        results["demo"], results["demo, plain K-means"] = pairs[:, 0], pairs[:, 1]
        summary("skseg demo", pairs[:, 0])
        summary("plain K-means in the demo", pairs[:, 1])
        margins = 100 * (pairs[:, 0] - pairs[:, 1])
        print(f"demo margin over plain K-means: worst {margins.min():+.1f}, "
              f"median {np.median(margins):+.1f}", flush=True)
    return results


if __name__ == "__main__":
    main()
