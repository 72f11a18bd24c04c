"""benchmarks/reproduce_voc.py runs end to end on a tiny fake VOC tree."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skseg.datasets import make_scenes

from .conftest import TINY_MODEL

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "reproduce_voc.py"


@pytest.mark.slow
def test_reproduce_voc_on_a_fake_tree(tmp_path, capsys):
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / folder).mkdir(parents=True)
    images, masks = make_scenes(n_images=6, n_classes=2, image_size=(48, 64), random_state=0)
    ids = [f"2012_{i:06d}" for i in range(6)]
    for i, image, mask in zip(ids, images, masks):
        Image.fromarray(image).save(voc / "JPEGImages" / f"{i}.jpg")
        mask = mask.copy()
        mask[0] = 255
        Image.fromarray(mask).save(voc / "SegmentationClass" / f"{i}.png")
    (voc / "ImageSets/Segmentation/val.txt").write_text("\n".join(ids))
    spec = importlib.util.spec_from_file_location("reproduce_voc", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    report = script.main(["--root", str(tmp_path), "--model", TINY_MODEL, "--random-weights",
                          "--image-size", "64", "--device", "cpu", "--n-classes", "2",
                          "--limit", "5"])
    out = capsys.readouterr().out
    assert "mIoU (Hungarian, whole set)" in out and "per-image mIoU (inflated)" in out
    assert "5 images" in out and "RANDOM weights" in out
    assert 0 <= report["mean_iou"] <= 1 and set(report["iou"]) <= {0, 1, 2}
    assert np.isfinite(report["pixel_accuracy"])


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
    for path in [*(root / "_cli").glob("*.py"), root / "_run_record.py", root / "_io.py"]:
        # The level of a relative import naming a module of skseg itself.
        level = len(path.relative_to(root).parts)
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == level and node.module:
                assert not node.module.startswith(("datasets.", "metrics.")), (path, node.module)
