"""Every image in a folder, for the unlabelled case."""

from pathlib import Path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")
"""File suffixes read as images (compared case-insensitively)."""

MASK_FOLDER_NAMES = ("SegmentationClass", "SegmentationClassAug", "SegmentationObject")
"""Folders of label masks in a VOC-style tree: a walk for photographs skips them."""


def load_image_folder(path, pattern=None, *, recursive=False):
    """Paths of the images in a folder, sorted.

    Parameters
    ----------
    path : str or path-like
    pattern : str, default=None
        A glob pattern (``"*.jpg"``); by default every file with a common
        image suffix (case-insensitive).
    recursive : bool, default=False
        Look in sub-folders too.

    Returns
    -------
    images : list of pathlib.Path
    """
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {str(folder)!r} does not exist.")
    candidates = folder.rglob(pattern or "*") if recursive else folder.glob(pattern or "*")
    images = sorted(
        p for p in candidates
        if p.is_file() and (pattern is not None or p.suffix.lower() in IMAGE_SUFFIXES)
    )
    if not images:
        raise ValueError(f"no images found in {str(folder)!r}"
                         f"{' (recursively)' if recursive else ''}.")
    return images
