"""Label colours: the cluster palette stays clear of PASCAL VOC's."""

import numpy as np

from skseg._palettes import _lab
from skseg.io import cluster_palette, voc_palette

VOC_CLASS_IDS = [*range(21), 255]


def test_no_discovered_id_looks_like_a_voc_class():
    palette, voc = cluster_palette(), voc_palette()
    voc_colours = {tuple(voc[label]) for label in VOC_CLASS_IDS}
    discovered = [tuple(palette[label]) for label in range(1, 255)]
    assert not voc_colours & set(discovered)
    assert len(set(discovered)) == 254  # every id its own colour
    assert tuple(palette[0]) == (0, 0, 0) and tuple(palette[255]) == tuple(voc[255])
    # Not merely different bytes: the first ids are far apart from VOC's
    # colours and from each other (CIELAB distance; 2.3 is just noticeable).
    first = _lab(palette[1:21])
    to_voc = np.linalg.norm(first[:, None] - _lab(voc[VOC_CLASS_IDS])[None], axis=2)
    between = np.linalg.norm(first[:, None] - first[None], axis=2)
    assert to_voc.min() > 25 and between[~np.eye(20, dtype=bool)].min() > 25
