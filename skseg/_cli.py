"""The ``skseg`` command line: argument parsing and the commands."""

import argparse
import contextlib
import json
import logging
import os
import sys
import warnings
from pathlib import Path

# Light imports only: --help and argument errors must answer before torch or
# scikit-learn is loaded; each command imports what it needs.
from ._features import FACETS
from ._inputs import UserError, one_line

_DEFAULT_MODEL = "vit_small_patch8_224.dino"


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in its help line, but a required option's,
    which has none to show."""

    def _get_help_string(self, action):
        return action.help if action.required else super()._get_help_string(action)


def _at_least(smallest):
    """An argparse type: a whole number no smaller than ``smallest``."""

    def whole_number(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < smallest:
            raise argparse.ArgumentTypeError(f"{text} must be at least {smallest}")
        return value

    return whole_number


_positive_int = _at_least(1)


def _random_state(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"{text} must be between 0 and 2**32 - 1")
    return value


def _seconds(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a positive number of seconds")
    return value


def _folder_or_url(text):
    """A URL (``s3://...``) stays a string; anything else is a local folder."""
    return text if "://" in text and not text.startswith("file://") else Path(
        text.removeprefix("file://"))


def _n_classes(text):
    if text == "auto":
        return text
    value = _positive_int(text)
    if value > 255:
        # Known now, not after the fit: labels are written as palette PNGs.
        raise argparse.ArgumentTypeError(f"{text} is above 255, the most a palette PNG holds")
    return value


def _n_init(text):
    return text if text == "auto" else _positive_int(text)


def _min_region_size(text):
    """Pixels as a whole number, a fraction of the image as a decimal."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value.is_integer() and "." not in text:
        if value < 1:
            raise argparse.ArgumentTypeError("a pixel count must be at least 1")
        return int(value)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text}: a fraction must be in [0, 1)")
    return value


def _non_negative(positive):
    """An argparse type: a number above zero, or from zero with ``positive=False``."""

    def number(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (value > 0 if positive else value >= 0) or value == float("inf"):
            raise argparse.ArgumentTypeError(
                f"{text} must be {'above' if positive else 'at least'} 0 and finite")
        return value

    return number


def _dilations(text):
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give whole numbers, e.g. 1,2,4,8") from None
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: dilations must be at least 1")
    return values


def _image_size(text):
    """An ``--image-size``: a side (224), HEIGHTxWIDTH (224x320) or 'keep'."""
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


def _on_cluster(command):
    """``command(args)``, on a Dask cluster when ``--scheduler`` or ``--workers``
    asks for one."""

    def run(args):
        with contextlib.ExitStack() as stack:
            if args.scheduler is not None or args.workers is not None:
                from ._dask import dask_backend

                stack.enter_context(_dask_logs_as_warnings(args.quiet))
                try:
                    stack.enter_context(dask_backend(args.scheduler, args.workers,
                                                     connect_timeout=args.connect_timeout))
                except ImportError as exc:
                    raise UserError(one_line(exc)) from None
            return command(args)

    return run


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"skseg: warning: {one_line(message)}", file=sys.stderr)


class _OneLineLogHandler(logging.Handler):
    """Log records printed as the command line prints Python warnings."""

    def emit(self, record):
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a record whose arguments do not fit it
            message = str(record.msg)
        print(f"skseg: warning: {one_line(message)}", file=sys.stderr)


# The loggers of Dask and distributed, and of the web server under distributed.
_DASK_LOGGERS = ("distributed", "dask", "tornado", "bokeh")


@contextlib.contextmanager
def _dask_logs_as_warnings(quiet):
    """Within the block, Dask's and distributed's log lines (warnings and
    worse) print as ``skseg: warning: ...`` lines, or not at all with ``-q``.

    This process's loggers get a handler that does so in place of theirs.
    Worker processes started in the block configure their logging from
    Dask's settings in the environment when they import distributed, so
    those say the same (their tracebacks keep their lines).
    """
    with contextlib.suppress(ImportError):
        # distributed gives its loggers their handlers on import: first that,
        # then ours in their place.
        import distributed  # noqa: F401
    handler = _OneLineLogHandler(logging.CRITICAL + 1 if quiet else logging.WARNING)
    saved = []
    names = set(_DASK_LOGGERS) | {
        name for name in logging.root.manager.loggerDict
        if name.split(".")[0] in _DASK_LOGGERS and logging.getLogger(name).handlers}
    for name in sorted(names):
        logger = logging.getLogger(name)
        saved.append((logger, logger.handlers[:], logger.propagate))
        logger.handlers, logger.propagate = [handler], False
    environment = {"DASK_DISTRIBUTED__ADMIN__LOG_FORMAT": "skseg: warning: %(message)s",
                   "DASK_LOGGING__DISTRIBUTED": "critical" if quiet else "warning"}
    before = {key: os.environ.get(key) for key in environment}
    os.environ.update(environment)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for logger, handlers, propagate in saved:
            logger.handlers, logger.propagate = handlers, propagate


def cmd_evaluate(args):
    from ._io import read_label_png
    from .metrics import segmentation_report

    truth_dir, pred_dir = Path(args.gt_dir), Path(args.pred_dir)
    for folder in (truth_dir, pred_dir):
        if not folder.is_dir():
            raise UserError(f"{folder} is not a folder.")
    truths = _png_masks(truth_dir)
    if not truths:
        raise UserError(f"no PNG masks in {truth_dir}.")
    class_names = _read_class_names(args.class_names) if args.class_names else None
    # Masks written below OUTDIR/JPEGImages/ pair with GT/x.png by file name,
    # when no prediction has the ground truth's relative path.
    by_path = {pred_dir / truth.relative_to(truth_dir) for truth in truths}
    by_stem = {}
    for pred in _png_masks(pred_dir):
        if pred not in by_path:
            by_stem.setdefault(pred.stem, []).append(pred)
    truths_by_stem = {}
    for truth in truths:
        truths_by_stem.setdefault(truth.stem, []).append(truth)
    y_true, y_pred, missing, by_name = [], [], [], 0
    for truth in truths:
        pred = pred_dir / truth.relative_to(truth_dir)
        if not pred.is_file() and by_stem.get(truth.stem):
            sharing = by_stem[truth.stem] + [other for other in truths_by_stem[truth.stem]
                                             if other != truth]
            if len(sharing) > 1:
                raise UserError(f"ground truth {truth} has no prediction at {pred}, and "
                                f"its file name is not enough to pair it: "
                                f"{', '.join(map(str, sharing[:3]))} have it too; give "
                                "folders whose masks pair by relative path.")
            pred = by_stem[truth.stem][0]
            by_name += 1
        if not pred.is_file():
            if not args.allow_missing:
                raise UserError(f"no prediction {pred} for ground truth {truth} "
                                "(--allow-missing scores the predictions there are).")
            missing.append(pred)
            continue
        true_mask, pred_mask = read_label_png(truth), read_label_png(pred)
        if true_mask.shape != pred_mask.shape:
            raise UserError(f"{pred} is {pred_mask.shape[0]} x {pred_mask.shape[1]} pixels "
                            f"but its ground truth {truth} is {true_mask.shape[0]} x "
                            f"{true_mask.shape[1]}.")
        y_true.append(true_mask)
        y_pred.append(pred_mask)
    if not y_true:
        raise UserError(f"none of the {len(truths)} ground-truth masks has a prediction "
                        f"in {pred_dir}.")
    if all((mask == args.ignore_index).all() for mask in y_true):
        raise UserError(f"every pixel of the ground truth in {truth_dir} is "
                        f"--ignore-index {args.ignore_index}: there is nothing to score.")
    print(f"skseg: paired {len(y_true)} of {len(truths)} ground-truth masks with a "
          f"prediction" + (f" ({by_name} by file name, the others by relative path)"
                           if by_name else " by relative path") + ".", file=sys.stderr)
    if missing:
        print(f"skseg: {len(missing)} of {len(truths)} predictions are missing (e.g. "
              f"{missing[0]}); scored the {len(y_true)} there are.", file=sys.stderr)
    report = segmentation_report(y_true, y_pred, ignore_index=args.ignore_index,
                                 matching=args.matching)
    if args.json:
        result = {
            "n_images": len(y_true), "n_missing": len(missing), "matching": args.matching,
            "mean_iou": report["mean_iou"], "pixel_accuracy": report["pixel_accuracy"],
            "iou": {str(k): v for k, v in report["iou"].items()},
            "assignment": {str(k): v for k, v in report["matching"].items()},
        }
        if class_names:
            result["class_names"] = {str(k): v for k, v in class_names.items()}
        if args.class_names == "voc":
            # The classes are VOC's: overlays may draw them in VOC's colours.
            result["classes"] = "voc"
        print(json.dumps(result, indent=2))
        return 0
    print(f"images          {len(y_true)}" + (f" ({len(missing)} missing)" if missing else ""))
    print(f"matching        {args.matching}")
    print(f"mean IoU        {100 * report['mean_iou']:.2f}")
    print(f"pixel accuracy  {100 * report['pixel_accuracy']:.2f}")
    print("class  IoU")
    for label, value in report["iou"].items():
        name = f"  {class_names[label]}" if class_names and label in class_names else ""
        print(f"{label:5d}  {100 * value:6.2f}{name}")
    return 0


def _png_masks(folder):
    return sorted(path for path in folder.rglob("*.png") if not path.name.startswith("."))


def _read_class_names(source):
    if source == "voc":
        from .datasets import VOC_CLASSES

        return dict(enumerate(VOC_CLASSES))
    if Path(source).suffix.lower() == ".json":
        from ._io import read_class_names

        try:
            return read_class_names(source)
        except ValueError as exc:
            raise UserError(f"--class-names {exc}") from None
    try:
        lines = Path(source).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--class-names {source} cannot be read: {exc}") from None
    return {index: line.strip() for index, line in enumerate(lines) if line.strip()}


def cmd_segment(args):
    from ._segment_run import run_segment

    return run_segment(args)


def cmd_report(args):
    from ._report import run_report

    return run_report(args)


def cmd_export(args):
    from ._export import export

    export(args.folder, args.output, args.format, link=args.link)
    if not args.quiet:
        print(f"Exported the masks of {args.folder} to {args.output} ({args.format}).",
              file=sys.stderr)
    return 0


def cmd_demo(args):
    from ._demo import run_demo

    return run_demo(args.output, n_images=args.n_images, quiet=args.quiet,
                    random_state=args.random_state)


def _add_segment_parser(commands):
    segment = commands.add_parser(
        "segment", help="segment images: one label PNG per image", allow_abbrev=False,
        formatter_class=_HelpFormatter,
        description="Fit the skseg pipeline on all inputs and write one palette PNG of "
                    "labels per image (0 = background) below OUTDIR. OUTDIR records what "
                    "made its masks: a rerun of the same fit only does what is left, a "
                    "different fit is refused unless --force.")
    segment.add_argument("input", nargs="+", help="image files, folders or globs")
    segment.add_argument("-o", "--output", type=Path, required=True, metavar="OUTDIR",
                         help="output folder (never one of the inputs)")
    inputs = segment.add_argument_group("choosing inputs")
    inputs.add_argument("-r", "--recursive", action="store_true",
                        help="read sub-folders and let ** in globs span folders (mask "
                             "folders such as SegmentationClass/ are skipped)")
    inputs.add_argument("--list", type=Path, dest="list_file", metavar="FILE",
                        help="keep only the images this file lists, one id (file name "
                             "without suffix, as VOC's ImageSets/Segmentation/val.txt) or "
                             "path per line")
    inputs.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                        help="leave out inputs whose output name, file name or path "
                             "matches GLOB (repeatable)")

    fitting = segment.add_argument_group(
        "fitting (fixed by --load-model: refused with it)")
    fitting_actions = []

    def fit_option(*names, **kwargs):
        fitting_actions.append(fitting.add_argument(*names, **kwargs))

    fit_option("--model", default=_DEFAULT_MODEL, help="timm ViT model name")
    fit_option("--weights", type=Path,
               help="local weights file (.safetensors/.pth) for offline use (None: "
                    "download from the hub)")
    fit_option("--random-weights", action="store_true",
               help="untrained ViT: for trying the tool offline only")
    fit_option("--facet", choices=FACETS, default="key",
               help="what patch features are read from the ViT block")
    fit_option("--layer", type=int, default=-1,
               help="ViT block to read, negative from the end")
    fit_option("--image-size", type=_image_size, default=224,
               help="side, HEIGHTxWIDTH, or 'keep' (aspect ratio kept)")
    fit_option("--dtype", choices=["float32", "float16"], default="float32",
               help="type of the stored features")
    fit_option("--n-classes", type=_n_classes, default="auto",
               help="object classes (masks hold 0..N), or 'auto': chosen without "
                    "labels by the silhouette of the region descriptors")
    fit_option("--max-classes", type=_at_least(2), default=30,
               help="most classes (and categories) 'auto' considers")
    fit_option("--n-categories", type=_n_classes,
               help="image pseudo-categories, or 'auto' (None: as --n-classes)")
    fit_option("--n-dataset-clusters", type=_at_least(2), default=8,
               help="clusters of the dataset-level K-means (at least 2), sorted "
                    "into foreground and background by --foreground")
    fit_option("--foreground", choices=["border", "attention"], default="border",
               help="rule picking the foreground clusters (attention also "
                    "extracts the ViT's CLS attention)")
    fit_option("--consensus", choices=["vote", "intersection", "image"],
               default="vote", help="how the three levels' masks combine")
    fit_option("--refine", choices=["crf", "pamr", "none"], default="crf",
               help="mask refinement from the image's colours: a dense CRF, or PAMR")
    fit_option("--refine-iter", type=_at_least(0), default=10,
               help="PAMR steps or CRF mean-field steps")
    fit_option("--refine-dilations", type=_dilations, default=(1, 2, 4, 8, 12, 24),
               help="PAMR neighbourhood dilations, comma-separated")
    fit_option("--refine-max-side", type=_positive_int, default=128,
               help="refinement working resolution (longer side, pixels)")
    fit_option("--crf-radius", type=_positive_int, default=6,
               help="CRF window half-side (working pixels)")
    fit_option("--crf-stride", type=_positive_int, default=3,
               help="CRF bilateral kernel: window offsets that are multiples of this")
    fit_option("--crf-bilateral-weight", type=_non_negative(False), default=5.0,
               help="CRF bilateral (appearance) kernel weight")
    fit_option("--crf-bilateral-xy", type=_non_negative(True), default=5.0,
               help="CRF bilateral kernel spatial standard deviation (working pixels)")
    fit_option("--crf-bilateral-rgb", type=_non_negative(True), default=0.05,
               help="CRF bilateral kernel colour standard deviation (colours in [0, 1])")
    fit_option("--crf-gaussian-weight", type=_non_negative(False), default=1.0,
               help="CRF Gaussian (smoothness) kernel weight")
    fit_option("--crf-gaussian-xy", type=_non_negative(True), default=1.0,
               help="CRF Gaussian kernel standard deviation (working pixels)")
    fit_option("--region", choices=["pooled", "crop"], default="pooled",
               help="region descriptor: pooled patch features, or the CLS token "
                    "of the region's crop (slower)")
    fit_option("--min-region-size", type=_min_region_size, default=0.01,
               help="smallest object region: pixels (50) or image fraction (0.01)")
    fit_option("--max-samples", type=_at_least(2), default=20_000,
               help="rows (patches, images, regions) sampled to fit each K-means "
                    "(at least 2 and --n-dataset-clusters)")
    fit_option("--max-iter", type=_positive_int, default=20,
               help="most iterations of every K-means and 2-means")
    fit_option("--n-init", type=_n_init, default="auto",
               help="k-means++ starts of every K-means, or 'auto' (10 for "
                    "categories and classes, 3 for the dataset level)")
    fit_option("--metric", choices=["cosine", "euclidean"], default="cosine",
               help="clustering metric")
    fit_option("--random-state", type=_random_state, default=0,
               help="seed of the sampling and K-means fits")
    fit_option("--save-model", type=Path, metavar="FILE",
               help="also save the fitted pipeline (skops format, centroids "
                    "only) after the masks")

    running = segment.add_argument_group("running (do not change the masks)")
    running.add_argument("--load-model", type=Path, metavar="FILE",
                         help="predict with a pipeline saved by --save-model instead of "
                              "fitting")
    running.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto",
                         help="where the ViT and the clustering run")
    running.add_argument("--batch-size", type=_positive_int, default=16,
                         help="images per ViT forward pass")
    running.add_argument("--n-jobs", type=int,
                         help="extraction tasks and chunks of images segmented at once "
                              "(None: one)")
    cluster = running.add_mutually_exclusive_group()
    cluster.add_argument("--scheduler", metavar="ADDRESS",
                         help="run the ViT and the segmenter on this running Dask "
                              "scheduler (needs skseg[dask]; masks as in a local run)")
    cluster.add_argument("--workers", type=_positive_int, metavar="N",
                         help="run on a local Dask cluster of N worker processes "
                              "(needs skseg[dask])")
    running.add_argument("--connect-timeout", type=_seconds, default=10, metavar="SECONDS",
                         help="how long --scheduler may take to answer")
    running.add_argument("--cache", type=_folder_or_url,
                         help="folder or fsspec URL (s3://bucket/prefix) of feature "
                              "stores, one per extraction (default: OUTDIR/.skseg-features)")
    running.add_argument("--no-cache", action="store_true",
                         help="keep features in memory only, not in a store")

    writing = segment.add_argument_group("outputs")
    writing.add_argument("--overlay", action="store_true",
                         help="also write NAME_overlay.jpg: labels over the image, with "
                              "a legend")
    writing.add_argument("--legend-names", type=Path, metavar="JSON",
                         help="name the overlays' labels by the classes of this "
                              "'skseg evaluate --json' output (in VOC colours when it "
                              "matched VOC classes), or by a classes.json; written to "
                              "OUTDIR/classes.json")
    writing.add_argument("--preview", type=Path, metavar="FILE",
                         help="also write a PNG contact sheet of images and masks "
                              "(the first 48)")
    writing.add_argument("--force", action="store_true",
                         help="rewrite every output, even of another fit")
    writing.add_argument("--strict", action="store_true",
                         help="stop at the first unreadable or too small input instead "
                              "of skipping it")
    writing.add_argument("-q", "--quiet", action="store_true",
                         help="no progress, messages or Python warnings; errors only")
    segment.set_defaults(handler=_on_cluster(cmd_segment), fitting_actions=fitting_actions)
    return segment


def build_parser():
    parser = argparse.ArgumentParser(
        prog="skseg", description="Unsupervised semantic segmentation with ViT features.",
        allow_abbrev=False)
    commands = parser.add_subparsers(dest="command", required=True)
    _add_segment_parser(commands)

    evaluate = commands.add_parser(
        "evaluate", help="mIoU of predicted label PNGs against ground truth",
        allow_abbrev=False, formatter_class=_HelpFormatter,
        description="Hungarian-matched mIoU over the whole set (255 ignored), pixel "
                    "accuracy and per-class IoU. Files are paired by relative path, or "
                    "else by file name (OUTDIR/JPEGImages/x.png with GT/x.png).")
    evaluate.add_argument("pred_dir", help="folder of predicted label PNGs")
    evaluate.add_argument("gt_dir", help="folder of ground-truth label PNGs")
    evaluate.add_argument("--matching", choices=["hungarian", "majority", "none"],
                          default="hungarian", help="how predicted ids map to classes")
    evaluate.add_argument("--ignore-index", type=int, default=255,
                          help="ground-truth label left out of the scores")
    evaluate.add_argument("--allow-missing", action="store_true",
                          help="score the predictions there are, reporting how many "
                               "are missing")
    evaluate.add_argument("--class-names", metavar="voc|FILE",
                          help="name the classes: 'voc', a classes.json, or a file of "
                               "one name per line (line 1 is class 0)")
    evaluate.add_argument("--json", action="store_true", help="machine-readable output")
    evaluate.set_defaults(handler=cmd_evaluate)

    report = commands.add_parser(
        "report", help="an HTML page of the classes found, to name them by",
        allow_abbrev=False, formatter_class=_HelpFormatter,
        description="Write OUTDIR/report/index.html from the masks skseg segment wrote "
                    "into OUTDIR: each class's share of pixels and images, its colour, "
                    "name and example regions, and each image's overlay. Names come from "
                    "OUTDIR/classes.json, which you edit (a template is written when "
                    "there is none).")
    report.add_argument("output", type=Path, metavar="OUTDIR",
                        help="output folder of skseg segment")
    report.add_argument("--examples", type=_positive_int, default=8, metavar="N",
                        help="example regions shown per class")
    report.add_argument("--max-images", type=_at_least(0), default=200, metavar="N",
                        help="images whose overlays the page shows (the statistics "
                             "count them all)")
    report.add_argument("-q", "--quiet", action="store_true",
                        help="no progress or messages; errors only")
    report.set_defaults(handler=cmd_report)

    demo = commands.add_parser(
        "demo", help="run the whole pipeline offline on synthetic scenes",
        allow_abbrev=False, formatter_class=_HelpFormatter,
        description="Segment synthetic scenes with an untrained ViT (no weights can be "
                    "assumed offline), compare with plain K-means, and save a figure.")
    demo.add_argument("--output", type=Path, default=Path("skseg-demo"),
                      help="folder of the figure")
    demo.add_argument("--n-images", type=_positive_int, default=24,
                      help="synthetic scenes")
    demo.add_argument("--random-state", type=_random_state, default=0, help="seed")
    demo.add_argument("-q", "--quiet", action="store_true", help="print nothing")
    demo.set_defaults(handler=cmd_demo)

    export = commands.add_parser(
        "export", help="the masks of a segment output folder as a COCO, VOC or Hugging "
                       "Face dataset", allow_abbrev=False,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Write the masks of OUTDIR (the output folder of 'skseg segment') and "
                    "their images as a dataset other tools read, its classes named by "
                    "OUTDIR/classes.json. OUTDIR and the images are only read.")
    export.add_argument("folder", type=Path, metavar="OUTDIR",
                        help="output folder of 'skseg segment'")
    export.add_argument("-o", "--output", type=Path, required=True, metavar="EXPORTDIR",
                        help="new or empty folder to write the dataset to")
    export.add_argument("--format", choices=["coco", "voc", "hf"], required=True,
                        help="coco: annotations.json (RLE, needs skseg[coco]) and images/; "
                             "voc: JPEGImages/, SegmentationClass/, ImageSets/; hf: a "
                             "Hugging Face imagefolder with image and label columns")
    export.add_argument("--link", action="store_true",
                        help="symbolic links to the images instead of copies, where they "
                             "can be used as they are")
    export.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    export.set_defaults(handler=cmd_export)
    return parser


def _given(actions, argv):
    """The options among ``actions`` that ``argv`` spells out."""
    given = []
    for action in actions:
        for option in action.option_strings:
            if any(token == option or token.startswith(option + "=") for token in argv):
                given.append(option)
                break
    return given


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "segment":
        args.given_fitting_options = _given(args.fitting_actions, argv)
    with warnings.catch_warnings():
        if getattr(args, "quiet", False):
            warnings.simplefilter("ignore")
        else:
            warnings.showwarning = _one_line_warning
        try:
            return args.handler(args)
        except (UserError, ValueError, TypeError, OSError) as exc:
            print(f"skseg: error: {one_line(exc)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("skseg: interrupted; run again to resume (finished outputs and cached "
                  "features are kept).", file=sys.stderr)
            return 130

