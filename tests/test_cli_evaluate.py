"""skseg evaluate: predicted masks paired with the ground truth and scored."""

import json

import numpy as np
import pytest
from PIL import Image

from skseg._cli.parser import main


def _mask_folders(tmp_path, n=3):
    truth, pred = tmp_path / "gt", tmp_path / "pred"
    for folder in (truth, pred):
        folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        mask = rng.integers(0, 3, (10, 12)).astype(np.uint8)
        mask[0] = 255
        Image.fromarray(mask).save(truth / f"{i}.png")
        Image.fromarray(np.choose(np.minimum(mask, 3), [7, 4, 9, 7]).astype(np.uint8)).save(
            pred / f"{i}.png")
    return truth, pred


def test_evaluate_reports_matched_miou(tmp_path, capsys):
    truth, pred = _mask_folders(tmp_path)
    assert main(["evaluate", str(pred), str(truth), "--json", "--class-names", "voc"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["mean_iou"] == 1.0 and report["n_images"] == 3 and report["n_missing"] == 0
    assert report["assignment"] == {"4": 1, "7": 0, "9": 2}
    assert report["class_names"]["2"] == "bicycle"
    assert main(["evaluate", str(pred), str(truth)]) == 0
    assert "mean IoU        100.00" in capsys.readouterr().out


def test_evaluate_with_nothing_to_score_is_an_error(tmp_path, capsys):
    truth, pred = _mask_folders(tmp_path)
    for mask in truth.iterdir():
        Image.fromarray(np.full((10, 12), 255, np.uint8)).save(mask)
    assert main(["evaluate", str(pred), str(truth)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--ignore-index 255: there is nothing to score" in err


def test_evaluate_allow_missing_scores_what_is_there(tmp_path, capsys):
    truth, pred = _mask_folders(tmp_path)
    (pred / "2.png").unlink()
    assert main(["evaluate", str(pred), str(truth)]) == 2
    assert "2.png" in capsys.readouterr().err
    assert main(["evaluate", str(pred), str(truth), "--allow-missing", "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["n_images"] == 2 and report["n_missing"] == 1
    assert "1 of 3 predictions are missing" in captured.err
    for path in pred.glob("*.png"):
        path.unlink()
    assert main(["evaluate", str(pred), str(truth), "--allow-missing"]) == 2
    assert "none of the 3" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["truncated", "other size", "colour"])
def test_evaluate_names_a_bad_mask_file(damage, tmp_path, capsys):
    truth, pred = _mask_folders(tmp_path)
    if damage == "truncated":
        data = (pred / "1.png").read_bytes()
        (pred / "1.png").write_bytes(data[: len(data) // 2])
    elif damage == "other size":
        Image.fromarray(np.zeros((5, 5), np.uint8)).save(pred / "1.png")
    else:
        Image.new("RGB", (12, 10)).save(pred / "1.png")
    assert main(["evaluate", str(pred), str(truth)]) == 2
    err = capsys.readouterr().err
    assert str(pred / "1.png") in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_evaluate_pairs_masks_by_file_name_when_paths_differ(tmp_path, capsys):
    truth, pred = _mask_folders(tmp_path)
    (pred / "JPEGImages").mkdir()
    for mask in sorted(pred.glob("*.png"))[1:]:
        mask.rename(pred / "JPEGImages" / mask.name)  # 0.png stays paired by path
    assert main(["evaluate", str(pred), str(truth), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["mean_iou"] == 1.0
    assert "paired 3 of 3 ground-truth masks with a prediction (2 by file name" in captured.err
    (pred / "other").mkdir()
    (pred / "other" / "1.png").write_bytes((pred / "JPEGImages" / "1.png").read_bytes())
    assert main(["evaluate", str(pred), str(truth)]) == 2
    err = capsys.readouterr().err
    assert "its file name is not enough to pair it" in err and err.count("\n") == 1
