"""``skseg demo``: the whole pipeline, offline, on synthetic scenes."""

import sys
from pathlib import Path

import numpy as np

DEMO_MODEL = "vit_small_patch16_224.dino"


def _kmeans_baseline(features, n_clusters, random_state):
    """Plain K-means over all patches, one level, nearest-upsampled."""
    from sklearn.cluster import KMeans

    flat = np.concatenate([f.patches.reshape(-1, f.patches.shape[2]) for f in features])
    flat = flat / np.linalg.norm(flat, axis=1, keepdims=True)
    labels = KMeans(n_clusters, n_init=4, random_state=random_state).fit_predict(flat)
    masks, start = [], 0
    for f in features:
        (h, w), (height, width) = f.grid_shape, f.image_shape
        grid = labels[start:start + h * w].reshape(h, w)
        start += h * w
        masks.append(grid[np.arange(height) * h // height][:, np.arange(width) * w // width])
    return masks


def _matched_colours(truths, predictions):
    """Recolour predicted ids with the classes they were matched to, so the
    figure compares like with like; unmatched ids get colours past the classes."""
    from .metrics import segmentation_report

    matching = segmentation_report(truths, predictions)["matching"]
    top = max(matching, default=0)
    lookup = np.arange(top + 1) + 21  # unmatched: colours no class uses
    for pred_id, class_id in matching.items():
        if class_id >= 0:
            lookup[pred_id] = class_id
    return [lookup[p] for p in predictions]


def _figure(images, truths, predictions, baseline, path):
    from ._pictures import grid_sheet

    grid_sheet(list(zip(images, truths, predictions, baseline)),
                  ("image", "ground truth", "skseg", "plain K-means"), path,
                  cell=images[0].shape[0])


def run_demo(output, *, n_images=24, quiet=False, random_state=0):
    from . import MultilevelSegmenter, ViTPatchTransformer
    from .datasets import make_scenes
    from .metrics import mean_iou

    def say(message):
        if not quiet:
            print(message)

    n_classes = 3
    images, truths = make_scenes(n_images=n_images, n_classes=n_classes, image_size=(160, 160),
                                 random_state=random_state)
    say(f"skseg demo: {n_images} synthetic scenes, {n_classes} object classes.")
    say(f"The ViT ({DEMO_MODEL}) has RANDOM weights: pretrained weights cannot be assumed "
        "offline. With real DINO weights (pretrained=True, or weights=FILE) the features, "
        "and the masks, are far better.")
    vit = ViTPatchTransformer(DEMO_MODEL, pretrained=False, image_size=224, verbose=not quiet)
    features = vit.fit_transform(images)
    segmenter = MultilevelSegmenter(n_classes=n_classes, random_state=random_state)
    predictions = segmenter.fit_predict(features)
    baseline = _kmeans_baseline(features, n_classes + 1, random_state)
    ours, theirs = mean_iou(truths, predictions), mean_iou(truths, baseline)
    say(f"mIoU (Hungarian-matched, {n_classes + 1} classes with background):")
    say(f"  skseg MultilevelSegmenter  {100 * ours:5.1f}")
    say(f"  plain K-means on patches   {100 * theirs:5.1f}")
    output = Path(output)
    figure = output / "demo.png"
    shown = min(6, n_images)
    _figure(images[:shown], truths[:shown],
            _matched_colours(truths, predictions)[:shown],
            _matched_colours(truths, baseline)[:shown], figure)
    say(f"Figure of images, ground truth and predictions: {figure}")
    sys.stdout.flush()
    return 0
