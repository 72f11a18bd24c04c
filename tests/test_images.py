"""Reading images: value ranges per mode, tensors and batches, validation that
does not decode full pixels, and bounded memory for large images."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, JpegImagePlugin, PngImagePlugin

import skseg
from skseg import ViTPatchTransformer
from skseg._images import (
    ImageError,
    ImageTooSmallError,
    check_each_image,
    check_images,
    load_rgb,
    normalised_pixels,
)

from .conftest import TINY_MODEL


def _vit(**kwargs):
    params = dict(model=TINY_MODEL, pretrained=False, image_size=64, device="cpu")
    params.update(kwargs)
    return ViTPatchTransformer(**params)


def _grey(shape=(40, 56)):
    rng = np.random.default_rng(3)
    return (rng.random(shape) * 255).astype(np.uint8)


def _scene(height, width):
    """A smooth picture with edges, like a photo and unlike noise."""
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    rgb = np.stack([x, y, 0.5 + 0.5 * np.sin(9 * x * y)], axis=2)
    rgb[(x - 0.5) ** 2 + (y - 0.4) ** 2 < 0.05] = (0.9, 0.2, 0.1)
    return (rgb * 255).astype(np.uint8)


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


@pytest.mark.slow
def test_tensors_and_batches_give_the_features_of_arrays(rgb_images):
    images = [image[:48, :48] for image in rgb_images]
    reference = _vit().fit().transform(images)
    batch = np.stack(images)  # (N, H, W, C)
    chw = torch.from_numpy(batch).permute(0, 3, 1, 2)
    inputs = {
        "array batch (N, H, W, C)": batch,
        "tensor batch (N, C, H, W)": chw,
        "tensor batch (N, H, W, C)": torch.from_numpy(batch),
        "CHW uint8 tensors": list(chw),
        "CHW float tensors": [t.float() / 255 for t in chw],
        "HWC float tensors": [torch.from_numpy(i).float() / 255 for i in images],
        "bfloat16 tensors": [(t.float() / 255).to(torch.bfloat16) for t in chw],
    }
    for name, X in inputs.items():
        features = _vit().fit().transform(X)
        atol = 0.05 if name.startswith("bfloat16") else 1e-4
        for a, b in zip(features, reference):
            np.testing.assert_allclose(a.patches, b.patches, atol=atol, err_msg=name)
    features = _vit().fit().transform(batch)
    assert np.shares_memory(features[2].image, batch)  # a view of the batch, not a copy
    grey = torch.from_numpy(_grey((48, 48)))[None]  # (1, H, W)
    assert _vit().fit().transform([grey])[0].grid_shape == (4, 4)


@pytest.mark.parametrize(
    "X, error, message",
    [
        ([torch.zeros(3, 64, 3, dtype=torch.uint8)], ImageError, "channels could be first or last"),
        ([torch.zeros(5, 64, 64, dtype=torch.uint8)], ImageError, r"shape \(5, 64, 64\)"),
        ([torch.zeros(64, 64, dtype=torch.int64)], TypeError, "dtype int64"),
        ([torch.full((3, 32, 32), 2.0)], ImageError, "outside"),
        (np.zeros((2, 3, 64, 64), np.uint8), ValueError, r"\(N, H, W, 3\)"),
        (torch.zeros(3, 64, 64), TypeError, "not a single image"),
        (np.zeros((64, 64, 3), np.uint8), TypeError, r"pass \[image\]"),
    ],
)
def test_ambiguous_or_wrong_layouts_are_refused(X, error, message):
    with pytest.raises(error, match=message):
        _vit().fit().transform(X)


def test_an_image_smaller_than_a_patch_is_reported_per_image(tmp_path):
    small, good = tmp_path / "small.png", tmp_path / "good.png"
    Image.fromarray(_grey((10, 40))).save(small)
    Image.fromarray(_grey((40, 40))).save(good)
    results = check_each_image([good, small], min_side=16)
    assert results[0] == (40, 40)
    assert isinstance(results[1], ImageTooSmallError) and isinstance(results[1], ValueError)
    assert "small.png" in str(results[1]) and "smaller than one 16 x 16 patch" in str(results[1])
    with pytest.raises(ImageTooSmallError, match=r"image 1 \(.*small.png'\)"):
        _vit().fit().transform([good, small])


def test_validation_reads_headers_not_full_pixels(tmp_path, monkeypatch):
    png, jpeg, turned = tmp_path / "a.png", tmp_path / "b.jpg", tmp_path / "turned.png"
    Image.fromarray(_scene(400, 640)).save(png)
    Image.fromarray(_scene(400, 640)).save(jpeg)
    upright = Image.fromarray(_scene(40, 64))
    exif = upright.getexif()
    exif[0x0112] = 6  # shown turned by 90 degrees
    upright.save(turned, exif=exif)

    def no_png_decoding(self):
        raise AssertionError("a PNG was decoded to check it")

    decoded_sizes = []
    real_jpeg_load = JpegImagePlugin.JpegImageFile.load

    def recording_jpeg_load(self):
        decoded_sizes.append(self.size)
        return real_jpeg_load(self)

    with monkeypatch.context() as patch:
        patch.setattr(PngImagePlugin.PngImageFile, "load", no_png_decoding)
        patch.setattr(JpegImagePlugin.JpegImageFile, "load", recording_jpeg_load)
        assert check_images([png, jpeg, turned]) == [(400, 640), (400, 640), (64, 40)]
    assert decoded_sizes == [(80, 50)]  # the JPEG at 1/8 scale
    assert load_rgb(turned).shape == (64, 40, 3)
    # Reading the header only still finds damaged files.
    for path in (png, jpeg):
        damaged = tmp_path / f"damaged{path.suffix}"
        data = path.read_bytes()
        damaged.write_bytes(data[: len(data) // 2])
        with pytest.raises(ImageError, match=r"image 0 \(.*damaged.*cannot be read"):
            check_images([damaged])
    nan = tmp_path / "nan.tiff"
    values = np.zeros((32, 32), np.float32)
    values[4, 4] = np.nan
    Image.fromarray(values).save(nan)
    with pytest.raises(ImageError, match="NaN"):
        check_images([nan])


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
