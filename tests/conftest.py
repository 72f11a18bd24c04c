import os

# No test may reach the network: the hub client must fail at once, not retry.
os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))

# Small and fast: a DINO ViT-S/16 with random weights on 64-pixel images.
TINY_MODEL = "vit_small_patch16_224.dino"


@pytest.fixture
def tiny_vit_kwargs():
    return dict(model=TINY_MODEL, pretrained=False, image_size=64, device="cpu")


@pytest.fixture
def rgb_images():
    rng = np.random.default_rng(0)
    return [
        (rng.random((48 + 8 * i, 64 - 4 * i, 3)) * 255).astype(np.uint8) for i in range(4)
    ]


@pytest.fixture
def vit_forwards(monkeypatch):
    """Shapes of the batches that went through the ViT, in order."""
    import skseg._transformer

    shapes = []
    real = skseg._transformer.forward_facets

    def recording(model, batch, **kwargs):
        shapes.append(tuple(batch.shape))
        return real(model, batch, **kwargs)

    monkeypatch.setattr(skseg._transformer, "forward_facets", recording)
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
