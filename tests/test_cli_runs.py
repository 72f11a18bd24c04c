"""skseg segment across runs: the output folder's record, resuming, overlays,
saved models and file permissions."""

import json
import os
import pickle
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.pipeline import Pipeline

import skseg._cli.segment
import skseg._cli.segment_outputs
from skseg._cli.parser import build_parser, main
from skseg._run_record import RECORD_NAME
from skseg.io import cluster_palette, voc_palette

from ._cli_helpers import FAST, photo_folder, read_mask, save_scenes  # noqa: F401
from .conftest import TINY_MODEL, n_images_through_vit


def _masks(out):
    return {p.relative_to(out).as_posix(): read_mask(p) for p in sorted(out.rglob("*.png"))}


def _no_model_may_be_built(monkeypatch):
    def refuse(vit):
        raise AssertionError("the ViT was built")

    monkeypatch.setattr(skseg._cli.segment, "_prepare_backbone", refuse)


def test_a_rerun_of_the_same_fit_stops_at_once(tmp_path, monkeypatch, capsys):
    photos = tmp_path / "photos"
    save_scenes(photos, 4)
    out = tmp_path / "out"
    argv = ["segment", str(photos), "-o", str(out), "--no-cache", *FAST]
    assert main(argv) == 0
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*.png")}
    _no_model_may_be_built(monkeypatch)
    assert main([a for a in argv if a != "-q"]) == 0
    assert "nothing to do" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in out.glob("*.png")} == stamps


@pytest.mark.slow
def test_a_different_fit_is_refused_then_rewrites_everything_with_force(tmp_path, capsys):
    photos = tmp_path / "photos"
    save_scenes(photos, 6)
    first = tmp_path / "first"
    first.mkdir()
    for name in ("img0.png", "img1.png", "img2.png"):
        (first / name).write_bytes((photos / name).read_bytes())
    out = tmp_path / "out"
    assert main(["segment", str(first), "-o", str(out), *FAST]) == 0
    earlier = _masks(out)
    assert main(["segment", str(photos), "-o", str(out), *FAST]) == 2
    err = capsys.readouterr().err
    assert "different fit" in err and "training images differ (3 added, 0 removed)" in err
    assert "--force" in err and _masks(out).keys() == earlier.keys()
    assert main(["segment", str(first), "-o", str(out), *FAST, "--n-classes", "3"]) == 2
    assert "n_classes was 2, now 3" in capsys.readouterr().err
    # With --force every mask comes from the new fit, as in a fresh folder.
    # Three of the stored images ran through the ViT in a batch of 3, the fresh
    # run's all in one of 6, so their features differ in the last bits; the
    # segmenter's draws are keyed by the images' digests, so the masks do not.
    assert main(["segment", str(photos), "-o", str(out), "--force", *FAST]) == 0
    fresh = tmp_path / "fresh"
    assert main(["segment", str(photos), "-o", str(fresh), *FAST]) == 0
    rewritten, expected = _masks(out), _masks(fresh)
    assert rewritten.keys() == expected.keys() and len(expected) == 6
    for name in expected:
        np.testing.assert_array_equal(rewritten[name], expected[name])


def test_force_removes_outputs_of_another_fit_but_nothing_outside_the_folder(tmp_path):
    photos = tmp_path / "photos"
    save_scenes(photos, 4)
    victim = tmp_path / "victim.png"
    victim.write_bytes(b"keep me")
    out = tmp_path / "out"
    assert main(["segment", str(photos), "-o", str(out), "--overlay", *FAST]) == 0
    # A record planted to name a file outside the output folder as an output.
    record = json.loads((out / RECORD_NAME).read_text())
    record["outputs"]["../victim.png"] = {"input": "x", "sha1": "0", "overlay": False}
    (out / RECORD_NAME).write_text(json.dumps(record))
    assert main(["segment", str(photos), "-o", str(out), "--exclude", "img3.png", "--force",
                 *FAST]) == 0
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "img0.png", "img1.png", "img2.png"]  # stale overlays gone too: not redrawn
    assert victim.read_bytes() == b"keep me"


def test_existing_files_without_a_record_are_not_overwritten(tmp_path, capsys):
    photos = tmp_path / "photos"
    save_scenes(photos, 3)
    out = tmp_path / "out"
    out.mkdir()
    (out / "img1.png").write_bytes(b"someone else's file")
    assert main(["segment", str(photos), "-o", str(out), *FAST]) == 2
    assert "img1.png" in capsys.readouterr().err
    assert (out / "img1.png").read_bytes() == b"someone else's file"
    assert main(["segment", str(photos), "-o", str(out), "--force", *FAST]) == 0
    assert read_mask(out / "img1.png").ndim == 2


@pytest.mark.slow
def test_an_interrupted_run_resumes_and_never_leaves_a_mask_without_its_overlay(
        tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    save_scenes(photos, 4)
    out = tmp_path / "out"
    real_save = skseg._cli.segment_outputs.save_label_png
    calls = []

    def interrupted(mask, path):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real_save(mask, path)

    monkeypatch.setattr(skseg._cli.segment_outputs, "save_label_png", interrupted)
    argv = ["segment", str(photos), "-o", str(out), "--overlay", *FAST]
    assert main(argv) == 130
    masks = sorted(out.glob("img?.png"))
    # Writes run in threads: a write started beside the failing one finishes.
    assert 2 <= len(masks) < 4
    for mask in masks:
        assert (out / f"{mask.stem}_overlay.jpg").is_file()
    # The record names exactly the masks on disk, and nothing is half-written.
    record = json.loads((out / RECORD_NAME).read_text())
    assert sorted(record["outputs"]) == [mask.name for mask in masks]
    assert not [path for path in out.iterdir() if path.name.endswith(".tmp")]
    stamps = {mask: mask.stat().st_mtime_ns for mask in masks}
    monkeypatch.setattr(skseg._cli.segment_outputs, "save_label_png", real_save)
    assert main(argv) == 0
    assert {mask: mask.stat().st_mtime_ns for mask in masks} == stamps  # only the rest
    fresh = tmp_path / "fresh"
    assert main(["segment", str(photos), "-o", str(fresh), *FAST]) == 0
    for name, mask in _masks(fresh).items():
        np.testing.assert_array_equal(read_mask(out / name), mask)
    assert len(list(out.glob("*_overlay.jpg"))) == 4


@pytest.mark.slow
def test_an_interrupted_forced_refit_leaves_only_masks_of_the_new_fit(tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    save_scenes(photos, 6)
    out = tmp_path / "out"
    assert main(["segment", str(photos), "-o", str(out), "--overlay", *FAST]) == 0

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Pipeline, "fit", interrupted)
    subset = ["segment", str(photos), "-o", str(out), "--exclude", "img[345].png", *FAST]
    assert main([*subset, "--force"]) == 130
    # The new record says the old fit's outputs are gone: so they are.
    assert not _masks(out) and not list(out.glob("*_overlay.jpg"))
    monkeypatch.undo()
    assert main(subset) == 0
    fresh = tmp_path / "fresh"
    # From the same stored features: a ViT batch of other images can move
    # features by rounding, and a 2-class fit then swap its labels.
    assert main([*subset[:3], str(fresh), *subset[4:], "--cache",
                 str(out / ".skseg-features")]) == 0
    resumed, expected = _masks(out), _masks(fresh)
    assert resumed.keys() == expected.keys() == {"img0.png", "img1.png", "img2.png"}
    for name in expected:
        np.testing.assert_array_equal(resumed[name], expected[name])


# A run that holds its output folder until the file argv[1] exists.
_HELD_RUN = textwrap.dedent("""
    import sys
    import time
    from pathlib import Path

    import skseg._cli.segment
    from skseg._cli import main

    real = skseg._cli.segment.write_masks

    def waiting(*args, **kwargs):
        while not Path(sys.argv[1]).exists():
            time.sleep(0.05)
        return real(*args, **kwargs)

    skseg._cli.segment.write_masks = waiting
    sys.exit(main(sys.argv[2:]))
""")


@pytest.mark.slow
def test_a_second_run_on_the_same_folder_is_refused_naming_the_first(tmp_path, capsys):
    photos = tmp_path / "photos"
    save_scenes(photos, 3)
    out, go = tmp_path / "out", tmp_path / "go"
    root = Path(__file__).resolve().parent.parent
    first = subprocess.Popen(
        [sys.executable, "-c", _HELD_RUN, str(go), "segment", str(photos), "-o", str(out),
         *FAST], cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
        stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        # Its record is written once it holds the folder, just before its masks.
        while not (out / RECORD_NAME).exists() and first.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        assert main(["segment", str(photos), "-o", str(out), "--force", *FAST,
                     "--n-classes", "3"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "being written by another skseg run" in err
        assert f"process {first.pid} on " in err
        assert not _masks(out)  # the second run wrote nothing
    finally:
        go.touch()
        first_err = first.communicate(timeout=120)[1]
    assert first.returncode == 0, first_err
    fresh = tmp_path / "fresh"
    assert main(["segment", str(photos), "-o", str(fresh), *FAST]) == 0
    written, expected = _masks(out), _masks(fresh)
    assert written.keys() == expected.keys()
    for name in expected:
        np.testing.assert_array_equal(written[name], expected[name])
    assert not [p.name for p in out.iterdir() if "holder" in p.name]


@pytest.mark.slow
def test_temporary_files_of_a_killed_run_are_removed_by_the_next(photo_folder, tmp_path):
    out = tmp_path / "out"
    argv = ["segment", str(photo_folder), "-o", str(out), "-r", *FAST]
    assert main(argv) == 0
    stale = [out / ".img0.png.0123456789ab.tmp", out / "holiday" / ".img1.png.ba9876543210.tmp",
             out / f".{RECORD_NAME}.00112233aabb.tmp"]
    for path in stale:
        path.write_bytes(b"half a file")
    assert main(argv) == 0  # nothing to do, but the debris goes
    assert not [path for path in stale if path.exists()]


@pytest.mark.slow
def test_overlays_asked_on_a_rerun_are_drawn_from_the_masks(tmp_path, monkeypatch, capsys):
    photos = tmp_path / "photos"
    save_scenes(photos, 3)
    out = tmp_path / "out"
    assert main(["segment", str(photos), "-o", str(out), *FAST]) == 0
    _no_model_may_be_built(monkeypatch)
    loud = [option for option in FAST if option != "-q"]
    assert main(["segment", str(photos), "-o", str(out), "--overlay", *loud]) == 0
    assert "same fit; redrew 3 overlays (--force" in capsys.readouterr().err
    assert sorted(p.name for p in out.glob("*_overlay.jpg")) == [
        "img0_overlay.jpg", "img1_overlay.jpg", "img2_overlay.jpg"]
    (out / "img1_overlay.jpg").unlink()
    assert main(["segment", str(photos), "-o", str(out), "--overlay", *loud]) == 0
    assert "same fit; redrew 1 overlay (--force" in capsys.readouterr().err
    (out / "img1_overlay.jpg").unlink()
    plain = (out / "img0_overlay.jpg").read_bytes()
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"assignment": {"1": 8, "2": 12},
                                  "class_names": {"8": "cat", "12": "dog"}}))
    assert main(["segment", str(photos), "-o", str(out), "--overlay", "--legend-names",
                 str(report), *FAST]) == 0
    assert (out / "img1_overlay.jpg").is_file()
    assert (out / "img0_overlay.jpg").read_bytes() != plain  # redrawn with the names
    entry = json.loads((out / RECORD_NAME).read_text())["outputs"]["img0.png"]
    assert entry["overlay"] == {"names": {"1": "cat", "2": "dog"}, "palette": "clusters"}
    # The names stay beside the masks, for export and for other tools.
    assert json.loads((out / "classes.json").read_text()) == {"1": "cat", "2": "dog"}


@pytest.mark.slow
def test_legend_names_from_voc_classes_draw_them_in_voc_colours(tmp_path, capsys):
    photos = tmp_path / "photos"
    save_scenes(photos, 3)
    out = tmp_path / "out"
    assert main(["segment", str(photos), "-o", str(out), *FAST]) == 0
    mask = read_mask(out / "img0.png")
    label = int(min(set(np.unique(mask)) - {0}))  # an object class of img0
    # Evaluated against VOC ground truth, that label matched "cat" (VOC class 8).
    truth = tmp_path / "truth"
    truth.mkdir()
    for name in ("img0.png", "img1.png", "img2.png"):
        labels = read_mask(out / name)
        Image.fromarray(np.where(labels == label, 8, labels).astype(np.uint8)).save(truth / name)
    assert main(["evaluate", str(out), str(truth), "--json", "--class-names", "voc"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["classes"] == "voc" and report["assignment"][str(label)] == 8
    (tmp_path / "report.json").write_text(json.dumps(report))
    preview = tmp_path / "preview.png"
    assert main(["segment", str(photos), "-o", str(out), "--overlay", "--preview",
                 str(preview), "--legend-names", str(tmp_path / "report.json"), *FAST]) == 0
    entry = json.loads((out / RECORD_NAME).read_text())["outputs"]["img0.png"]
    assert entry["overlay"]["palette"] == "voc"
    assert entry["overlay"]["names"][str(label)] == "cat"
    with Image.open(preview) as sheet:
        colours = {tuple(c) for c in np.asarray(sheet.convert("RGB")).reshape(-1, 3)}
    assert tuple(voc_palette()[8]) in colours  # the label drawn as VOC draws cats
    assert tuple(cluster_palette()[label]) not in colours
    # The mask files keep the cluster colours: their values are cluster ids.
    with Image.open(out / "img0.png") as png:
        assert png.getpalette()[3:6] == cluster_palette()[1].tolist()


@pytest.mark.slow
def test_class_names_of_another_fit_are_removed_with_its_masks(tmp_path):
    photos = tmp_path / "photos"
    save_scenes(photos, 3)
    out = tmp_path / "out"
    names = tmp_path / "classes.json"
    names.write_text('{"1": "sand"}')
    assert main(["segment", str(photos), "-o", str(out), "--legend-names", str(names),
                 *FAST]) == 0
    assert (out / "classes.json").is_file()
    assert main(["segment", str(photos), "-o", str(out), *FAST]) == 0  # same fit: kept
    assert (out / "classes.json").is_file()
    assert main(["segment", str(photos), "-o", str(out), "--force", "--random-state", "3",
                 *FAST]) == 0
    assert not (out / "classes.json").exists()
    names.write_text('{"one": "sand"}')
    assert main(["segment", str(photos), "-o", str(out), "--legend-names", str(names),
                 *FAST]) == 2


@pytest.mark.slow
def test_preview_is_a_grid_of_images_and_masks(tmp_path, capsys):
    photos = tmp_path / "photos"
    save_scenes(photos, 5)
    out, preview = tmp_path / "out", tmp_path / "preview.png"
    assert main(["segment", str(photos), "-o", str(out), "--preview", str(preview),
                 *FAST]) == 0
    with Image.open(preview) as sheet:
        pixels = np.asarray(sheet.convert("RGB"))
    # 4 image-and-mask tiles a row, 2 rows, and a legend row below.
    tile_width, tile_height = 2 * 128 + 4 + 8, 128 + 14 + 4
    assert pixels.shape[:2] == (2 * tile_height + 16, 4 * tile_width)
    masks = [read_mask(out / f"img{i}.png") for i in range(5)]
    labels = set(np.unique(masks)) - {0}
    legend = {tuple(c) for c in pixels[-16:].reshape(-1, 3)}
    assert {tuple(cluster_palette()[label]) for label in labels} <= legend
    # Its own earlier preview is rewritten without --force, another file is not.
    assert main(["segment", str(photos), "-o", str(out), "--preview", str(preview),
                 *FAST]) == 0
    other = tmp_path / "holiday.png"
    other.write_bytes(b"a photo")
    assert main(["segment", str(photos), "-o", str(out), "--preview", str(other),
                 *FAST]) == 2
    assert other.read_bytes() == b"a photo" and "already exists" in capsys.readouterr().err


@pytest.mark.slow
def test_outputs_follow_the_umask(tmp_path):
    photos = tmp_path / "photos"
    save_scenes(photos, 3)
    out = tmp_path / "out"
    old = os.umask(0o022)
    try:
        assert main(["segment", str(photos), "-o", str(out), "--overlay", "--save-model",
                     str(tmp_path / "m.skops"), *FAST]) == 0
    finally:
        os.umask(old)
    for path in [*out.glob("img0*"), out / RECORD_NAME, tmp_path / "m.skops"]:
        assert path.stat().st_mode & 0o777 == 0o644, path


@pytest.mark.slow
def test_saved_model_predicts_new_images_without_refitting(tmp_path, vit_forwards):
    photos = tmp_path / "photos"
    save_scenes(photos, 6)
    model = tmp_path / "model.skops"
    assert main(["segment", str(photos), "-o", str(tmp_path / "a"),
                 "--save-model", str(model), "--no-cache", *FAST]) == 0
    new = tmp_path / "new"
    save_scenes(new, 2, random_state=9, prefix="new")
    seen = len(vit_forwards)
    out = tmp_path / "b"
    assert main(["segment", str(new), "-o", str(out), "--load-model", str(model), "--no-cache",
                 "--device", "cpu", "-q"]) == 0
    assert n_images_through_vit(vit_forwards[seen:]) == 2
    assert len(list(out.glob("*.png"))) == 2
    assert not (out / ".skseg-features").exists()  # --no-cache honoured for a loaded model
    # More images predicted with the same model keep the masks already there.
    save_scenes(new, 3, random_state=9, prefix="new")
    stamp = (out / "new0.png").stat().st_mtime_ns
    assert main(["segment", str(new), "-o", str(out), "--load-model", str(model),
                 "-q"]) == 0
    assert (out / "new0.png").stat().st_mtime_ns == stamp and (out / "new2.png").is_file()


def test_save_model_never_overwrites_and_never_loses_the_masks(tmp_path, monkeypatch,
                                                               capsys):
    photos = tmp_path / "photos"
    save_scenes(photos, 3)
    model = tmp_path / "model.skops"
    model.write_bytes(b"precious")
    argv = ["segment", str(photos), "-o", str(tmp_path / "out"), "--save-model", str(model),
            *FAST]
    assert main(argv) == 2
    assert model.read_bytes() == b"precious" and "already exists" in capsys.readouterr().err

    def full_disk(pipeline, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(skseg._cli.segment, "save_model", full_disk)
    assert main([*argv, "--force"]) == 2
    err = capsys.readouterr().err
    assert "masks are written" in err and "No space left" in err
    assert len(list((tmp_path / "out").glob("*.png"))) == 3


class _Planted:
    def __reduce__(self):
        return (open, ("/dev/null",))


@pytest.mark.parametrize("content", ["garbage", "pickle", "joblib", "zip", "other skops"])
def test_load_model_refuses_anything_but_a_saved_skseg_model(content, tmp_path, capsys):
    import zipfile

    import joblib
    import skops.io
    from sklearn.linear_model import LinearRegression

    photos = tmp_path / "photos"
    save_scenes(photos, 2)
    path = tmp_path / "model.bin"
    if content == "garbage":
        path.write_bytes(b"\x00\x01 not a model")
    elif content == "pickle":
        path.write_bytes(pickle.dumps(_Planted()))
    elif content == "joblib":
        joblib.dump({"seg": _Planted()}, path)
    elif content == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("schema.json", "{}")
    else:
        path.write_bytes(skops.io.dumps(LinearRegression()))
    assert main(["segment", str(photos), "-o", str(tmp_path / "out"), "--load-model",
                 str(path), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("skseg: error: --load-model") and "not a model saved by" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # two whole runs
def test_load_model_refuses_options_it_would_ignore(tmp_path, capsys):
    photos = tmp_path / "photos"
    save_scenes(photos, 3)
    model = tmp_path / "m.skops"
    assert main(["segment", str(photos), "-o", str(tmp_path / "a"), "--save-model",
                 str(model), *FAST]) == 0
    assert main(["segment", str(photos), "-o", str(tmp_path / "b"), "--load-model",
                 str(model), "--n-classes", "5", "--facet=value", "-q"]) == 2
    err = capsys.readouterr().err
    assert "--facet, --n-classes cannot be used with --load-model" in err


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """The tiny model's random weights as a timm safetensors file."""
    from safetensors.torch import save_file

    from skseg._weights import get_model

    model = get_model(TINY_MODEL, pretrained=False, weights=None, device="cpu")
    path = tmp_path_factory.mktemp("weights") / "vits16.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return path


@pytest.mark.slow
def test_relative_weights_are_resolved_when_the_model_is_saved(weights_file, tmp_path,
                                                               monkeypatch):
    photos = tmp_path / "photos"
    save_scenes(photos, 3)
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "vits16.safetensors").symlink_to(weights_file)
    monkeypatch.chdir(tmp_path / "w")
    options = [o for o in FAST if o != "--random-weights"]
    assert main(["segment", str(photos), "-o", str(tmp_path / "a"), "--weights",
                 "vits16.safetensors", "--save-model", str(tmp_path / "m.skops"),
                 *options]) == 0
    monkeypatch.chdir(tmp_path)
    assert main(["segment", str(photos), "-o", str(tmp_path / "b"), "--load-model",
                 "m.skops", "-q"]) == 0
    for name in ("img0.png", "img1.png", "img2.png"):
        np.testing.assert_array_equal(read_mask(tmp_path / "a" / name),
                                      read_mask(tmp_path / "b" / name))


@pytest.mark.slow  # builds every DINO ViT family on the meta device to word the error
def test_weights_of_another_architecture_are_one_line(weights_file, tmp_path, capsys):
    photos = tmp_path / "photos"
    save_scenes(photos, 2)
    assert main(["segment", str(photos), "-o", str(tmp_path / "out"), "--model",
                 "vit_tiny_patch16_224", "--weights", str(weights_file), "--device", "cpu",
                 "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("skseg: error:") and len(err.strip().splitlines()) == 1
    assert "vits16.safetensors" in err and "vit_tiny_patch16_224" in err


def _record_text(fit):
    return json.dumps({"format": "skseg-run-v1", "fit": fit, "outputs": {}, "skipped": {}})


@pytest.mark.parametrize("content", [
    "{not json", '{"format": "skseg-run-v1", "fit": {}, "outputs": [], "skipped": {}}', "[]",
    _record_text({"parameters": 5, "training": [], "skseg": "0"}),
    _record_text({"parameters": {}, "training": [[1]], "skseg": "0"}),
    _record_text({"model": 5, "skseg": "0"}),
    "[" * 100_000 + "]" * 100_000,
    _record_text({"parameters": {}, "training": [], "skseg": "0"})[:-1]
    + ', "deep": ' + "[" * 100_000 + "]" * 100_000 + "}",
], ids=["not json", "outputs a list", "a list", "parameters a number", "training of lists",
        "model a number", "nested", "nested inside"])
@pytest.mark.slow
def test_a_damaged_record_is_one_line_and_force_recovers(content, tmp_path, capsys):
    photos = tmp_path / "photos"
    save_scenes(photos, 2)
    out = tmp_path / "out"
    out.mkdir()
    (out / RECORD_NAME).write_text(content)
    assert main(["segment", str(photos), "-o", str(out), *FAST]) == 2
    err = capsys.readouterr().err
    assert RECORD_NAME in err and len(err.strip().splitlines()) == 1
    assert main(["segment", str(photos), "-o", str(out), "--force", *FAST]) == 0
    assert json.loads((out / RECORD_NAME).read_text())["outputs"].keys() == {
        "img0.png", "img1.png"}


@pytest.mark.slow
def test_masks_of_another_skseg_version_are_not_kept(tmp_path, capsys):
    photos = tmp_path / "photos"
    save_scenes(photos, 2)
    out = tmp_path / "out"
    assert main(["segment", str(photos), "-o", str(out), *FAST]) == 0
    record = json.loads((out / RECORD_NAME).read_text())
    record["fit"]["skseg"] = "0.0.1"
    (out / RECORD_NAME).write_text(json.dumps(record))
    assert main(["segment", str(photos), "-o", str(out), *FAST]) == 2
    assert "skseg was version 0.0.1" in capsys.readouterr().err


@pytest.mark.slow
def test_workers_give_the_masks_of_a_local_run(photo_folder, tmp_path):
    pytest.importorskip("distributed")
    local, cluster = tmp_path / "local", tmp_path / "cluster"
    assert main(["segment", str(photo_folder), "-o", str(local), *FAST]) == 0
    assert main(["segment", str(photo_folder), "-o", str(cluster), "--workers", "2",
                 *FAST]) == 0
    names = sorted(p.relative_to(local) for p in local.rglob("*.png"))
    assert names and names == sorted(p.relative_to(cluster) for p in cluster.rglob("*.png"))
    for name in names:
        np.testing.assert_array_equal(np.array(Image.open(local / name)),
                                      np.array(Image.open(cluster / name)))


def test_a_cluster_without_dask_is_one_line(photo_folder, tmp_path, monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_distributed(name, *args, **kwargs):
        if name.split(".")[0] == "distributed":
            raise ImportError("No module named 'distributed'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_distributed)
    assert main(["segment", str(photo_folder), "-o", str(tmp_path / "o"), "--workers", "2",
                 *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and 'pip install "skseg[dask]"' in err


def test_a_scheduler_that_does_not_answer_is_one_line_within_the_timeout(
        photo_folder, tmp_path, capsys):
    pytest.importorskip("distributed")
    argv = ["segment", str(photo_folder), "-o", str(tmp_path / "o"), *FAST,
            "--scheduler", "tcp://127.0.0.1:9"]  # the discard port: nothing listens
    assert build_parser().parse_args(argv).connect_timeout == 10
    started = time.monotonic()
    assert main([*argv, "--connect-timeout", "1"]) == 2
    assert time.monotonic() - started < 8
    err = capsys.readouterr().err.strip()
    assert err == ("skseg: error: no Dask scheduler answered at tcp://127.0.0.1:9 within "
                   "1 s.")
