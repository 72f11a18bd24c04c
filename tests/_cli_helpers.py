"""Shared pieces of the command-line tests."""

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skseg.datasets import make_scenes

from .conftest import TINY_MODEL

FAST = ["--model", TINY_MODEL, "--random-weights", "--image-size", "64", "--n-classes", "2",
        "--refine", "none", "--device", "cpu", "-q"]


def save_scenes(folder, n_images, random_state=0, prefix="img"):
    images, _ = make_scenes(n_images=n_images, n_classes=2, image_size=(48, 64),
                            random_state=random_state)
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{prefix}{i}.png")
    return [folder / f"{prefix}{i}.png" for i in range(n_images)]


@pytest.fixture
def photo_folder(tmp_path):
    images, _ = make_scenes(n_images=6, n_classes=2, image_size=(48, 64), random_state=0)
    folder = tmp_path / "photos"
    (folder / "holiday").mkdir(parents=True)
    for i, image in enumerate(images):
        where = folder / "holiday" if i % 2 else folder
        Image.fromarray(image).save(where / f"img{i}.png")
    return folder


def tree_state(root):
    """Every path below ``root`` with its content digest (links as their target)."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if path.is_symlink():
                state[path] = ("link", os.readlink(path))
            elif path.is_file():
                state[path] = hashlib.sha1(path.read_bytes()).hexdigest()
            else:
                state[path] = "dir"
    return state


def read_mask(path):
    with Image.open(path) as png:
        return np.asarray(png)
