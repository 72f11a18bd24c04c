"""skseg._cli.inputs: which files a command line reads, and where their outputs go."""

import os

import pytest
from PIL import Image

from skseg._cli.inputs import find_inputs
from skseg._cli.messages import UserError


def _image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4)).save(path)
    return path


def _names(images):
    return [image.name.as_posix() for image in images]


def test_symlink_loops_are_entered_once(tmp_path):
    root = tmp_path / "photos"
    _image(root / "a.png")
    _image(root / "sub" / "b.png")
    (root / "sub" / "loop").symlink_to(root, target_is_directory=True)
    (root / "again").symlink_to(root / "sub", target_is_directory=True)
    out = tmp_path / "out"
    assert sorted(_names(find_inputs([str(root)], out, recursive=True))) == [
        "a.png", "sub/b.png"]
    star = find_inputs([f"{root}/**/*.png"], out, recursive=True)
    assert sorted(_names(star)) == ["a.png", "sub/b.png"]


def test_two_spellings_of_one_file_are_one_input(tmp_path, monkeypatch):
    photo = _image(tmp_path / "photos" / "a.png")
    (tmp_path / "alias.png").symlink_to(photo)
    monkeypatch.chdir(tmp_path)
    found = find_inputs(["photos/a.png", "photos/../photos/a.png", str(photo), "photos",
                         "alias.png", "photos/*.png"], tmp_path / "out")
    assert len(found) == 1 and found[0].path == photo.relative_to(tmp_path)


def test_a_glob_through_dotdot_cannot_name_an_output_outside(tmp_path, monkeypatch):
    _image(tmp_path / "victim" / "v.png")
    (tmp_path / "work" / "a1").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "work")
    found = find_inputs(["a*/../../victim/*.png"], tmp_path / "out")
    assert _names(found) == ["v.png"]  # not "../victim/v.png"


@pytest.mark.parametrize("layout, message", [
    ("same", "is, or holds, the input"),
    ("input inside output", "is, or holds, the input"),
    ("file inside output", "inside the output folder"),
])
def test_an_output_folder_that_is_or_holds_an_input_is_refused(tmp_path, layout, message):
    photos = tmp_path / "photos"
    _image(photos / "a.png")
    if layout == "same":
        inputs, out = [str(photos)], photos
    elif layout == "input inside output":
        inputs, out = [str(photos)], tmp_path
    else:
        inputs, out = [str(photos / "a.png")], photos
    with pytest.raises(UserError, match=message):
        find_inputs(inputs, out)


def test_an_output_folder_inside_the_inputs_is_not_read(tmp_path):
    photos = tmp_path / "photos"
    _image(photos / "a.png")
    _image(photos / "masks" / "a.png")  # the outputs of an earlier run
    found = find_inputs([str(photos)], photos / "masks", recursive=True)
    assert _names(found) == ["a.png"]


def test_a_voc_root_does_not_read_its_masks(tmp_path):
    voc = tmp_path / "VOC2012"
    _image(voc / "JPEGImages" / "2007_000001.jpg")
    for folder in ("SegmentationClass", "SegmentationObject"):
        _image(voc / folder / "2007_000001.png")
    _image(voc / ".hidden" / "x.png")
    found = find_inputs([str(voc)], tmp_path / "out", recursive=True)
    assert _names(found) == ["JPEGImages/2007_000001.jpg"]


def test_list_and_exclude(tmp_path):
    voc = tmp_path / "VOC2012"
    for i in range(4):
        _image(voc / "JPEGImages" / f"2007_00000{i}.jpg")
    listing = tmp_path / "val.txt"
    listing.write_text("2007_000001\n\n2007_000003\n# a comment\n")
    found = find_inputs([str(voc)], tmp_path / "out", recursive=True, list_file=listing)
    assert _names(found) == ["JPEGImages/2007_000001.jpg", "JPEGImages/2007_000003.jpg"]
    by_path = tmp_path / "paths.txt"
    by_path.write_text(str(voc / "JPEGImages" / "2007_000002.jpg"))
    assert _names(find_inputs([str(voc)], tmp_path / "out", recursive=True,
                              list_file=by_path)) == ["JPEGImages/2007_000002.jpg"]
    listing.write_text("2007_000001\n2007_999999\n")
    with pytest.raises(UserError, match="1 entry of --list .* 2007_999999"):
        find_inputs([str(voc)], tmp_path / "out", recursive=True, list_file=listing)
    kept = find_inputs([str(voc)], tmp_path / "out", recursive=True,
                       exclude=["*000002*", "JPEGImages/2007_000000.jpg"])
    assert _names(kept) == ["JPEGImages/2007_000001.jpg", "JPEGImages/2007_000003.jpg"]
    with pytest.raises(UserError, match="no input images"):
        find_inputs([str(voc)], tmp_path / "out", recursive=True, exclude=["*.jpg"])


def test_collisions_name_both_inputs_with_advice_that_fits(tmp_path):
    photos = tmp_path / "photos"
    _image(photos / "x.jpg")
    _image(photos / "x.png")
    with pytest.raises(UserError) as same_folder:
        find_inputs([str(photos)], tmp_path / "out")
    message = str(same_folder.value)
    assert "x.jpg" in message and "x.png" in message and "--exclude 'x.png'" in message
    _image(tmp_path / "more" / "y.png")
    _image(photos / "y.png")
    with pytest.raises(UserError) as two_folders:
        find_inputs([str(photos / "y.png"), str(tmp_path / "more")], tmp_path / "out")
    message = str(two_folders.value)
    assert os.fspath(tmp_path / "more" / "y.png") in message and "--recursive" in message
