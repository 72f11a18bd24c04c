"""Throughput of ViTPatchTransformer.transform against a bare timm forward.

Both run the same model on the same batches of 224 x 224 images in one process;
the ratio (ours / bare) shows what loading, resizing, hooking and copying cost
on top of the ViT itself. Target: ratio >= 0.9.

    python benchmarks/bench_features.py [--device cpu] [--n-images 64]
"""

import argparse
import time

import numpy as np
import torch

from skseg import ViTPatchTransformer
from skseg._backbone import resolve_device
from skseg._weights import get_model


def timed(fn):
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def best_of_interleaved(repeats, *fns):
    """Best time of each function, run in alternation so that load on a shared
    machine hits all of them alike."""
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, record in zip(fns, times):
            record.append(timed(fn))
    return [min(record) for record in times]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--n-images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", nargs="+",
                        default=["vit_small_patch16_224.dino", "vit_small_patch8_224.dino"])
    args = parser.parse_args()
    device = resolve_device(args.device)
    rng = np.random.default_rng(0)
    # uint8 photographs of the size the model expects: no resize needed, as
    # in a bare forward; the cost we add is conversion, hooks and copies.
    images = [(rng.random((224, 224, 3)) * 255).astype(np.uint8) for _ in range(args.n_images)]
    print(f"device={device}  images={args.n_images}  batch={args.batch_size}  "
          f"threads={torch.get_num_threads()}")
    print(f"{'model':32s} {'bare img/s':>11s} {'skseg img/s':>12s} {'ratio':>6s}")
    for name in args.models:
        vit = ViTPatchTransformer(name, pretrained=False, image_size=224, device=args.device,
                                  batch_size=args.batch_size).fit()
        model = get_model(name, pretrained=False, weights=None, device=device)
        mean = torch.tensor(vit.mean_).view(1, 3, 1, 1)
        std = torch.tensor(vit.std_).view(1, 3, 1, 1)
        # The bare baseline gets its batches ready-made on the device.
        batches = [
            ((torch.from_numpy(np.stack(images[i:i + args.batch_size])).permute(0, 3, 1, 2)
              .float() / 255 - mean) / std).to(device)
            for i in range(0, len(images), args.batch_size)
        ]

        def bare():
            with torch.inference_mode():
                for batch in batches:
                    model.forward_features(batch).cpu()

        def ours():
            vit.transform(images)

        ours()  # warm-up both
        bare()
        t_bare, t_ours = best_of_interleaved(args.repeats, bare, ours)
        n = len(images)
        print(f"{name:32s} {n / t_bare:11.1f} {n / t_ours:12.1f} {t_bare / t_ours:6.3f}")


if __name__ == "__main__":
    main()
