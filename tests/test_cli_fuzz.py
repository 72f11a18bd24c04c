"""Broken files, odd image modes and hostile paths through ``skseg segment``.

Each case puts one awkward thing beside two good photographs and checks what
a user relies on: the exit status, a one-line message naming the file, no
traceback, nothing written outside OUTDIR and no input modified.
"""

import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from skseg._cli import main

from ._cli_helpers import FAST, save_scenes, tree_state


def _png_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _bomb_png():
    """A valid PNG header claiming 100000 x 100000 pixels."""
    data = bytearray(_png_bytes(Image.new("L", (1, 1))))
    ihdr = struct.pack(">II", 100_000, 100_000) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def _photo(mode, size=(64, 48)):
    rng = np.random.default_rng(0)
    rgb = Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8))
    if mode == "I;16":
        return Image.fromarray((rng.random(size[::-1]) * 65535).astype(np.uint16))
    if mode == "I":
        return Image.fromarray((rng.random(size[::-1]) * 2**20).astype(np.int32), mode="I")
    if mode == "F":
        return Image.fromarray(rng.random(size[::-1]).astype(np.float32), mode="F")
    return rgb.convert(mode)


def _write(folder, name, make):
    path = folder / name
    if isinstance(make, bytes):
        path.write_bytes(make)
    else:
        make(path)
    return path


def _save(mode, fmt="PNG", **kwargs):
    return lambda path: _photo(mode).save(path, format=fmt, **kwargs)


def _jpeg_bytes():
    buffer = io.BytesIO()
    _photo("RGB").save(buffer, format="JPEG")
    return buffer.getvalue()


def _rotated_jpeg(path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    _photo("RGB").save(path, format="JPEG", exif=exif.tobytes())


def _animated_gif(path):
    frames = [_photo("P"), _photo("P").rotate(90)]
    frames[0].save(path, save_all=True, append_images=frames[1:])


def _symlink_loop(folder):
    (folder / "sub").mkdir()
    (folder / "sub" / "loop").symlink_to(folder, target_is_directory=True)


# name, what to create in the photo folder, expected exit status, text the
# message must hold ("" when all is well), output name expected ("" when none).
BROKEN = [
    ("garbage.jpg", b"not an image at all", 1, "garbage.jpg", ""),
    ("empty.png", b"", 1, "empty.png", ""),
    ("truncated.png", _png_bytes(_photo("RGB"))[:200], 1, "truncated.png", ""),
    ("truncated.jpg", _jpeg_bytes()[:300], 1, "truncated.jpg", ""),
    ("bomb.png", _bomb_png(), 1, "bomb.png", ""),
    ("noise.tif", os.urandom(64), 1, "noise.tif", ""),
    ("tiny.png", lambda p: Image.new("RGB", (8, 8)).save(p), 1, "tiny.png", ""),
    ("thin.png", lambda p: Image.new("RGB", (300, 4)).save(p), 1, "thin.png", ""),
]
MODES = [
    ("bilevel.png", _save("1"), 0, "", "bilevel.png"),
    ("grey.png", _save("L"), 0, "", "grey.png"),
    ("grey-alpha.png", _save("LA"), 0, "", "grey-alpha.png"),
    ("palette.png", _save("P", transparency=0), 0, "", "palette.png"),
    ("rgba.png", _save("RGBA"), 0, "", "rgba.png"),
    ("cmyk.jpg", _save("CMYK", "JPEG"), 0, "", "cmyk.png"),
    ("sixteen.png", _save("I;16"), 0, "", "sixteen.png"),
    ("int32.tif", _save("I", "TIFF"), 0, "", "int32.png"),
    ("float.tif", _save("F", "TIFF"), 0, "", "float.png"),
    ("jpeg-named.png", _jpeg_bytes(), 0, "", "jpeg-named.png"),
    ("rotated.jpg", _rotated_jpeg, 0, "", "rotated.png"),
    ("animated.gif", _animated_gif, 0, "", "animated.png"),
]
PATHS = [
    ("ça va été.png", _save("RGB"), 0, "", "ça va été.png"),
    ("new\nline.png", _save("RGB"), 0, "", "new\nline.png"),
    ("-rf.png", _save("RGB"), 0, "", "-rf.png"),
    ("folder.png", lambda p: p.mkdir(), 0, "", ""),
    ("pipe.png", lambda p: os.mkfifo(p), 0, "", ""),
    ("dead.png", lambda p: p.symlink_to(p.parent / "missing.png"), 0, "", ""),
    ("outside.png", lambda p: p.symlink_to(p.parent.parent / "elsewhere" / "e.png"), 0, "",
     "outside.png"),
    ("loop", lambda p: _symlink_loop(p.parent), 0, "", ""),
]
HOSTILE_ARGUMENTS = ["dotdot glob", "output is the input", "output inside the input",
                     "linked output folder", "pipe as input", "dash glob"]


def _snapshot_outside(root, out):
    return {path: state for path, state in tree_state(root).items()
            if not (path == out or path.is_relative_to(out))}


def _check_messages(err, fragment):
    lines = err.strip().splitlines()
    assert "Traceback" not in err
    assert all(line.startswith("skseg:") for line in lines), err
    if fragment:
        # One line per problem, naming the file.
        assert any(fragment in line for line in lines), err


@pytest.fixture
def scene(tmp_path):
    photos = tmp_path / "photos"
    save_scenes(photos, 2)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _photo("RGB").save(elsewhere / "e.png")
    return photos, tmp_path / "out"


@pytest.mark.parametrize("name, make, status, fragment, output", BROKEN + MODES + PATHS,
                         ids=[case[0].replace("\n", "\\n") for case in BROKEN + MODES + PATHS])
@pytest.mark.slow
def test_awkward_files_beside_good_photos(name, make, status, fragment, output, scene,
                                         tmp_path, capsys):
    photos, out = scene
    _write(photos, name, make)
    before = _snapshot_outside(tmp_path, out)
    assert main(["segment", str(photos), "-r", "-o", str(out), *FAST]) == status
    _check_messages(capsys.readouterr().err, fragment)
    assert _snapshot_outside(tmp_path, out) == before
    written = {p.relative_to(out).as_posix() for p in out.rglob("*.png")}
    assert {"img0.png", "img1.png"} <= written
    assert written - {"img0.png", "img1.png"} == ({output} if output else set())
    if output:
        with Image.open(out / output) as mask:
            assert mask.mode == "P"


@pytest.mark.parametrize("case", HOSTILE_ARGUMENTS)
@pytest.mark.slow
def test_hostile_arguments(case, scene, tmp_path, capsys, monkeypatch):
    photos, out = scene
    monkeypatch.chdir(tmp_path)
    (photos / "sub1").mkdir()
    argv = ["segment", str(photos), "-r"]
    status, fragment = 0, ""
    if case == "dotdot glob":
        argv = ["segment", "photos/sub*/../../elsewhere/*.png"]
    elif case == "output is the input":
        out, status, fragment = photos, 2, str(photos)
    elif case == "output inside the input":
        out = photos / "masks"
    elif case == "linked output folder":
        (photos / "sub1" / "x.png").write_bytes((photos / "img0.png").read_bytes())
        out.mkdir()
        (out / "sub1").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
        status, fragment = 2, "outside"
    elif case == "pipe as input":
        os.mkfifo(tmp_path / "pipe.png")
        argv = ["segment", "pipe.png"]
        status, fragment = 2, "pipe.png"
    elif case == "dash glob":
        (photos / "-x.png").write_bytes((photos / "img0.png").read_bytes())
        argv = ["segment", "photos/-*.png"]
    before = _snapshot_outside(tmp_path, out)
    assert main([*argv, "-o", str(out), *FAST]) == status
    _check_messages(capsys.readouterr().err, fragment)
    assert _snapshot_outside(tmp_path, out) == before
    if case == "dotdot glob":
        assert (out / "e.png").is_file()
    if case == "output inside the input":
        assert sorted(p.name for p in out.glob("*.png")) == ["img0.png", "img1.png"]
        # A second run does not read the first run's masks as photos: were they
        # read, the training set would differ and the run would be refused.
        assert main(["segment", str(photos), "-r", "-o", str(out), *FAST]) == 0
