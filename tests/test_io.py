"""skseg._io: label PNGs, atomic writes, overlays with a legend, contact sheets."""

import errno
import os

import numpy as np
import pytest
from PIL import Image

from skseg._io import (
    contact_sheet,
    overlay,
    read_label_png,
    remove_stale_temporaries,
    save_label_png,
    voc_palette,
    write_atomically,
)


def test_label_png_round_trip_keeps_labels_and_voc_colours(tmp_path):
    mask = np.array([[0, 1, 2], [15, 20, 255]], dtype=np.int64)
    save_label_png(mask, tmp_path / "sub" / "m.png")
    with Image.open(tmp_path / "sub" / "m.png") as png:
        assert png.mode == "P"
        assert np.asarray(png.getpalette()[3:6]).tolist() == voc_palette()[1].tolist()
    np.testing.assert_array_equal(read_label_png(tmp_path / "sub" / "m.png"), mask)
    with pytest.raises(ValueError, match="above 255"):
        save_label_png(np.array([[256]]), tmp_path / "big.png")
    assert not (tmp_path / "big.png").exists()


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        write_atomically(tmp_path / "f.bin", lambda handle: handle.write(b"x"))
        save_label_png(np.zeros((2, 2), dtype=np.uint8), tmp_path / "m.png")
    finally:
        os.umask(old)
    assert (tmp_path / "f.bin").stat().st_mode & 0o777 == mode
    assert (tmp_path / "m.png").stat().st_mode & 0o777 == mode


def test_a_failed_write_leaves_neither_half_a_file_nor_a_temporary(tmp_path):
    (tmp_path / "f.bin").write_bytes(b"old")

    def failing(handle):
        handle.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_atomically(tmp_path / "f.bin", failing)
    assert (tmp_path / "f.bin").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_reading_a_truncated_or_colour_mask_names_the_file(tmp_path):
    save_label_png(np.ones((40, 40), dtype=np.uint8), tmp_path / "m.png")
    data = (tmp_path / "m.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.png"):
        read_label_png(tmp_path / "cut.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="rgb.png.*single-channel"):
        read_label_png(tmp_path / "rgb.png")


def _colours(picture):
    return {tuple(c) for c in np.asarray(picture).reshape(-1, 3)}


def test_overlay_has_a_legend_of_the_labels_present():
    rgb = np.full((40, 120, 3), 0.5, dtype=np.float32)
    mask = np.zeros((40, 120), dtype=np.uint8)
    mask[5:15, 5:15], mask[20:30, 50:60] = 2, 5
    picture = overlay(rgb, mask)
    assert picture.size == (120, 40 + 16)  # one legend row below the image
    legend = _colours(picture.crop((0, 40, 120, 56)))
    palette = voc_palette()
    assert tuple(palette[2]) in legend and tuple(palette[5]) in legend
    assert tuple(palette[1]) not in legend  # only labels that occur
    # Background is left as it was; labels are blended.
    image = np.asarray(picture)[:40]
    assert tuple(image[0, 0]) == (128, 128, 128)
    assert tuple(image[10, 10]) != (128, 128, 128)
    assert overlay(rgb, np.zeros_like(mask)).size == (120, 40)


def test_overlay_legend_shows_class_names_and_wraps():
    rgb = np.zeros((30, 100, 3), dtype=np.float32)
    mask = np.zeros((30, 100), dtype=np.uint8)
    mask[:10, :10], mask[20:, 50:] = 1, 3
    plain = np.asarray(overlay(rgb, mask))
    named = np.asarray(overlay(rgb, mask, class_names={1: "aeroplane", 3: "bird"}))
    assert named.shape[0] > plain.shape[0]  # longer texts wrap onto a second row
    assert (named[30:] < 128).sum() > (plain[30:] < 128).sum()  # more text drawn


def test_contact_sheet_grid(tmp_path):
    images = [np.full((20, 40, 3), 200, dtype=np.uint8), np.zeros((30, 30, 3))]
    masks = [np.ones((20, 40), dtype=np.uint8), np.full((30, 30), 2, dtype=np.uint8)]
    contact_sheet([[images[0], masks[0]], [images[1], masks[1]]], ("image", "mask"),
                  tmp_path / "sheet.png", cell=50, gap=4, header=18)
    with Image.open(tmp_path / "sheet.png") as sheet:
        assert sheet.size == (2 * 54, 18 + 2 * 54)
        pixels = np.asarray(sheet.convert("RGB"))
    # Masks keep their exact label colours when resized.
    assert tuple(pixels[18 + 54 + 10, 54 + 10]) == tuple(voc_palette()[2])
    assert tuple(pixels[18 + 5, 54 + 5]) == tuple(voc_palette()[1])


def test_a_full_disk_names_the_file_being_written(tmp_path):
    def full(handle):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match=r"No space left on device \(writing .*/f\.bin\)") as error:
        write_atomically(tmp_path / "f.bin", full)
    assert error.value.errno == errno.ENOSPC
    assert os.listdir(tmp_path) == []


def test_stale_temporaries_of_a_killed_writer_are_removed(tmp_path):
    stale = tmp_path / ".img0.png.0123456789ab.tmp"
    stale.write_bytes(b"half a mask")
    kept = [tmp_path / ".notes.tmp", tmp_path / "img0.png", tmp_path / ".img0.png.xyz.tmp"]
    for path in kept:
        path.write_bytes(b"x")
    remove_stale_temporaries(tmp_path)
    assert sorted(os.listdir(tmp_path)) == sorted(path.name for path in kept)
