"""Checking a list of images: per-image errors, and validation that reads
headers rather than full pixels."""

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin, PngImagePlugin

from skseg._image_checks import check_each_image, check_images
from skseg._image_decoding import load_rgb
from skseg._images import ImageError, ImageTooSmallError

from ._image_helpers import grey as _grey
from ._image_helpers import scene as _scene
from ._image_helpers import vit as _vit


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
