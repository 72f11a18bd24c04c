"""``skseg export``: the masks of a ``skseg segment`` output folder as a
dataset other tools read, to train a segmentation network on them or to
browse them.

Layouts, one table each format's writer follows::

    coco  annotations.json          COCO, one RLE annotation per class and image
          images/NAME               the images
    voc   JPEGImages/ID.jpg         the images, as JPEG
          SegmentationClass/ID.png  the masks (palette PNGs)
          ImageSets/Segmentation/train.txt
          labelmap.txt              class names and colours (CVAT, Datumaro)
    hf    images/NAME, labels/NAME.png, metadata.jsonl (a Hugging Face
          ``imagefolder``: columns ``image`` and ``label``)

Every format also gets ``classes.json``. The export folder must be new or
empty and outside the segment folder; nothing is written outside it, and the
segment folder and the images are only read. An image is copied byte for
byte (or linked) when a tool reads it as the mask was made (upright, same
size, a format the layout takes), re-encoded from its decoded pixels
otherwise.
"""

import json
import os
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from ._io import (
    CLASS_NAMES_FILE,
    inside,
    read_class_names,
    read_label_png,
    save_class_names,
    save_image,
    save_label_png,
    write_atomically,
)
from ._palettes import cluster_palette

FORMATS = ("coco", "voc", "hf")
# Formats each layout may take an image in as it is (PIL format names).
_AS_IS = {"coco": ("JPEG", "PNG"), "voc": ("JPEG",), "hf": ("JPEG", "PNG")}
_AS_IS_MODES = ("RGB", "L")


def _pycocotools_mask():
    try:
        from pycocotools import mask
    except ImportError:
        raise ValueError("COCO export needs pycocotools: pip install 'skseg[coco]'.") from None
    return mask


def _class_names(class_names, labels):
    """``{id: name}`` for every id in ``labels``, named by ``class_names`` or
    ``"class ID"``."""
    names = class_names or {}
    return {label: names.get(label, f"class {label}") for label in sorted(labels)}


def to_coco(masks, file_names, path=None, class_names=None):
    """Masks as COCO annotations, one RLE per class present in each image.

    The JSON loads in ``pycocotools.coco.COCO`` (detectron2, mmdetection,
    FiftyOne, CVAT read it too); ``COCO.annToMask`` gives back each class's
    pixels exactly. Labels 0 (background) and 255 (ignore) are not
    annotated. Needs ``pycocotools`` (``pip install 'skseg[coco]'``).

    Parameters
    ----------
    masks : sequence of ndarray of shape (H, W)
        Integer labels, e.g. a :class:`~skseg.LabelMasks` or
        :func:`read_masks`'s sequence (read one at a time).
    file_names : sequence of str
        Each mask's image, as its ``file_name`` (relative to the folder the
        reading tool is told holds the images).
    path : path-like, default=None
        Where to write the JSON (atomically); ``None`` writes nothing.
    class_names : dict of int to str, default=None
        Category names (see :func:`read_class_names`); ids without one are
        named ``"class ID"``. Every id named or present is a category, its
        ``id`` the label.

    Returns
    -------
    coco : dict
        The COCO dataset: ``images`` (ids from 1, in order), ``categories``
        and ``annotations`` (``segmentation`` a compressed RLE, ``iscrowd``
        0, with ``area`` and ``bbox``).

    Examples
    --------
    >>> import numpy as np
    >>> from skseg.io import to_coco
    >>> mask = np.zeros((4, 6), np.uint8); mask[1:3, 2:5] = 1
    >>> coco = to_coco([mask], ["beach.jpg"], class_names={1: "sand"})
    >>> coco["categories"], coco["annotations"][0]["bbox"]
    ([{'id': 1, 'name': 'sand', 'supercategory': 'object'}], [2.0, 1.0, 3.0, 2.0])
    """
    mask_api = _pycocotools_mask()
    file_names = [os.fspath(name) for name in file_names]
    if len(file_names) != len(masks):
        raise ValueError(f"{len(file_names)} file names for {len(masks)} masks.")
    images, annotations, present = [], [], set()
    for image_id, (mask, file_name) in enumerate(zip(masks, file_names), 1):
        mask = np.asarray(mask)
        if mask.ndim != 2:
            raise ValueError(f"mask {image_id - 1} ({file_name}) is not 2-D: {mask.shape}.")
        if mask.dtype.kind not in "ui" or mask.size and not 0 <= mask.min() <= mask.max() <= 255:
            raise ValueError(f"mask {image_id - 1} ({file_name}) must hold whole-number "
                             f"labels from 0 to 255, not {mask.dtype} values "
                             f"{mask.min() if mask.size else ''}..{mask.max() if mask.size else ''}.")
        height, width = mask.shape
        images.append({"id": image_id, "file_name": file_name, "height": int(height),
                       "width": int(width)})
        for label in np.unique(mask).tolist():
            if label in (0, 255):
                continue
            pixels = np.asfortranarray(mask == label, dtype=np.uint8)
            rle = mask_api.encode(pixels)
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": label,
                "segmentation": {"size": [int(height), int(width)],
                                 "counts": rle["counts"].decode("ascii")},
                "area": int(pixels.sum()),
                "bbox": [float(v) for v in mask_api.toBbox(rle)],
                "iscrowd": 0,
            })
            present.add(label)
    labels = present | {label for label in (class_names or {}) if 0 < label < 255}
    coco = {
        "info": {"description": "skseg pseudo-labels"},
        "images": images,
        "categories": [{"id": label, "name": name, "supercategory": "object"}
                       for label, name in _class_names(class_names, labels).items()],
        "annotations": annotations,
    }
    if path is not None:
        text = json.dumps(coco).encode()
        write_atomically(path, lambda handle: handle.write(text))
    return coco


def _segment_outputs(folder):
    """(mask name, image path) of each mask a ``skseg segment`` folder records."""
    from ._run_record import RECORD_NAME, image_unchanged, read_record

    record = read_record(folder)
    if record is None:
        raise ValueError(f"{folder} holds no {RECORD_NAME}: export reads the output folder "
                         "of 'skseg segment' (skseg.io.to_coco takes masks and file names).")
    if not record["outputs"]:
        raise ValueError(f"{folder} holds no masks yet.")
    outputs = []
    for name in sorted(record["outputs"]):
        mask = inside(folder, name)
        entry = record["outputs"][name]
        image = entry.get("input")
        if not isinstance(image, str) or not Path(image).is_file():
            raise ValueError(f"the image of {mask}, {image!r}, is not found (a relative path "
                             "is read from the current folder, as skseg segment was given it).")
        if not mask.is_file():
            raise ValueError(f"{mask} is listed in the run record but missing.")
        if not image_unchanged(entry):
            raise ValueError(f"the image of {mask}, {image}, has changed since skseg segment "
                             "made the mask; segment it again before exporting.")
        outputs.append((PurePosixPath(name), Path(image)))
    return outputs


def _check_export_folder(out, folder):
    """A new or empty folder, outside the segment folder."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} already exists and is not an empty folder; export into a "
                         "new one.")
    if Path(os.path.realpath(out)).is_relative_to(os.path.realpath(folder)):
        raise ValueError(f"{out} is inside {folder}, which export only reads; choose a folder "
                         "outside it.")


def _image_as_is(path, shape, formats):
    """Whether a tool reading ``path`` without EXIF handling gets the image
    the mask was made from: an allowed format and mode, upright, same size."""
    from ._image_decoding import exif_orientation

    try:
        with Image.open(path) as img:
            return (img.format in formats and img.mode in _AS_IS_MODES
                    and exif_orientation(img) == 1 and img.size == (shape[1], shape[0]))
    except (OSError, ValueError, SyntaxError):
        return False


def _place_image(out, relative, source, shape, formats, link):
    """Put the image of a mask at ``out / relative`` (its suffix still to
    choose) and return where it went: linked or copied, with its own suffix,
    when it can be used as it is; else decoded as the segmenter decoded it
    and saved anew, as a JPEG (quality 95) where the layout takes only JPEG,
    as a PNG otherwise."""
    jpeg_only = formats == ("JPEG",)
    if _image_as_is(source, shape, formats):
        relative = relative.with_suffix(".jpg" if jpeg_only else Path(source).suffix.lower())
        target = _target(out, relative)
        if link:
            target.symlink_to(os.path.realpath(source))
        else:
            # Never a hard link: a tool editing the export must not edit the input.
            write_atomically(target, lambda handle: handle.write(Path(source).read_bytes()))
        return relative
    from ._image_decoding import load_rgb

    rgb = (load_rgb(source) * 255).round().astype(np.uint8)
    if rgb.shape[:2] != tuple(shape):
        raise ValueError(f"{source} is {rgb.shape[0]} x {rgb.shape[1]} pixels but its mask "
                         f"{shape[0]} x {shape[1]}: the image changed after it was segmented.")
    relative = relative.with_suffix(".jpg" if jpeg_only else ".png")
    save_image(Image.fromarray(rgb), _target(out, relative),
               **({"quality": 95} if jpeg_only else {}))
    return relative


def _flat_ids(names):
    """VOC ids (no folders): the mask names without suffix, folders joined by
    ``__``; two names giving one id are an error."""
    ids, seen = [], {}
    for name in names:
        image_id = "__".join(name.with_suffix("").parts)
        if image_id in seen:
            raise ValueError(f"{seen[image_id]} and {name} would both be {image_id} in a VOC "
                             "layout, which has no folders.")
        seen[image_id] = name
        ids.append(image_id)
    return ids


def export(folder, out, format, *, link=False):
    """Write the masks of a ``skseg segment`` output folder as a dataset.

    Parameters
    ----------
    folder : path-like
        The output folder of ``skseg segment``: its run record pairs each
        mask with its image, and its ``classes.json`` (if any) names the
        classes. Only read.
    out : path-like
        The export folder: new or empty, outside ``folder``.
    format : {"coco", "voc", "hf"}
        The layout (see ``skseg export --help`` and the command-line docs).
    link : bool, default=False
        Symbolic links to the images instead of copies, where an image can be
        used as it is (re-encoded images are always files).

    Returns
    -------
    out : pathlib.Path
    """
    if format not in FORMATS:
        raise ValueError(f"format={format!r}: choose one of {', '.join(FORMATS)}.")
    if format == "coco":
        _pycocotools_mask()  # the missing extra, before anything is written
    folder, out = Path(folder), Path(out)
    outputs = _segment_outputs(folder)
    _check_export_folder(out, folder)
    names_file = folder / CLASS_NAMES_FILE
    class_names = read_class_names(names_file) if names_file.is_file() else {}
    out.mkdir(parents=True, exist_ok=True)
    formats = _AS_IS[format]
    present = set()
    if format == "voc":
        ids = _flat_ids([name for name, _ in outputs])
        for image_id, (name, image) in zip(ids, outputs):
            mask = read_label_png(folder / name)
            present.update(np.unique(mask).tolist())
            _place_image(out, PurePosixPath("JPEGImages") / f"{image_id}.jpg", image,
                         mask.shape, formats, link)
            save_label_png(mask, _target(out, f"SegmentationClass/{image_id}.png"))
        text = "".join(f"{image_id}\n" for image_id in ids).encode()
        write_atomically(_target(out, "ImageSets/Segmentation/train.txt"),
                         lambda handle: handle.write(text))
        _write_labelmap(out, class_names, present)
    elif format == "hf":
        rows = []
        for name, image in outputs:
            mask = read_label_png(folder / name)
            present.update(np.unique(mask).tolist())
            image_name = _place_image(out, PurePosixPath("images") / name, image, mask.shape,
                                      formats, link)
            save_label_png(mask, _target(out, PurePosixPath("labels") / name))
            rows.append({"file_name": image_name.as_posix(),
                         "label_file_name": f"labels/{name.as_posix()}"})
        text = "".join(json.dumps(row) + "\n" for row in rows).encode()
        write_atomically(_target(out, "metadata.jsonl"), lambda handle: handle.write(text))
    else:
        file_names = []
        for name, image in outputs:
            mask = read_label_png(folder / name)
            image_name = _place_image(out, PurePosixPath("images") / name, image, mask.shape,
                                      formats, link)
            file_names.append(image_name.relative_to("images").as_posix())
        # The masks are read once more, one at a time, rather than all held.
        from .datasets import MaskFiles

        coco = to_coco(MaskFiles([folder / name for name, _ in outputs]), file_names,
                       _target(out, "annotations.json"), class_names)
        present = {category["id"] for category in coco["categories"]}
    labels = {label for label in present | set(class_names) if 0 < label < 255}
    save_class_names(_class_names(class_names, labels), _target(out, CLASS_NAMES_FILE))
    return out


def _target(out, relative):
    """A file of the export, its folders made, never outside ``out``."""
    target = inside(out, relative)
    target.parent.mkdir(parents=True, exist_ok=True)
    return inside(out, relative)


def _write_labelmap(out, class_names, present):
    """``labelmap.txt`` (CVAT's and Datumaro's VOC flavour): the name and
    mask colour of every id from 0 (background) to the largest, in order,
    as those tools number the classes by line."""
    palette = cluster_palette()
    largest = max((label for label in present | set(class_names) if label < 255), default=0)
    names = {0: "background", **_class_names(class_names, range(1, largest + 1))}
    lines = ["# label:color_rgb:parts:actions"]
    for label, name in names.items():
        red, green, blue = palette[label]
        lines.append(f"{name.replace(':', ' ')}:{red},{green},{blue}::")
    text = ("\n".join(lines) + "\n").encode()
    write_atomically(_target(out, "labelmap.txt"), lambda handle: handle.write(text))
