"""benchmarks/reproduce_voc.py runs end to end on a tiny fake VOC tree."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.base import BaseEstimator

from skseg.datasets import make_scenes

from .conftest import TINY_MODEL

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "reproduce_voc.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("reproduce_voc", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def _fake_voc(root, images, masks):
    voc = root / "VOCdevkit" / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / folder).mkdir(parents=True)
    ids = [f"2012_{i:06d}" for i in range(len(images))]
    for i, image, mask in zip(ids, images, masks):
        Image.fromarray(image).save(voc / "JPEGImages" / f"{i}.jpg", quality=95)
        Image.fromarray(mask).save(voc / "SegmentationClass" / f"{i}.png")
    (voc / "ImageSets/Segmentation/val.txt").write_text("\n".join(ids))


@pytest.mark.slow
def test_reproduce_voc_on_a_fake_tree(tmp_path, capsys):
    images, masks = make_scenes(n_images=6, n_classes=2, image_size=(48, 64), random_state=0)
    masks = [mask.copy() for mask in masks]
    for mask in masks:
        mask[0] = 255
    _fake_voc(tmp_path, images, masks)
    report = _load_script().main([
        "--root", str(tmp_path), "--model", TINY_MODEL, "--random-weights",
        "--image-size", "64", "--device", "cpu", "--n-classes", "2", "--limit", "5"])
    out = capsys.readouterr().out
    assert "5 images" in out and "RANDOM weights" in out
    assert f"mIoU (Hungarian, whole set)  {100 * report['mean_iou']:6.2f}" in out
    # The classes scored are those of the ground truth, void (255) left out.
    assert set(report["iou"]) == {0, 1, 2}
    assert report["mean_iou"] == pytest.approx(np.mean(list(report["iou"].values())))


class _Oracle(BaseEstimator):
    """A segmenter whose seed 0 finds every square (bright pixels) under ids of
    its own, and whose other seeds call everything one id."""

    def __init__(self, random_state=0):
        self.random_state = random_state

    def fit_predict(self, X):
        masks = []
        for path in X:
            with Image.open(path) as image:
                bright = np.asarray(image.convert("L")) > 127
            masks.append(np.where(bright, 3, 7) if self.random_state == 0
                         else np.full(bright.shape, 3))
        return masks


def test_the_script_scores_a_known_case_exactly(tmp_path, capsys, monkeypatch):
    # Four 32-pixel scenes: a white 16-pixel square (class 1) on black (class 0),
    # on the 8-pixel JPEG grid so that the JPEGs keep them exact; row 0 is void.
    images, masks = [], []
    for i in range(4):
        mask = np.zeros((32, 32), np.uint8)
        mask[8 * (i % 2) + 8:8 * (i % 2) + 24, 8:24] = 1
        images.append(np.repeat(255 * mask[..., None], 3, axis=2).astype(np.uint8))
        mask[0] = 255
        masks.append(mask)
    _fake_voc(tmp_path, images, masks)
    script = _load_script()
    built = []

    class Features:  # the images themselves: the oracle reads them
        def __init__(self, model, **params):
            built.append(params)

        def fit_transform(self, images):
            return images

    monkeypatch.setattr(script, "ViTPatchTransformer", Features)
    monkeypatch.setattr(script, "MultilevelSegmenter",
                        lambda random_state, **params: _Oracle(random_state))
    report = script.main(["--root", str(tmp_path), "--random-weights", "--limit", "3",
                          "--seeds", "0", "1"])
    out = capsys.readouterr().out
    assert built and all(params["pretrained"] is False for params in built)
    assert "3 images" in out and "RANDOM weights" in out
    # Seed 0 is right on every scored pixel: the void row costs nothing.
    assert report["mean_iou"] == 1 and report["pixel_accuracy"] == 1
    assert report["iou"] == {0: 1, 1: 1}
    assert "mIoU (Hungarian, whole set)  100.00" in out
    assert "per-image mIoU (inflated)    100.00" in out
    # Seed 1 calls all 3 x (1024 - 32) scored pixels background: 3 x 736 of them are.
    background = 736 / 992
    assert report["mean_iou_by_seed"] == pytest.approx({0: 1, 1: background / 2})
    mean, std = (1 + background / 2) / 2, (1 - background / 2) / np.sqrt(2)
    assert f"mIoU over 2 seeds: {100 * mean:.2f} +- {100 * std:.2f}" in out


def test_the_script_uses_only_public_skseg_modules():
    import ast

    tree = ast.parse(SCRIPT.read_text())
    modules = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    modules += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names]
    private = [m for m in modules if m and m.startswith("skseg")
               and any(part.startswith("_") for part in m.split("."))]
    assert private == []


def test_the_command_line_uses_only_public_names_of_other_packages():
    import ast

    root = Path(__file__).resolve().parents[1] / "skseg"
    for path in [*(root / "_cli").glob("*.py"), *(root / f"_{name}.py" for name in (
            "run_record", "io", "pictures", "palettes", "model_files", "export", "report"))]:
        # The level of a relative import naming a module of skseg itself.
        level = len(path.relative_to(root).parts)
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == level and node.module:
                assert not node.module.startswith(("datasets.", "metrics.")), (path, node.module)
