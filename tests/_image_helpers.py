"""Shared pieces of the image tests: a small ViT and synthetic pictures."""

import numpy as np

from skseg import ViTPatchTransformer

from .conftest import TINY_MODEL


def vit(**kwargs):
    params = dict(model=TINY_MODEL, pretrained=False, image_size=64, device="cpu")
    params.update(kwargs)
    return ViTPatchTransformer(**params)


def grey(shape=(40, 56)):
    rng = np.random.default_rng(3)
    return (rng.random(shape) * 255).astype(np.uint8)


def scene(height, width):
    """A smooth picture with edges, like a photo and unlike noise."""
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    rgb = np.stack([x, y, 0.5 + 0.5 * np.sin(9 * x * y)], axis=2)
    rgb[(x - 0.5) ** 2 + (y - 0.4) ** 2 < 0.05] = (0.9, 0.2, 0.1)
    return (rgb * 255).astype(np.uint8)

