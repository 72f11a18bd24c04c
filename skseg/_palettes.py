"""Label colours: PASCAL VOC's colour map, a palette for discovered cluster
ids that no VOC class colour can be taken for, and palettes given by name.

The public face of this module is :mod:`skseg.io`.
"""

import functools

import numpy as np

# Colour of label 255, "ignore" in VOC and COCO-Stuff ground truth, in both palettes.
IGNORE_LABEL = 255


@functools.lru_cache(maxsize=1)
def voc_palette():
    """The PASCAL VOC colour map: a (256, 3) uint8 array, read-only.

    The colours of VOC's label PNGs: use it for masks whose ids are VOC
    classes (ground truth, or predictions relabelled to their matched class).
    """
    palette = np.zeros((256, 3), dtype=np.uint8)
    for label in range(256):
        value, colour = label, [0, 0, 0]
        for shift in range(7, -1, -1):
            for channel in range(3):
                colour[channel] |= ((value >> channel) & 1) << shift
            value >>= 3
        palette[label] = colour
    palette.flags.writeable = False
    return palette


def _lab(rgb):
    """CIELAB (D65) coordinates of sRGB colours given as uint8 rows."""
    c = np.asarray(rgb, np.float64) / 255
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = linear @ np.array([[0.4124, 0.3576, 0.1805],
                             [0.2126, 0.7152, 0.0722],
                             [0.0193, 0.1192, 0.9505]]).T
    xyz /= (0.95047, 1.0, 1.08883)
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]),
                     200 * (f[:, 1] - f[:, 2])], axis=1)


@functools.lru_cache(maxsize=1)
def cluster_palette():
    """Colours for discovered cluster ids: a (256, 3) uint8 array, read-only.

    0 is black (background) and 255 VOC's "ignore" colour, as in
    :func:`voc_palette`; ids 1..254 are picked one by one, each the colour
    farthest (in CIELAB) from black, white, every VOC class colour and the
    colours already picked, among mid-light colours. Low ids are thus the most
    distinct, and no id can be taken for a VOC class by its colour.
    """
    levels = np.arange(0, 256, 15)
    candidates = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1)
    candidates = candidates.reshape(-1, 3).astype(np.uint8)
    lab = _lab(candidates)
    # Neither near black (background) nor near white (the legend's paper).
    keep = (lab[:, 0] > 30) & (lab[:, 0] < 90)
    candidates, lab = candidates[keep], lab[keep]
    voc = voc_palette()
    avoided = np.concatenate([voc[:21], voc[[IGNORE_LABEL]], [[255, 255, 255]]])
    distance = np.full(len(candidates), np.inf)
    for colour in _lab(avoided):
        distance = np.minimum(distance, np.linalg.norm(lab - colour, axis=1))
    palette = np.zeros((256, 3), np.uint8)
    palette[IGNORE_LABEL] = voc[IGNORE_LABEL]
    for label in range(1, IGNORE_LABEL):
        best = int(np.argmax(distance))
        palette[label] = candidates[best]
        distance = np.minimum(distance, np.linalg.norm(lab - lab[best], axis=1))
    palette.flags.writeable = False
    return palette


def resolve_palette(palette):
    """A (256, 3) uint8 palette for ``palette``: None (the cluster palette),
    ``"clusters"``, ``"voc"``, or an array of up to 256 RGB rows."""
    if palette is None or (isinstance(palette, str) and palette == "clusters"):
        return cluster_palette()
    if isinstance(palette, str):
        if palette == "voc":
            return voc_palette()
        raise ValueError(f"palette={palette!r}: give 'clusters', 'voc' or an array of "
                         "RGB rows.")
    colours = np.asarray(palette)
    if colours.ndim != 2 or colours.shape[1] != 3 or not 1 <= len(colours) <= 256:
        raise ValueError(f"a palette is up to 256 RGB rows, not an array of shape "
                         f"{colours.shape}.")
    if colours.dtype.kind not in "iu" or colours.min() < 0 or colours.max() > 255:
        raise ValueError("palette colours are whole numbers from 0 to 255.")
    full = np.zeros((256, 3), np.uint8)
    full[:len(colours)] = colours
    return full


def matched_palette(assignment, base="voc"):
    """The cluster palette, with each cluster id ``k`` of ``assignment``
    (``{k: class}``, as matched by ``skseg evaluate``) drawn in the colour of
    its class in ``base``."""
    palette = cluster_palette().copy()
    base = resolve_palette(base)
    for label, cls in assignment.items():
        if 0 <= label < 256 and 0 <= cls < 256:
            palette[label] = base[cls]
    return palette
