"""The ``skseg`` command line's arguments, and ``main``, which runs a command.

Light imports only: ``--help`` and argument errors must answer before torch
or scikit-learn is loaded. Each command's module is imported when it runs.
"""

import argparse
import atexit
import os
import sys
import threading
import warnings
from importlib import import_module
from pathlib import Path

from .._features import FACETS
from .messages import UserError, print_error, show_warning
from .option_types import (
    at_least,
    dilations,
    folder_or_url,
    image_size,
    min_region_size,
    n_classes,
    n_init,
    non_negative,
    positive_int,
    random_state,
    seconds,
)

_DEFAULT_MODEL = "vit_small_patch8_224.dino"


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in its help line, but a required option's,
    which has none to show."""

    def _get_help_string(self, action):
        return action.help if action.required else super()._get_help_string(action)


def _command(module):
    """The handler of a command: the ``run(args)`` of its module, imported
    only when the command runs."""

    def handler(args):
        return import_module(f"{__package__}.{module}").run(args)

    return handler


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
    fit_option("--image-size", type=image_size, default=224,
               help="side, HEIGHTxWIDTH, or 'keep' (aspect ratio kept)")
    fit_option("--dtype", choices=["float32", "float16"], default="float32",
               help="type of the stored features")
    fit_option("--n-classes", type=n_classes, default="auto",
               help="object classes (masks hold 0..N), or 'auto': chosen without "
                    "labels by the silhouette of the region descriptors")
    fit_option("--max-classes", type=at_least(2), default=30,
               help="most classes (and categories) 'auto' considers")
    fit_option("--n-categories", type=n_classes,
               help="image pseudo-categories, or 'auto' (None: as --n-classes)")
    fit_option("--n-dataset-clusters", type=at_least(2), default=8,
               help="clusters of the dataset-level K-means (at least 2), sorted "
                    "into foreground and background by --foreground")
    fit_option("--foreground", choices=["border", "attention"], default="border",
               help="rule picking the foreground clusters (attention also "
                    "extracts the ViT's CLS attention)")
    fit_option("--consensus", choices=["vote", "intersection", "image"],
               default="vote", help="how the three levels' masks combine")
    fit_option("--refine", choices=["crf", "pamr", "none"], default="crf",
               help="mask refinement from the image's colours: a dense CRF, or PAMR")
    fit_option("--refine-iter", type=at_least(0), default=10,
               help="PAMR steps or CRF mean-field steps")
    fit_option("--refine-dilations", type=dilations, default=(1, 2, 4, 8, 12, 24),
               help="PAMR neighbourhood dilations, comma-separated")
    fit_option("--refine-max-side", type=positive_int, default=128,
               help="refinement working resolution (longer side, pixels)")
    fit_option("--crf-radius", type=positive_int, default=6,
               help="CRF window half-side (working pixels)")
    fit_option("--crf-stride", type=positive_int, default=3,
               help="CRF bilateral kernel: window offsets that are multiples of this")
    fit_option("--crf-bilateral-weight", type=non_negative(False), default=5.0,
               help="CRF bilateral (appearance) kernel weight")
    fit_option("--crf-bilateral-xy", type=non_negative(True), default=5.0,
               help="CRF bilateral kernel spatial standard deviation (working pixels)")
    fit_option("--crf-bilateral-rgb", type=non_negative(True), default=0.05,
               help="CRF bilateral kernel colour standard deviation (colours in [0, 1])")
    fit_option("--crf-gaussian-weight", type=non_negative(False), default=1.0,
               help="CRF Gaussian (smoothness) kernel weight")
    fit_option("--crf-gaussian-xy", type=non_negative(True), default=1.0,
               help="CRF Gaussian kernel standard deviation (working pixels)")
    fit_option("--region", choices=["pooled", "crop"], default="pooled",
               help="region descriptor: pooled patch features, or the CLS token "
                    "of the region's crop (slower)")
    fit_option("--min-region-size", type=min_region_size, default=0.01,
               help="smallest object region: pixels (50) or image fraction (0.01)")
    fit_option("--max-samples", type=at_least(2), default=20_000,
               help="rows (patches, images, regions) sampled to fit each K-means "
                    "(at least 2 and --n-dataset-clusters)")
    fit_option("--max-iter", type=positive_int, default=20,
               help="most iterations of every K-means and 2-means")
    fit_option("--n-init", type=n_init, default="auto",
               help="k-means++ starts of every K-means, or 'auto' (10 for "
                    "categories and classes, 3 for the dataset level)")
    fit_option("--metric", choices=["cosine", "euclidean"], default="cosine",
               help="clustering metric")
    fit_option("--random-state", type=random_state, default=0,
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
    running.add_argument("--batch-size", type=positive_int, default=16,
                         help="images per ViT forward pass")
    running.add_argument("--n-jobs", type=int,
                         help="extraction tasks and chunks of images segmented at once "
                              "(None: one)")
    cluster = running.add_mutually_exclusive_group()
    cluster.add_argument("--scheduler", metavar="ADDRESS",
                         help="run the ViT and the segmenter on this running Dask "
                              "scheduler (needs skseg[dask]; masks as in a local run)")
    cluster.add_argument("--workers", type=positive_int, metavar="N",
                         help="run on a local Dask cluster of N worker processes "
                              "(needs skseg[dask])")
    running.add_argument("--connect-timeout", type=seconds, default=10, metavar="SECONDS",
                         help="how long --scheduler may take to answer")
    running.add_argument("--cache", type=folder_or_url,
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
    segment.set_defaults(handler=_command("segment"), fitting_actions=fitting_actions)
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
    evaluate.set_defaults(handler=_command("evaluate"))

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
    report.add_argument("--examples", type=positive_int, default=8, metavar="N",
                        help="example regions shown per class")
    report.add_argument("--max-images", type=at_least(0), default=200, metavar="N",
                        help="images whose overlays the page shows (the statistics "
                             "count them all)")
    report.add_argument("-q", "--quiet", action="store_true",
                        help="no progress or messages; errors only")
    report.set_defaults(handler=_command("report"))

    demo = commands.add_parser(
        "demo", help="run the whole pipeline offline on synthetic scenes",
        allow_abbrev=False, formatter_class=_HelpFormatter,
        description="Segment synthetic scenes with an untrained ViT (no weights can be "
                    "assumed offline), compare with plain K-means, and save a figure.")
    demo.add_argument("--output", type=Path, default=Path("skseg-demo"),
                      help="folder of the figure")
    demo.add_argument("--n-images", type=positive_int, default=24,
                      help="synthetic scenes")
    demo.add_argument("--random-state", type=random_state, default=0, help="seed")
    demo.add_argument("-q", "--quiet", action="store_true", help="print nothing")
    demo.set_defaults(handler=_command("demo"))

    export = commands.add_parser(
        "export", help="the masks of a segment output folder as a COCO, VOC or Hugging "
                       "Face dataset", allow_abbrev=False,
        formatter_class=_HelpFormatter,
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
    export.set_defaults(handler=_command("export"))
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
            warnings.showwarning = show_warning
        try:
            return args.handler(args)
        except (UserError, ValueError, TypeError, OSError) as exc:
            print_error(exc)
            return 2
        except KeyboardInterrupt:
            print("skseg: interrupted; run again to resume (finished outputs and cached "
                  "features are kept).", file=sys.stderr)
            return 130



def run_and_exit(argv=None):
    """The ``skseg`` program: :func:`main`, then an exit with its status that
    skips the interpreter's teardown once the command has finished.

    Freeing the objects of torch, timm and scikit-learn one by one at exit
    takes 1 to 2 s on a 2-core machine, longer than the ViT forward of 20
    photos, and frees nothing the operating system would not. So, once
    ``main`` has returned 0 or 1 (done, perhaps with skipped inputs) and no
    thread but this one runs, the ``atexit`` handlers run (temporary
    folders, logging, worker pools), the streams are flushed, and the
    process ends at once, as mypy's does. Otherwise the normal exit: a
    thread still running is waited for, and a command stopped by an error
    or an interrupt may have left workers' threads writing (daemon threads,
    which only the normal exit's joining of thread pools waits for).
    """
    status = main(argv)
    if status not in (0, 1) or any(not thread.daemon for thread in threading.enumerate()
                                   if thread is not threading.current_thread()):
        sys.exit(status)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:  # None: started with the descriptor closed
                stream.flush()
        except (BrokenPipeError, ValueError):  # `skseg ... | head`, or closed
            pass
        except OSError:  # a full disk: the normal exit reports it (status 120)
            sys.exit(status)
    os._exit(status)
