"""The ``skseg`` command line: segment a folder of images, evaluate masks, demo."""

import argparse
import glob
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from ._backbone import FACETS, WeightsUnavailableError
from ._images import check_each_image, load_rgb
from .datasets._folder import IMAGE_SUFFIXES


class UserError(Exception):
    """A mistake the user can fix; printed as one line, never a traceback."""


def voc_palette():
    """The PASCAL VOC colour map (256 x 3 uint8), as used by its label PNGs."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for label in range(256):
        value, colour = label, [0, 0, 0]
        for shift in range(7, -1, -1):
            for channel in range(3):
                colour[channel] |= ((value >> channel) & 1) << shift
            value >>= 3
        palette[label] = colour
    return palette


def _atomic_save(image, path, **kwargs):
    """Write to a temporary file beside ``path``, then rename: never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                         suffix=path.suffix)
    os.close(handle)
    try:
        image.save(temporary, **kwargs)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def save_label_png(mask, path):
    """A palette PNG: pixel values are the labels, colours the VOC palette."""
    if mask.max(initial=0) > 255:
        raise UserError(f"{path}: labels above 255 do not fit a palette PNG.")
    png = Image.fromarray(mask.astype(np.uint8), mode="P")
    png.putpalette(voc_palette().ravel().tolist())
    _atomic_save(png, path)


def overlay(rgb, mask, alpha=0.5):
    """The image with its labels blended in (background left as is)."""
    colours = voc_palette()[mask].astype(np.float32) / 255
    blended = np.where((mask > 0)[..., None], (1 - alpha) * rgb + alpha * colours, rgb)
    return Image.fromarray((blended * 255).round().astype(np.uint8))


def _is_image(path):
    return path.suffix.lower() in IMAGE_SUFFIXES


def expand_inputs(inputs, recursive):
    """Files, folders and globs to (path, output name relative to OUTDIR)."""
    found = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            found += [(p, p.relative_to(path)) for p in sorted(path.glob(pattern))
                      if p.is_file() and _is_image(p)]
        elif path.is_file():
            found.append((path, Path(path.name)))
        elif glob.has_magic(item):
            matches = sorted(Path(m) for m in glob.glob(item, recursive=recursive))
            # Outputs keep the structure below the glob's first wildcard folder.
            parts = Path(item).parts
            first_magic = next(i for i, part in enumerate(parts) if glob.has_magic(part))
            base = Path(*parts[:first_magic]) if first_magic else Path(".")
            found += [(p, p.relative_to(base) if p.is_relative_to(base) else Path(p.name))
                      for p in matches if p.is_file() and _is_image(p)]
        else:
            raise UserError(f"input {item!r} is neither a file, a folder nor a matching glob.")
    if not found:
        raise UserError("no input images found" + ("" if recursive else
                                                    " (folders are read with --recursive too)"))
    names = [name.with_suffix("") for _, name in found]
    if len(set(names)) != len(names):
        raise UserError("two inputs would write the same output; pass their parent folder.")
    return found


def _say(args, message):
    if not args.quiet:
        print(message, file=sys.stderr)


def _build_pipeline(args):
    from sklearn.pipeline import Pipeline

    from . import MultilevelSegmenter, ViTPatchTransformer

    cache = None if args.no_cache else (args.cache or args.output / ".skseg-cache")
    vit = ViTPatchTransformer(
        args.model, pretrained=not args.random_weights, weights=args.weights,
        facet=args.facet, image_size=args.image_size, batch_size=args.batch_size,
        device=args.device, memory=None if cache is None else str(cache),
        verbose=not args.quiet,
    )
    seg = MultilevelSegmenter(
        n_classes=args.n_classes, n_categories=args.n_categories,
        refine=None if args.refine == "none" else args.refine, device=args.device,
        random_state=args.random_state,
    )
    return Pipeline([("vit", vit), ("seg", seg)])


def cmd_segment(args):
    import joblib
    from tqdm.auto import tqdm

    items = expand_inputs(args.input, args.recursive)
    good, failed = [], []
    # Every file is checked before the ViT runs.
    checks = check_each_image([path for path, _ in items])
    for (path, name), result in zip(items, checks):
        if not isinstance(result, Exception):
            good.append((path, name))
            continue
        if args.strict:
            raise UserError(str(result))
        failed.append(path)
        print(f"skseg: skipped {path}: {result}", file=sys.stderr)
    if not good:
        raise UserError("none of the inputs could be read.")
    images = [path for path, _ in good]
    if args.load_model:
        pipeline = joblib.load(args.load_model)
        _say(args, f"Loaded {args.load_model}; predicting {len(images)} images.")
        labels = pipeline.predict(images)
    else:
        pipeline = _build_pipeline(args)
        _say(args, f"Fitting on {len(images)} images with {args.model}.")
        labels = pipeline.fit(images).named_steps["seg"].labels_
        if args.save_model:
            Path(args.save_model).parent.mkdir(parents=True, exist_ok=True)
            # Predicting needs the centroids, not the training masks, which
            # at full resolution can outweigh everything else many times.
            saved = clone_without_labels(pipeline)
            joblib.dump(saved, args.save_model)
            _say(args, f"Saved the fitted pipeline to {args.save_model}.")
    kept = 0
    for (path, name), mask in tqdm(list(zip(good, labels)), desc="writing", unit="img",
                                   disable=args.quiet):
        target = args.output / name.with_suffix(".png")
        if target.exists() and not args.force:
            kept += 1
            continue
        save_label_png(mask, target)
        if args.overlay:
            picture = overlay(load_rgb(path), mask)
            _atomic_save(picture, target.with_name(target.stem + "_overlay.jpg"), quality=90)
    _say(args, f"Wrote {len(good) - kept} masks to {args.output}"
               + (f"; kept {kept} existing (use --force to overwrite)" if kept else "") + ".")
    if failed:
        print(f"skseg: {len(failed)} input(s) could not be read and were skipped.",
              file=sys.stderr)
        return 1
    return 0


def clone_without_labels(pipeline):
    """A shallow copy of a fitted pipeline whose segmenter drops ``labels_``."""
    import copy

    saved = copy.copy(pipeline)
    segmenter = copy.copy(pipeline.steps[-1][1])
    vars(segmenter).pop("labels_", None)
    saved.steps = [*pipeline.steps[:-1], (pipeline.steps[-1][0], segmenter)]
    return saved


def _read_mask(path):
    with Image.open(path) as img:
        mask = np.asarray(img)
    if mask.ndim != 2:
        raise UserError(f"{path} is not a single-channel label image.")
    return mask


def cmd_evaluate(args):
    from .metrics import segmentation_report

    truth_dir, pred_dir = Path(args.gt_dir), Path(args.pred_dir)
    for folder in (truth_dir, pred_dir):
        if not folder.is_dir():
            raise UserError(f"{folder} is not a folder.")
    truths = sorted(p for p in truth_dir.rglob("*.png") if not p.name.startswith("."))
    if not truths:
        raise UserError(f"no PNG masks in {truth_dir}.")
    y_true, y_pred = [], []
    for truth in truths:
        pred = pred_dir / truth.relative_to(truth_dir)
        if not pred.is_file():
            raise UserError(f"no prediction {pred} for ground truth {truth}.")
        y_true.append(_read_mask(truth))
        y_pred.append(_read_mask(pred))
    report = segmentation_report(y_true, y_pred, ignore_index=args.ignore_index,
                                 matching=args.matching)
    if args.json:
        print(json.dumps({
            "n_images": len(truths), "matching": args.matching,
            "mean_iou": report["mean_iou"], "pixel_accuracy": report["pixel_accuracy"],
            "iou": {str(k): v for k, v in report["iou"].items()},
            "assignment": {str(k): v for k, v in report["matching"].items()},
        }, indent=2))
        return 0
    print(f"images          {len(truths)}")
    print(f"matching        {args.matching}")
    print(f"mean IoU        {100 * report['mean_iou']:.2f}")
    print(f"pixel accuracy  {100 * report['pixel_accuracy']:.2f}")
    print("class  IoU")
    for label, value in report["iou"].items():
        print(f"{label:5d}  {100 * value:6.2f}")
    return 0


def cmd_demo(args):
    from ._demo import run_demo

    return run_demo(args.output, n_images=args.n_images, quiet=args.quiet,
                    random_state=args.random_state)


def _image_size(text):
    if text.lower() == "keep":
        return None
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give a side (224), HEIGHTxWIDTH (224x320) or 'keep'") from None
    if len(values) not in (1, 2) or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: sides must be positive")
    return values[0] if len(values) == 1 else tuple(values)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="skseg", description="Unsupervised semantic segmentation with ViT features.")
    commands = parser.add_subparsers(dest="command", required=True)

    segment = commands.add_parser(
        "segment", help="segment images: one label PNG per image",
        description="Fit the skseg pipeline on all inputs and write one palette PNG of "
                    "labels per image (0 = background). Re-running reuses the feature "
                    "cache and keeps finished outputs.")
    segment.add_argument("input", nargs="+", help="image files, folders or globs")
    segment.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    segment.add_argument("-r", "--recursive", action="store_true",
                         help="read folders (and ** globs) recursively")
    segment.add_argument("--overlay", action="store_true",
                         help="also write NAME_overlay.jpg blending labels over the image")
    segment.add_argument("--model", default="vit_small_patch8_224.dino", help="timm model name")
    segment.add_argument("--weights", help="local weights file (.safetensors/.pth), for offline use")
    segment.add_argument("--random-weights", action="store_true",
                         help="use an untrained ViT (for trying the tool offline only)")
    segment.add_argument("--facet", choices=FACETS, default="key")
    segment.add_argument("--image-size", type=_image_size, default=224,
                         help="side, HEIGHTxWIDTH, or 'keep' (aspect ratio kept)")
    segment.add_argument("--n-classes", type=int, default=20)
    segment.add_argument("--n-categories", type=int, default=None)
    segment.add_argument("--refine", choices=["pamr", "none"], default="pamr")
    segment.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    segment.add_argument("--batch-size", type=int, default=16)
    segment.add_argument("--random-state", type=int, default=0)
    segment.add_argument("--cache", type=Path,
                         help="feature cache folder (default: OUTPUT/.skseg-cache)")
    segment.add_argument("--no-cache", action="store_true", help="do not cache features")
    segment.add_argument("--save-model", type=Path,
                         help="save the fitted pipeline here (its centroids, not the "
                              "training masks)")
    segment.add_argument("--load-model", type=Path,
                         help="predict with a saved pipeline instead of fitting "
                              "(a pickle: load only files you trust)")
    segment.add_argument("--force", action="store_true", help="overwrite existing outputs")
    segment.add_argument("--strict", action="store_true",
                         help="stop at the first unreadable input instead of skipping it")
    segment.add_argument("-q", "--quiet", action="store_true")
    segment.set_defaults(handler=cmd_segment)

    evaluate = commands.add_parser(
        "evaluate", help="mIoU of predicted label PNGs against ground truth",
        description="Hungarian-matched mIoU over the whole set (255 ignored), pixel "
                    "accuracy and per-class IoU. Files are paired by relative path.")
    evaluate.add_argument("pred_dir")
    evaluate.add_argument("gt_dir")
    evaluate.add_argument("--matching", choices=["hungarian", "majority", "none"],
                          default="hungarian")
    evaluate.add_argument("--ignore-index", type=int, default=255)
    evaluate.add_argument("--json", action="store_true", help="machine-readable output")
    evaluate.set_defaults(handler=cmd_evaluate)

    demo = commands.add_parser(
        "demo", help="run the whole pipeline offline on synthetic scenes",
        description="Segment synthetic scenes with an untrained ViT (no weights can be "
                    "assumed offline), compare with plain K-means, and save a figure.")
    demo.add_argument("--output", type=Path, default=Path("skseg-demo"))
    demo.add_argument("--n-images", type=int, default=24)
    demo.add_argument("--random-state", type=int, default=0)
    demo.add_argument("-q", "--quiet", action="store_true")
    demo.set_defaults(handler=cmd_demo)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("n_classes", "batch_size", "n_images"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if getattr(args, "n_classes", 0) > 255:
        # Known now, not after the fit: labels are written as palette PNGs.
        parser.error("--n-classes must be at most 255 (labels are palette PNG values)")
    try:
        return args.handler(args)
    except (UserError, WeightsUnavailableError, ValueError, TypeError, OSError) as exc:
        print(f"skseg: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("skseg: interrupted; run again to resume (finished outputs and cached "
              "features are kept).", file=sys.stderr)
        return 130
