"""COCO-Stuff semantic segmentation, read from a local tree."""

from pathlib import Path

import numpy as np
from sklearn.utils import Bunch

from ._masks import MaskFiles, check_pairs

# The 27 coarse classes of the COCO-Stuff label hierarchy (Caesar, Uijlings and
# Ferrari, CVPR 2018): the 12 thing and 15 stuff supercategories. Unsupervised
# segmentation papers (IIC, PiCIE, STEGO and later) evaluate on this grouping;
# each coarse class is listed with the 0-based stuffthingmaps ids it merges.
COARSE_27 = {
    "electronic": [range(71, 77)], "appliance": [range(77, 83)], "food": [range(51, 61)],
    "furniture": [range(61, 71)], "indoor": [range(83, 91)], "kitchen": [range(43, 51)],
    "accessory": [range(25, 33)], "animal": [range(15, 25)], "outdoor": [range(9, 15)],
    "person": [[0]], "sports": [range(33, 43)], "vehicle": [range(1, 9)],
    "ceiling": [[101, 102]], "floor": [[100], range(113, 118)],
    "food-stuff": [[120, 121, 152, 169]],
    "furniture-stuff": [[97, 106, 107, 109, 111, 122, 129, 132, 155, 160, 164]],
    "raw-material": [[99, 131, 138, 142]],
    "textile": [[91, 92, 103, 104, 108, 130, 136, 140, 151, 166, 167]],
    "wall": [range(170, 177)], "window": [[179, 180]],
    "building": [[94, 95, 127, 150, 157, 165]],
    "ground": [[110, 124, 125, 135, 139, 143, 144, 146, 148, 153, 158]],
    "plant": [[93, 96, 118, 123, 128, 133, 141, 162, 168]], "sky": [[105, 156]],
    "solid": [[126, 134, 149, 159, 161, 181]], "structural": [[98, 112, 137, 145, 163]],
    "water": [[119, 147, 154, 177, 178]],
}

COCO_THINGS = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack",
    "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball",
    "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket",
    "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair",
    "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
    "toothbrush",
)

# COCO's 91 thing slots (0-based 0..90) of which these 11 were never used.
_UNUSED_THING_IDS = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)


def _coarse_lookup():
    lookup = np.full(256, 255, dtype=np.uint8)
    for coarse, groups in enumerate(COARSE_27.values()):
        for group in groups:
            lookup[list(group)] = coarse
    return lookup


def _things_lookup():
    """80 thing classes to 1..80, every stuff class to background 0."""
    lookup = np.full(256, 255, dtype=np.uint8)
    lookup[:182] = 0
    things = [i for i in range(91) if i not in _UNUSED_THING_IDS]
    lookup[things] = np.arange(1, len(things) + 1)
    return lookup


def load_coco_stuff(root, split="val2017", classes=27, *, image_list=None, return_X_y=False):
    """COCO-Stuff 164k from a local tree, with 27 coarse or 81 object classes.

    Parameters
    ----------
    root : str or path-like
        Folder with ``images/{split}/*.jpg`` and ``annotations/{split}/*.png``
        (the ``stuffthingmaps_trainval2017`` label maps: 0-based class ids
        0..181, 255 unlabelled).
    split : str, default="val2017"
    classes : {27, 81}, default=27
        27: the coarse COCO-Stuff supercategories (12 things, then 15 stuff;
        see ``COARSE_27`` in the source for the mapping), as in IIC, PiCIE and
        STEGO. 81: the 80 COCO thing classes as 1..80 with all stuff as
        background 0.
    image_list : str or path-like, default=None
        A file of image ids to keep (e.g. the curated
        ``Coco164kFull_Stuff_Coarse.txt`` lists); a bare file name is looked
        up in ``root/curated/{split}/``. By default every image of the split.
    return_X_y : bool, default=False

    Returns
    -------
    data : Bunch
        ``images`` (paths), ``masks`` (lazy ``uint8`` masks with 255 for
        unlabelled), ``ids``, ``class_names``.
    """
    if classes not in (27, 81):
        raise ValueError(f"classes={classes!r}; expected 27 or 81.")
    root = Path(root)
    image_dir, mask_dir = root / "images" / split, root / "annotations" / split
    for folder in (image_dir, mask_dir):
        if not folder.is_dir():
            raise FileNotFoundError(f"COCO-Stuff folder {str(folder)!r} does not exist.")
    if image_list is None:
        ids = sorted(p.stem for p in image_dir.glob("*.jpg"))
    else:
        list_file = Path(image_list)
        if not list_file.is_file() and list_file.parent == Path("."):
            list_file = root / "curated" / split / list_file
        if not list_file.is_file():
            raise FileNotFoundError(f"image list {str(list_file)!r} does not exist.")
        ids = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
    if not ids:
        raise ValueError(f"no images in {str(image_dir)!r}.")
    images = [image_dir / f"{i}.jpg" for i in ids]
    mask_paths = [mask_dir / f"{i}.png" for i in ids]
    check_pairs(images, mask_paths)
    lookup = _coarse_lookup() if classes == 27 else _things_lookup()
    masks = MaskFiles(mask_paths, lookup=lookup)
    if return_X_y:
        return images, masks
    names = list(COARSE_27) if classes == 27 else ["background", *COCO_THINGS]
    return Bunch(images=images, masks=masks, ids=ids, class_names=names)
