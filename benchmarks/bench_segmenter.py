"""Cost of MultilevelSegmenter.fit_predict per image, relative to the ViT.

Users feed photographs, so this writes VOC-size JPEG files (375 x 500, a
textured background, a few objects of other colours, sensor noise) to a
temporary folder, pairs each with ViT-S/16 patch features on its 14 x 14 grid
at 224 px (objects planted where the picture has them, plus noise), and times
``fit_predict`` per image, every full-size mask made, without refinement,
with the dense CRF (the default) and with PAMR, after one warm-up fit on 32
images. It also times the pixel stage
alone (``foreground_masks`` on batches of 16 files, with either refinement). With several ``--sizes``
it prints the marginal cost of one more image too (from the smallest to the
largest size), which leaves out what does not grow with the number of images
(the K-means fits on bounded samples).

Every time is divided by the time per image of a ViT-S/16 forward at 224 px
(random weights, batches of 16) measured in the same run, both in wall-clock
and in process CPU time (the latter is what a shared machine distorts least).
Targets: <= 0.05 without refinement, <= 0.25 with either refinement.

    python benchmarks/bench_segmenter.py [--sizes 300 2000] [--device cpu] [--threads 1]
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from skseg import ImageFeatures, MultilevelSegmenter
from skseg._backbone import resolve_device
from skseg._refine import dense_crf, foreground_masks, pamr
from skseg._regions import pixel_to_patch
from skseg._weights import get_model

VOC_SHAPE = (375, 500)
MODEL = "vit_small_patch16_224.dino"
GRID = 14
REFINEMENTS = (None, "crf", "pamr")


def timed(fn):
    """Wall-clock and process CPU seconds of one call. CPU time is what a
    busy shared machine distorts least; wall time is what a user waits."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return np.array([time.perf_counter() - wall, time.process_time() - cpu])


def vit_seconds_per_image(device, batch=16, repeats=3):
    model = get_model(MODEL, pretrained=False, weights=None, device=device)
    x = torch.randn(batch, 3, 224, 224, device=device)
    with torch.inference_mode():
        model.forward_features(x)
        return np.min([timed(lambda: model.forward_features(x).cpu())
                       for _ in range(repeats)], axis=0) / batch


def write_photo(path, rng):
    """A VOC-size JPEG with objects on a textured background; their mask."""
    height, width = VOC_SHAPE
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    background = rng.uniform(0.2, 0.8, 3).astype(np.float32)
    tilt = rng.uniform(-0.3, 0.3, 3).astype(np.float32)
    rgb = background + tilt * (yy / height)[..., None]
    rgb += 0.08 * np.sin(xx / rng.uniform(5, 20))[..., None]  # texture
    truth = np.zeros(VOC_SHAPE, bool)
    for _ in range(rng.integers(1, 4)):
        cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
        ry, rx = rng.uniform(0.1, 0.3) * height, rng.uniform(0.1, 0.3) * width
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        rgb[inside] = rng.uniform(0, 1, 3)
        truth |= inside
    rgb += 0.05 * rng.standard_normal(rgb.shape).astype(np.float32)
    Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8)).save(path, quality=90)
    return truth


def photo_features(folder, n_images, rng):
    """Files, the features a ViT-S/16 might give them (objects planted) and
    the objects' coverage of each patch."""
    base = rng.standard_normal((8, 384)).astype(np.float32)
    out, coverage = [], []
    for i in range(n_images):
        path = Path(folder) / f"{i:05d}.jpg"
        truth = write_photo(path, rng)
        coverage.append(_patch_fraction(truth))
        grid = coverage[-1] > 0.5
        patches = np.where(grid[..., None], base[i % 4], base[4 + i % 4])
        patches = patches + 0.5 * rng.standard_normal((GRID, GRID, 384)).astype(np.float32)
        out.append(ImageFeatures(patches=patches, cls=base[i % 4] + 0.1 * rng.standard_normal(384),
                                 image_shape=VOC_SHAPE, image=str(path), patch_size=16))
    return out, coverage


_PATCH_OF_PIXEL = pixel_to_patch(VOC_SHAPE, (GRID, GRID)).ravel()
_PIXELS_PER_PATCH = np.bincount(_PATCH_OF_PIXEL, minlength=GRID * GRID)


def _patch_fraction(truth):
    covered = np.bincount(_PATCH_OF_PIXEL, weights=truth.ravel(), minlength=GRID * GRID)
    return (covered / _PIXELS_PER_PATCH).reshape(GRID, GRID)


def pixel_stage_seconds_per_image(X, coverage, device, refine, batch=16):
    # Soft scores as the consensus gives them: the objects' patch coverage.
    paths = [f.image for f in X[:batch]]
    soft = np.stack(coverage[:batch]).astype(np.float32)
    return np.min([timed(lambda: foreground_masks(soft, VOC_SHAPE, paths, refine=refine,
                                                  device=device))
                   for _ in range(3)], axis=0) / batch


def segment(segmenter, X):
    """``fit_predict``, and every full-size mask made (as a user writing them would)."""
    for mask in segmenter.fit_predict(X):
        mask.sum()


def row(stage, n_images, seconds, vit):
    wall, cpu = 1e3 * seconds
    ratio_wall, ratio_cpu = seconds / vit
    print(f"{stage:>18s} {n_images:>7d} {wall:8.2f} {cpu:8.2f} {ratio_wall:7.3f} {ratio_cpu:7.3f}",
          flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[300])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    rng = np.random.default_rng(0)
    vit = vit_seconds_per_image(device)
    print(f"device={device}  threads={torch.get_num_threads()}  images {VOC_SHAPE[0]}x"
          f"{VOC_SHAPE[1]} JPEG  ViT-S/16 224px forward {1e3 * vit[0]:.1f} ms/img wall, "
          f"{1e3 * vit[1]:.1f} ms/img CPU")
    print(f"{'stage':>18s} {'images':>7s} {'wall ms':>8s} {'CPU ms':>8s} {'x wall':>7s} "
          f"{'x CPU':>7s}   (per image; x = ratio to the ViT forward)")
    with tempfile.TemporaryDirectory() as folder:
        X, coverage = photo_features(folder, max(args.sizes), rng)
        for name, refine in (("crf", dense_crf), ("pamr", pamr)):
            row(f"masks, {name}", 16,
                pixel_stage_seconds_per_image(X, coverage, device, refine), vit)
        # Once on a few images first: the first fit of a process also pays
        # one-off costs (imports, thread pools) that do not grow with images.
        MultilevelSegmenter(n_classes=8, device=args.device,
                            random_state=0).fit_predict(X[:32])
        totals = {}
        for n_images in args.sizes:
            for refine in REFINEMENTS:
                seg = MultilevelSegmenter(n_classes=8, refine=refine, device=args.device,
                                          random_state=0)
                totals[refine, n_images] = timed(lambda: segment(seg, X[:n_images]))
                row(f"refine={refine}", n_images, totals[refine, n_images] / n_images, vit)
        if len(args.sizes) > 1:  # the cost of one more image, without fixed costs
            low, high = min(args.sizes), max(args.sizes)
            print(f"marginal, from {low} to {high} images:")
            for refine in REFINEMENTS:
                row(f"refine={refine}", high - low,
                    (totals[refine, high] - totals[refine, low]) / (high - low), vit)
    vit_after = vit_seconds_per_image(device)
    print(f"ViT-S/16 forward again at the end: {1e3 * vit_after[0]:.1f} ms/img wall, "
          f"{1e3 * vit_after[1]:.1f} ms/img CPU (ratios use the first; a large change "
          "means a busy machine)")


if __name__ == "__main__":
    main()
