import os

# No test may reach the network: the hub client must fail at once, not retry.
os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

# One thread: the tests' forward passes and K-means are small, and on 2
# shared cores under load a second thread is a wait at every parallel
# region (a ViT-S forward of four 64-pixel images: 0.05 s with one thread,
# 0.13 to 1 s with two). Tests of the thread counts ask for two_torch_threads.
torch.set_num_threads(1)


@pytest.fixture
def two_torch_threads():
    """torch at two threads (where the machine has two cores) for one test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield
    torch.set_num_threads(threads)


# Small and fast: a DINO ViT-S/16 with random weights on 64-pixel images.
TINY_MODEL = "vit_small_patch16_224.dino"


@pytest.fixture
def tiny_vit_kwargs():
    return dict(model=TINY_MODEL, pretrained=False, image_size=64, device="cpu")


@pytest.fixture(scope="module")
def one_blas_and_openmp_thread():
    """BLAS and OpenMP (scikit-learn's K-means) at one thread, for a module's tests.

    Where tests fit MultilevelSegmenter many times: K-means of a few
    thousand rows gain nothing from a second thread, and on 2 shared cores
    under load each parallel region waits for it to be scheduled. A fit of
    test_segmenter's planted set took 1.5 to 1.9 s with the default two
    threads, 0.4 s with one.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


@pytest.fixture
def rgb_images():
    rng = np.random.default_rng(0)
    return [
        (rng.random((48 + 8 * i, 64 - 4 * i, 3)) * 255).astype(np.uint8) for i in range(4)
    ]


@pytest.fixture
def vit_forwards(monkeypatch):
    """Shapes of the batches that went through the ViT, in order."""
    import skseg._extraction

    shapes = []
    real = skseg._extraction.forward_facets

    def recording(model, batch, **kwargs):
        shapes.append(tuple(batch.shape))
        return real(model, batch, **kwargs)

    monkeypatch.setattr(skseg._extraction, "forward_facets", recording)
    return shapes


def n_images_through_vit(shapes):
    return sum(shape[0] for shape in shapes)


def square_scene(rng, size=48):
    """A flat-coloured square on a flat background, with its true mask."""
    image = np.full((size, size, 3), 0.2, np.float32)
    truth = np.zeros((size, size), bool)
    y, x = rng.integers(8, 20, size=2)
    truth[y:y + 20, x:x + 20] = True
    image[truth] = (0.9, 0.5, 0.1)
    noisy = image + 0.02 * rng.standard_normal(image.shape)
    return np.clip(noisy, 0, 1).astype(np.float32), truth


# -- S3 (issue 20): moto's server on 127.0.0.1, started here, never the real AWS ----


@pytest.fixture(scope="session")
def moto_s3_server():
    """moto's S3 server, one per test session; skips without moto[server] and s3fs."""
    from . import _s3

    reason = _s3.missing_packages()
    if reason:
        pytest.skip(reason)
    server = _s3.MotoS3Server()
    yield server
    server.stop()


class S3Bucket:
    """A fresh, empty bucket on the test server."""

    def __init__(self, server, name):
        self.server, self.name = server, name

    def url(self, path="features.zarr"):
        return f"s3://{self.name}/{path}"

    def keys(self):
        return self.server.keys(self.name)


@pytest.fixture
def s3(moto_s3_server, monkeypatch):
    """A fresh bucket, and an ``AWS_*`` environment that reaches only it.

    Every ``AWS_*`` variable of the machine is unset, then the server's are set
    through ``monkeypatch``, so that processes the test starts inherit them.
    """
    from . import _s3

    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    for name, value in moto_s3_server.environment().items():
        monkeypatch.setenv(name, value)
    _s3.clear_filesystem_caches()
    yield S3Bucket(moto_s3_server, moto_s3_server.create_bucket())
    _s3.clear_filesystem_caches()
