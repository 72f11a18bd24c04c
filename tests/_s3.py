"""A real S3 API for the tests: moto's server on 127.0.0.1, and the writers they run.

The server is :class:`moto.server.ThreadedMotoServer`, a thread of the test
process listening on 127.0.0.1; writer processes started by a test reach it
through the ``AWS_*`` environment they inherit. Nothing here may reach the real
AWS: every client is pointed at the server and given dummy credentials.

The writer functions are module-level so that a ``multiprocessing`` child
can import them (``tests._s3`` itself imports only numpy).
"""

import contextlib
import json
import logging
import os
import urllib.request
import uuid

import numpy as np

# Dummy credentials: moto accepts any unless its IAM enforcement is on.
ACCESS_KEY = "skseg-test-key"
SECRET_KEY = "skseg-test-secret"
REGION = "us-east-1"


def missing_packages():
    """The packages an S3 test needs that are not installed, as a skip reason."""
    missing = []
    for module, package in (("moto.server", "moto[server]"), ("flask", "moto[server]"),
                            ("s3fs", "s3fs"), ("boto3", "boto3")):
        try:
            __import__(module)
        except ImportError:
            missing.append(package)
    if not missing:
        return None
    return (f"the S3 tests need {', '.join(sorted(set(missing)))}: "
            "pip install 'skseg[test]'")


class MotoS3Server:
    """moto's S3 server on 127.0.0.1 (a free port), in a thread of this process."""

    def __init__(self):
        from moto.server import ThreadedMotoServer

        # One line per request otherwise, in every failing test's output.
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"

    def stop(self):
        self._server.stop()

    def environment(self, credentials=True):
        """``AWS_*`` variables that point every AWS client at this server.

        No shared config or credentials file and no instance metadata service
        is read, so that nothing of the machine's own AWS setup takes part.
        """
        env = {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        if credentials:
            env.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
        return env

    def storage_options(self):
        """The same, as fsspec storage options (for a process without the env)."""
        return {"endpoint_url": self.endpoint, "key": ACCESS_KEY, "secret": SECRET_KEY,
                "client_kwargs": {"region_name": REGION}}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY)

    def create_bucket(self, prefix="skseg"):
        name = f"{prefix}-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name

    def deny_writes(self, bucket):
        """Make ``bucket`` read-only: a bucket policy denying object writes.

        moto checks a bucket policy's Deny on object requests even with its
        IAM enforcement off (``S3Response._key_response``): PutObject (and so
        each part of a multipart upload) and DeleteObject then answer 403.
        """
        policy = {
            "Version": "2012-10-17",
            "Statement": [{
                "Sid": "ReadOnly",
                "Effect": "Deny",
                "Principal": "*",
                "Action": ["s3:PutObject", "s3:DeleteObject"],
                "Resource": f"arn:aws:s3:::{bucket}/*",
            }],
        }
        self.client().put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))

    @contextlib.contextmanager
    def checking_credentials(self):
        """Within: moto checks every request's credentials against its IAM
        users (none exist, so every access key is refused, 403)."""
        previous = self._reset_auth("0")
        try:
            yield
        finally:
            self._reset_auth(previous)

    def _reset_auth(self, count):
        request = urllib.request.Request(
            f"{self.endpoint}/moto-api/reset-auth", data=str(count).encode(),
            method="POST", headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)["PREVIOUS_INITIAL_NO_AUTH_ACTION_COUNT"]

    def keys(self, bucket):
        """Every object key in ``bucket``."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return [item["Key"] for page in pages for item in page.get("Contents", ())]


def clear_filesystem_caches():
    """Forget cached fsspec filesystems, which keep the credentials they were made with."""
    try:
        import s3fs
    except ImportError:
        return
    s3fs.S3FileSystem.clear_instance_cache()


# -- planted records ------------------------------------------------------------


def planted_key(i):
    return f"planted-{i:04d}"


def planted(i):
    """Image ``i``'s features: every field set, from a seed of its own."""
    from skseg import ImageFeatures

    rng = np.random.default_rng(1000 + i)
    h, w = 3 + i % 3, 4
    return ImageFeatures(
        patches=rng.standard_normal((h, w, 8)).astype(np.float32),
        cls=rng.standard_normal(8).astype(np.float32),
        attention=rng.random((h, w)).astype(np.float32),
        image=rng.integers(0, 256, (4 * h, 4 * w, 3), dtype=np.uint8),
        patch_size=4,
        content_key=planted_key(i),
    )


def assert_planted(store, ids):
    """``store`` holds exactly the images ``ids``, each once, as they were written."""
    keys = list(store.content_keys)
    assert len(keys) == len(set(keys)), "an image is stored more than once"
    assert sorted(keys) == sorted(planted_key(i) for i in set(ids))
    assert len(store) == len(set(ids))
    wanted = sorted(set(ids))
    view = store.select([planted_key(i) for i in wanted])
    for i, got in zip(wanted, view.records_of(0, len(wanted))):
        want = planted(i)
        assert got.content_key == want.content_key
        np.testing.assert_array_equal(got.patches, want.patches)
        np.testing.assert_array_equal(got.cls, want.cls)
        np.testing.assert_array_equal(got.attention, want.attention)
        np.testing.assert_array_equal(got.image, want.image)
        assert got.image_shape == want.image_shape
        assert got.patch_size == want.patch_size


# -- writers (run in child processes) ------------------------------------------


def writer_context():
    """Writer processes that start in a fraction of a second.

    A fork server (started once per test session) imports skseg and this
    module once; each writer is forked from it. A forked writer holds the
    fork server's environment, not the test's: start it through
    :func:`in_environment`, which hands it the test's ``AWS_*`` variables.
    """
    import multiprocessing

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["tests._s3", "skseg", "skseg._store"])
    return context


def aws_environment():
    """The ``AWS_*`` variables of this process, to hand to a writer."""
    return {name: value for name, value in os.environ.items() if name.startswith("AWS_")}


def in_environment(environment, target, *args):
    """Run ``target(*args)`` with exactly the ``AWS_*`` variables ``environment``."""
    for name in [name for name in os.environ if name.startswith("AWS_")]:
        del os.environ[name]
    os.environ.update(environment)
    clear_filesystem_caches()
    return target(*args)



def _records(batch):
    return [planted(i) for i in batch], [planted_key(i) for i in batch]


def append_batches(url, batches, barrier=None, storage_options=None):
    """Append each batch of planted images to the store at ``url``, one
    ``extend`` per batch, after every writer has reached ``barrier``."""
    from skseg import FeatureStore

    options = {} if storage_options is None else {"storage_options": storage_options}
    store = FeatureStore(url, **options)
    if barrier is not None:
        barrier.wait()
    for batch in batches:
        records, keys = _records(batch)
        store.extend(records, content_keys=keys)


def append_batches_reporting(url, batches, progress):
    """Like :func:`append_batches`, reporting ``("done", k)`` after batch ``k``
    and ``("midway", k)`` when half of batch ``k`` has been handed to ``extend``."""
    from skseg import FeatureStore

    store = FeatureStore(url)
    progress.put(("open", -1))
    for k, batch in enumerate(batches):
        records, keys = _records(batch)

        def streamed(records=records, k=k):
            for n, record in enumerate(records):
                if n == len(records) // 2:
                    progress.put(("midway", k))
                yield record

        store.extend(streamed(), content_keys=keys)
        progress.put(("done", k))
