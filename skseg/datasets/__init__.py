"""Dataset loaders and synthetic data generators."""

from ._coco import load_coco_stuff
from ._folder import IMAGE_SUFFIXES, MASK_FOLDER_NAMES, load_image_folder, skipped_folder
from ._masks import MaskFiles
from ._synthetic import make_patch_features, make_scenes
from ._voc import VOC_CLASSES, load_voc

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
