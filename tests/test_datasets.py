from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skseg.datasets import (
    VOC_CLASSES,
    load_coco_stuff,
    load_image_folder,
    load_voc,
    make_patch_features,
    make_scenes,
)
from skseg.datasets._coco import COARSE_27

SHARED_VOC = Path(__file__).resolve().parents[2] / "shared" / "data" / "voc2012-mini"


def _voc_tree(root, ids, split="val"):
    voc = root / "VOCdevkit" / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / folder).mkdir(parents=True, exist_ok=True)
    palette = [0] * 768
    palette[3:6] = [128, 0, 0]
    for k, i in enumerate(ids):
        Image.fromarray(np.full((20, 30, 3), 40 * k, np.uint8)).save(voc / "JPEGImages" / f"{i}.jpg")
        mask = np.zeros((20, 30), np.uint8)
        mask[5:10, 5:10] = k + 1
        mask[0] = 255
        png = Image.fromarray(mask, mode="P")
        png.putpalette(palette)
        png.save(voc / "SegmentationClass" / f"{i}.png")
    (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return voc


def test_load_voc_reads_a_tree_in_split_order(tmp_path):
    _voc_tree(tmp_path, ["b_2", "a_1", "c_3"])
    for root in (tmp_path, tmp_path / "VOCdevkit", tmp_path / "VOCdevkit" / "VOC2012"):
        data = load_voc(root)
        assert data.ids == ["b_2", "a_1", "c_3"]
        assert [p.name for p in data.images] == ["b_2.jpg", "a_1.jpg", "c_3.jpg"]
        mask = data.masks[1]
        assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 2, 255}
        assert data.class_names == list(VOC_CLASSES) and len(VOC_CLASSES) == 21
    images, masks = load_voc(tmp_path, return_X_y=True)
    assert len(masks[[0, 2]]) == 2 and masks[[2]][0].max() == 255


def test_load_voc_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no VOC 2012 tree"):
        load_voc(tmp_path / "nowhere")
    voc = _voc_tree(tmp_path, ["x"])
    with pytest.raises(FileNotFoundError, match="train.txt"):
        load_voc(tmp_path, split="train")
    (voc / "SegmentationClass" / "x.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"x\.jpg' has no mask"):
        load_voc(tmp_path)


@pytest.mark.skipif(not SHARED_VOC.is_dir(), reason="shared VOC sample not present")
def test_load_voc_on_real_files():
    data = load_voc(SHARED_VOC)
    assert data.ids[0] == "2007_000032"
    mask = data.masks[0]
    # The counts the VOC sample's source documents for the real file.
    assert (mask == 1).sum() == 4734 and (mask == 15).sum() == 866


def _coco_tree(root):
    for folder in ("images/val2017", "annotations/val2017", "curated/val2017"):
        (root / folder).mkdir(parents=True)
    stuffthing = np.array([[0, 1, 91, 105], [255, 12, 179, 181]], np.uint8)
    for i in ("000001", "000002"):
        Image.fromarray(np.zeros((2, 4, 3), np.uint8)).save(root / "images/val2017" / f"{i}.jpg")
        Image.fromarray(stuffthing).save(root / "annotations/val2017" / f"{i}.png")
    (root / "curated/val2017/Coco164kFull_Stuff_Coarse.txt").write_text("000002\n")
    return stuffthing


def test_load_coco_stuff_maps_classes(tmp_path):
    _coco_tree(tmp_path)
    data = load_coco_stuff(tmp_path)
    assert data.ids == ["000001", "000002"] and len(data.class_names) == 27
    names = data.class_names
    coarse = data.masks[0]
    # person, vehicle, textile, sky / void, stop sign, window, solid
    assert [names[c] for c in coarse[0]] == ["person", "vehicle", "textile", "sky"]
    assert coarse[1, 0] == 255 and names[coarse[1, 2]] == "window"
    assert names[coarse[1, 3]] == "solid"
    things = load_coco_stuff(tmp_path, classes=81)
    assert things.masks[0][0].tolist() == [1, 2, 0, 0]
    # Slot 11 is one of COCO's unused ids, so id 12 is the 12th thing.
    assert things.masks[0][1, 1] == 12 and things.class_names[12] == "stop sign"
    assert names[coarse[1, 1]] == "outdoor"
    curated = load_coco_stuff(tmp_path, image_list="Coco164kFull_Stuff_Coarse.txt")
    assert curated.ids == ["000002"]
    # Every one of the 182 fine ids belongs to exactly one coarse class.
    fine = sorted(i for groups in COARSE_27.values() for g in groups for i in g)
    assert fine == list(range(182))


def test_load_coco_stuff_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="images/val2017"):
        load_coco_stuff(tmp_path)
    _coco_tree(tmp_path)
    with pytest.raises(ValueError, match="classes"):
        load_coco_stuff(tmp_path, classes=171)
    (tmp_path / "annotations/val2017/000001.png").unlink()
    with pytest.raises(FileNotFoundError, match="000001.jpg' has no mask"):
        load_coco_stuff(tmp_path)


def test_load_image_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.PNG", "a.jpg", "notes.txt", "sub/c.png"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in load_image_folder(tmp_path)] == ["a.jpg", "b.PNG"]
    assert [p.name for p in load_image_folder(tmp_path, recursive=True)] == ["a.jpg", "b.PNG", "c.png"]
    assert [p.name for p in load_image_folder(tmp_path, "*.jpg")] == ["a.jpg"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image_folder(tmp_path / "missing")
    with pytest.raises(ValueError, match="no images"):
        load_image_folder(tmp_path / "sub", "*.gif")


def test_a_recursive_folder_skips_the_mask_folders_as_the_command_line_does(tmp_path):
    from skseg._cli.inputs import find_inputs

    voc = tmp_path / "VOC2012"
    for name in ("JPEGImages/x.jpg", "JPEGImages/y.jpg", "SegmentationClass/x.png",
                 "SegmentationObject/x.png", ".cache/z.jpg"):
        (voc / name).parent.mkdir(parents=True, exist_ok=True)
        (voc / name).write_bytes(b"x")
    with pytest.warns(UserWarning, match=r"skipped 3 images in hidden or mask folders"):
        images = load_image_folder(voc, recursive=True)
    walked = find_inputs([str(voc)], tmp_path / "out", recursive=True)
    assert [p.relative_to(voc).as_posix() for p in images] == [
        image.name.as_posix() for image in walked] == ["JPEGImages/x.jpg", "JPEGImages/y.jpg"]


def test_make_scenes_has_known_masks():
    images, masks = make_scenes(n_images=12, n_classes=3, image_size=(48, 64), random_state=0)
    assert len(images) == 12 and images[0].shape == (48, 64, 3) and images[0].dtype == np.uint8
    labels = np.unique(np.concatenate([m.ravel() for m in masks]))
    assert set(labels) == {0, 1, 2, 3}
    for image, mask in zip(images, masks):
        assert mask.shape == (48, 64) and (mask > 0).any() and (mask == 0).any()
        # each class has its own colour: object pixels differ from background
        fg, bg = image[mask > 0].mean(0), image[mask == 0].mean(0)
        assert np.abs(fg - bg).max() > 20
    again, _ = make_scenes(n_images=12, n_classes=3, image_size=(48, 64), random_state=0)
    np.testing.assert_array_equal(images[5], again[5])
    with pytest.raises(ValueError, match="max_objects"):
        make_scenes(max_objects=4, n_classes=3)


def test_make_patch_features_plants_what_it_says():
    X, masks = make_patch_features(n_images=10, n_classes=3, random_state=0)
    for f, mask in zip(X, masks):
        assert f.grid_shape == mask.shape == (14, 14)
        assert not mask[0].any() and not mask[:, 0].any()  # objects stay off the border
        assert f.attention[mask > 0].mean() > f.attention[mask == 0].mean()
    with pytest.raises(ValueError, match="max_objects"):
        make_patch_features(n_classes=1, max_objects=2)
