"""Decoding images: value ranges per mode, large images reduced before they
become floats, and the ViT's input equal to the normalised pixels."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import skseg
from skseg._image_decoding import load_rgb, normalised_pixels

from ._image_helpers import grey as _grey
from ._image_helpers import scene as _scene
from ._image_helpers import vit as _vit
from .conftest import TINY_MODEL


def _as_rgb(grey_float):
    return np.repeat(grey_float[..., None], 3, axis=2)


GREY = _grey()


@pytest.mark.parametrize(
    "make, expected",
    [
        # 8-bit modes: divided by 255.
        (lambda: Image.fromarray(GREY), _as_rgb(GREY / 255)),
        (lambda: Image.fromarray(GREY > 127), _as_rgb((GREY > 127).astype(float))),
        (lambda: Image.fromarray(GREY).convert("LA"), _as_rgb(GREY / 255)),
        # 16-bit modes: divided by 65535.
        (lambda: Image.fromarray(GREY.astype(np.uint16) * 257), _as_rgb(GREY / 255)),
        # Mode "I" (32-bit): by the smallest of 1, 255, 65535 holding its values...
        (lambda: Image.fromarray(GREY).convert("I"), _as_rgb(GREY / 255)),
        (lambda: Image.fromarray(GREY.astype(np.int32) * 257), _as_rgb(GREY / 255)),
        # ... or stretched from its own range when no such range holds it.
        (lambda: Image.fromarray(GREY.astype(np.int32) * 1000 - 7),
         _as_rgb((GREY - GREY.min()) / (GREY.max() - GREY.min()))),
        # Mode "F": floats in [0, 1] are taken as they are (not 255 times too dark).
        (lambda: Image.fromarray(GREY.astype(np.float32) / 255), _as_rgb(GREY / 255)),
        (lambda: Image.fromarray(GREY).convert("F"), _as_rgb(GREY / 255)),
        (lambda: Image.fromarray(GREY.astype(np.float32) / 255 - 0.5),
         _as_rgb((GREY - GREY.min()) / (GREY.max() - GREY.min()))),
    ],
    ids=["L", "1", "LA", "I;16", "I-8bit", "I-16bit", "I-other", "F-unit", "F-8bit", "F-signed"],
)
def test_each_mode_is_read_by_its_real_range(make, expected, tmp_path):
    image = make()
    np.testing.assert_allclose(load_rgb(image), expected, atol=1e-5)
    # The same from a file: TIFF keeps every one of these modes.
    path = tmp_path / "image.tiff"
    image.save(path)
    np.testing.assert_allclose(load_rgb(path), expected, atol=1e-5)


@pytest.mark.parametrize("mode", ["P", "PA", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"])
def test_colour_modes_are_read_as_their_rgb(mode):
    rgb = Image.fromarray(_scene(40, 56))
    image = rgb.convert(mode)
    expected = np.asarray(image.convert("RGB"), dtype=np.float32) / 255
    np.testing.assert_allclose(load_rgb(image), expected, atol=1e-6)


def test_float_tiff_gives_the_features_of_its_8bit_image(tmp_path):
    scene = _scene(48, 64)
    paths = []
    for k in range(3):
        paths.append(tmp_path / f"channel{k}.tiff")
        Image.fromarray(scene[..., k].astype(np.float32) / 255).save(paths[-1])
    grey = [scene[..., k] for k in range(3)]
    from_float, from_uint8 = (_vit().fit().transform(X) for X in (paths, grey))
    for a, b in zip(from_float, from_uint8):
        np.testing.assert_allclose(a.patches, b.patches, atol=1e-4)


def test_large_images_are_reduced_like_a_direct_resize(tmp_path):
    scene = _scene(1200, 1500)
    path = tmp_path / "large.png"
    Image.fromarray(scene).save(path)
    reduced = load_rgb(path, (64, 80))
    direct = F.interpolate(
        torch.from_numpy(scene.astype(np.float32) / 255).permute(2, 0, 1)[None],
        size=(64, 80), mode="bilinear", antialias=True, align_corners=False,
    )[0].permute(1, 2, 0).numpy()
    assert reduced.shape == (64, 80, 3)
    assert np.abs(reduced - direct).mean() < 0.01
    # Every kind of input takes the same reduction, so they agree exactly.
    np.testing.assert_array_equal(load_rgb(scene, (64, 80)), reduced)
    np.testing.assert_allclose(
        load_rgb(torch.from_numpy(scene).permute(2, 0, 1), (64, 80)), reduced, atol=1e-6
    )
    np.testing.assert_allclose(load_rgb(scene.astype(np.uint16) * 257, (64, 80)), reduced,
                               atol=1e-5)


def test_normalised_pixels_equal_the_normalised_load_rgb_bit_for_bit(tmp_path):
    # The ViT's input skips load_rgb's copy back to channels last and the
    # temporaries of a normalisation: the values must not move by one bit.
    scene = _scene(375, 500)
    photo = tmp_path / "photo.jpg"
    Image.fromarray(scene).save(photo, quality=90)
    large = tmp_path / "large.png"  # averaged over boxes before the resize
    Image.fromarray(_scene(900, 1300)[..., 0]).save(large)
    mean = torch.tensor((0.485, 0.456, 0.406)).view(3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(3, 1, 1)
    images = [photo, large, scene, scene.astype(np.uint16) * 257, _grey((50, 70)),
              torch.from_numpy(scene[:90, :60].astype(np.float32) / 255).permute(2, 0, 1)]
    for image in images:
        for size in [(224, 224), (64, 96)]:
            reference = (torch.from_numpy(load_rgb(image, size)).permute(2, 0, 1) - mean) / std
            got = normalised_pixels(image, size, mean, std)
            assert got.shape == (3, *size) and got.dtype == torch.float32
            assert torch.equal(got, reference), (image if isinstance(image, Path) else size)
    # At its own size, an array is read into pixels of their own.
    array = scene[:64, :96].copy()
    normalised_pixels(array, (64, 96), mean, std)
    np.testing.assert_array_equal(array, scene[:64, :96])
    assert load_rgb(photo, (64, 96)).flags.c_contiguous


_PEAK_MEMORY = """
import resource, sys
import numpy as np
from skseg import ViTPatchTransformer
vit = ViTPatchTransformer({model!r}, pretrained=False, image_size=64, device="cpu").fit()
vit.transform([np.zeros((64, 64, 3), np.uint8)])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
features = vit.transform([sys.argv[1]])
assert features[0].image == sys.argv[1]
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


def _peak_growth(path):
    """Bytes the peak memory grew by while one image was transformed (own process)."""
    root = Path(skseg.__file__).parent.parent
    result = subprocess.run(
        [sys.executable, "-c", _PEAK_MEMORY.format(model=TINY_MODEL), str(path)],
        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(root)),
        check=True, timeout=300,
    )
    return int(result.stdout.split()[-1])


@pytest.mark.slow
def test_large_images_never_become_floats_at_full_size(tmp_path):
    height, width = 3000, 4000
    scene = _scene(height, width)
    png, jpeg = tmp_path / "large.png", tmp_path / "large.jpg"
    Image.fromarray(scene).save(png, compress_level=1)
    Image.fromarray(scene).save(jpeg, quality=90)
    full_float = height * width * 3 * 4
    # A PNG is decoded once, at full size, as 8-bit pixels; floats only after reduction.
    assert _peak_growth(png) < full_float * 0.75
    # A JPEG decodes at 1/8 scale: not even its 8-bit pixels exist at full size.
    assert _peak_growth(jpeg) < height * width * 3 / 2


def test_a_large_image_reads_the_same_whatever_the_working_memory():
    import sklearn

    rng = np.random.default_rng(0)
    big = (rng.random((900, 1200, 3)) * 255).astype(np.uint8)
    expected = load_rgb(big, size=(100, 150))
    # Strips of a few rows instead of the whole image at once.
    with sklearn.config_context(working_memory=0.05):
        np.testing.assert_array_equal(load_rgb(big, size=(100, 150)), expected)
        np.testing.assert_array_equal(load_rgb(Image.fromarray(big), size=(100, 150)),
                                      expected)
