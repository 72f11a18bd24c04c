"""What ``skseg segment`` writes beside the masks' record: the masks
themselves (in threads, each recorded once written), overlays named and
coloured by the legend, and the preview.
"""

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import PurePosixPath

from .._image_decoding import load_rgb
from .._io import (
    CLASS_NAMES_FILE,
    inside,
    read_class_names,
    read_label_png,
    save_class_names,
    save_image,
    save_label_png,
)
from .._palettes import matched_palette
from .._pictures import contact_sheet, overlay
from .._run_record import record_output, write_record
from .inputs import overlay_name
from .messages import UserError, one_line, say

_PREVIEW_IMAGES = 48
_PREVIEW_PAIRS_PER_ROW = 4
# Threads writing masks and overlays (PNG and JPEG encoding release the GIL).
_WRITE_THREADS = min(4, os.cpu_count() or 1)


@dataclass(frozen=True)
class Legend:
    """How overlays and the preview name and colour the labels."""

    names: dict | None = None  # label id to class name
    palette: object = None  # for skseg._palettes.resolve_palette
    key: dict | None = None  # what the record notes of an overlay drawn with it


def read_legend(args):
    """Label names from ``--legend-names``: an ``evaluate --json`` output
    (each label named by its matched class, and drawn in that class's VOC
    colour when evaluate named VOC's classes), or a ``classes.json``."""
    path = args.legend_names
    if path is None:
        return Legend()
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        raise UserError(f"--legend-names {path} cannot be read as JSON "
                        f"({one_line(exc)}).") from None
    if isinstance(report, dict) and "assignment" in report:
        try:
            assignment = {int(label): int(cls) for label, cls in report["assignment"].items()}
            names = {int(cls): str(name)
                     for cls, name in report.get("class_names", {}).items()}
        except (ValueError, TypeError, AttributeError) as exc:
            raise UserError(f"--legend-names {path} is not the output of 'skseg evaluate "
                            f"--json' ({one_line(exc)}).") from None
        matched = {label: cls for label, cls in assignment.items() if cls >= 0}
        legend = {label: names.get(cls, f"class {cls}") for label, cls in matched.items()}
        voc = report.get("classes") == "voc"
        palette = matched_palette(matched, "voc") if voc else None
    else:
        try:
            legend = read_class_names(path)
        except ValueError as exc:
            raise UserError(f"--legend-names {path} is neither the output of 'skseg "
                            f"evaluate --json' nor a classes.json ({one_line(exc)}).") from None
        voc, palette = False, None
    key = {"names": {str(k): v for k, v in legend.items()},
           "palette": "voc" if voc else "clusters"}
    return Legend(legend, palette, key)


def update_class_names(output, legend, other_fit):
    """``OUTDIR/classes.json`` names the labels of the masks there: written
    from ``--legend-names``, removed when it named another fit's labels."""
    path = inside(output, CLASS_NAMES_FILE)
    if legend.names is not None:
        save_class_names(legend.names, path)
    elif other_fit:
        path.unlink(missing_ok=True)


def complete_overlays(args, images, record, legend):
    """Draw the overlays the kept masks lack (or that had another legend);
    return how many were drawn."""
    drawn = 0
    for image in images:
        entry = record["outputs"][image.mask_name.as_posix()]
        picture = inside(args.output, image.overlay_name)
        if entry.get("overlay") == legend.key and picture.is_file():
            continue
        _write_overlay(image, read_label_png(inside(args.output, image.mask_name)), legend,
                       picture)
        entry["overlay"] = legend.key
        drawn += 1
    return drawn


def describe_redrawn(count):
    """What redrawing ``count`` overlays of kept masks was, for a message."""
    return f"redrew {count} overlay{'' if count == 1 else 's'}" if count else ""


def _write_overlay(image, mask, legend, picture):
    save_image(overlay(load_rgb(image.path), mask, class_names=legend.names,
                       palette=legend.palette), picture, quality=90)


def remove_outputs(output, names, keep):
    """Delete the masks (and overlays) of another fit, but those named in ``keep``."""
    for name in names:
        if name in keep:
            continue
        relative = PurePosixPath(name)
        for file in (relative, overlay_name(relative)):
            try:
                inside(output, file).unlink(missing_ok=True)
            except ValueError:  # a planted record must not delete outside OUTDIR
                continue


def write_preview(args, images, record, legend):
    shown = images[:_PREVIEW_IMAGES]
    contact_sheet([image.path for image in shown],
                  [read_label_png(args.output / image.mask_name) for image in shown],
                  args.preview, names=[image.name.as_posix() for image in shown],
                  class_names=legend.names, palette=legend.palette,
                  columns=_PREVIEW_PAIRS_PER_ROW)
    record["preview"] = os.path.realpath(args.preview)
    say(args, f"Preview of {len(shown)} of {len(images)} images: {args.preview}")


def write_masks(args, todo, labels, record, previous_outputs, digest_of, legend):
    """Write the masks (and overlays) of ``todo`` in threads, recording each
    in ``record`` once its files are written.

    Each image's overlay is written before its mask, so a mask on disk always
    has its overlay beside it. Interrupted or failed, the writes not started
    are dropped, those started are finished, and the record accounts for
    every mask written; files appear whole or not at all (atomic writes).
    """
    from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, ThreadPoolExecutor, wait

    from tqdm.auto import tqdm

    def write(image, mask):
        name = image.mask_name.as_posix()
        picture = inside(args.output, image.overlay_name)
        if args.overlay:
            _write_overlay(image, mask, legend, picture)
        elif previous_outputs.get(name, {}).get("overlay", False) is not False:
            picture.unlink(missing_ok=True)  # it showed the mask being replaced
        save_label_png(mask, inside(args.output, image.mask_name))
        return image

    in_flight = set()  # submitted writes not yet recorded

    def record_finished(return_when):
        """Wait for writes of ``in_flight`` to finish (the first, or all) and
        record those that did; raise the first error. A write leaves
        ``in_flight`` only once recorded, so that a stop at any moment leaves
        every finished write to the ``finally`` below."""
        done, _ = wait(in_flight, return_when=return_when)
        error = None
        for future in done:
            if not future.cancelled():
                if future.exception() is not None:
                    error = error or future.exception()
                else:
                    image = future.result()
                    record_output(args.output, record, image.mask_name.as_posix(),
                                  {"input": os.path.abspath(image.path),
                                   "sha1": digest_of[image],
                                   "overlay": legend.key if args.overlay else False})
                    progress.update()
            in_flight.discard(future)
        if error is not None:
            raise error

    try:
        with ThreadPoolExecutor(max_workers=_WRITE_THREADS) as pool, tqdm(
                total=len(todo), desc="writing", unit="img", disable=args.quiet) as progress:
            try:
                # Masks are painted here, one at a time, as the writers need them.
                for image, mask in zip(todo, labels):
                    if len(in_flight) >= 2 * _WRITE_THREADS:
                        record_finished(FIRST_COMPLETED)
                    in_flight.add(pool.submit(write, image, mask))
                record_finished(ALL_COMPLETED)
            finally:  # stopped: drop the writes not started, finish and record the others
                for future in in_flight:
                    future.cancel()
                # The first error is the one raised; a second Ctrl-C still stops.
                with contextlib.suppress(Exception):
                    record_finished(ALL_COMPLETED)
    finally:  # interrupted or not, the record accounts for every mask written
        write_record(args.output, record)
