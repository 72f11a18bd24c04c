import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.base import clone
from sklearn.model_selection import KFold
from sklearn.pipeline import Pipeline
from sklearn.utils import _safe_indexing

import skseg._transformer
from skseg import (
    FeatureSequence,
    ImageFeatures,
    ViTPatchTransformer,
    WeightsUnavailableError,
)
from skseg._backbone import forward_facets
from skseg._images import content_hash
from skseg._weights import get_model

from .conftest import TINY_MODEL, n_images_through_vit

FAMILIES = [
    # (model, patch, prefix tokens)
    ("vit_small_patch16_224.dino", 16, 1),
    ("vit_small_patch14_dinov2.lvd142m", 14, 1),
    ("vit_small_patch14_reg4_dinov2.lvd142m", 14, 5),
    ("vit_small_patch16_dinov3.lvd1689m", 16, 5),
    ("vit_small_patch16_dinov3_qkvb.lvd1689m", 16, 5),
]


def _vit(**kwargs):
    params = dict(model=TINY_MODEL, pretrained=False, image_size=64, device="cpu")
    params.update(kwargs)
    return ViTPatchTransformer(**params)


def _capture_attention(model, batch):
    """The last block's real attention probabilities, read from the unfused path."""
    attn = model.blocks[-1].attn
    captured = {}
    fused, attn.fused_attn = attn.fused_attn, False
    handle = attn.attn_drop.register_forward_hook(
        lambda module, args, output: captured.__setitem__("p", output)
    )
    try:
        with torch.no_grad():
            model.forward_features(batch)
    finally:
        handle.remove()
        attn.fused_attn = fused
    return captured["p"]


@pytest.mark.parametrize("name, patch, n_prefix", FAMILIES)
@pytest.mark.slow
def test_patch_grid_drops_prefix_tokens(name, patch, n_prefix, rgb_images):
    vit = _vit(model=name, image_size=(4 * patch, 3 * patch), facet="token").fit()
    assert vit.patch_size_ == patch and vit.n_prefix_tokens_ == n_prefix
    features = vit.transform(rgb_images[:2])
    assert features[0].patches.shape == (4, 3, 384)
    assert features[0].image_shape == rgb_images[0].shape[:2]
    # The last block's output tokens, after the final norm, are exactly the
    # patch tokens of forward_features: same order, prefix tokens removed.
    model = get_model(name, pretrained=False, weights=None, device=torch.device("cpu"))
    batch = torch.stack([vit._prepare(img, (4 * patch, 3 * patch), "cpu") for img in rgb_images[:2]])
    with torch.no_grad():
        tokens = model.forward_features(batch)
        normed = model.norm(torch.from_numpy(np.stack([f.patches for f in features])))
    np.testing.assert_allclose(normed.reshape(2, 12, -1), tokens[:, n_prefix:], atol=1e-4)
    np.testing.assert_allclose(np.stack([f.cls for f in features]), tokens[:, 0], atol=1e-5)


@pytest.mark.parametrize("name, patch, n_prefix", FAMILIES)
@pytest.mark.slow
def test_keys_queries_and_attention_are_the_ones_attended_with(name, patch, n_prefix, rgb_images):
    size = (4 * patch, 4 * patch)
    images = rgb_images[:2]
    q = _vit(model=name, image_size=size, facet="query").fit().transform(images)
    k = _vit(model=name, image_size=size, facet="key", attention=True).fit().transform(images)
    vit = _vit(model=name, image_size=size).fit()
    model = get_model(name, pretrained=False, weights=None, device=torch.device("cpu"))
    batch = torch.stack([vit._prepare(img, size, "cpu") for img in images])
    probs = _capture_attention(model, batch)  # (B, heads, N, N)
    attn = model.blocks[-1].attn
    heads, head_dim = attn.num_heads, attn.head_dim
    for b in range(2):
        np.testing.assert_allclose(
            k[b].attention.ravel(), probs[b, :, 0, n_prefix:].mean(0), rtol=1e-4, atol=1e-6
        )
        qb = torch.from_numpy(q[b].patches.reshape(-1, heads, head_dim)).transpose(0, 1)
        kb = torch.from_numpy(k[b].patches.reshape(-1, heads, head_dim)).transpose(0, 1)
        logits = (qb @ kb.transpose(1, 2)) * attn.scale  # patch-to-patch, per head
        log_p = probs[b, :, n_prefix:, n_prefix:].log()
        # Equal up to each row's log-normaliser: the difference is constant per row.
        diff = log_p - logits
        assert torch.allclose(diff, diff[..., :1].expand_as(diff), atol=2e-3)


def test_value_facet_and_layer_choice(rgb_images):
    last = _vit(facet="value").fit().transform(rgb_images[:1])[0].patches
    first = _vit(facet="value", layer=0).fit().transform(rgb_images[:1])[0].patches
    assert last.shape == first.shape == (4, 4, 384)
    assert not np.allclose(last, first)
    with pytest.raises(ValueError, match="layer=12 is out of range"):
        _vit(layer=12).fit()


@pytest.mark.parametrize(
    "image_size, shape, grid",
    [(64, (48, 80), (4, 4)), ((32, 80), (48, 80), (2, 5)), (None, (48, 80), (3, 5)),
     (None, (50, 90), (3, 6)), (70, (48, 80), (4, 4)), (None, (10, 20), (1, 1))],
)
def test_image_size_policies(image_size, shape, grid):
    image = np.zeros(shape + (3,), dtype=np.uint8)
    if min(shape) < 16:
        with pytest.raises(ValueError, match="smaller than one 16 x 16 patch"):
            _vit(image_size=image_size).fit().transform([image])
        return
    features = _vit(image_size=image_size).fit().transform([image])
    assert features[0].grid_shape == grid
    assert features[0].image_shape == shape


@pytest.mark.slow
def test_features_do_not_depend_on_batch_or_position(rgb_images):
    # Up to float rounding only: the BLAS picks its order of summation from
    # the batch's size and the thread count. The content key, which seeds the
    # segmenter's draws, is the image's own whatever the batch.
    one = _vit(batch_size=1).fit().transform(rgb_images)
    many = _vit(batch_size=3).fit().transform(rgb_images[::-1])
    for a, b, image in zip(one, many[::-1], rgb_images):
        np.testing.assert_allclose(a.patches, b.patches, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(a.cls, b.cls, rtol=1e-4, atol=1e-4)
        assert a.content_key == b.content_key == content_hash(image)
    again = _vit(batch_size=1).fit().transform(rgb_images)
    np.testing.assert_array_equal(one[2].patches, again[2].patches)


def test_keep_aspect_groups_sizes_into_batches(vit_forwards):
    images = [np.zeros((48, 64, 3), np.uint8), np.zeros((64, 48, 3), np.uint8),
              np.zeros((48, 64, 3), np.uint8)]
    features = _vit(image_size=None).fit().transform(images)
    assert sorted(vit_forwards) == [(1, 3, 64, 48), (2, 3, 48, 64)]
    assert [f.grid_shape for f in features] == [(3, 4), (4, 3), (3, 4)]


@pytest.mark.slow
def test_equivalent_inputs_give_equal_features(tmp_path):
    rng = np.random.default_rng(1)
    rgb8 = (rng.random((40, 56, 3)) * 255).astype(np.uint8)
    path = tmp_path / "image.png"
    Image.fromarray(rgb8).save(path)
    rgba = np.concatenate([rgb8, np.full((40, 56, 1), 7, np.uint8)], axis=2)
    inputs = [rgb8, rgb8.astype(np.float32) / 255, rgb8.astype(np.uint16) * 257,
              Image.fromarray(rgb8), str(path), path, rgba]
    features = _vit().fit().transform(inputs)
    for f in features[1:]:
        np.testing.assert_allclose(f.patches, features[0].patches, atol=1e-4)
    assert features[4].image == str(path)
    assert features[0].image is rgb8  # a reference, not a copy

    grey = (rng.random((40, 56)) * 255).astype(np.uint8)
    grey_path = tmp_path / "grey.png"
    Image.fromarray(grey).save(grey_path)
    grey16 = grey.astype(np.uint16) * 257
    grey16_path = tmp_path / "grey16.png"
    Image.fromarray(grey16).save(grey16_path)  # a 16-bit PNG
    a, b, c, d, e = _vit().fit().transform(
        [grey, np.repeat(grey[..., None], 3, 2), grey_path, grey16, grey16_path]
    )
    for other in (b, c, d, e):
        np.testing.assert_allclose(a.patches, other.patches, atol=1e-4)


def test_exif_orientation_is_honoured(tmp_path):
    image = Image.fromarray(np.zeros((40, 64, 3), np.uint8))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    (features,) = _vit().fit().transform([path])
    assert features.image_shape == (64, 40)


def test_decoding_threads_run_torch_on_one_thread_and_give_the_same_pixels(rgb_images,
                                                                           two_torch_threads):
    from concurrent.futures import ThreadPoolExecutor

    vit = ViTPatchTransformer(TINY_MODEL, pretrained=False, image_size=64, device="cpu").fit()
    threads = torch.get_num_threads()
    here = [vit._prepare(image, (64, 64), "cpu") for image in rgb_images]
    import sklearn

    with sklearn.config_context(working_memory=64):
        config = sklearn.get_config()
    with ThreadPoolExecutor(2, initializer=skseg._transformer._decoding_thread,
                            initargs=(config,)) as pool:
        assert pool.submit(torch.get_num_threads).result() == 1
        assert pool.submit(lambda: sklearn.get_config()["working_memory"]).result() == 64
        there = list(pool.map(lambda image: vit._prepare(image, (64, 64), "cpu"), rgb_images))
    assert torch.get_num_threads() == threads  # the forward's threads are its own
    for a, b in zip(here, there):
        assert torch.equal(a, b)


def test_float16_halves_memory(rgb_images):
    features = _vit(dtype="float16", attention=True).fit().transform(rgb_images[:1])
    assert features[0].patches.dtype == np.float16
    assert features[0].cls.dtype == np.float16
    assert features[0].attention.dtype == np.float16


def _bad_inputs(tmp_path):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    truncated = tmp_path / "truncated.png"
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(good)
    truncated.write_bytes(good.read_bytes()[:60])
    nan = np.zeros((32, 32, 3), np.float32)
    nan[3, 3, 1] = np.nan
    return [
        ([], ValueError, "X is empty"),
        (np.zeros((32, 32, 3), np.uint8), TypeError, "not a single image"),
        ([np.zeros((32, 32, 3), np.uint8), tmp_path / "missing.png"], ValueError,
         r"image 1 \(.*missing.png'\): no such file"),
        ([good, corrupt], ValueError, r"image 1 \(.*corrupt.jpg'\) cannot be read"),
        ([truncated], ValueError, r"image 0 \(.*truncated.png'\) cannot be read"),
        ([np.zeros((0, 32, 3), np.uint8)], ValueError, "image 0 has zero size"),
        ([np.zeros((8, 32, 3), np.uint8)], ValueError, "smaller than one 16 x 16 patch"),
        ([np.zeros((32, 32, 2), np.uint8)], ValueError, r"image 0 has shape \(32, 32, 2\)"),
        ([np.zeros((32, 32, 3), np.int32)], TypeError, "image 0 has dtype int32"),
        ([np.zeros((32, 32, 3)), nan], ValueError, "image 1 contains NaN"),
        ([np.full((32, 32, 3), 255.0)], ValueError, "outside"),
        ([None], TypeError, "image 0 is a NoneType"),
        (42, TypeError, "list of images"),
    ]


def test_bad_input_is_refused_before_any_forward_pass(tmp_path, monkeypatch):
    vit = _vit().fit()

    def forbidden(*args, **kwargs):
        raise AssertionError("a forward pass ran on bad input")

    monkeypatch.setattr(skseg._transformer, "forward_facets", forbidden)
    for X, error, message in _bad_inputs(tmp_path):
        with pytest.raises(error, match=message):
            vit.transform(X)


@pytest.mark.parametrize(
    "params, message",
    [({"facet": "keys"}, "facet"), ({"image_size": (1, 2, 3)}, "image_size"),
     ({"image_size": 0}, "image_size"), ({"batch_size": 0}, "batch_size"),
     ({"device": "tpu"}, "device"), ({"dtype": "int8"}, "dtype"),
     ({"model": "resnet_but_not_timm"}, "not a timm model")],
)
def test_bad_parameters_are_refused_at_fit(params, message):
    with pytest.raises(ValueError, match=message):
        _vit(**params).fit()


def test_hooks_are_removed_even_when_the_forward_fails(rgb_images):
    model = get_model(TINY_MODEL, pretrained=False, weights=None, device=torch.device("cpu"))
    with pytest.raises(RuntimeError):
        forward_facets(model, torch.zeros(1, 2, 32, 32), facet="key", layer=-1, attention=True)
    modules = [model.blocks[-1], model.blocks[-1].attn]
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in modules)
    _vit(facet="token").fit().transform(rgb_images[:1])
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in modules)


def test_memory_is_deprecated_in_favour_of_the_store(tmp_path, rgb_images):
    with pytest.warns(FutureWarning, match=r"memory=.*deprecated.*store="):
        _vit(memory=tmp_path / "cache").fit()


@pytest.mark.filterwarnings("ignore:ViTPatchTransformer\\(memory=:FutureWarning")
def test_memory_cache_skips_forward_passes(tmp_path, rgb_images, vit_forwards):
    def calls():
        return n_images_through_vit(vit_forwards)

    plain = _vit().fit().transform(rgb_images)
    assert calls() == 4
    cached = _vit(memory=tmp_path / "cache").fit()
    first = cached.transform(rgb_images[:2])
    assert calls() == 6
    second = cached.transform(rgb_images)  # two hits, two misses
    assert calls() == 8
    third = clone(cached).fit().transform(rgb_images[::-1])
    assert calls() == 8
    for a, b, c, d in zip(plain, second, third[::-1], list(first) + list(second[2:])):
        np.testing.assert_allclose(a.patches, b.patches, atol=1e-5)
        np.testing.assert_array_equal(b.patches, c.patches)
        np.testing.assert_array_equal(b.cls, d.cls)
    assert third[0].image is rgb_images[3]
    # Anything that changes the features is part of the key.
    _vit(memory=tmp_path / "cache", facet="query").fit().transform(rgb_images[:1])
    assert calls() == 9
    changed = rgb_images[0].copy()
    changed[0, 0, 0] ^= 1
    _vit(memory=tmp_path / "cache").fit().transform([changed])
    assert calls() == 10


def _reference_features(name, images, size):
    return _vit(model=name, image_size=size).fit().transform(images)


@pytest.mark.slow
def test_weights_in_timm_safetensors_format_load_back(tmp_path, rgb_images):
    from safetensors.torch import save_file

    model = get_model(TINY_MODEL, pretrained=False, weights=None, device=torch.device("cpu"))
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    reference = _reference_features(TINY_MODEL, rgb_images[:2], 64)
    loaded = _vit(weights=path, pretrained=True).fit().transform(rgb_images[:2])
    np.testing.assert_array_equal(loaded[1].patches, reference[1].patches)
    np.testing.assert_array_equal(loaded[1].cls, reference[1].cls)


@pytest.mark.slow
def test_weights_in_original_dino_format_load_back(tmp_path, rgb_images):
    model = get_model(TINY_MODEL, pretrained=False, weights=None, device=torch.device("cpu"))
    # DINO's training checkpoints keep the backbone under teacher/backbone.*
    # next to a projection head that is not part of the ViT.
    state = {f"backbone.{k}": v for k, v in model.state_dict().items()}
    state["head.last_layer.weight"] = torch.zeros(3, 3)
    path = tmp_path / "dino_checkpoint.pth"
    torch.save({"teacher": state}, path)
    reference = _reference_features(TINY_MODEL, rgb_images[:2], 64)
    loaded = _vit(weights=str(path)).fit().transform(rgb_images[:2])
    np.testing.assert_array_equal(loaded[0].patches, reference[0].patches)


@pytest.mark.slow
def test_weights_in_original_dinov2_format_load_back(tmp_path, rgb_images):
    name = "vit_small_patch14_reg4_dinov2.lvd142m"
    model = get_model(name, pretrained=False, weights=None, device=torch.device("cpu"))
    state = dict(model.state_dict())
    # The DINOv2 release: register_tokens, a mask token, and a position
    # embedding that has a slot for the CLS token.
    state["register_tokens"] = state.pop("reg_token")
    state["mask_token"] = torch.zeros(1, 384)
    pos = state.pop("pos_embed")
    state["pos_embed"] = torch.cat([torch.zeros_like(pos[:, :1]), pos], dim=1)
    path = tmp_path / "dinov2_vits14_reg4_pretrain.pth"
    torch.save(state, path)
    reference = _reference_features(name, rgb_images[:2], 56)
    loaded = _vit(model=name, image_size=56, weights=path).fit().transform(rgb_images[:2])
    np.testing.assert_allclose(loaded[0].patches, reference[0].patches, atol=1e-5)


@pytest.mark.slow
def test_unusable_weights_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _vit(weights=tmp_path / "nothing.pth").fit()
    text = tmp_path / "weights.txt"
    text.write_text("no")
    with pytest.raises(ValueError, match="suffix"):
        _vit(weights=text).fit()
    pickled = tmp_path / "arbitrary.pth"
    torch.save({"args": pickle.dumps}, pickled)  # not loadable with weights_only=True
    with pytest.raises(ValueError, match="weights_only=True"):
        _vit(weights=pickled).fit()
    other = get_model("vit_small_patch14_dinov2.lvd142m", pretrained=False, weights=None,
                      device=torch.device("cpu"))
    wrong = tmp_path / "wrong.pth"
    state = {k: v for k, v in other.state_dict().items() if not k.startswith("blocks.11")}
    torch.save(state, wrong)
    with pytest.raises(ValueError, match="does not fit model"):
        _vit(weights=wrong).fit()


def test_pretrained_weights_unavailable_offline_say_what_to_do():
    with pytest.raises(WeightsUnavailableError, match=r"'vit_small_patch16_224\.dino'.*weights="):
        ViTPatchTransformer("vit_small_patch16_224.dino", device="cpu").fit()


def test_estimator_conventions(rgb_images):
    vit = ViTPatchTransformer()
    assert vit.get_params()["model"] == "vit_small_patch8_224.dino"
    assert not [k for k in vars(vit) if k.endswith("_")]
    assert "vit_small_patch8" not in repr(vit)  # the default is not repeated
    assert repr(_vit()).startswith("ViTPatchTransformer(")
    cloned = clone(_vit(facet="query"))
    assert cloned.facet == "query" and not hasattr(cloned, "patch_size_")
    fitted = _vit().fit()
    blob = pickle.dumps(fitted)
    assert len(blob) < 10_000  # the torch model is never pickled
    restored = pickle.loads(blob)
    np.testing.assert_array_equal(
        restored.transform(rgb_images[:1])[0].patches,
        fitted.transform(rgb_images[:1])[0].patches,
    )
    assert fitted.set_params(batch_size=2) is fitted and fitted.batch_size == 2
    pipe = Pipeline([("vit", _vit())])
    assert len(pipe.fit_transform(rgb_images)) == 4
    assert _vit().__sklearn_tags__().input_tags.two_d_array is False


def test_output_pickles_and_splits_like_a_dataset(rgb_images):
    features = _vit(attention=True).fit().transform(rgb_images)
    assert isinstance(features, FeatureSequence) and len(features) == 4
    assert isinstance(features[np.int64(1)], ImageFeatures)
    assert [f.image_shape for f in features[[3, 0]]] == [rgb_images[3].shape[:2], (48, 64)]
    assert len(features[np.array([True, False, True, False])]) == 2
    assert len(features[1:]) == 3
    for train, test in KFold(2).split(features):
        part = _safe_indexing(features, train)
        assert len(part) == 2 and all(isinstance(f, ImageFeatures) for f in part)
    restored = pickle.loads(pickle.dumps(features))
    np.testing.assert_array_equal(restored[2].attention, features[2].attention)
    with pytest.raises(IndexError):
        features[np.array([0.5])]


def test_image_features_built_by_users():
    f = ImageFeatures(patches=np.ones((3, 5, 8)), cls=np.ones(8), patch_size=16)
    assert f.image_shape == (48, 80) and f.attention is None
    f = ImageFeatures(patches=np.ones((3, 5, 8)), image_shape=(30, 50))
    assert f.grid_shape == (3, 5) and f.cls is None
    with pytest.raises(ValueError, match=r"\(h, w, d\)"):
        ImageFeatures(patches=np.ones((3, 5)))
    with pytest.raises(ValueError, match="attention has shape"):
        ImageFeatures(patches=np.ones((3, 5, 2)), attention=np.ones((5, 3)))
    with pytest.raises(TypeError, match="item 1"):
        FeatureSequence([f, "nope"])
