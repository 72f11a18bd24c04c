"""Running images through the model: decoding threads, and extraction tasks
that append to a store from a background thread."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

import skseg._extraction
from skseg import FeatureStore, ViTPatchTransformer
from skseg._extraction import decoding_thread, model_input

from . import _image_helpers
from .conftest import TINY_MODEL, n_images_through_vit


def _vit(**kwargs):
    return _image_helpers.vit(**{"batch_size": 2, **kwargs})


def test_decoding_threads_run_torch_on_one_thread_and_give_the_same_pixels(rgb_images,
                                                                           two_torch_threads):
    from concurrent.futures import ThreadPoolExecutor

    vit = ViTPatchTransformer(TINY_MODEL, pretrained=False, image_size=64, device="cpu").fit()
    threads = torch.get_num_threads()
    here = [model_input(vit, image, (64, 64), "cpu") for image in rgb_images]
    import sklearn

    with sklearn.config_context(working_memory=64):
        config = sklearn.get_config()
    with ThreadPoolExecutor(2, initializer=decoding_thread,
                            initargs=(config,)) as pool:
        assert pool.submit(torch.get_num_threads).result() == 1
        assert pool.submit(lambda: sklearn.get_config()["working_memory"]).result() == 64
        there = list(pool.map(lambda image: model_input(vit, image, (64, 64), "cpu"), rgb_images))
    assert torch.get_num_threads() == threads  # the forward's threads are its own
    for a, b in zip(here, there):
        assert torch.equal(a, b)


def test_the_transformer_appends_within_the_callers_working_memory(tmp_path, rgb_images):
    import sklearn

    # Appends run in a background thread; the caller's setting reaches it.
    with sklearn.config_context(working_memory=0.001):  # each record fills it
        _vit(store=tmp_path / "small").fit().transform(rgb_images)
    _vit(store=tmp_path / "default").fit().transform(rgb_images)
    assert len(list((tmp_path / "small" / "commits").iterdir())) == len(rgb_images)
    assert len(list((tmp_path / "default" / "commits").iterdir())) == len(rgb_images) // 2


@pytest.mark.slow
def test_an_interrupted_extraction_keeps_every_batch_computed_before(
        tmp_path, rgb_images, monkeypatch):
    """Batches are appended in a background thread while the next one runs
    through the model: an interruption still commits the ones computed."""
    real = skseg._extraction.forward_facets
    n_batches = []

    def interrupted_at_the_third_batch(*args, **kwargs):
        n_batches.append(1)
        if len(n_batches) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(skseg._extraction, "forward_facets", interrupted_at_the_third_batch)
    images = rgb_images + [image[::-1] for image in rgb_images]  # 8 images, 4 batches of 2
    with pytest.raises(KeyboardInterrupt):
        _vit(store=tmp_path / "s").fit().transform(images)
    stored = FeatureStore(tmp_path / "s")
    assert len(stored) == 4
    monkeypatch.undo()
    features = _vit(store=tmp_path / "s").fit().transform(images)
    plain = _vit().fit().transform(images)
    for got, want in zip(features, plain):
        np.testing.assert_allclose(got.patches, want.patches, atol=1e-5)


@pytest.mark.slow
def test_a_failed_background_append_stops_the_extraction(tmp_path, rgb_images, monkeypatch,
                                                         vit_forwards):
    def full_disk(self, records, content_keys=None):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(FeatureStore, "extend", full_disk)
    images = rgb_images + [image[::-1] for image in rgb_images]
    with pytest.raises(OSError, match="No space left"):
        _vit(store=tmp_path / "s").fit().transform(images)
    # Found at the next batch at the latest, not after the whole extraction.
    assert n_images_through_vit(vit_forwards) <= 4


def test_files_going_into_a_store_are_hashed_in_the_extraction_tasks(
        tmp_path, rgb_images, monkeypatch):
    import threading

    from joblib import parallel_config

    paths = []
    for i, image in enumerate(rgb_images * 80):  # 320 files: two hashing tasks
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(np.roll(image, i, axis=0)).save(paths[-1])
    threads = set()
    real = skseg._extraction.content_hash
    monkeypatch.setattr(skseg._extraction, "content_hash",
                        lambda image: threads.add(threading.get_ident()) or real(image))
    vit = _vit(store=os.fspath(tmp_path / "s.zarr")).fit()
    monkeypatch.setattr(skseg._extraction, "extract_batches",
                        lambda transformer, images, batches: iter(()))  # keys only
    with parallel_config(backend="threading", n_jobs=2), pytest.raises(KeyError):
        vit.transform(paths)
    assert threads and threading.get_ident() not in threads


def test_n_jobs_alone_runs_the_extraction_tasks_on_threads_of_this_process(
        tmp_path, rgb_images, monkeypatch):
    # As the docstring says: threads, not processes that would each import
    # torch and build the model (which made --n-jobs 2 on 20 photos take
    # three times as long as --n-jobs 1).
    import threading
    import warnings

    import sklearn

    paths = []
    for i, image in enumerate(rgb_images * 5):  # 20 files, batches of 2: 2 tasks of 8 batches
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(np.roll(image, i, axis=0)).save(paths[-1])
    ran = []
    for name in ("_hash_files", "_extract_task"):
        real = getattr(skseg._extraction, name)
        monkeypatch.setattr(
            skseg._extraction, name,
            lambda *args, real=real, name=name: ran.append(
                (name, os.getpid(), threading.get_ident(),
                 sklearn.get_config()["working_memory"], warnings.filters)) or real(*args))
    vit = _vit(store=os.fspath(tmp_path / "s.zarr"), n_jobs=2).fit()
    with sklearn.config_context(working_memory=7), warnings.catch_warnings():
        features = vit.transform(paths)
        filters = warnings.filters
    assert sorted(task[0] for task in ran) == ["_extract_task"] * 2 + ["_hash_files"]
    assert {task[1] for task in ran} == {os.getpid()}
    assert threading.get_ident() not in {task[2] for task in ran}
    # Each task under the caller's settings (working_memory sizes the
    # commits), and none replacing the process's warning filters: on
    # threads, tasks that did (scikit-learn's delayed) could interleave and
    # leave them empty.
    assert {task[3] for task in ran} == {7}
    assert all(task[4] is filters for task in ran)
    alone = _vit().fit().transform(paths[7:8])[0]
    np.testing.assert_array_equal(features[7].patches, alone.patches)
