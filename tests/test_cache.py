"""The deprecated ``memory=`` feature cache (``_cache.py``): what it keeps on
disk and what it does with damaged entries. The store (``store=``) replaces it."""

import os
import warnings

import numpy as np
import pytest

from skseg import ViTPatchTransformer

from .conftest import TINY_MODEL, n_images_through_vit


def _vit(**kwargs):
    return ViTPatchTransformer(model=TINY_MODEL, pretrained=False, image_size=64,
                               device="cpu", batch_size=2, **kwargs)


@pytest.mark.filterwarnings("ignore:ViTPatchTransformer\\(memory=:FutureWarning")
def test_memory_cache_holds_no_pickles_and_recomputes_damaged_entries(
        tmp_path, rgb_images, vit_forwards):
    _vit(memory=tmp_path / "cache").fit().transform(rgb_images[:2])
    entries = sorted((tmp_path / "cache").rglob("*.npz"))
    assert len(entries) == 2
    for entry in entries:
        with np.load(entry, allow_pickle=False) as arrays:
            assert set(arrays.files) == {"patches", "cls"}
    # A truncated entry, and one planted with a pickled object array, are
    # computed again with a warning naming the file; nothing is unpickled.
    entries[0].write_bytes(entries[0].read_bytes()[:100])
    np.savez(entries[1], patches=np.array([object()], dtype=object), cls=np.zeros(3))
    with pytest.warns(RuntimeWarning) as caught:
        again = _vit(memory=tmp_path / "cache").fit().transform(rgb_images[:2])
    assert n_images_through_vit(vit_forwards) == 4
    assert sorted(str(w.message).split("'")[1] for w in caught
                  if w.category is RuntimeWarning) == sorted(map(str, entries))
    vit = _vit(memory=tmp_path / "cache").fit()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rewritten entries read cleanly
        cached = vit.transform(rgb_images[:2])
    assert n_images_through_vit(vit_forwards) == 4
    for a, b in zip(again, cached):
        np.testing.assert_array_equal(a.patches, b.patches)


@pytest.mark.filterwarnings("ignore:ViTPatchTransformer\\(memory=:FutureWarning")
def test_memory_cache_entries_respect_the_umask(tmp_path, rgb_images):
    previous = os.umask(0o022)
    try:
        _vit(memory=tmp_path / "cache").fit().transform(rgb_images[:1])
    finally:
        os.umask(previous)
    entry = next((tmp_path / "cache").rglob("*.npz"))
    assert entry.stat().st_mode & 0o777 == 0o644
