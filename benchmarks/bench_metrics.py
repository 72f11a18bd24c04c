"""Time to score a PASCAL VOC 2012 val sized set (1,449 masks of 375 x 500).

    python benchmarks/bench_metrics.py
"""

import time

import numpy as np

from skseg.metrics import mean_iou


def main():
    rng = np.random.default_rng(0)
    truth = [rng.integers(0, 21, (375, 500)).astype(np.uint8) for _ in range(1449)]
    for t in truth[::3]:
        t[:10] = 255  # void borders, as in VOC
    pred = [rng.integers(0, 25, (375, 500)).astype(np.uint8) for _ in range(1449)]
    start = time.perf_counter()
    score = mean_iou(truth, pred)
    elapsed = time.perf_counter() - start
    print(f"1449 masks of 375x500: mean_iou={score:.4f} in {elapsed:.2f} s "
          f"({1e3 * elapsed / 1449:.2f} ms per mask)")


if __name__ == "__main__":
    main()
