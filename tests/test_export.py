"""skseg export and skseg.io.to_coco: the masks of a segment folder as a
dataset that COCO, VOC and Hugging Face tools read."""

import json
import os
import sys

import numpy as np
import pytest
from PIL import Image

from skseg._cli import main
from skseg.datasets import make_scenes
from skseg.io import cluster_palette, export, read_masks, to_coco

from ._cli_helpers import FAST, save_scenes, tree_state

NAMES = {1: "sand", 2: "sky"}
# pycocotools' own, under numpy 2.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def segmented(tmp_path_factory):
    """A segment output folder of PNG photos (one in a sub-folder), a plain
    JPEG and a JPEG stored on its side (EXIF orientation 6), with names."""
    root = tmp_path_factory.mktemp("export")
    photos = root / "photos"
    save_scenes(photos, 3)
    save_scenes(photos / "holiday", 1, random_state=3, prefix="beach")
    scenes, _ = make_scenes(n_images=2, n_classes=2, image_size=(48, 64), random_state=7)
    Image.fromarray(scenes[0]).save(photos / "plain.jpg", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned a quarter: upright it is 64 high, 48 wide
    Image.fromarray(scenes[1]).save(photos / "turned.jpg", quality=90, exif=exif)
    names = root / "names.json"
    names.write_text(json.dumps({str(k): v for k, v in NAMES.items()}))
    out = root / "out"
    assert main(["segment", str(photos), "-r", "-o", str(out), "--overlay",
                 "--legend-names", str(names), *FAST]) == 0
    return photos, out


def _masks_by_name(out):
    masks = read_masks(out)
    return {name: masks[i] for i, name in enumerate(masks.names)}


def _export(segmented, tmp_path, format, *options):
    photos, out = segmented
    before = tree_state(photos), tree_state(out)
    target = tmp_path / format
    assert main(["export", str(out), "-o", str(target), "--format", format, "-q",
                 *options]) == 0
    assert (tree_state(photos), tree_state(out)) == before  # inputs only read
    return target


@pytest.mark.slow
def test_the_segment_folder_records_its_masks_and_class_names(segmented):
    _, out = segmented
    masks = read_masks(out)  # the masks, not the overlays
    assert masks.names == ["holiday/beach0.png", "img0.png", "img1.png", "img2.png",
                           "plain.png", "turned.png"]
    assert masks[-1].shape == (64, 48)  # upright
    assert json.loads((out / "classes.json").read_text()) == {"1": "sand", "2": "sky"}


def test_coco_export_loads_in_pycocotools_and_decodes_to_the_masks(segmented, tmp_path):
    from pycocotools.coco import COCO

    target = _export(segmented, tmp_path, "coco")
    coco = COCO(os.fspath(target / "annotations.json"))
    masks = _masks_by_name(segmented[1])
    assert len(coco.imgs) == len(masks)
    for image_id, entry in coco.imgs.items():
        name = entry["file_name"]
        expected = masks[os.path.splitext(name)[0] + ".png"]
        with Image.open(target / "images" / name) as image:
            assert image.size == (entry["width"], entry["height"]) == expected.shape[::-1]
        decoded = np.zeros((entry["height"], entry["width"]), np.uint8)
        for annotation in coco.loadAnns(coco.getAnnIds(imgIds=image_id)):
            pixels = coco.annToMask(annotation).astype(bool)
            assert not decoded[pixels].any()  # one class per pixel
            decoded[pixels] = annotation["category_id"]
        np.testing.assert_array_equal(decoded, expected)
    present = {label for mask in masks.values() for label in np.unique(mask)} - {0}
    assert {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())} == {
        label: NAMES[label] for label in present}
    # Images usable as they are are copied byte for byte.
    photos = segmented[0]
    assert (target / "images" / "img0.png").read_bytes() == (photos / "img0.png").read_bytes()
    assert (target / "images" / "plain.jpg").read_bytes() == \
        (photos / "plain.jpg").read_bytes()


def test_voc_export_is_a_voc_tree_of_jpegs_and_palette_masks(segmented, tmp_path):
    target = _export(segmented, tmp_path, "voc")
    masks = _masks_by_name(segmented[1])
    ids = (target / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    assert ids == ["holiday__beach0", "img0", "img1", "img2", "plain", "turned"]
    for image_id, name in zip(ids, sorted(masks)):
        with Image.open(target / "JPEGImages" / f"{image_id}.jpg") as image:
            assert image.format == "JPEG"
            # What a tool that ignores EXIF reads has the mask's size.
            assert image.size == masks[name].shape[::-1]
            assert image.getexif().get(0x0112, 1) == 1
        with Image.open(target / "SegmentationClass" / f"{image_id}.png") as png:
            assert png.mode == "P"
            np.testing.assert_array_equal(np.asarray(png), masks[name])
    photos = segmented[0]
    assert (target / "JPEGImages" / "plain.jpg").read_bytes() == \
        (photos / "plain.jpg").read_bytes()
    palette = cluster_palette()
    lines = (target / "labelmap.txt").read_text().splitlines()
    assert lines[1:] == ["background:0,0,0::"] + [
        f"{NAMES[label]}:{','.join(str(c) for c in palette[label])}::" for label in (1, 2)]
    assert json.loads((target / "classes.json").read_text()) == {"1": "sand", "2": "sky"}


def test_voc_export_loads_in_torchvision(segmented, tmp_path):
    from torchvision.datasets import VOCSegmentation

    export(segmented[1], tmp_path / "VOCdevkit" / "VOC2012", "voc")
    dataset = VOCSegmentation(os.fspath(tmp_path), year="2012", image_set="train")
    masks = _masks_by_name(segmented[1])
    assert len(dataset) == len(masks)
    for (image, target), name in zip(dataset, sorted(masks)):
        assert image.size == target.size
        np.testing.assert_array_equal(np.asarray(target), masks[name])


def test_hf_export_loads_as_an_image_segmentation_dataset(segmented, tmp_path):
    target = _export(segmented, tmp_path, "hf")
    masks = _masks_by_name(segmented[1])
    rows = [json.loads(line) for line in (target / "metadata.jsonl").read_text().splitlines()]
    assert [row["label_file_name"] for row in rows] == [f"labels/{n}" for n in sorted(masks)]
    for row in rows:
        name = row["label_file_name"].removeprefix("labels/")
        labels = read_masks(target / "labels")
        np.testing.assert_array_equal(labels[labels.names.index(name)], masks[name])
        with Image.open(target / row["file_name"]) as image:
            assert image.size == masks[name].shape[::-1]
    datasets = pytest.importorskip("datasets")
    dataset = datasets.load_dataset("imagefolder", data_dir=os.fspath(target), split="train")
    assert dataset.column_names == ["image", "label"]
    for row, name in zip(dataset, sorted(masks)):
        np.testing.assert_array_equal(np.asarray(row["label"]), masks[name])


def test_link_exports_links_to_the_images_it_can_use_as_they_are(segmented, tmp_path):
    photos, _ = segmented
    target = _export(segmented, tmp_path, "hf", "--link")
    assert os.readlink(target / "images" / "img0.png") == os.path.realpath(photos / "img0.png")
    # Stored on its side: decoded upright and written anew, losslessly.
    assert not (target / "images" / "turned.png").is_symlink()
    assert not (target / "images" / "turned.jpg").exists()
    assert not (target / "labels" / "img0.png").is_symlink()


def test_export_refuses_folders_it_would_mix_with(segmented, tmp_path, capsys):
    photos, out = segmented
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    for target, reason in [(full, "not an empty folder"), (out / "export", "inside"),
                           (out / "holiday", "not an empty folder")]:
        before = tree_state(photos), tree_state(out)
        assert main(["export", str(out), "-o", str(target), "--format", "voc"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("skseg: error:") and reason in err
        assert len(err.strip().splitlines()) == 1
        assert (tree_state(photos), tree_state(out)) == before
    assert os.listdir(full) == ["keep.txt"]
    assert main(["export", str(photos), "-o", str(tmp_path / "e"), "--format", "hf"]) == 2
    assert "holds no .skseg-run.json" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def test_coco_without_pycocotools_names_the_extra(segmented, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    assert main(["export", str(segmented[1]), "-o", str(tmp_path / "c"), "--format",
                 "coco"]) == 2
    assert "pip install 'skseg[coco]'" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
    with pytest.raises(ValueError, match=r"skseg\[coco\]"):
        to_coco([np.zeros((2, 2), np.uint8)], ["a.jpg"])


def test_to_coco_annotates_each_class_of_each_mask(tmp_path):
    from pycocotools.coco import COCO

    first = np.array([[0, 1, 1], [2, 2, 255]], np.uint8)
    second = np.zeros((4, 5), np.uint8)
    coco = to_coco([first, second], ["a.jpg", "b/c.png"], tmp_path / "c.json",
                   class_names={1: "cat", 3: "dog"})
    assert [image["file_name"] for image in coco["images"]] == ["a.jpg", "b/c.png"]
    # Named classes are categories even where absent; 255 (ignore) is none.
    assert [(c["id"], c["name"]) for c in coco["categories"]] == [
        (1, "cat"), (2, "class 2"), (3, "dog")]
    annotations = coco["annotations"]
    assert [(a["image_id"], a["category_id"], a["area"]) for a in annotations] == [
        (1, 1, 2), (1, 2, 2)]
    assert annotations[0]["bbox"] == [1.0, 0.0, 2.0, 1.0]
    loaded = COCO(os.fspath(tmp_path / "c.json"))
    np.testing.assert_array_equal(loaded.annToMask(loaded.anns[2]), first == 2)
    with pytest.raises(ValueError, match="1 file names for 2 masks"):
        to_coco([first, second], ["a.jpg"])
    for bad in (first.astype(float) / 2, first.astype(np.int16) - 1):
        with pytest.raises(ValueError, match=r"mask 0 \(a.jpg\) must hold whole-number"):
            to_coco([bad], ["a.jpg"])


def test_export_refuses_an_image_changed_since_it_was_segmented(segmented, tmp_path, capsys):
    photos, out = segmented
    changed = photos / "img0.png"
    original = changed.read_bytes()
    try:
        with Image.open(changed) as image:
            edited = np.asarray(image)[::-1].copy()  # same size, other content
        Image.fromarray(edited).save(changed)
        assert main(["export", str(out), "-o", str(tmp_path / "e"), "--format", "hf"]) == 2
    finally:
        changed.write_bytes(original)  # the other tests' segment folder, as it was
    err = capsys.readouterr().err
    assert "has changed since skseg segment made the mask" in err and changed.name in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "e").exists()


def test_export_from_python_is_the_command_line_export(segmented, tmp_path):
    target = export(segmented[1], tmp_path / "voc", "voc")
    assert sorted(p.name for p in target.iterdir()) == [
        "ImageSets", "JPEGImages", "SegmentationClass", "classes.json", "labelmap.txt"]
    with pytest.raises(ValueError, match="format='yolo'"):
        export(segmented[1], tmp_path / "x", "yolo")
