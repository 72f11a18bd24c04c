"""Masks on disk: write and read label PNGs, name classes, draw masks, save
fitted pipelines, export pseudo-labels.

Masks are palette PNGs: each pixel value is a label (0 background, 1..254
the discovered classes, 255 ignore), shown in the colours of a palette.
Discovered cluster ids are drawn with :func:`cluster_palette`, whose colours
cannot be taken for PASCAL VOC's class colours; :func:`voc_palette` is for
masks whose ids are VOC classes.

A folder of masks may hold ``classes.json``, ``{"<id>": "<name>", ...}``:
:func:`read_class_names` reads it, :func:`save_class_names` writes it, and
overlays, contact sheets and exports name the labels by it.

Fitted pipelines are saved with :mod:`skops.io`, which never runs code from
the file: :func:`save_model` and :func:`load_model`, or ``skops.io.load(path,
trusted=skseg.io.TRUSTED_TYPES)``. They also pickle, with every protocol.
"""

from ._export import FORMATS, export, to_coco
from ._io import read_class_names, read_masks, save_class_names, save_masks
from ._model_files import TRUSTED_TYPES, load_model, save_model
from ._palettes import cluster_palette, voc_palette
from ._pictures import contact_sheet, overlay

__all__ = [
    "FORMATS",
    "TRUSTED_TYPES",
    "cluster_palette",
    "contact_sheet",
    "export",
    "load_model",
    "overlay",
    "read_class_names",
    "read_masks",
    "save_class_names",
    "save_masks",
    "save_model",
    "to_coco",
    "voc_palette",
]
