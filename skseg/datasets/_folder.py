"""Every image in a folder, for the unlabelled case."""

import warnings
from pathlib import Path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")
"""File suffixes read as images (compared case-insensitively)."""

MASK_FOLDER_NAMES = ("SegmentationClass", "SegmentationClassAug", "SegmentationObject")
"""Folders of label masks in a VOC-style tree: a walk for photographs skips them."""


def skipped_folder(name):
    """Whether a recursive walk for photographs leaves out the folder ``name``:
    hidden folders, and the mask folders of a VOC-style tree
    (:data:`MASK_FOLDER_NAMES`). ``skseg segment -r`` and
    :func:`load_image_folder` follow this one rule."""
    return name.startswith(".") or name in MASK_FOLDER_NAMES


def load_image_folder(path, pattern=None, *, recursive=False):
    """Paths of the images in a folder, sorted.

    Parameters
    ----------
    path : str or path-like
    pattern : str, default=None
        A glob pattern (``"*.jpg"``); by default every file with a common
        image suffix (case-insensitive).
    recursive : bool, default=False
        Look in sub-folders too, but not in hidden ones or in the mask
        folders of a VOC-style tree (``SegmentationClass/``...), as
        ``skseg segment --recursive``; a warning says how many images that
        leaves out.

    Returns
    -------
    images : list of pathlib.Path
    """
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {str(folder)!r} does not exist.")
    candidates = folder.rglob(pattern or "*") if recursive else folder.glob(pattern or "*")
    found = [p for p in candidates
             if p.is_file() and (pattern is not None or p.suffix.lower() in IMAGE_SUFFIXES)]
    images = sorted(p for p in found
                    if not any(map(skipped_folder, p.relative_to(folder).parts[:-1])))
    if len(images) < len(found):
        left_out = sorted(set(found) - set(images))
        warnings.warn(
            f"load_image_folder skipped {len(left_out)} images in hidden or mask folders "
            f"(e.g. {left_out[0]}), as skseg segment --recursive does.", UserWarning)
    if not images:
        raise ValueError(f"no images found in {str(folder)!r}"
                         f"{' (recursively)' if recursive else ''}.")
    return images
