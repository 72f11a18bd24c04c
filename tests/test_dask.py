"""The segmenter's passes on a Dask cluster give the serial result."""

import os
import pickle
import re
import signal
import sys
import threading
import time

import joblib
import numpy as np
import pytest

distributed = pytest.importorskip("distributed")
# Every test here starts or uses a local cluster of worker processes.
pytestmark = pytest.mark.slow

import skseg._chunks  # noqa: E402
import skseg._segmenter  # noqa: E402
from skseg import MultilevelSegmenter  # noqa: E402
from skseg._dask import dask_backend  # noqa: E402
from skseg.datasets import make_patch_features  # noqa: E402

PARAMS = dict(n_classes=3, refine=None, random_state=0)
# Ten tasks per pass on the cluster; the serial reference reads one chunk.
ON_DASK = dict(PARAMS, chunk_size=4)
FIT_PASSES = ("survey", "dataset_statistics", "segment")


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        yield cluster


@pytest.fixture
def client(cluster):
    with distributed.Client(cluster) as client:
        yield client


@pytest.fixture(scope="module")
def images():
    X, _ = make_patch_features(n_images=48, n_features=32, n_classes=3, random_state=0)
    return X[:40], X[40:]


@pytest.fixture(scope="module")
def serial(images):
    train, new = images
    segmenter = MultilevelSegmenter(**PARAMS).fit(train)
    return segmenter, segmenter.predict(new), segmenter.predict_levels(new)


def assert_same_fit(fitted, reference):
    assert len(fitted.labels_) == len(reference.labels_)
    for mask, expected in zip(fitted.labels_, reference.labels_):
        np.testing.assert_array_equal(mask, expected)
    np.testing.assert_array_equal(fitted.categories_, reference.categories_)
    for name in ("dataset_centroids_", "dataset_foreground_", "category_centers_",
                 "category_centroids_", "class_centroids_"):
        np.testing.assert_array_equal(getattr(fitted, name), getattr(reference, name))


def workers_by_pass(stream):
    """The workers that ran each pass's tasks (keys name the pass function)."""
    ran = {}
    for task in stream.data:
        # joblib may batch a few chunks into one task ("mixed": distinct partials).
        name = re.match(r"(?:mixed_)?batch_of_(.+)_\d+_calls-", task["key"]).group(1)
        ran.setdefault(name.lstrip("_"), set()).add(task["worker"])
    return ran


def test_fit_on_dask_gives_the_serial_result_on_both_workers(client, images, serial):
    with joblib.parallel_config(backend="dask"), \
            distributed.get_task_stream(client) as stream:
        fitted = MultilevelSegmenter(**ON_DASK).fit(images[0])
    assert_same_fit(fitted, serial[0])
    ran = workers_by_pass(stream)
    both = set(client.scheduler_info()["workers"])
    for name in FIT_PASSES:
        assert ran.get(name) == both, (name, ran)


def test_fit_on_dask_writing_its_masks_gives_the_serial_result(client, images, serial,
                                                               tmp_path):
    # With labels_path, the worker processes write regions, descriptors and
    # classes, fit the category 2-means, and read the fitted state from
    # there (their tasks carry a reference to it): the masks read back are
    # the serial fit's.
    with joblib.parallel_config(backend="dask"), \
            distributed.get_task_stream(client) as stream:
        fitted = MultilevelSegmenter(**ON_DASK, labels_path=tmp_path / "labels").fit(images[0])
    assert_same_fit(fitted, serial[0])
    ran = workers_by_pass(stream)
    assert ran.get("label_regions") == set(client.scheduler_info()["workers"])
    assert ran.get("fit_category_pairs") and ran.get("region_rows")


def test_predict_on_dask_gives_the_serial_result(client, images, serial):
    reference, masks, levels = serial
    with joblib.parallel_config(backend="dask"), \
            distributed.get_task_stream(client) as stream:
        predicted = reference.predict(images[1])
        predicted_levels = reference.predict_levels(images[1])
    assert len(predicted) == len(masks)
    for mask, expected in zip(predicted, masks):
        np.testing.assert_array_equal(mask, expected)
    assert len(predicted_levels) == len(levels)
    for got, expected in zip(predicted_levels, levels):
        assert got.keys() == expected.keys()
        for name in expected:
            np.testing.assert_array_equal(got[name], expected[name])
    assert {"segment", "levels_only"} <= set(workers_by_pass(stream))


def test_each_task_carries_its_own_chunk_and_nothing_to_scatter(monkeypatch, images,
                                                                serial):
    shipped = []

    class RecordingParallel:
        """Runs the tasks here, recording what each would send to a worker."""

        def __init__(self, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc_info):
            pass

        def __call__(self, tasks):
            for function, args, kwargs in tasks:
                # Separate arguments are what joblib's Dask backend scatters
                # to one worker, to be lost with it.
                assert args == () and kwargs == {}
                shipped.append(len(pickle.dumps(function)))
                yield function()

    monkeypatch.setattr(skseg._chunks, "Parallel", RecordingParallel)
    fitted = MultilevelSegmenter(**ON_DASK).fit(images[0])
    assert_same_fit(fitted, serial[0])
    n_chunks = len(images[0]) // ON_DASK["chunk_size"]
    assert len(shipped) == 3 * n_chunks  # three passes
    # A chunk's share of X, not all of it (plus the small fitted state).
    assert max(shipped) < 2 * len(pickle.dumps(images[0])) / n_chunks


def kill_a_worker_running(client, pass_name, killed, timeout=60):
    """SIGKILL the first worker seen running a task of ``pass_name``."""
    pids = client.run(os.getpid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for worker, keys in client.processing().items():
            if any(pass_name in str(key) for key in keys):
                os.kill(pids[worker], signal.SIGKILL)
                killed.append(worker)
                return
        time.sleep(0.005)


def test_worker_killed_mid_fit_changes_nothing(client, images, serial):
    killed = []
    killer = threading.Thread(target=kill_a_worker_running,
                              args=(client, "segment", killed))
    killer.start()
    try:
        with joblib.parallel_config(backend="dask"):
            fitted = MultilevelSegmenter(**ON_DASK).fit(images[0])
    finally:
        killer.join()
        client.wait_for_workers(2, timeout=60)  # the nanny restarts it for the next tests
    assert killed, "no worker was killed: the test did not test anything"
    # Every image is there, once, with the serial mask.
    assert_same_fit(fitted, serial[0])


def test_dask_backend_connects_to_a_running_scheduler_and_leaves_it(cluster, images,
                                                                    serial):
    with dask_backend(scheduler=cluster.scheduler_address) as client:
        assert joblib.effective_n_jobs() == 2
        fitted = MultilevelSegmenter(**ON_DASK).fit(images[0])
    assert client.status == "closed"
    assert cluster.status.name == "running"
    assert_same_fit(fitted, serial[0])


@pytest.mark.filterwarnings("ignore:Port 8787 is already in use")
def test_dask_backend_starts_a_local_cluster_and_closes_it():
    # Two workers: with one worker thread, joblib runs a single job in-process.
    with dask_backend(workers=2) as client:
        pids = set(client.run(os.getpid).values())
        assert len(pids) == 2 and os.getpid() not in pids
        ran_in = set(joblib.Parallel()(
            joblib.delayed(os.getpid)() for _ in range(8)
        ))
        assert ran_in <= pids
        cluster = client.cluster
    assert client.status == "closed"
    assert cluster.status.name == "closed"


@pytest.mark.parametrize("kwargs, message", [
    (dict(scheduler="tcp://127.0.0.1:8786", workers=2), "give one"),
    (dict(workers=0), "workers=0 must be a positive int"),
    (dict(workers=True), "workers=True must be a positive int"),
])
def test_dask_backend_refuses_bad_options_before_starting(kwargs, message):
    with pytest.raises(ValueError, match=message):
        with dask_backend(**kwargs):
            pass


def test_dask_backend_without_dask_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import fails
    with pytest.raises(ImportError) as error:
        with dask_backend(workers=2):
            pass
    message = str(error.value)
    assert 'pip install "skseg[dask]"' in message
    assert "\n" not in message


def test_transform_into_a_store_on_dask_gives_the_serial_features(client, tmp_path):
    from PIL import Image

    from skseg import FeatureStore, ViTPatchTransformer

    rng = np.random.default_rng(0)
    paths = []
    for i in range(24):
        path = tmp_path / f"{i}.png"
        Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(path)
        paths.append(str(path))
    params = dict(model="vit_small_patch16_224.dino", pretrained=False, image_size=64,
                  device="cpu", batch_size=2)
    serial = ViTPatchTransformer(store=str(tmp_path / "serial.zarr"), **params).fit()
    expected = serial.transform(paths)
    with joblib.parallel_config(backend="dask"), \
            distributed.get_task_stream(client) as stream:
        features = ViTPatchTransformer(store=str(tmp_path / "dask.zarr"), **params) \
            .fit().transform(paths)
    assert len({task["worker"] for task in stream.data}) == 2
    assert len(FeatureStore(str(tmp_path / "dask.zarr"))) == 24  # each image once
    for got, want in zip(features, expected):
        assert got.image == want.image
        np.testing.assert_allclose(got.patches, want.patches, atol=1e-5)
        np.testing.assert_allclose(got.cls, want.cls, atol=1e-5)
