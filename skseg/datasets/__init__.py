"""Dataset loaders and synthetic data generators.

Each name's module is imported on first use: the command line reads
``IMAGE_SUFFIXES`` without loading scikit-learn.
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {
    "IMAGE_SUFFIXES": "._folder",
    "MASK_FOLDER_NAMES": "._folder",
    "skipped_folder": "._folder",
    "MaskFiles": "._masks",
    "VOC_CLASSES": "._voc",
    "load_coco_stuff": "._coco",
    "load_image_folder": "._folder",
    "load_voc": "._voc",
    "make_patch_features": "._synthetic",
    "make_scenes": "._synthetic",
}

__all__ = [
    "IMAGE_SUFFIXES",
    "MASK_FOLDER_NAMES",
    "MaskFiles",
    "VOC_CLASSES",
    "load_coco_stuff",
    "load_image_folder",
    "load_voc",
    "make_patch_features",
    "make_scenes",
    "skipped_folder",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # what static tools see
    from ._coco import load_coco_stuff
    from ._folder import IMAGE_SUFFIXES, MASK_FOLDER_NAMES, load_image_folder, skipped_folder
    from ._masks import MaskFiles
    from ._synthetic import make_patch_features, make_scenes
    from ._voc import VOC_CLASSES, load_voc
