"""``skseg report OUTDIR``: a static HTML page to name the classes by.

From what ``skseg segment`` wrote into OUTDIR (its run record and masks, and
the images the record names) it writes ``OUTDIR/report/index.html``: per
class, its share of the pixels and of the images, its legend colour and
name, and a strip of example regions (the largest of the images holding the
class most), each outlined; per image, its overlay. The pictures are JPEG
files beside the page, linked relatively, so the folder can be copied or
served as it is; there is no JavaScript.

Names come from ``OUTDIR/classes.json`` (``{"<id>": "<name>"}``), which the
user edits; when there is none, a template naming every class found is
written (an existing one is never overwritten). Nothing else outside
``OUTDIR/report`` is written, and no mask is modified.
"""

import heapq
import html
import json
import os
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from ._io import (
    CLASS_NAMES_FILE,
    inside,
    read_class_names,
    read_label_png,
    save_image,
    write_atomically,
)
from ._palettes import cluster_palette
from ._pictures import overlay
from ._run_record import hold_output, image_unchanged, read_record

REPORT_FOLDER = "report"
# Pictures on the page are shrunk so that their longer side is at most this.
_PICTURE_SIDE = 480
_CROP_HEIGHT = 96
_CROP_MARGIN = 0.15
_JPEG_QUALITY = 90


def template_name(label):
    """The name a class has until the user gives it one."""
    return f"class {label}"


def _read_class_names(path):
    """``{id: name}`` from a ``classes.json``; ``{}`` when there is none."""
    if not Path(path).exists():
        return {}
    try:
        return read_class_names(path)
    except ValueError as exc:
        raise ValueError(f"{exc} Write it as a JSON object of class ids to "
                         'names, such as {"1": "dog"}.') from None


def _write_template(path, labels):
    """A ``classes.json`` naming every class found, for the user to edit;
    False (and nothing written) if the file exists."""
    text = json.dumps({str(label): template_name(label) for label in labels}, indent=2)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        return False
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text + "\n")
    return True


@dataclass(order=True)
class _Example:
    """A class's example region: its area orders the examples (then the
    image's order, so that ties are stable), the thumbnail rides along."""

    area: int
    order: int
    name: str = field(compare=False)
    picture: Image.Image = field(compare=False)


@dataclass
class _ClassSummary:
    pixels: int = 0
    images: int = 0
    examples: list = field(default_factory=list)  # a min-heap of _Example


def _shrunk_shape(shape, side):
    height, width = shape
    scale = min(1.0, side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _shrunk_mask(mask, shape):
    """Nearest-neighbour resize of a label mask: labels never blend."""
    if mask.shape == shape:
        return mask
    rows = (np.arange(shape[0]) * mask.shape[0]) // shape[0]
    columns = (np.arange(shape[1]) * mask.shape[1]) // shape[1]
    return mask[rows][:, columns]


def _largest_region(where):
    """The largest 8-connected region of a boolean mask, and its pixel count."""
    from scipy import ndimage

    regions, count = ndimage.label(where, structure=np.ones((3, 3), bool))
    if count <= 1:
        return where, int(where.sum())
    sizes = np.bincount(regions.ravel())[1:]
    biggest = int(np.argmax(sizes))
    return regions == biggest + 1, int(sizes[biggest])


def _outlined_crop(rgb, region, colour):
    """The region's bounding box (with a margin), the rest dimmed, the region
    outlined in its class colour, ``_CROP_HEIGHT`` pixels high."""
    from scipy import ndimage

    rows, columns = np.nonzero(region)
    top, bottom, left, right = rows.min(), rows.max() + 1, columns.min(), columns.max() + 1
    margin = round(_CROP_MARGIN * max(bottom - top, right - left))
    top, left = max(0, top - margin), max(0, left - margin)
    bottom, right = min(region.shape[0], bottom + margin), min(region.shape[1], right + margin)
    height, width = bottom - top, right - left
    scale = _CROP_HEIGHT / height
    size = (max(1, min(2 * _CROP_HEIGHT, round(width * scale))), _CROP_HEIGHT)
    picture = Image.fromarray((rgb[top:bottom, left:right] * 255).round().astype(np.uint8))
    picture = np.asarray(picture.resize(size, Image.Resampling.BILINEAR)).astype(np.float32)
    in_region = np.asarray(Image.fromarray(region[top:bottom, left:right]).resize(
        size, Image.Resampling.NEAREST))
    picture[~in_region] *= 0.45
    outline = in_region & ~ndimage.binary_erosion(in_region, iterations=2, border_value=1)
    picture[outline] = colour
    return Image.fromarray(picture.round().astype(np.uint8))


def _mask_names(record):
    return sorted(record["outputs"], key=lambda name: PurePosixPath(name).parts)


def _link(relative):
    """A relative URL for a path below the report folder."""
    return "/".join(urllib.parse.quote(part) for part in PurePosixPath(relative).parts)


def _colour(label):
    """The colour of ``label`` in the masks and overlays: the cluster palette."""
    return tuple(int(c) for c in cluster_palette()[label])


def _css_colour(label):
    return "rgb({}, {}, {})".format(*_colour(label))


def _survey(output, record, names, class_names, *, n_examples, max_images, quiet):
    """Read every mask (and its image): the class statistics, each class's
    example crops, and the overlays of the first ``max_images`` images,
    written into the report folder. Returns the statistics and the overlay
    links, with the names of the images that could not be read."""
    from tqdm.auto import tqdm

    from ._image_decoding import load_rgb

    report = output / REPORT_FOLDER
    summaries, shown, unreadable = {}, [], []
    total_pixels, background = 0, 0
    for order, name in enumerate(tqdm(names, desc="report", unit="img", disable=quiet)):
        entry = record["outputs"][name]
        mask = read_label_png(inside(output, name))
        counts = np.bincount(mask.ravel().astype(np.int64))
        total_pixels += mask.size
        background += int(counts[0])
        present = [int(label) for label in np.nonzero(counts)[0] if label > 0]
        for label in present:
            summary = summaries.setdefault(label, _ClassSummary())
            summary.pixels += int(counts[label])
            summary.images += 1
        shape = _shrunk_shape(mask.shape, _PICTURE_SIDE)
        small = _shrunk_mask(mask, shape)
        try:
            if not image_unchanged(entry):
                raise ValueError("not the image the mask was made from")
            rgb = load_rgb(entry["input"], size=shape)
        except (OSError, ValueError, TypeError, KeyError):
            # The image moved, went or changed: the mask alone, on grey.
            unreadable.append(name)
            rgb = np.full((*shape, 3), 0.5, np.float32)
        for label in present:
            region, area = _largest_region(small == label)
            examples = summaries[label].examples
            if not area or len(examples) == n_examples and area <= examples[0].area:
                continue  # lost in shrinking, or not among the largest: no crop
            example = _Example(area, -order, name,
                               _outlined_crop(rgb, region, _colour(label)))
            if len(examples) < n_examples:
                heapq.heappush(examples, example)
            else:
                heapq.heapreplace(examples, example)
        if order < max_images:
            link = PurePosixPath("images") / PurePosixPath(name).with_suffix(".jpg")
            save_image(overlay(rgb, small, class_names=class_names), inside(report, link),
                       quality=_JPEG_QUALITY)
            shown.append((name, link))
    return summaries, total_pixels, background, shown, unreadable


def _share(part, whole):
    return f"{100 * part / whole:.1f}%" if whole else "0%"


_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; background: #fff; }
code { background: #f3f3f3; padding: 0 0.2em; }
table { border-collapse: collapse; margin: 1em 0; }
td, th { padding: 0.25em 0.8em; text-align: left; border-bottom: 1px solid #ddd; }
td.number { text-align: right; }
.swatch { display: inline-block; width: 2.2em; height: 1.3em; vertical-align: middle;
          border: 1px solid #333; }
.unnamed { color: #888; font-style: italic; }
section.class { border-left: 14px solid; padding: 0.2em 0 0.2em 1em; margin: 1.5em 0; }
section.class h2 { margin: 0.2em 0; font-size: 1.2em; }
.strip { display: flex; flex-wrap: wrap; gap: 6px; }
.strip figure, .images figure { margin: 0; }
.strip figcaption, .images figcaption { font-size: 0.75em; color: #555; max-width: 192px;
                                        overflow-wrap: anywhere; }
.images { display: flex; flex-wrap: wrap; gap: 10px; }
.images img { max-width: 320px; height: auto; }
"""


def _name_cell(label, class_names):
    name = class_names.get(label)
    if not name or name == template_name(label):
        return f'<span class="unnamed">{html.escape(template_name(label))} (unnamed)</span>'
    return html.escape(name)


def _page(output, names, summaries, total_pixels, background, shown, class_names,
          crops, *, template_written, unreadable, ignored_names):
    n_images = len(names)
    labels = sorted(summaries)
    names_file = html.escape(os.fspath(output / CLASS_NAMES_FILE))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>skseg classes of {html.escape(output.name or os.fspath(output))}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>Classes found in {html.escape(os.fspath(output))}</h1>",
        f"<p>{len(labels)} classes in {n_images} images. Look at each class's examples, "
        f"then name it: edit <code>{names_file}</code> (<code>{{\"1\": \"dog\", "
        "\"2\": \"grass\"}</code>, one entry per class id) and run "
        f"<code>skseg report {html.escape(os.fspath(output))}</code> again to see the "
        "names here and in the overlays.",
    ]
    if template_written:
        parts.append(f" A template naming every class was written to "
                     f"<code>{names_file}</code>.")
    parts.append("</p>")
    if unreadable:
        parts.append(f"<p>{len(unreadable)} of the images could not be read (moved, "
                     f"deleted or changed since segmented, e.g. <code>{html.escape(unreadable[0])}</code>): their "
                     "examples and overlays show the mask on grey.</p>")
    if ignored_names:
        parts.append(f"<p>{html.escape(os.fspath(output / CLASS_NAMES_FILE))} names ids "
                     "no mask holds: " + html.escape(", ".join(map(str, ignored_names)))
                     + ".</p>")
    parts += ["<table><thead><tr><th>colour</th><th>id</th><th>name</th>"
              "<th>pixels</th><th>images</th></tr></thead><tbody>"]
    for label in labels:
        summary = summaries[label]
        parts.append(
            f'<tr><td><span class="swatch" style="background: {_css_colour(label)}">'
            f'</span></td><td><a href="#class-{label}">{label}</a></td>'
            f"<td>{_name_cell(label, class_names)}</td>"
            f'<td class="number">{_share(summary.pixels, total_pixels)}</td>'
            f'<td class="number">{_share(summary.images, n_images)}</td></tr>')
    parts.append(f'<tr><td><span class="swatch" style="background: #000"></span></td>'
                 f'<td>0</td><td>background</td>'
                 f'<td class="number">{_share(background, total_pixels)}</td><td></td></tr>')
    parts.append("</tbody></table>")
    for label in labels:
        summary = summaries[label]
        parts.append(
            f'<section class="class" id="class-{label}" '
            f'style="border-left-color: {_css_colour(label)}">'
            f'<h2><span class="swatch" style="background: {_css_colour(label)}"></span> '
            f"{label} &middot; {_name_cell(label, class_names)}</h2>"
            f"<p>{_share(summary.pixels, total_pixels)} of the pixels, in "
            f"{summary.images} of {n_images} images ({_share(summary.images, n_images)}). "
            f"The largest regions, outlined:</p><div class=\"strip\">")
        for link, image_name in crops[label]:
            caption = html.escape(image_name)
            parts.append(f'<figure><img src="{_link(link)}" alt="class {label} in '
                         f'{caption}" height="{_CROP_HEIGHT}"><figcaption>{caption}'
                         "</figcaption></figure>")
        parts.append("</div></section>")
    parts.append(f"<h2>Images</h2><p>Overlays of {len(shown)} of the {n_images} "
                 "images.</p><div class=\"images\">")
    for name, link in shown:
        caption = html.escape(name)
        parts.append(f'<figure><a href="{_link(link)}"><img src="{_link(link)}" '
                     f'alt="{caption}"></a><figcaption>{caption}</figcaption></figure>')
    parts.append("</div></body></html>")
    return "\n".join(parts) + "\n"


def _remove_leftovers(report, written):
    """Files an earlier report wrote that this one did not (pictures of
    images since removed); never beyond the report folder."""
    for dirpath, _, filenames in os.walk(report):
        for filename in filenames:
            path = Path(dirpath) / filename
            if path not in written and (path.suffix == ".jpg" or path.name == "index.html"):
                path.unlink()


def write_report(output, *, n_examples=8, max_images=200, quiet=False):
    """Write ``output/report/index.html`` from the masks ``skseg segment``
    wrote into ``output``; return its path and whether a ``classes.json``
    template was written."""
    output = Path(output)
    if not output.is_dir():
        raise ValueError(f"{output} is not a folder.")
    with hold_output(output):
        record = read_record(output)
        if record is None or not record["outputs"]:
            raise ValueError(f"{output} holds no masks written by skseg segment (no "
                             "record of a run in it); run skseg segment -o "
                             f"{output} first.")
        report = output / REPORT_FOLDER
        if report.is_symlink() or (report.exists() and not report.is_dir()):
            raise ValueError(f"{report} is not a folder skseg report wrote; remove it or "
                             "move it away.")
        names = _mask_names(record)
        misplaced = [name for name in names if PurePosixPath(name).parts[0] == REPORT_FOLDER]
        if misplaced:
            raise ValueError(f"{output} holds masks in {report} (e.g. {output / misplaced[0]}), "
                             "where the report goes; segment into another -o.")
        names_path = output / CLASS_NAMES_FILE
        class_names = _read_class_names(names_path)
        given = {label: name for label, name in class_names.items()
                 if name and name != template_name(label)}
        summaries, total_pixels, background, shown, unreadable = _survey(
            output, record, names, given, n_examples=n_examples,
            max_images=max_images, quiet=quiet)
        written = {report / link for _, link in shown}
        crops = {}
        for label, summary in summaries.items():
            crops[label] = []
            for k, example in enumerate(sorted(summary.examples, reverse=True)):
                link = PurePosixPath("classes") / f"{label}-{k}.jpg"
                save_image(example.picture, inside(report, link), quality=_JPEG_QUALITY)
                written.add(report / link)
                crops[label].append((link, example.name))
        template_written = _write_template(names_path, sorted(summaries))
        ignored = sorted(set(class_names) - set(summaries) - {0})
        page = _page(output, names, summaries, total_pixels, background, shown,
                     class_names, crops, template_written=template_written,
                     unreadable=unreadable, ignored_names=ignored)
        index = report / "index.html"
        write_atomically(index, lambda handle: handle.write(page.encode("utf-8")))
        written.add(index)
        _remove_leftovers(report, written)
    return index, template_written, sorted(summaries)

