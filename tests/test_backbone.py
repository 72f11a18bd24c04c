"""The backbone: concurrent transforms, weights that do not fit, models that are
not ViTs, and pretrained weights when the hub cannot be reached."""

import os
import pickle
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

import skseg
import skseg._weights
from skseg import ViTPatchTransformer, WeightsUnavailableError
from skseg._weights import get_model

from .conftest import TINY_MODEL

# Offline, the hub client used to retry for about 60 s; a user waits a few seconds.
FAIL_FAST_S = 15


def _vit(**kwargs):
    params = dict(model=TINY_MODEL, pretrained=False, image_size=64, device="cpu")
    params.update(kwargs)
    return ViTPatchTransformer(**params)


@pytest.mark.slow
def test_concurrent_transforms_give_the_serial_features(rgb_images):
    # Two configurations sharing one cached model, as a grid search with the
    # threading backend runs them: their hooks must never see each other's images.
    keys = _vit(batch_size=1).fit()
    tokens = _vit(batch_size=1, facet="token", attention=True).fit()
    jobs = [(keys, rgb_images), (tokens, rgb_images[::-1]),
            (keys, rgb_images[::-1]), (tokens, rgb_images)]
    serial = [vit.transform(images) for vit, images in jobs]
    start = threading.Barrier(len(jobs))

    def run(job):
        vit, images = job
        start.wait()
        return [vit.transform(images) for _ in range(2)]

    with ThreadPoolExecutor(len(jobs)) as pool:
        concurrent = list(pool.map(run, jobs))
    for expected, runs in zip(serial, concurrent):
        for features in runs:
            for got, want in zip(features, expected):
                np.testing.assert_allclose(got.patches, want.patches, atol=1e-5)
                np.testing.assert_allclose(got.cls, want.cls, atol=1e-5)
                if want.attention is not None:
                    np.testing.assert_allclose(got.attention, want.attention, atol=1e-6)


def _state(name):
    model = get_model(name, pretrained=False, weights=None, device=torch.device("cpu"))
    return {key: value.clone() for key, value in model.state_dict().items()}


@pytest.mark.slow
def test_weights_of_another_patch_size_are_refused_naming_the_model_they_fit(tmp_path):
    path = tmp_path / "dino_vits16.pth"
    torch.save(_state("vit_small_patch16_224.dino"), path)
    # The default model is ViT-S/8: timm's filter would resample the patch embedding.
    with pytest.raises(ValueError) as info:
        ViTPatchTransformer(weights=path, device="cpu").fit()
    message = str(info.value)
    assert "dino_vits16.pth" in message and "'vit_small_patch8_224.dino'" in message
    assert "patch size 16 in the file, 8 in the model" in message
    assert message.endswith("It fits the model 'vit_small_patch16_224.dino'.")


@pytest.mark.slow
def test_weights_with_registers_are_refused_by_a_model_without(tmp_path):
    state = _state("vit_small_patch14_reg4_dinov2.lvd142m")
    # The original DINOv2 release: register_tokens, a mask token, and a position
    # embedding with a slot for the CLS token.
    state["register_tokens"] = state.pop("reg_token")
    state["mask_token"] = torch.zeros(1, 384)
    pos = state.pop("pos_embed")
    state["pos_embed"] = torch.cat([torch.zeros_like(pos[:, :1]), pos], dim=1)
    path = tmp_path / "dinov2_vits14_reg4_pretrain.pth"
    torch.save(state, path)
    with pytest.raises(ValueError) as info:
        _vit(model="vit_small_patch14_dinov2.lvd142m", weights=path).fit()
    message = str(info.value)
    assert "register tokens 4 in the file, 0 in the model" in message
    assert "It fits the model 'vit_small_patch14_reg4_dinov2.lvd142m'." in message


@pytest.mark.slow
def test_weights_of_another_width_depth_or_shape_are_refused(tmp_path):
    import timm

    tiny = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)
    narrow = tmp_path / "narrow.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tiny.state_dict().items()}, narrow)
    with pytest.raises(ValueError, match="embedding width 192 in the file, 384 in the model"):
        _vit(weights=narrow).fit()

    shallow = tmp_path / "shallow.pth"
    torch.save({k: v for k, v in _state(TINY_MODEL).items()
                if not k.startswith("blocks.11.")}, shallow)
    with pytest.raises(ValueError, match="depth 11 in the file, 12 in the model"):
        _vit(weights=shallow).fit()

    # Same patch size, width, depth and registers, but another MLP: once a
    # "size mismatch" traceback from torch, now one sentence.
    state = _state(TINY_MODEL)
    state["blocks.3.mlp.fc1.weight"] = torch.zeros(768, 384)
    odd = tmp_path / "odd.pth"
    torch.save(state, odd)
    with pytest.raises(ValueError, match=r"odd.pth' does not fit .* differ in size, e.g. "
                                         r"blocks.3.mlp.fc1.weight \(768, 384\) in the file"):
        _vit(weights=odd).fit()

    # DINOv3 ViT-S weights into ViT-S+ (a gated MLP): the model that fits is named.
    small = tmp_path / "dinov3_vits16.pth"
    torch.save(_state("vit_small_patch16_dinov3.lvd1689m"), small)
    with pytest.raises(ValueError, match="It fits the model 'vit_small_patch16_dinov3.lvd1689m'"):
        _vit(model="vit_small_plus_patch16_dinov3.lvd1689m", weights=small).fit()


@pytest.mark.parametrize("pretrained", [True, False])
def test_a_model_that_is_not_a_vit_is_refused_before_any_download(pretrained):
    with pytest.raises(ValueError, match=r"model='resnet50' is not a Vision Transformer.*"
                                         r"'vit_small_patch8_224.dino'"):
        ViTPatchTransformer("resnet50", pretrained=pretrained, device="cpu").fit()


def test_weights_unavailable_error_carries_the_model_and_reason():
    error = WeightsUnavailableError("vit_small_patch8_224.dino", "the hub cannot be reached")
    restored = pickle.loads(pickle.dumps(error))
    assert (restored.model, restored.reason) == (error.model, error.reason)
    assert str(restored) == str(error)
    assert "the hub cannot be reached" in str(error) and "weights=" in str(error)


def _closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_FIT_OFFLINE = """
import time
from skseg import ViTPatchTransformer, WeightsUnavailableError
start = time.perf_counter()
try:
    ViTPatchTransformer("vit_small_patch16_224.dino", device="cpu").fit()
except WeightsUnavailableError as exc:
    print(round(time.perf_counter() - start, 2), exc.model, "|", exc.reason)
"""


@pytest.mark.slow
def test_unreachable_hub_fails_within_seconds(tmp_path):
    # As a user would see it: HF_ENDPOINT points at a port nobody listens on.
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{_closed_port()}", HF_HOME=str(tmp_path),
               TORCH_HOME=str(tmp_path), PYTHONPATH=str(Path(skseg.__file__).parent.parent))
    result = subprocess.run([sys.executable, "-c", _FIT_OFFLINE], env=env, capture_output=True,
                            text=True, timeout=300)
    seconds, model, _, reason = result.stdout.split(maxsplit=3)
    assert float(seconds) < FAIL_FAST_S, result.stderr[-2000:]
    assert model == "vit_small_patch16_224.dino"
    assert "cannot be reached" in reason


@pytest.fixture
def online_hub(monkeypatch, tmp_path):
    """The hub client configured as if online, with an empty cache of its own."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(skseg._weights, "_MODELS", {})  # no model built elsewhere
    return constants


@pytest.mark.slow
def test_a_hub_that_never_answers_fails_within_seconds(online_hub, monkeypatch):
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        monkeypatch.setattr(online_hub, "ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
        start = time.perf_counter()
        with pytest.raises(WeightsUnavailableError, match="cannot be reached") as info:
            ViTPatchTransformer(TINY_MODEL, device="cpu").fit()
        assert time.perf_counter() - start < FAIL_FAST_S
    assert info.value.model == TINY_MODEL


def test_hf_hub_offline_fails_at_once(monkeypatch):
    monkeypatch.setattr(skseg._weights, "_MODELS", {})
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError, match="HF_HUB_OFFLINE is set") as info:
        ViTPatchTransformer(TINY_MODEL, device="cpu").fit()
    assert time.perf_counter() - start < FAIL_FAST_S
    assert info.value.model == TINY_MODEL and "weights=" in str(info.value)


@pytest.mark.slow
def test_weights_in_the_hub_cache_load_without_the_network(online_hub, monkeypatch, tmp_path,
                                                           rgb_images):
    from safetensors.torch import save_file

    monkeypatch.setattr(online_hub, "ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    weights = {k: v.contiguous() for k, v in _state(TINY_MODEL).items()}
    weights["cls_token"] = weights["cls_token"] + 1.0  # not the random weights
    # The hub cache layout: refs/main names the snapshot holding the file.
    repo = Path(online_hub.HF_HUB_CACHE) / "models--timm--vit_small_patch16_224.dino"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    save_file(weights, snapshot / "model.safetensors")
    direct = tmp_path / "direct.safetensors"
    save_file(weights, direct)

    from_cache = _vit(pretrained=True).fit().transform(rgb_images[:1])
    from_file = _vit(weights=direct).fit().transform(rgb_images[:1])
    random = _vit().fit().transform(rgb_images[:1])
    np.testing.assert_array_equal(from_cache[0].cls, from_file[0].cls)
    assert not np.allclose(from_cache[0].cls, random[0].cls)
