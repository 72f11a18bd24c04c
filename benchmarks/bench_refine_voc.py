"""Upsampling and refinement measured on real photos, against their truth.

The pixel stage is the one stage of skseg whose quality can be measured on
real photos without pretrained weights: start from the ground truth reduced
to the patch grid (the best mask the clustering could hand over), upsample
and refine it as :class:`skseg.MultilevelSegmenter` does, and compare the
result with the full-resolution truth.

For every photo of the shared VOC samples (``voc2012-val-crops``, 14 photos
of 513 x 513, and ``voc2012-mini``, 3 uncropped photos of up to 500 px) and every
patch size (a ViT at 224 x 224, skseg's default ``image_size``, has a grid of
224 / patch size), the start is

* ``soft``: the fraction of each patch the objects cover (a soft score finer
  than any the clustering gives: its consensus is a vote of three levels);
* ``grid``: the grid mask, coverage > 0.5, as 0/1 scores (what three levels
  that agree hand over);
* ``eroded`` / ``dilated``: the grid mask (coverage > 0.5) eroded or dilated
  by one patch (3 x 3), as 0/1 scores;
* ``flipped``: the grid mask with 10 % of its patches flipped (drawn with a
  seed fixed per photo and patch size).

Each start goes through ``foreground_masks`` with no refinement (bilinear
upsampling alone), and with the dense CRF and PAMR at skseg's working
resolution (``refine_max_side=128``) and at others. Printed per
start: foreground IoU (void pixels ignored), boundary F-score (predicted and
true boundary pixels matched within 2 px), each as the mean over photos and
patch sizes and the worst photo; how often the method beats bilinear
upsampling on IoU; and milliseconds per photo (decoding the working pixels
included, as in the segmenter, but one photo per call where the segmenter
refines batches), also as a ratio to a ViT-S/16 forward at 224 px (random
weights, batches of 16) timed in the same run.

The truth's void pixels (VOC's 5-pixel band along object outlines, and
objects too hard to label) take the label of their nearest labelled pixel to
place the outline in the middle of the band; they are still left out of the
IoU.

    python benchmarks/bench_refine_voc.py [--data ../shared/data] [--threads 1] [--device cpu]
"""

import argparse
import time
import zlib
from functools import partial
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from bench_segmenter import vit_seconds_per_image
from skseg._backbone import resolve_device
from skseg._refine import dense_crf, foreground_masks, pamr
from skseg._regions import pixel_to_patch
from skseg.datasets import load_voc

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SETS = ("voc2012-val-crops", "voc2012-mini")
VIT_SIZE = 224
TOLERANCE = 2  # pixels, for the boundary F-score
FLIPPED = 0.10

# Name, refine callable (None: bilinear upsampling alone), working resolution.
METHODS = [
    ("bilinear", None, None),
    ("pamr 128", pamr, 128),
    ("pamr 64", pamr, 64),
    ("pamr 192", pamr, 192),
    ("pamr 256", pamr, 256),
    ("crf 64", dense_crf, 64),
    ("crf 96", dense_crf, 96),
    ("crf 128 (default)", dense_crf, 128),
    ("crf 128 stride 2", partial(dense_crf, stride=2), 128),
    ("crf 192", dense_crf, 192),
]


def load_photos(data):
    """(id, path, labels) of every photo of the shared VOC samples."""
    photos = []
    for name in SETS:
        voc = load_voc(data / name, "val")
        photos += [(i, path, np.asarray(labels))
                   for i, path, labels in zip(voc.ids, voc.images, voc.masks)]
    return photos


def truth_of(labels):
    """Foreground with void filled from the nearest labelled pixel; the non-void pixels."""
    void = labels == 255
    nearest = ndimage.distance_transform_edt(void, return_distances=False,
                                             return_indices=True)
    filled = labels[tuple(nearest)]
    return (filled > 0), ~void


def patch_coverage(foreground, grid):
    """Fraction of each patch of a ``grid x grid`` patch grid that is foreground."""
    patch = pixel_to_patch(foreground.shape, (grid, grid)).ravel()
    covered = np.bincount(patch, weights=foreground.ravel(), minlength=grid * grid)
    return (covered / np.bincount(patch, minlength=grid * grid)).reshape(grid, grid)


def starts(coverage, seed):
    """The soft start and the degraded ones, as float32 patch scores."""
    grid = coverage > 0.5
    cross = ndimage.generate_binary_structure(2, 1)
    flipped = grid.copy()
    rng = np.random.default_rng(seed)
    chosen = rng.choice(grid.size, size=round(FLIPPED * grid.size), replace=False)
    flipped.flat[chosen] = ~flipped.flat[chosen]
    return {
        "soft": coverage,
        "grid": grid,
        "eroded": ndimage.binary_erosion(grid, cross, border_value=1),
        "dilated": ndimage.binary_dilation(grid, cross),
        "flipped": flipped,
    }


def boundary(mask):
    """Pixels of the mask with a 4-neighbour outside it (the image frame is no edge)."""
    return mask & ~ndimage.binary_erosion(mask, border_value=1)


def boundary_f(predicted, truth):
    """F-score of boundary pixels matched within ``TOLERANCE`` pixels."""
    got, want = boundary(predicted), boundary(truth)
    if not got.any() or not want.any():
        return float(got.any() == want.any())
    near_want = ndimage.distance_transform_edt(~want) <= TOLERANCE
    near_got = ndimage.distance_transform_edt(~got) <= TOLERANCE
    precision, recall = near_want[got].mean(), near_got[want].mean()
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def iou(predicted, truth, valid):
    union = ((predicted | truth) & valid).sum()
    return 1.0 if union == 0 else ((predicted & truth) & valid).sum() / union


def refined(score, shape, path, refine, max_side, device):
    """The full-size mask and the wall-clock seconds it took."""
    images = None if refine is None else [path]
    kwargs = {} if refine is None else dict(refine=refine, max_side=max_side)
    wall = time.perf_counter()
    mask = foreground_masks(score[None].astype(np.float32), shape, images, device=device,
                            **kwargs)[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return mask, time.perf_counter() - wall


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA,
                        help="folder holding voc2012-val-crops/ and voc2012-mini/")
    parser.add_argument("--patch-sizes", type=int, nargs="+", default=[8, 14, 16])
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="where refinement and the ViT run")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    photos = load_photos(args.data)
    vit = vit_seconds_per_image(device)[0]
    print(f"{len(photos)} photos, patch sizes {args.patch_sizes}, threads "
          f"{torch.get_num_threads()}; ViT-S/16 224px forward {1e3 * vit:.1f} ms/img wall")
    # One call per method first: the first call of a process pays one-off costs.
    _, path, labels = photos[0]
    for _, refine, max_side in METHODS:
        refined(np.full((14, 14), 0.5), labels.shape, path, refine, max_side, device)
    results = {}  # (start, method) -> list of (iou, boundary F, seconds, bilinear IoU)
    for photo_id, path, labels in photos:
        truth, valid = truth_of(labels)
        for patch_size in args.patch_sizes:
            coverage = patch_coverage(truth, VIT_SIZE // patch_size)
            seed = [zlib.crc32(photo_id.encode()), patch_size]
            for start, score in starts(coverage, seed).items():
                plain = None
                for name, refine, max_side in METHODS:
                    mask, seconds = refined(np.asarray(score, np.float32), labels.shape,
                                            path, refine, max_side, device)
                    score_iou = iou(mask, truth, valid)
                    plain = score_iou if plain is None else plain
                    results.setdefault((start, name), []).append(
                        (score_iou, boundary_f(mask, truth), seconds, plain))
    for start in ("soft", "grid", "eroded", "dilated", "flipped"):
        print(f"\nstart: {start}  (mean, worst over {len(photos)} photos x "
              f"{len(args.patch_sizes)} patch sizes)")
        print(f"{'method':>20s} {'IoU':>6s} {'worst':>6s} {'BF@2px':>7s} {'worst':>6s} "
              f"{'>bilin':>7s} {'ms':>6s} {'x ViT':>6s}")
        for name, _, _ in METHODS:
            values = np.array(results[start, name])
            beats = (values[:, 0] > values[:, 3] + 1e-9).mean()
            print(f"{name:>20s} {values[:, 0].mean():6.3f} {values[:, 0].min():6.3f} "
                  f"{values[:, 1].mean():7.3f} {values[:, 1].min():6.3f} {beats:7.0%} "
                  f"{1e3 * values[:, 2].mean():6.1f} {values[:, 2].mean() / vit:6.3f}")
    vit_after = vit_seconds_per_image(device)[0]
    print(f"\nViT-S/16 forward again at the end: {1e3 * vit_after:.1f} ms/img wall "
          "(ratios use the first; a large change means a busy machine)")


if __name__ == "__main__":
    main()
