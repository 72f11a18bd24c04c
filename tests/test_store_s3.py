"""A FeatureStore on object storage (issue 20), against a real S3 API.

The S3 API is moto's server on 127.0.0.1, started by the tests themselves
(``moto_s3_server`` and ``s3`` in conftest.py); each test gets a fresh bucket
and an ``AWS_*`` environment that reaches only that server, which the writer
processes it starts inherit.
"""

import os
import pickle
import queue
import sys
import time

import numpy as np
import pytest

from skseg import FeatureStore

from ._s3 import (
    append_batches,
    append_batches_reporting,
    assert_planted,
    aws_environment,
    clear_filesystem_caches,
    in_environment,
    planted,
    planted_key,
    writer_context,
)

TIMEOUT = 120  # seconds a writer process may take before the test gives up


@pytest.fixture(autouse=True)
def elsewhere(tmp_path, monkeypatch):
    """Run in an empty folder (a URL taken for a local path lands there), with
    an AWS environment that reaches no server (the ``s3`` fixture's replaces it)."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard: refused
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "none")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "none")
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def one_line(error):
    message = str(error.value)
    assert message and "\n" not in message, message
    return message


# -- the test server itself -------------------------------------------------------


def test_the_server_is_local_and_honours_exclusive_create(s3):
    import s3fs

    assert os.environ["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")
    fs = s3fs.S3FileSystem()
    path = f"{s3.name}/commit-0"
    fs.pipe_file(path, b"first", mode="create")
    with pytest.raises(FileExistsError):
        fs.pipe_file(path, b"second", mode="create")
    assert fs.cat_file(path) == b"first"
    assert s3.keys() == ["commit-0"]


def test_the_server_denies_writes_to_a_read_only_bucket(s3):
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.pipe_file(f"{s3.name}/before", b"x")
    s3.server.deny_writes(s3.name)
    with pytest.raises(PermissionError):
        fs.pipe_file(f"{s3.name}/after", b"y")
    with pytest.raises(PermissionError):
        fs.pipe_file(f"{s3.name}/after", b"y", mode="create")
    assert fs.cat_file(f"{s3.name}/before") == b"x"
    assert s3.keys() == ["before"]


def test_the_server_can_refuse_credentials(s3):
    import s3fs

    with s3.server.checking_credentials():
        with pytest.raises(PermissionError):
            s3fs.S3FileSystem().ls(s3.name)
    assert s3fs.S3FileSystem().ls(s3.name, refresh=True) == []


# -- writing and reading ----------------------------------------------------------


@pytest.mark.slow  # dozens of server round trips; the pickling test stays in the fast run
def test_a_store_on_s3_reads_back_what_was_written(s3):
    url = s3.url("some/prefix/features.zarr")
    store = FeatureStore(url)
    assert len(store) == 0
    assert store.extend([planted(i) for i in range(6)],
                        content_keys=[planted_key(i) for i in range(6)]) == 6
    # Appended again by a retried task, through a handle of its own: read once.
    FeatureStore(url).extend([planted(i) for i in range(4, 8)],
                             content_keys=[planted_key(i) for i in range(4, 8)])
    store = FeatureStore(url)
    assert_planted(store, range(8))
    # A handle that has looked the keys up skips those the store holds.
    keys = [planted_key(i) for i in range(6, 10)]
    assert store.missing(keys) == [2, 3]
    assert store.extend([planted(i) for i in range(6, 10)], content_keys=keys) == 2
    assert_planted(FeatureStore(url), range(10))
    keys = s3.keys()  # the store is in the bucket, under its prefix, nowhere else
    assert keys and all(key.startswith("some/prefix/features.zarr/") for key in keys)
    assert not os.listdir()  # nothing local, in the test's working folder
    reopened = FeatureStore(url, read_only=True)
    assert_planted(reopened, range(10))
    assert reopened.missing([planted_key(3), "absent", planted_key(19)]) == [1, 2]
    with pytest.raises(PermissionError):
        reopened.extend([planted(20)], content_keys=[planted_key(20)])


def test_a_store_on_s3_pickles_and_reopens_read_only(s3):
    store = FeatureStore(s3.url())
    store.extend([planted(i) for i in range(5)])
    view = store[[4, 1]]
    copy = pickle.loads(pickle.dumps(view))
    assert list(copy.content_keys) == [planted_key(4), planted_key(1)]
    np.testing.assert_array_equal(copy[0].patches, planted(4).patches)
    with pytest.raises((PermissionError, TypeError)):
        pickle.loads(pickle.dumps(store)).extend([planted(9)])


@pytest.mark.slow  # dozens of server round trips; the pickling test stays in the fast run
def test_credentials_from_storage_options_travel_with_the_pickle(s3, monkeypatch):
    options = s3.server.storage_options()
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name)
    clear_filesystem_caches()
    store = FeatureStore(s3.url(), storage_options=options)
    store.extend([planted(i) for i in range(3)])
    clear_filesystem_caches()
    copy = pickle.loads(pickle.dumps(store))
    assert_planted(copy, range(3))


@pytest.mark.slow
def test_four_writers_at_once_store_each_image_once(s3):
    url = s3.url()
    ids = range(40)
    # Writer w appends images 10w .. 10w + 19 (mod 40), in two batches of ten,
    # writers 1 and 3 backwards: every image is appended by two writers.
    plans = []
    for w in range(4):
        mine = [(10 * w + k) % 40 for k in range(20)]
        if w % 2:
            mine.reverse()
        plans.append([mine[:10], mine[10:]])
    context = writer_context()
    barrier = context.Barrier(4, timeout=TIMEOUT)
    writers = [context.Process(target=in_environment,
                               args=(aws_environment(), append_batches, url, plan, barrier))
               for plan in plans]
    for writer in writers:
        writer.start()
    deadline = time.monotonic() + TIMEOUT
    try:
        while any(writer.is_alive() for writer in writers) and time.monotonic() < deadline:
            if any(writer.exitcode not in (None, 0) for writer in writers):
                barrier.abort()  # the others fail at once instead of waiting
            time.sleep(0.05)
    finally:
        for writer in writers:
            writer.kill()
            writer.join(10)
    assert [writer.exitcode for writer in writers] == [0, 0, 0, 0]
    assert_planted(FeatureStore(url, read_only=True), ids)
    assert_planted(FeatureStore(url), ids)


@pytest.mark.parametrize("kill_at", ["midway", "done"])
@pytest.mark.slow
def test_a_writer_killed_mid_append_leaves_whole_batches(s3, kill_at):
    url = s3.url()
    batches = [list(range(k, k + 5)) for k in range(0, 20, 5)]
    context = writer_context()
    progress = context.Queue()
    writer = context.Process(target=in_environment,
                             args=(aws_environment(), append_batches_reporting, url,
                                   batches, progress))
    writer.start()
    try:
        # Killed while extend() holds batch 2 ("midway": half its records
        # handed over; "done": just after batch 1 returned, as batch 2 starts).
        target = ("midway", 2) if kill_at == "midway" else ("done", 1)
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            assert writer.is_alive(), "the writer died before the kill"
            try:
                event = progress.get(timeout=0.5)
            except queue.Empty:
                continue
            if event == target:
                writer.kill()  # SIGKILL
                break
        else:
            pytest.fail(f"the writer did not reach {target} in {TIMEOUT} s")
    finally:
        writer.kill()
        writer.join(TIMEOUT)
    assert writer.exitcode == -9
    store = FeatureStore(url, read_only=True)
    stored = {int(key.split("-")[1]) for key in store.content_keys}
    whole = [batch for batch in batches if set(batch) <= stored]
    assert stored == set().union(*whole), "a batch is there in part"
    assert len(whole) >= 2  # batches 0 and 1 returned before the kill
    if kill_at == "midway":  # batch 2's segment cannot be written in that time
        assert stored == set(batches[0]) | set(batches[1])
    assert_planted(store, stored)
    # The same appends again complete the store, each image once.
    append_batches(url, batches)
    assert_planted(FeatureStore(url), range(20))


# -- errors: one line, naming the URL ------------------------------------------------


def test_an_unknown_protocol_is_refused():
    url = "nosuchfs://bucket/features.zarr"
    with pytest.raises((ValueError, ImportError)) as error:
        FeatureStore(url)
    assert url in one_line(error)


@pytest.mark.parametrize("url, module, extra", [
    ("gs://bucket/features.zarr", "gcsfs", "gcs"),
    ("az://container/features.zarr", "adlfs", "azure"),
])
def test_a_filesystem_not_installed_says_which_extra_to_install(url, module, extra):
    try:
        __import__(module)
    except ImportError:
        pass
    else:
        pytest.skip(f"{module} is installed")
    with pytest.raises(ImportError) as error:
        FeatureStore(url)
    message = one_line(error)
    assert url in message
    assert f"skseg[{extra}]" in message


def test_s3_without_s3fs_says_which_extra_to_install(monkeypatch):
    import fsspec.registry  # noqa: F401

    registry = sys.modules["fsspec.registry"]  # fsspec.registry is a mapping
    monkeypatch.setitem(sys.modules, "s3fs", None)  # import fails
    for protocol in ("s3", "s3a"):  # as if s3fs had never been imported
        monkeypatch.delitem(registry._registry, protocol, raising=False)
    url = "s3://bucket/features.zarr"
    with pytest.raises(ImportError) as error:
        FeatureStore(url)
    message = one_line(error)
    assert url in message
    assert "skseg[s3]" in message


def test_a_filesystem_without_exclusive_create_is_refused(monkeypatch):
    import fsspec
    import fsspec.registry  # noqa: F401
    from fsspec.implementations.memory import MemoryFileSystem

    class Overwriting(MemoryFileSystem):
        """A filesystem whose pipe_file(mode="create") overwrites, as one
        without an exclusive create would."""

        protocol = ("skseg-overwriting",)
        store, pseudo_dirs = {}, [""]

        def pipe_file(self, path, value, mode="overwrite", **kwargs):
            return super().pipe_file(path, value, **kwargs)

    registry = sys.modules["fsspec.registry"]
    monkeypatch.setitem(registry._registry, "skseg-overwriting", Overwriting)
    url = "skseg-overwriting://bucket/features.zarr"
    assert type(fsspec.url_to_fs(url)[0]) is Overwriting
    with pytest.raises(OSError) as error:
        FeatureStore(url).extend([planted(0)])
    assert url in one_line(error)
    assert Overwriting.store == {}  # nothing written


def test_a_server_that_ignores_if_none_match_is_refused(s3, monkeypatch):
    import s3fs

    real = s3fs.S3FileSystem._pipe_file

    async def ignoring(self, path, data, mode="overwrite", **kwargs):
        return await real(self, path, data, **kwargs)  # If-None-Match dropped

    monkeypatch.setattr(s3fs.S3FileSystem, "_pipe_file", ignoring)
    clear_filesystem_caches()  # new instances mirror the patched method
    url = s3.url()
    with pytest.raises(OSError) as error:
        FeatureStore(url).extend([planted(0)])
    message = one_line(error)
    assert url in message and "If-None-Match" in message
    assert not any("/commits/" in key or "/segments/" in key for key in s3.keys())


@pytest.mark.parametrize("read_only", [False, True])
def test_missing_credentials_are_refused(s3, monkeypatch, read_only):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    url = s3.url()
    with pytest.raises(PermissionError) as error:
        FeatureStore(url, read_only=read_only)
    assert url in one_line(error)
    assert s3.keys() == []


@pytest.mark.parametrize("read_only", [False, True])
def test_credentials_the_server_refuses_are_refused(s3, read_only):
    url = s3.url()
    with s3.server.checking_credentials():  # moto knows no access key
        with pytest.raises(PermissionError) as error:
            FeatureStore(url, read_only=read_only)
    assert url in one_line(error)
    assert s3.keys() == []


@pytest.mark.parametrize("read_only", [False, True])
def test_a_missing_bucket_is_refused(s3, read_only):
    url = "s3://skseg-no-such-bucket/features.zarr"
    with pytest.raises(FileNotFoundError) as error:
        FeatureStore(url, read_only=read_only)
    message = one_line(error)
    assert "skseg-no-such-bucket" in message
    assert url in message


def test_creating_a_store_in_a_read_only_bucket_is_refused(s3):
    s3.server.deny_writes(s3.name)
    url = s3.url()
    with pytest.raises(PermissionError) as error:
        FeatureStore(url)
    assert url in one_line(error)
    assert s3.keys() == []


@pytest.mark.slow  # dozens of server round trips; the pickling test stays in the fast run
def test_extending_a_store_in_a_read_only_bucket_is_refused(s3):
    url = s3.url()
    FeatureStore(url).extend([planted(i) for i in range(3)],
                             content_keys=[planted_key(i) for i in range(3)])
    s3.server.deny_writes(s3.name)
    store = FeatureStore(url)  # opening writes nothing
    with pytest.raises(PermissionError) as error:
        store.extend([planted(i) for i in range(3, 5)],
                     content_keys=[planted_key(i) for i in range(3, 5)])
    assert url in one_line(error)
    assert_planted(store, range(3))
    assert_planted(FeatureStore(url, read_only=True), range(3))


# -- the estimators on an S3 store ---------------------------------------------------


@pytest.mark.slow
def test_the_transformer_writes_the_same_features_to_s3(s3, tmp_path, rgb_images,
                                                        tiny_vit_kwargs):
    from skseg import ViTPatchTransformer

    local = ViTPatchTransformer(store=str(tmp_path / "local.zarr"), **tiny_vit_kwargs) \
        .fit_transform(rgb_images)
    url = s3.url("vit/features.zarr")
    remote = ViTPatchTransformer(store=url, **tiny_vit_kwargs).fit_transform(rgb_images)
    assert len(remote) == len(local) == 4
    assert s3.keys()
    for got, want in zip(remote, local):
        np.testing.assert_array_equal(got.patches, want.patches)
        np.testing.assert_array_equal(got.cls, want.cls)
        assert got.content_key == want.content_key
    assert len(FeatureStore(url, read_only=True)) == 4
    assert all(key.startswith("vit/features.zarr/") for key in s3.keys())
    # Again: every image is in the store already, nothing is appended.
    n_keys = len(s3.keys())
    again = ViTPatchTransformer(store=url, **tiny_vit_kwargs).fit_transform(rgb_images)
    np.testing.assert_array_equal(again[3].patches, local[3].patches)
    assert len(s3.keys()) == n_keys


@pytest.mark.slow
def test_the_transformer_takes_store_options(s3, monkeypatch, tmp_path, rgb_images,
                                             tiny_vit_kwargs):
    from skseg import ViTPatchTransformer

    options = s3.server.storage_options()
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name)
    clear_filesystem_caches()
    url = s3.url()
    features = ViTPatchTransformer(store=url, store_options=options, **tiny_vit_kwargs) \
        .fit_transform(rgb_images[:2])
    assert len(features) == 2
    assert len(FeatureStore(url, read_only=True, storage_options=options)) == 2


@pytest.mark.slow
def test_a_dask_fit_from_s3_equals_a_local_fit(s3, tmp_path):
    distributed = pytest.importorskip("distributed")
    import joblib

    from skseg import MultilevelSegmenter
    from skseg.datasets import make_patch_features

    X, _ = make_patch_features(n_images=24, n_features=16, n_classes=3, random_state=0)
    local = FeatureStore(str(tmp_path / "local.zarr"))
    local.extend(X)
    url = s3.url()
    FeatureStore(url).extend(X)
    params = dict(n_classes=3, refine=None, random_state=0)
    serial = MultilevelSegmenter(**params).fit(local)
    # The workers are processes started now, with the test's AWS_* environment.
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client, \
            joblib.parallel_config(backend="dask"), \
            distributed.get_task_stream(client) as stream:
        fitted = MultilevelSegmenter(chunk_size=4, **params) \
            .fit(FeatureStore(url, read_only=True))
    assert len({task["worker"] for task in stream.data}) == 2
    assert len(fitted.labels_) == len(serial.labels_) == 24
    for got, want in zip(fitted.labels_, serial.labels_):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(fitted.categories_, serial.categories_)
