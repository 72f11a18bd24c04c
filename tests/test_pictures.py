"""Overlays, contact sheets and grids: label colours kept exact, legends of the
labels present."""

import numpy as np
import pytest
from PIL import Image

from skseg._pictures import grid_sheet
from skseg.io import cluster_palette, contact_sheet, overlay, voc_palette


def _colours(picture):
    return {tuple(c) for c in np.asarray(picture).reshape(-1, 3)}


def test_overlay_has_a_legend_of_the_labels_present():
    rgb = np.full((40, 120, 3), 0.5, dtype=np.float32)
    mask = np.zeros((40, 120), dtype=np.uint8)
    mask[5:15, 5:15], mask[20:30, 50:60] = 2, 5
    picture = overlay(rgb, mask)
    assert picture.size == (120, 40 + 16)  # one legend row below the image
    legend = _colours(picture.crop((0, 40, 120, 56)))
    palette = cluster_palette()
    assert tuple(palette[2]) in legend and tuple(palette[5]) in legend
    assert tuple(palette[1]) not in legend  # only labels that occur
    # Background is left as it was; labels are blended.
    image = np.asarray(picture)[:40]
    assert tuple(image[0, 0]) == (128, 128, 128)
    assert tuple(image[10, 10]) != (128, 128, 128)
    assert overlay(rgb, np.zeros_like(mask)).size == (120, 40)
    # The same from a uint8 image, and in VOC colours on request.
    grey = np.full((40, 120, 3), 128, np.uint8)
    assert overlay(grey, mask) == overlay(grey / 255, mask)
    voc = _colours(overlay(rgb, mask, palette="voc").crop((0, 40, 120, 56)))
    assert tuple(voc_palette()[2]) in voc and tuple(palette[2]) not in voc
    with pytest.raises(ValueError, match="40 x 60 pixels but the image 40 x 120"):
        overlay(rgb, mask[:, :60])


def test_overlay_legend_shows_class_names_and_wraps():
    rgb = np.zeros((30, 100, 3), dtype=np.float32)
    mask = np.zeros((30, 100), dtype=np.uint8)
    mask[:10, :10], mask[20:, 50:] = 1, 3
    plain = np.asarray(overlay(rgb, mask))
    named = np.asarray(overlay(rgb, mask, class_names={1: "aeroplane", 3: "bird"}))
    assert named.shape[0] > plain.shape[0]  # longer texts wrap onto a second row
    assert (named[30:] < 128).sum() > (plain[30:] < 128).sum()  # more text drawn


def test_contact_sheet_tiles_carry_names_and_a_legend(tmp_path):
    images = [np.full((20, 40, 3), 200, dtype=np.uint8), np.zeros((30, 30, 3))]
    masks = [np.ones((20, 40), dtype=np.uint8), np.full((30, 30), 2, dtype=np.uint8)]
    contact_sheet(images, masks, tmp_path / "named.png", names=["beach.jpg", "a/b.jpg"],
                  class_names={1: "sand"}, cell=50, columns=2)
    contact_sheet(images, masks, tmp_path / "plain.png", names=["", ""], cell=50, columns=2)
    with Image.open(tmp_path / "named.png") as sheet:
        named = np.asarray(sheet.convert("RGB"))
    with Image.open(tmp_path / "plain.png") as sheet:
        plain = np.asarray(sheet.convert("RGB"))
    palette = cluster_palette()
    # Masks keep their exact label colours when resized; the legend below
    # the tiles has a swatch of each label present.
    assert tuple(named[10, 50 + 4 + 10]) == tuple(palette[1])
    tile_width = 2 * 50 + 4 + 8
    assert tuple(named[10, tile_width + 50 + 4 + 10]) == tuple(palette[2])
    legend = _colours(named[-16:])
    assert {tuple(palette[1]), tuple(palette[2])} <= legend
    # The captions and the class name are drawn: more dark pixels than without.
    assert named.shape == plain.shape
    assert (named.sum(axis=2) < 200).sum() > (plain.sum(axis=2) < 200).sum()
    with pytest.raises(ValueError, match="2 images for 1 masks"):
        contact_sheet(images, masks[:1], tmp_path / "x.png")


def test_grid_sheet_of_the_demo_keeps_exact_label_colours(tmp_path):
    images = [np.full((20, 40, 3), 200, dtype=np.uint8), np.zeros((30, 30, 3))]
    masks = [np.ones((20, 40), dtype=np.uint8), np.full((30, 30), 2, dtype=np.uint8)]
    grid_sheet([[images[0], masks[0]], [images[1], masks[1]]], ("image", "mask"),
               tmp_path / "sheet.png", cell=50, gap=4, header=18)
    with Image.open(tmp_path / "sheet.png") as sheet:
        assert sheet.size == (2 * 54, 18 + 2 * 54)
        pixels = np.asarray(sheet.convert("RGB"))
    assert tuple(pixels[18 + 54 + 10, 54 + 10]) == tuple(cluster_palette()[2])
    assert tuple(pixels[18 + 5, 54 + 5]) == tuple(cluster_palette()[1])
