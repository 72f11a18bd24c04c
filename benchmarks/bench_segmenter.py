"""Cost of MultilevelSegmenter.fit_predict per image, relative to the ViT.

For the patch grids of ViT-S/16 and ViT-S/8 at 224 px (14 x 14 and 28 x 28,
384-d), this times ``fit_predict`` per image on 200 and 2,000 images, without
refinement and with PAMR at 224 x 224 pixels, and divides by the time per
image of the matching ViT forward pass measured in the same run. Targets:
<= 0.1 without refinement, <= 0.25 with PAMR, and a time per image that does
not grow with the number of images.

    python benchmarks/bench_segmenter.py [--sizes 200 2000] [--device cpu]
"""

import argparse
import time

import numpy as np
import torch

from skseg import ImageFeatures, MultilevelSegmenter
from skseg._backbone import get_model, resolve_device


def vit_seconds_per_image(name, device, batch=16, repeats=3):
    model = get_model(name, pretrained=False, weights=None, device=device)
    x = torch.randn(batch, 3, 224, 224, device=device)
    with torch.inference_mode():
        model.forward_features(x)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            model.forward_features(x).cpu()
            best = min(best, time.perf_counter() - start)
    return best / batch


def synthetic_features(n_images, grid, rng, pixels):
    """Features with an object blob, and (optionally) the 224 px image itself."""
    h = w = grid
    yy, xx = np.mgrid[:h, :w]
    base = rng.standard_normal((8, 384)).astype(np.float32)
    image = (rng.random((224, 224, 3)) * 255).astype(np.uint8) if pixels else None
    out = []
    for i in range(n_images):
        cy, cx, r = rng.uniform(0.3 * h, 0.7 * h), rng.uniform(0.3 * w, 0.7 * w), 0.25 * h
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        patches = np.where(inside[..., None], base[i % 4], base[4 + i % 4])
        patches = patches + 0.5 * rng.standard_normal((h, w, 384)).astype(np.float32)
        out.append(ImageFeatures(patches=patches, cls=base[i % 4] + 0.1 * rng.standard_normal(384),
                                 image_shape=(224, 224), image=image, patch_size=224 // grid))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 2000])
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    rng = np.random.default_rng(0)
    print(f"device={device}  threads={torch.get_num_threads()}")
    print(f"{'grid':>5s} {'images':>7s} {'refine':>7s} {'ms/img':>8s} {'ViT ms/img':>11s} {'ratio':>6s}")
    for name, grid in (("vit_small_patch16_224.dino", 14), ("vit_small_patch8_224.dino", 28)):
        vit = vit_seconds_per_image(name, device)
        for n_images in args.sizes:
            for refine in (None, "pamr"):
                X = synthetic_features(n_images, grid, rng, pixels=refine is not None)
                seg = MultilevelSegmenter(n_classes=8, refine=refine, device=args.device,
                                          random_state=0)
                start = time.perf_counter()
                seg.fit_predict(X)
                per_image = (time.perf_counter() - start) / n_images
                print(f"{grid:>5d} {n_images:>7d} {str(refine):>7s} {1e3 * per_image:8.2f} "
                      f"{1e3 * vit:11.2f} {per_image / vit:6.3f}", flush=True)


if __name__ == "__main__":
    main()
