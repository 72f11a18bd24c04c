"""Masks on disk: written and read back as palette PNGs, class names, and the
atomic writes under them."""

import errno
import json
import os

import numpy as np
import pytest
from PIL import Image

from skseg._io import read_label_png, remove_stale_temporaries, save_label_png, write_atomically
from skseg.io import (
    cluster_palette,
    read_class_names,
    read_masks,
    save_class_names,
    save_masks,
    voc_palette,
)


def _masks(n, shape=(6, 8)):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 4, shape).astype(np.uint8) for _ in range(n)]


def test_saved_masks_read_back_exactly_in_their_order(tmp_path):
    masks = _masks(12)
    paths = save_masks(masks, tmp_path / "out")
    # Default names sort in the masks' order, even past ten.
    assert [p.name for p in paths][:3] == ["00.png", "01.png", "02.png"]
    read = read_masks(tmp_path / "out")
    assert len(read) == 12 and read.names[-1] == "11.png"
    for mine, theirs in zip(masks, read):
        np.testing.assert_array_equal(mine, theirs)


def test_masks_are_palette_pngs_in_the_cluster_colours_or_voc_on_request(tmp_path):
    mask = np.array([[0, 1, 2], [3, 20, 255]], np.uint8)
    (path,) = save_masks([mask], tmp_path, names=["a"])
    (voc,) = save_masks([mask], tmp_path, names=["b"], palette="voc")
    for png_path, palette in [(path, cluster_palette()), (voc, voc_palette())]:
        with Image.open(png_path) as png:
            assert png.mode == "P"
            np.testing.assert_array_equal(np.asarray(png), mask)
            # What a viewer shows: the palette's colours, not a near-black grey.
            np.testing.assert_array_equal(np.asarray(png.convert("RGB")), palette[mask])


def test_names_keep_folders_and_take_png_suffixes(tmp_path):
    masks = _masks(3)
    paths = save_masks(masks, tmp_path, names=["holiday/beach.JPG", "x.tif", "notes.v2"])
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [
        "holiday/beach.png", "x.png", "notes.v2.png"]
    assert read_masks(tmp_path).names == ["holiday/beach.png", "notes.v2.png", "x.png"]


@pytest.mark.parametrize("name", ["../escape", "/tmp/absolute", "a/../../b", "", "sub/.."])
def test_names_leaving_the_folder_are_refused_before_anything_is_written(tmp_path, name):
    with pytest.raises(ValueError, match="outside"):
        save_masks(_masks(2), tmp_path / "out", names=["fine", name])
    assert not (tmp_path / "out").exists()
    assert sorted(os.listdir(tmp_path)) == []


def test_a_link_leading_out_of_the_folder_is_refused(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out" / "sub").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="outside"):
        save_masks(_masks(2), tmp_path / "out", names=["fine", "sub/m"])
    assert os.listdir(tmp_path / "elsewhere") == []
    assert sorted(os.listdir(tmp_path / "out")) == ["sub"]


def test_two_names_for_one_file_and_bad_labels_are_refused(tmp_path):
    with pytest.raises(ValueError, match="'a.jpg' and 'a.png' both"):
        save_masks(_masks(2), tmp_path, names=["a.jpg", "a.png"])
    with pytest.raises(ValueError, match="hidden"):
        save_masks(_masks(1), tmp_path, names=["holiday/.draft.jpg"])
    with pytest.raises(ValueError, match="2 names for 3 masks"):
        save_masks(_masks(3), tmp_path, names=["a", "b"])
    with pytest.raises(ValueError, match="above 255"):
        save_masks([np.array([[256]])], tmp_path)
    with pytest.raises(ValueError, match="below 0"):
        save_masks([np.array([[-1]])], tmp_path)
    with pytest.raises(TypeError, match="integers"):
        save_masks([np.zeros((2, 2))], tmp_path)
    assert os.listdir(tmp_path) == []


def test_read_masks_indexes_like_label_masks(tmp_path):
    masks = _masks(5)
    save_masks(masks, tmp_path)
    read = read_masks(tmp_path)
    np.testing.assert_array_equal(read[-1], masks[4])
    assert read[1:4].names == ["1.png", "2.png", "3.png"]
    picked = read[[4, 0]]
    assert picked.names == ["4.png", "0.png"]
    np.testing.assert_array_equal(picked[0], masks[4])
    assert read[np.array([True, False, True, False, False])].names == ["0.png", "2.png"]
    with pytest.raises(IndexError, match="boolean index of length 2 for 5"):
        read[np.array([True, False])]
    with pytest.raises(IndexError):
        read[5]


def test_read_masks_is_lazy_and_names_a_bad_file_when_it_is_read(tmp_path):
    save_masks(_masks(2), tmp_path)
    (tmp_path / "1.png").write_bytes(b"not a png")
    Image.new("RGB", (4, 4)).save(tmp_path / ".hidden.png")  # hidden files are left out
    read = read_masks(tmp_path)
    assert read.names == ["0.png", "1.png"]
    read[0]
    with pytest.raises(ValueError, match="1.png"):
        read[1]
    with pytest.raises(FileNotFoundError):
        read_masks(tmp_path / "missing")


def test_class_names_round_trip_as_string_ids(tmp_path):
    path = tmp_path / "classes.json"
    save_class_names({2: "sky", 1: "chat noir"}, path)
    assert json.loads(path.read_text()) == {"1": "chat noir", "2": "sky"}
    assert read_class_names(path) == {1: "chat noir", 2: "sky"}


@pytest.mark.parametrize("content", ['{"1": "cat",', '["cat"]', '{"x": "cat"}',
                                     '{"256": "cat"}', '{"1": 3}', "\xff\xfe"])
def test_a_bad_class_names_file_is_an_error_naming_it(tmp_path, content):
    path = tmp_path / "names.json"
    path.write_bytes(content.encode("latin-1"))
    with pytest.raises(ValueError, match="names.json"):
        read_class_names(path)


def test_saving_class_names_refuses_what_json_cannot_say(tmp_path):
    for bad in ({"1": "cat"}, {300: "cat"}, {1: None}):
        with pytest.raises(ValueError):
            save_class_names(bad, tmp_path / "classes.json")
    assert not (tmp_path / "classes.json").exists()


def test_label_png_round_trip_and_reading_errors_name_the_file(tmp_path):
    mask = np.array([[0, 1, 2], [15, 20, 255]], dtype=np.int64)
    save_label_png(mask, tmp_path / "sub" / "m.png")
    np.testing.assert_array_equal(read_label_png(tmp_path / "sub" / "m.png"), mask)
    data = (tmp_path / "sub" / "m.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.png"):
        read_label_png(tmp_path / "cut.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="rgb.png.*single-channel"):
        read_label_png(tmp_path / "rgb.png")


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        write_atomically(tmp_path / "f.bin", lambda handle: handle.write(b"x"))
        save_masks(_masks(1), tmp_path, names=["m"])
        save_class_names({1: "cat"}, tmp_path / "classes.json")
    finally:
        os.umask(old)
    for name in ("f.bin", "m.png", "classes.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode


def test_a_failed_write_leaves_neither_half_a_file_nor_a_temporary(tmp_path):
    (tmp_path / "f.bin").write_bytes(b"old")

    def failing(handle):
        handle.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_atomically(tmp_path / "f.bin", failing)
    assert (tmp_path / "f.bin").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


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
