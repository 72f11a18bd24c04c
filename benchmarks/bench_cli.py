"""The whole ``skseg segment`` run against the bare ViT forward of its images.

Writes N VOC-size JPEG photos (375 x 500, as ``bench_segmenter.py`` makes
them), runs ``python -m skseg segment`` on them in a fresh process (start-up,
imports, model build, features, fit, refinement, labels and PNG writes: what
a user waits for), and times, in this same run and just before, the bare timm
forward of the same images (``forward_features`` on batches of 16 at 224 px,
decoding not timed, same torch thread count), once just before the run and
once just after, averaged. It prints the ratio of the two for every N, in
wall-clock and in CPU time (which a busy machine distorts less), and the
marginal ratio between the smallest and the largest N (what one more photo
costs, without the fixed costs).

``--profile N`` instead runs the command once on N photos with a timer around
each stage (imports, model build, extraction and its parts, each fit stage,
refinement, labelling, PNG and overlay writes) and prints where the time went.
Stages run in worker threads (decoding, background writes) are summed over
threads and marked so; they overlap the main thread's.

    python benchmarks/bench_cli.py [--sizes 20 200 1000] [--n-classes auto]
    python benchmarks/bench_cli.py --profile 400 [--overlay]

The machine is shared: read ratios measured in one run, not absolute times.
"""

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_segmenter import write_photo

MODEL = "vit_small_patch16_224.dino"
BATCH = 16


def write_photos(folder, n_images, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n_images):
        paths.append(folder / f"{i:05d}.jpg")
        write_photo(paths[-1], rng)
    return paths


def linked_subset(paths, folder):
    """The first photos, hard-linked into a folder of their own."""
    folder.mkdir(parents=True)
    for path in paths:
        os.link(path, folder / path.name)
    return folder


def bare_forward_seconds(paths, model_name):
    """Wall and CPU seconds of the timm forward alone over these photos, in
    batches."""
    import timm
    import torch
    from PIL import Image

    model = timm.create_model(model_name, pretrained=False).eval()
    mean = torch.tensor(model.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.pretrained_cfg["std"]).view(1, 3, 1, 1)

    def batch_of(chunk):
        arrays = []
        for path in chunk:
            with Image.open(path) as img:
                arrays.append(np.asarray(img.convert("RGB").resize((224, 224),
                                                                    Image.BILINEAR)))
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255
        return (x - mean) / std

    wall = cpu = 0.0
    with torch.inference_mode():
        model.forward_features(batch_of(paths[:2]))  # warm-up, not timed
        for start in range(0, len(paths), BATCH):
            x = batch_of(paths[start:start + BATCH])
            begin, begin_cpu = time.perf_counter(), time.process_time()
            model.forward_features(x)
            wall += time.perf_counter() - begin
            cpu += time.process_time() - begin_cpu
    return np.array([wall, cpu])


def segment_command(photos, output, args):
    command = [sys.executable, "-m", "skseg", "segment", str(photos), "-o", str(output),
               "--model", args.model, "--random-weights", "--device", "cpu", "-q",
               "--n-classes", args.n_classes]
    if args.overlay:
        command.append("--overlay")
    return command


def run_seconds(command):
    """Wall and CPU seconds (user + system) of a child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    begin = time.perf_counter()
    subprocess.run(command, check=True)
    wall = time.perf_counter() - begin
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def compare(args, folder):
    import torch

    _say_which_skseg()
    print(f"model {args.model} (random weights), {torch.get_num_threads()} torch threads, "
          f"375x500 JPEG photos, --n-classes {args.n_classes}"
          + (", --overlay" if args.overlay else ""), flush=True)
    print("forward: the mean of the bare forward timed just before and just after the run; "
          "ratio: run / forward, wall-clock then CPU time", flush=True)
    print(f"{'photos':>7s} {'forward s':>10s} {'run s':>8s} {'fwd CPU s':>10s} "
          f"{'run CPU s':>10s} {'ratio':>6s} {'CPU':>6s}", flush=True)
    paths = write_photos(folder / "all", max(args.sizes))
    results = {}
    for n_images in sorted(args.sizes):
        photos = linked_subset(paths[:n_images], folder / f"photos{n_images}")
        before = bare_forward_seconds(paths[:n_images], args.model)
        run = np.array(run_seconds(segment_command(photos, folder / f"out{n_images}", args)))
        # Bracketed: a shared machine's load changes within minutes.
        forward = (before + bare_forward_seconds(paths[:n_images], args.model)) / 2
        results[n_images] = forward, run
        print(f"{n_images:7d} {forward[0]:10.2f} {run[0]:8.2f} {forward[1]:10.2f} "
              f"{run[1]:10.2f} {run[0] / forward[0]:6.2f} {run[1] / forward[1]:6.2f}",
              flush=True)
    if len(results) > 1:
        low, high = min(results), max(results)
        extra_forward = results[high][0] - results[low][0]
        extra_run = results[high][1] - results[low][1]
        ratio = extra_run / extra_forward
        print(f"marginal, {low} to {high} photos: {ratio[0]:.2f} wall, {ratio[1]:.2f} CPU "
              f"(one more photo: run {1e3 * extra_run[0] / (high - low):.1f} ms, forward "
              f"{1e3 * extra_forward[0] / (high - low):.1f} ms, wall)")


# The profiled run: a fresh interpreter that times every stage of the command.
_PROFILED_RUN = r'''
import collections, functools, sys, threading, time
started = time.perf_counter()
totals, calls = collections.defaultdict(float), collections.Counter()
main_thread = threading.main_thread()

def timed(owner, name, stage):
    real = getattr(owner, name)
    @functools.wraps(real)
    def wrapper(*args, **kwargs):
        begin = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            key = stage if threading.current_thread() is main_thread else stage + " *"
            totals[key] += time.perf_counter() - begin
            calls[key] += 1
    setattr(owner, name, wrapper)

import skseg._cli
totals["import skseg._cli (argument parsing's)"] = time.perf_counter() - started
begin = time.perf_counter()
import torch, sklearn, timm, skseg._cli.segment, skseg._segmenter, skseg._extraction
import skseg._fit_stages, skseg._per_image_path
totals["import torch, scikit-learn, timm, skseg"] = time.perf_counter() - begin
import skseg._backbone, skseg._passes, skseg._refine, skseg._regions, skseg._store
from skseg import MultilevelSegmenter as M, ViTPatchTransformer as V, FeatureStore
run, seg, ex = skseg._cli.segment, skseg._segmenter, skseg._extraction
stages, per_image = skseg._fit_stages, skseg._per_image_path
out = skseg._cli.segment_outputs
for owner, name, stage in [
    (run, "_build_pipeline", "build the pipeline (no model yet)"),
    (run, "_prepare_backbone", "build the ViT"),
    (run, "_check_images", "check the inputs (headers)"),
    (run, "_digest", "content hashes of the inputs"),
    (V, "transform", "extraction: all"),
    (ex, "model_input", "extraction: decode + resize + normalise"),
    (ex, "forward_facets", "extraction: ViT forward"),
    (FeatureStore, "extend", "extraction: store writes"),
    (M, "fit", "fit: all (segmenter)"),
    (stages, "survey", "fit: survey pass (reads the store)"),
    (seg, "fit_dataset_level", "fit: dataset level (K-means of patches)"),
    (seg, "fit_categories", "fit: categories (K-means of CLS)"),
    (seg, "run_dataset_statistics", "fit: dataset statistics pass"),
    (seg, "fit_category_level", "fit: category 2-means"),
    (per_image, "segment_all", "fit: per-image path (levels, pixels, regions)"),
    (skseg._passes, "foreground_masks", "fit: upsampling + refinement"),
    (skseg._refine, "working_pixels", "fit: refinement's decode"),
    (skseg._passes, "object_regions", "fit: object regions"),
    (seg, "fit_classes", "fit: classes (K-means of regions)"),
    (per_image.RegionsInMemory, "labels", "fit: labels"),
    (per_image.RegionsOnWorkers, "labels", "fit: labels (joblib workers)"),
    (run, "write_masks", "writes: all"),
    (out, "save_label_png", "writes: mask PNGs (with painting)"),
    (out, "_write_overlay", "writes: overlays"),
    (run, "write_record", "writes: run record"),
    (out, "write_record", "writes: run record"),
]:
    timed(owner, name, stage)
import skseg._regions
timed(skseg._regions.LabelMasks, "__getitem__", "writes: painting the masks")
real_main = skseg._cli.parser.main

def main_then_totals(argv):
    status = real_main(argv)
    totals["whole process (from interpreter start)"] = time.perf_counter() - started
    for stage, seconds in sorted(totals.items(), key=lambda item: item[0]):
        print(f"{seconds:9.2f} s {calls[stage] or 1:6d}  {stage}")
    return status

skseg._cli.parser.main = main_then_totals
skseg._cli.run_and_exit(sys.argv[1:])  # and exit as the program does
'''


def _say_which_skseg():
    """The command runs in a child process with this one's environment: it
    imports the skseg this one finds (mind PYTHONPATH in a git worktree)."""
    command = [sys.executable, "-c", "import skseg; print(skseg.__file__)"]
    found = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    print(f"skseg from {Path(found.strip()).parent}", flush=True)


def profile(args, folder):
    _say_which_skseg()
    photos = write_photos(folder / "photos", args.profile)
    print(f"profile of one run on {args.profile} photos, model {args.model} (random weights), "
          f"--n-classes {args.n_classes}" + (", --overlay" if args.overlay else ""))
    print("  seconds  calls  stage  (* = summed over worker threads)", flush=True)
    command = segment_command(folder / "photos", folder / "out", args)
    begin = time.perf_counter()
    stages = subprocess.run([sys.executable, "-c", _PROFILED_RUN, *command[3:]], check=True,
                            stdout=subprocess.PIPE, text=True).stdout
    wall = time.perf_counter() - begin
    print(stages, end="")
    inside = float(next(line for line in stages.splitlines() if "whole process" in line).split()[0])
    print(f"{wall - inside:9.2f} s      1  interpreter start-up and exit (outside the above)")
    forward = bare_forward_seconds(photos, args.model)[0]
    print(f"whole run, wall, seen from outside: {wall:.2f} s; bare forward of the same photos "
          f"just after: {forward:.2f} s (ratio {wall / forward:.2f})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20, 200, 1000])
    parser.add_argument("--profile", type=int, metavar="N",
                        help="profile one run on N photos instead")
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--n-classes", default="auto")
    parser.add_argument("--overlay", action="store_true", help="also write overlays")
    parser.add_argument("--folder", type=Path,
                        help="work here (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.folder) as folder:
        (profile if args.profile else compare)(args, Path(folder))


if __name__ == "__main__":
    main()
