"""Image inputs: tensors and batches read like arrays, and layouts or
values that cannot be an image refused."""

import numpy as np
import pytest
import torch

from skseg._images import ImageError

from ._image_helpers import grey as _grey
from ._image_helpers import vit as _vit


@pytest.mark.slow
def test_tensors_and_batches_give_the_features_of_arrays(rgb_images):
    images = [image[:48, :48] for image in rgb_images]
    reference = _vit().fit().transform(images)
    batch = np.stack(images)  # (N, H, W, C)
    chw = torch.from_numpy(batch).permute(0, 3, 1, 2)
    inputs = {
        "array batch (N, H, W, C)": batch,
        "tensor batch (N, C, H, W)": chw,
        "tensor batch (N, H, W, C)": torch.from_numpy(batch),
        "CHW uint8 tensors": list(chw),
        "CHW float tensors": [t.float() / 255 for t in chw],
        "HWC float tensors": [torch.from_numpy(i).float() / 255 for i in images],
        "bfloat16 tensors": [(t.float() / 255).to(torch.bfloat16) for t in chw],
    }
    for name, X in inputs.items():
        features = _vit().fit().transform(X)
        atol = 0.05 if name.startswith("bfloat16") else 1e-4
        for a, b in zip(features, reference):
            np.testing.assert_allclose(a.patches, b.patches, atol=atol, err_msg=name)
    features = _vit().fit().transform(batch)
    assert np.shares_memory(features[2].image, batch)  # a view of the batch, not a copy
    grey = torch.from_numpy(_grey((48, 48)))[None]  # (1, H, W)
    assert _vit().fit().transform([grey])[0].grid_shape == (4, 4)


@pytest.mark.parametrize(
    "X, error, message",
    [
        ([torch.zeros(3, 64, 3, dtype=torch.uint8)], ImageError, "channels could be first or last"),
        ([torch.zeros(5, 64, 64, dtype=torch.uint8)], ImageError, r"shape \(5, 64, 64\)"),
        ([torch.zeros(64, 64, dtype=torch.int64)], TypeError, "dtype int64"),
        ([torch.full((3, 32, 32), 2.0)], ImageError, "outside"),
        (np.zeros((2, 3, 64, 64), np.uint8), ValueError, r"\(N, H, W, 3\)"),
        (torch.zeros(3, 64, 64), TypeError, "not a single image"),
        (np.zeros((64, 64, 3), np.uint8), TypeError, r"pass \[image\]"),
    ],
)
def test_ambiguous_or_wrong_layouts_are_refused(X, error, message):
    with pytest.raises(error, match=message):
        _vit().fit().transform(X)
