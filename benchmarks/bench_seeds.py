"""How much the mIoU varies with the segmenter's random_state, on the
synthetic benchmarks.

The features are computed once per data set; only the segmenter is refitted
for every seed (``reproduce_voc.py --seeds`` does the same on VOC). Prints
the mIoU per seed and its mean and sample standard deviation. The user guide
quotes the figures.

    python benchmarks/bench_seeds.py [--seeds 0 1 2 3 4 5 6 7 8 9]
"""

import argparse
import importlib.util
import warnings
from pathlib import Path

from skseg import MultilevelSegmenter, ViTPatchTransformer
from skseg.datasets import make_patch_features, make_scenes

_spec = importlib.util.spec_from_file_location(
    "reproduce_voc", Path(__file__).with_name("reproduce_voc.py"))
_reproduce_voc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_reproduce_voc)
seed_spread = _reproduce_voc.seed_spread


def benchmarks():
    """(name, features, truths, segmenter) of every synthetic benchmark."""
    X, masks = make_patch_features(n_images=60, n_classes=4, random_state=0)
    yield ("planted patch features, 60 images, 4 classes", X, masks,
           MultilevelSegmenter(n_classes=4, refine=None, device="cpu"))
    X, masks = make_patch_features(n_images=180, n_classes=9, random_state=0)
    yield ("planted patch features, 180 images, 9 classes", X, masks,
           MultilevelSegmenter(n_classes=9, refine=None, device="cpu"))
    yield ("same, n_classes='auto'", X, masks,
           MultilevelSegmenter(n_classes="auto", max_classes=15, refine=None, device="cpu"))
    images, truths = make_scenes(n_images=24, n_classes=3, image_size=(160, 160),
                                 random_state=0)
    features = ViTPatchTransformer("vit_small_patch16_224.dino", pretrained=False,
                                   device="cpu").fit_transform(images)
    yield ("scenes, random-weight ViT-S/16, PAMR, 24 images, 3 classes", features, truths,
           MultilevelSegmenter(n_classes=3, refine="pamr", device="cpu"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    args = parser.parse_args(argv)
    results = {}
    for name, features, truths, segmenter in benchmarks():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            by_seed, mean, std = seed_spread(segmenter, features, truths, args.seeds)
        values = " ".join(f"{100 * v:.1f}" for v in by_seed.values())
        print(f"{name}\n  mIoU {100 * mean:.1f} +- {100 * std:.1f} "
              f"(min {100 * min(by_seed.values()):.1f}, max {100 * max(by_seed.values()):.1f}); "
              f"per seed: {values}", flush=True)
        results[name] = by_seed
    return results


if __name__ == "__main__":
    main()
