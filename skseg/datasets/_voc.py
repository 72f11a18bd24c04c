"""PASCAL VOC 2012 segmentation, read from a local VOCdevkit tree."""

from pathlib import Path

from sklearn.utils import Bunch

from ._masks import MaskFiles, check_pairs

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car",
    "cat", "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
    "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


def _voc_root(root):
    root = Path(root)
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    raise FileNotFoundError(
        f"{str(root)!r} holds no VOC 2012 tree: expected JPEGImages/ in it, in "
        "VOC2012/ or in VOCdevkit/VOC2012/."
    )


def load_voc(root, split="val", *, return_X_y=False):
    """PASCAL VOC 2012 semantic segmentation from a local ``VOCdevkit`` tree.

    Parameters
    ----------
    root : str or path-like
        ``VOCdevkit/VOC2012`` itself, ``VOCdevkit``, or the folder holding it.
        It must contain ``JPEGImages/``, ``SegmentationClass/`` and
        ``ImageSets/Segmentation/{split}.txt``.
    split : str, default="val"
        Name of the id list: ``"train"``, ``"val"``, ``"trainval"``, or any
        other list in ``ImageSets/Segmentation``.
    return_X_y : bool, default=False
        Return ``(images, masks)`` instead of a Bunch.

    Returns
    -------
    data : Bunch
        ``images`` (paths, in split-file order; loaded lazily by the
        transformer), ``masks`` (a lazy sequence of ``uint8`` arrays, 0..20
        and 255 for void), ``ids`` and ``class_names``.
    """
    voc = _voc_root(root)
    split_file = voc / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not split_file.is_file():
        raise FileNotFoundError(f"split file {str(split_file)!r} does not exist.")
    ids = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
    images = [voc / "JPEGImages" / f"{i}.jpg" for i in ids]
    mask_paths = [voc / "SegmentationClass" / f"{i}.png" for i in ids]
    check_pairs(images, mask_paths)
    masks = MaskFiles(mask_paths)
    if return_X_y:
        return images, masks
    return Bunch(images=images, masks=masks, ids=ids, class_names=list(VOC_CLASSES))
