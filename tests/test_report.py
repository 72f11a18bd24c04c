"""skseg report: the class gallery page, its files and links, and how it
looks in a real browser."""

import hashlib
import html.parser
import json
import os
import shutil
import subprocess
import time
import urllib.parse

import numpy as np
import pytest
from PIL import Image

from skseg._cli import main
from skseg._io import save_label_png
from skseg._report import write_report
from skseg._run_record import describe_fit, new_record, write_record
from skseg.io import cluster_palette

from ._cli_helpers import FAST, save_scenes, tree_state

# Masks planted with known shares: name -> classes painted in it.
_ODD_NAME = "odd name #1 & 'x' 50%.png"
_PLANTED = {"a.png": (1, 2), "sub/b.png": (2,), _ODD_NAME: (3,), "c.png": ()}


def _plant(tmp_path):
    """An OUTDIR as skseg segment leaves it: masks, their images and the record."""
    photos, out = tmp_path / "photos", tmp_path / "out"
    record = new_record(describe_fit(parameters={}, training=[]))
    rng = np.random.default_rng(0)
    for name, labels in _PLANTED.items():
        mask = np.zeros((40, 60), np.uint8)
        for k, label in enumerate(labels):
            mask[5 + 15 * k:15 + 15 * k, 10:30 + 10 * label] = label
        image = photos / name
        image.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(image)
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        save_label_png(mask, out / name)
        record["outputs"][name] = {"input": os.fspath(image), "overlay": False,
                                   "sha1": hashlib.sha1(image.read_bytes()).hexdigest()}
    write_record(out, record)
    return out


class _Page(html.parser.HTMLParser):
    """The links, pictures, section ids and text of a page."""

    def __init__(self):
        super().__init__()
        self.links, self.sections, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.links.append(attrs["src"])
        elif tag == "a" and not attrs["href"].startswith("#"):
            self.links.append(attrs["href"])
        if tag == "section":
            self.sections.append(attrs["id"])

    def handle_data(self, data):
        self.text.append(data)


def _parse(index):
    page = _Page()
    page.feed(index.read_text(encoding="utf-8"))
    return page


def _check_links(index):
    """Every picture and link of the page is a file inside its folder."""
    report = index.parent.resolve()
    page = _parse(index)
    assert page.links
    for link in page.links:
        assert "://" not in link and not link.startswith("/"), link
        target = (report / urllib.parse.unquote(link)).resolve()
        assert target.is_relative_to(report) and target.is_file(), link
    return page


def test_a_section_per_class_with_its_shares_and_links_that_resolve(tmp_path):
    out = _plant(tmp_path)
    index, template_written, labels = write_report(out, quiet=True)
    assert index == out / "report" / "index.html" and labels == [1, 2, 3]
    page = _check_links(index)
    assert page.sections == ["class-1", "class-2", "class-3"]
    text = " ".join(" ".join(page.text).split())
    # Class 2: 10 x 40 pixels in a.png, 10 x 40 in sub/b.png, of 4 x 2400 pixels.
    assert "8.3% of the pixels, in 2 of 4 images (50.0%)" in text
    assert "in 1 of 4 images (25.0%)" in text
    assert _ODD_NAME in text  # captions, unescaped by the parser: escaped in the file
    source = index.read_text(encoding="utf-8")
    assert "odd name #1 &amp; &#x27;x&#x27; 50%.png" in source
    assert "images/odd%20name%20%231%20%26%20%27x%27%2050%25.jpg" in source
    # Overlays of every image; example crops of every class.
    assert sorted(p.relative_to(out / "report").as_posix()
                  for p in (out / "report" / "images").rglob("*.jpg")) == [
        "images/a.jpg", "images/c.jpg", "images/odd name #1 & 'x' 50%.jpg",
        "images/sub/b.jpg"]
    assert len(list((out / "report" / "classes").glob("2-*.jpg"))) == 2


def test_a_template_is_written_once_and_the_names_appear(tmp_path):
    out = _plant(tmp_path)
    before = tree_state(out)
    write_report(out, quiet=True)
    names_file = out / "classes.json"
    assert json.loads(names_file.read_text()) == {"1": "class 1", "2": "class 2",
                                                  "3": "class 3"}
    assert "unnamed" in (out / "report" / "index.html").read_text()
    names_file.write_text(json.dumps({"1": "cat & <dog>", "2": "grass", "9": "kite"}))
    _, template_written, _ = write_report(out, quiet=True)
    assert not template_written
    assert json.loads(names_file.read_text())["1"] == "cat & <dog>"  # never overwritten
    page = _parse(out / "report" / "index.html")
    text = " ".join(page.text)
    assert "cat & <dog>" in text and "grass" in text and "class 3 (unnamed)" in text
    assert "9" in text.split("names ids no mask holds:")[1]
    # Only the report folder and classes.json were written (and the lock of
    # the run record); nothing else changed.
    after = tree_state(out)
    assert {path for path in after if path not in before} <= {
        path for path in after if path == names_file or path.is_relative_to(out / "report")
        or path.name == ".skseg-run.lock"}
    assert {path: after[path] for path in before} == before


def test_a_rerun_drops_pictures_of_images_no_longer_there(tmp_path):
    out = _plant(tmp_path)
    write_report(out, quiet=True)
    record = json.loads((out / ".skseg-run.json").read_text())
    del record["outputs"]["a.png"]
    write_record(out, record)
    mine = out / "report" / "notes.txt"
    mine.write_text("kept")
    write_report(out, quiet=True)
    assert not (out / "report" / "images" / "a.jpg").exists()
    assert (out / "report" / "images" / "c.jpg").exists() and mine.read_text() == "kept"
    _check_links(out / "report" / "index.html")


def test_a_missing_image_shows_its_mask_on_grey(tmp_path):
    out = _plant(tmp_path)
    (tmp_path / "photos" / "a.png").unlink()
    write_report(out, quiet=True)
    assert "1 of the images could not be read" in (out / "report" / "index.html").read_text()
    # An image changed since it was segmented is not drawn under the mask either.
    changed = next((tmp_path / "photos").rglob("b.png"))
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(changed)
    write_report(out, quiet=True)
    assert "2 of the images could not be read" in (out / "report" / "index.html").read_text()


@pytest.mark.parametrize("case", ["no record", "masks in report", "bad classes.json",
                                  "report is a file"])
def test_what_cannot_be_reported_is_one_line(case, tmp_path, capsys):
    out = _plant(tmp_path)
    if case == "no record":
        (out / ".skseg-run.json").unlink()
    elif case == "masks in report":
        record = json.loads((out / ".skseg-run.json").read_text())
        record["outputs"]["report/x.png"] = record["outputs"]["a.png"]
        write_record(out, record)
    elif case == "bad classes.json":
        (out / "classes.json").write_text("[1, 2]")
    else:
        (out / "report").write_text("mine")
    assert main(["report", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("skseg: error:") and len(err.strip().splitlines()) == 1
    if case != "report is a file":
        assert not (out / "report").exists()


@pytest.mark.slow
def test_segment_then_report_from_the_command_line(tmp_path, capsys):
    photos = tmp_path / "photos"
    save_scenes(photos, 4)
    out = tmp_path / "out"
    assert main(["segment", str(photos), "-o", str(out), "--no-cache", *FAST]) == 0
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"Wrote {out / 'report' / 'index.html'}" in err
    assert f"Name the classes in {out / 'classes.json'}" in err
    page = _check_links(out / "report" / "index.html")
    found = sorted(int(label) for label in json.loads((out / "classes.json").read_text()))
    assert page.sections == [f"class-{label}" for label in found]
    assert main(["report", str(out), "-q", "--max-images", "1"]) == 0
    assert capsys.readouterr().err == ""
    assert len(list((out / "report" / "images").glob("*.jpg"))) == 1


def _browser():
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.mark.slow
@pytest.mark.skipif(_browser() is None, reason="no Chromium or Chrome on the PATH to render "
                                               "the report (apt-get install chromium)")
@pytest.mark.slow
def test_the_page_renders_in_a_headless_browser(tmp_path):
    out = _plant(tmp_path)
    (out / "classes.json").write_text(json.dumps({"1": "cat", "2": "grass", "3": "kite"}))
    index, _, labels = write_report(out, quiet=True)
    screenshot = tmp_path / "page.png"
    width, height = 900, 700
    command = [_browser(), "--headless", "--disable-gpu", "--hide-scrollbars",
               "--force-color-profile=srgb", "--force-device-scale-factor=1",
               f"--window-size={width},{height}", f"--screenshot={screenshot}",
               index.resolve().as_uri()]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.insert(1, "--no-sandbox")  # Chromium refuses to run as root otherwise
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, timeout=120,
                   env={**os.environ, "HOME": os.fspath(tmp_path)})
    print(f"chromium took {time.perf_counter() - started:.1f} s")
    with Image.open(screenshot) as png:
        assert png.format == "PNG" and png.size == (width, height)
        pixels = np.asarray(png.convert("RGB")).reshape(-1, 3)
    colours, counts = np.unique(pixels, axis=0, return_counts=True)
    assert len(colours) > 50  # text, pictures and swatches, not a blank page
    count_of = {tuple(colour): count for colour, count in zip(colours.tolist(), counts)}
    for label in labels:
        # Each class's swatches and section band, in its legend colour.
        assert count_of.get(tuple(cluster_palette()[label].tolist()), 0) > 200, label


def test_a_class_too_small_to_survive_shrinking_still_has_its_section(tmp_path):
    out = _plant(tmp_path)
    mask = np.zeros((1000, 60), np.uint8)
    mask[1, 1] = 5  # the page's pictures keep every other row: this one goes
    save_label_png(mask, out / "c.png")
    index, _, labels = write_report(out, quiet=True)
    assert labels == [1, 2, 3, 5] and "class-5" in _check_links(index).sections
    assert not list((out / "report" / "classes").glob("5-*.jpg"))
