"""Reproduce the PASCAL VOC 2012 val evaluation.

Runs ViTPatchTransformer and MultilevelSegmenter over a local VOC 2012 split
and prints the Hungarian-matched mIoU (one matching over the whole set, void
ignored: the field's protocol), pixel accuracy, per-image mIoU (inflated,
reported apart) and timings. Needs the dataset and pretrained weights:

    python benchmarks/reproduce_voc.py --root /data/VOCdevkit \
        --model vit_small_patch8_224.dino --cache /tmp/voc-features

Without network access pass ``--weights FILE``. ``--seeds 0 1 2 3 4`` fits
the segmenter once per seed on the same features and reports the mean and
standard deviation of the mIoU over the seeds.
"""

import argparse
import os
import time

import numpy as np
from sklearn.base import clone

from skseg import MultilevelSegmenter, ViTPatchTransformer
from skseg.datasets import VOC_CLASSES, load_voc
from skseg.metrics import per_image_mean_iou, segmentation_report


def _image_size(text):
    """'keep' (each image's aspect ratio, the field's protocol) or a square side."""
    if text == "keep":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give 'keep' or a side in pixels") from None


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="VOCdevkit (or VOC2012) folder")
    parser.add_argument("--split", default="val")
    parser.add_argument("--limit", type=int, help="only the first N images")
    parser.add_argument("--model", default="vit_small_patch8_224.dino")
    parser.add_argument("--weights")
    parser.add_argument("--random-weights", action="store_true",
                        help="untrained ViT: only to check the script runs")
    parser.add_argument("--facet", default="key", choices=["key", "query", "value", "token"])
    parser.add_argument("--layer", type=int, default=-1)
    parser.add_argument("--image-size", type=_image_size, default="keep")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    parser.add_argument("--cache", help="feature cache folder")
    parser.add_argument("--n-classes", type=int, default=20)
    parser.add_argument("--n-categories", type=int)
    parser.add_argument("--n-dataset-clusters", type=int, default=8)
    parser.add_argument("--foreground", default="border", choices=["border", "attention"])
    parser.add_argument("--consensus", default="vote", choices=["vote", "intersection", "image"])
    parser.add_argument("--refine", default="crf", choices=["crf", "pamr", "none"])
    parser.add_argument("--region", default="pooled", choices=["pooled", "crop"])
    parser.add_argument("--min-region-size", type=float, default=0.01)
    parser.add_argument("--random-state", type=int, default=0)
    parser.add_argument("--seeds", type=int, nargs="+",
                        help="fit once per seed (overrides --random-state) and report "
                             "the mean and standard deviation of the mIoU")
    return parser.parse_args(argv)


def seed_spread(segmenter, features, truths, seeds, known=None):
    """mIoU of ``segmenter`` fitted with each ``random_state`` in ``seeds``.

    ``known`` maps seeds already fitted to their mIoU; they are not refitted.

    Returns
    -------
    scores : dict of int to float
        Hungarian-matched mIoU per seed, in the order of ``seeds``.
    mean, std : float
        Their mean and sample standard deviation (0 for a single seed).
    """
    known = known or {}
    scores = {}
    for seed in seeds:
        if seed in known:
            scores[seed] = known[seed]
            continue
        predictions = clone(segmenter).set_params(random_state=seed).fit_predict(features)
        scores[seed] = segmentation_report(truths, predictions)["mean_iou"]
    values = np.array(list(scores.values()))
    std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return scores, float(values.mean()), std


def main(argv=None):
    args = parse_args(argv)
    images, masks = load_voc(args.root, args.split, return_X_y=True)
    if args.limit:
        images, masks = images[:args.limit], masks[:args.limit]
    vit_params = dict(
        pretrained=not args.random_weights, weights=args.weights, facet=args.facet,
        layer=args.layer, image_size=args.image_size, batch_size=args.batch_size,
        device=args.device, dtype=args.dtype,
        store=None if args.cache is None else os.path.join(args.cache, "features.zarr"),
    )
    vit = ViTPatchTransformer(args.model, attention=args.foreground == "attention",
                              verbose=True, **vit_params)
    start = time.perf_counter()
    features = vit.fit_transform(images)
    feature_seconds = time.perf_counter() - start
    min_region = args.min_region_size
    segmenter = MultilevelSegmenter(
        n_classes=args.n_classes, n_categories=args.n_categories,
        n_dataset_clusters=args.n_dataset_clusters, foreground=args.foreground,
        consensus=args.consensus, refine=None if args.refine == "none" else args.refine,
        region=args.region,
        region_encoder=ViTPatchTransformer(args.model, **vit_params)
        if args.region == "crop" else None,
        min_region_size=int(min_region) if min_region >= 1 else min_region,
        device=args.device,
        random_state=args.seeds[0] if args.seeds else args.random_state,
    )
    start = time.perf_counter()
    predictions = segmenter.fit_predict(features)
    segment_seconds = time.perf_counter() - start
    truths = [masks[i] for i in range(len(masks))]
    report = segmentation_report(truths, predictions)
    n = len(images)
    print(f"\nPASCAL VOC 2012 {args.split}: {n} images, model {args.model}, facet {args.facet}"
          + (" (RANDOM weights)" if args.random_weights else ""))
    print(f"mIoU (Hungarian, whole set)  {100 * report['mean_iou']:6.2f}")
    print(f"pixel accuracy               {100 * report['pixel_accuracy']:6.2f}")
    print(f"per-image mIoU (inflated)    {100 * per_image_mean_iou(truths, predictions):6.2f}")
    print(f"features   {feature_seconds:8.1f} s  ({1e3 * feature_seconds / n:.1f} ms/image)")
    print(f"segmenter  {segment_seconds:8.1f} s  ({1e3 * segment_seconds / n:.1f} ms/image)")
    print("class IoU:")
    for label, value in report["iou"].items():
        name = VOC_CLASSES[label] if label < len(VOC_CLASSES) else str(label)
        print(f"  {name:12s} {100 * value:6.2f}")
    if args.seeds:
        by_seed, mean, std = seed_spread(segmenter, features, truths, args.seeds,
                                         known={args.seeds[0]: report["mean_iou"]})
        print(f"mIoU over {len(by_seed)} seeds: {100 * mean:.2f} +- {100 * std:.2f} "
              "(mean +- sample standard deviation; same features, segmenter refitted)")
        for seed, value in by_seed.items():
            print(f"  seed {seed:<6d} {100 * value:6.2f}")
        report["mean_iou_by_seed"] = by_seed
    return report


if __name__ == "__main__":
    main()
