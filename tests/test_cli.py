import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from skseg._cli import main
from skseg.datasets import make_scenes

from .conftest import TINY_MODEL, n_images_through_vit

FAST = ["--model", TINY_MODEL, "--random-weights", "--image-size", "64", "--n-classes", "2",
        "--refine", "none", "--device", "cpu", "-q"]


@pytest.fixture
def photo_folder(tmp_path):
    images, _ = make_scenes(n_images=6, n_classes=2, image_size=(48, 64), random_state=0)
    folder = tmp_path / "photos"
    (folder / "holiday").mkdir(parents=True)
    for i, image in enumerate(images):
        where = folder / "holiday" if i % 2 else folder
        Image.fromarray(image).save(where / f"img{i}.png")
    return folder


def test_segment_a_folder_writes_palette_pngs(photo_folder, tmp_path, vit_forwards):
    out = tmp_path / "out"
    assert main(["segment", str(photo_folder), "-r", "-o", str(out), "--overlay", *FAST]) == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == ["holiday/img1.png", "holiday/img3.png", "holiday/img5.png",
                       "img0.png", "img2.png", "img4.png"]
    with Image.open(out / "holiday" / "img3.png") as png:
        assert png.mode == "P" and png.size == (64, 48)
        assert np.asarray(png).max() <= 2
    assert (out / "img0_overlay.jpg").is_file()
    assert n_images_through_vit(vit_forwards) == 6
    # Run again: finished outputs are kept and the feature cache skips the ViT.
    before = (out / "img0.png").stat().st_mtime_ns
    assert main(["segment", str(photo_folder), "-r", "-o", str(out), *FAST]) == 0
    assert (out / "img0.png").stat().st_mtime_ns == before
    assert n_images_through_vit(vit_forwards) == 6
    assert main(["segment", str(photo_folder), "-r", "-o", str(out), "--force", *FAST]) == 0
    assert (out / "img0.png").stat().st_mtime_ns != before


def test_unreadable_inputs_are_skipped_or_stop_a_strict_run(photo_folder, tmp_path, capsys):
    (photo_folder / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "out"
    assert main(["segment", str(photo_folder), "-o", str(out), *FAST]) == 1
    err = capsys.readouterr().err
    assert "skipped" in err and "broken.jpg" in err
    assert len(list(out.glob("*.png"))) == 3
    strict = tmp_path / "strict"
    assert main(["segment", str(photo_folder), "-o", str(strict), "--strict", *FAST]) == 2
    assert "broken.jpg" in capsys.readouterr().err and not strict.exists()


def test_globs_and_files_as_inputs(photo_folder, tmp_path):
    out = tmp_path / "out"
    assert main(["segment", str(photo_folder / "img0.png"), str(photo_folder / "holiday" / "*.png"),
                 "-o", str(out), *FAST]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["img0.png", "img1.png", "img3.png",
                                                        "img5.png"]


def test_saved_model_predicts_new_images_without_refitting(photo_folder, tmp_path, vit_forwards):
    model = tmp_path / "model.joblib"
    assert main(["segment", str(photo_folder), "-o", str(tmp_path / "a"),
                 "--save-model", str(model), "--no-cache", *FAST]) == 0
    new_images, _ = make_scenes(n_images=2, n_classes=2, image_size=(48, 64), random_state=9)
    new = tmp_path / "new"
    new.mkdir()
    for i, image in enumerate(new_images):
        Image.fromarray(image).save(new / f"new{i}.png")
    seen = len(vit_forwards)
    assert main(["segment", str(new), "-o", str(tmp_path / "b"), "--load-model", str(model),
                 "-q"]) == 0
    assert n_images_through_vit(vit_forwards[seen:]) == 2  # only the new images went through the ViT
    assert len(list((tmp_path / "b").glob("*.png"))) == 2


@pytest.mark.parametrize(
    "argv, message",
    [(["segment", "nothing-here", "-o", "x"], "neither a file"),
     (["segment", "{empty}", "-o", "x"], "no input images"),
     (["segment", "{photos}", "-o", "x", "--model", TINY_MODEL, "-q"], "--weights FILE"),
     (["evaluate", "{empty}", "{empty}"], "no PNG masks")],
)
def test_user_errors_are_one_line_without_traceback(argv, message, photo_folder, tmp_path,
                                                    capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = [a.format(empty=empty, photos=photo_folder) for a in argv]
    argv = [str(tmp_path / a) if a == "x" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err and err.startswith("skseg: error:")


def test_bad_option_values_exit_non_zero(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["segment", "x", "-o", "y", "--n-classes", "0"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        main(["segment", "x", "-o", "y", "--n-classes", "256"])
    assert "at most 255" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["segment", "x", "-o", "y", "--image-size", "big"])
    assert "HEIGHTxWIDTH" in capsys.readouterr().err


def test_evaluate_reports_matched_miou(tmp_path, capsys):
    truth, pred = tmp_path / "gt", tmp_path / "pred"
    for folder in (truth, pred):
        folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        mask = rng.integers(0, 3, (10, 12)).astype(np.uint8)
        mask[0] = 255
        Image.fromarray(mask).save(truth / f"{i}.png")
        Image.fromarray(np.choose(np.minimum(mask, 3), [7, 4, 9, 7]).astype(np.uint8)).save(
            pred / f"{i}.png")
    assert main(["evaluate", str(pred), str(truth), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["mean_iou"] == 1.0 and report["n_images"] == 3
    assert report["assignment"] == {"4": 1, "7": 0, "9": 2}
    assert main(["evaluate", str(pred), str(truth)]) == 0
    assert "mean IoU        100.00" in capsys.readouterr().out
    (pred / "2.png").unlink()
    assert main(["evaluate", str(pred), str(truth)]) == 2


def test_demo_runs_offline_and_says_so(tmp_path, capsys):
    assert main(["demo", "--output", str(tmp_path / "demo"), "--n-images", "6"]) == 0
    out = capsys.readouterr().out
    assert "RANDOM weights" in out and "plain K-means" in out
    with Image.open(tmp_path / "demo" / "demo.png") as figure:
        assert figure.size[0] > 4 * 160


def test_module_entry_point():
    result = subprocess.run([sys.executable, "-m", "skseg", "--help"], capture_output=True,
                            text=True, check=True)
    assert "segment" in result.stdout and "evaluate" in result.stdout
