import dataclasses
import pickle
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.base import clone
from sklearn.cluster import KMeans
from sklearn.exceptions import NotFittedError

import skseg._chunks
import skseg._fit_stages
import skseg._per_image_path
import skseg._segmenter
from skseg import ImageFeatures, MultilevelSegmenter, ViTPatchTransformer
from skseg.datasets import make_patch_features
from skseg.metrics import mean_iou

from .conftest import square_scene

pytestmark = pytest.mark.usefixtures("one_blas_and_openmp_thread")


@pytest.fixture(scope="module")
def planted():
    return make_patch_features(n_images=60, n_classes=4, random_state=0)


def _seg(**kwargs):
    params = dict(n_classes=4, refine=None, random_state=0, device="cpu")
    params.update(kwargs)
    return MultilevelSegmenter(**params)


@pytest.fixture(scope="module")
def shared_fit(planted, one_blas_and_openmp_thread):
    """``_seg(**params).fit(X)`` on the planted set, fitted once per module for
    the tests that only read it (never refit it or change its attributes)."""
    fits = {}

    def fit(**params):
        seg = _seg(**params)
        key = repr(sorted(seg.get_params().items()))
        if key not in fits:
            fits[key] = seg.fit(planted[0])
        return fits[key]

    return fit


@pytest.fixture(scope="module")
def fitted(shared_fit):
    return shared_fit()


def test_planted_structure_is_recovered_where_plain_kmeans_fails(planted, fitted):
    X, masks = planted
    labels = fitted.labels_
    assert mean_iou(masks, labels) > 0.9
    flat = np.concatenate([f.patches.reshape(-1, f.patches.shape[2]) for f in X])
    single = KMeans(5, n_init=4, random_state=0).fit(flat).labels_
    baseline = [part.reshape(14, 14) for part in np.split(single, len(X))]
    assert mean_iou(masks, baseline) < 0.5


@pytest.mark.parametrize("consensus", ["vote", "intersection", "image"])
@pytest.mark.parametrize("foreground", ["border", "attention"])
def test_every_consensus_and_foreground_rule(planted, shared_fit, consensus, foreground):
    _, masks = planted
    labels = shared_fit(consensus=consensus, foreground=foreground).labels_
    assert mean_iou(masks, labels) > 0.85


def test_each_level_finds_the_foreground(planted, fitted):
    X, masks = planted
    seg = fitted
    levels = seg.predict_levels(X)
    for name in ("dataset", "category", "image"):
        accuracy = np.mean([(lv[name] == (m > 0)).mean() for lv, m in zip(levels, masks)])
        assert accuracy > 0.95, name
    vote = np.mean([lv["consensus"] for lv in levels])
    assert 0 < vote < 1
    assert all(0 <= lv["category_index"] < seg.n_categories_ for lv in levels)
    np.testing.assert_array_equal(
        [lv["category_index"] for lv in levels], seg.categories_
    )


def test_consensus_rules_combine_levels_as_documented(planted, shared_fit):
    X, _ = planted
    for consensus in ("vote", "intersection", "image"):
        seg = shared_fit(consensus=consensus)
        for lv in seg.predict_levels(X[:10]):
            votes = lv["dataset"].astype(int) + lv["category"] + lv["image"]
            expected = {"vote": votes >= 2, "intersection": votes == 3,
                        "image": lv["image"]}[consensus]
            np.testing.assert_array_equal(lv["consensus"] >= 0.5, expected)


def test_levels_are_kept_consistent_by_agreement():
    # Flip the feature space: whatever K-means calls cluster 0 or 1, the
    # category and image levels must follow the dataset level's foreground.
    X, masks = make_patch_features(n_images=30, n_classes=3, random_state=3)
    flipped = [ImageFeatures(patches=-f.patches, cls=f.cls) for f in X]
    for data in (X, flipped):
        levels = _seg(n_classes=3).fit(data).predict_levels(data)
        agree = [np.mean(lv["category"] == lv["image"]) for lv in levels]
        assert np.mean(agree) > 0.95


def test_objects_are_labelled_region_by_region():
    X, masks = make_patch_features(n_images=80, n_classes=4, max_objects=2, random_state=1)
    labels = _seg().fit_predict(X)
    two_classes = [i for i, m in enumerate(masks) if len(np.unique(m)) == 3]
    assert two_classes
    assert np.mean([len(np.unique(labels[i])) == 3 for i in two_classes]) > 0.8


def test_min_region_size_drops_small_regions(planted):
    X, _ = planted
    with pytest.raises(ValueError, match="No foreground region"):
        _seg(min_region_size=14 * 14 + 1).fit(X)
    sizes = _seg(min_region_size=0.2).fit_predict(X)
    for mask in sizes:
        regions, n = ndimage.label(mask > 0, structure=np.ones((3, 3)))
        assert all(np.sum(regions == r) >= 0.2 * 196 for r in range(1, n + 1))


def test_predict_reuses_fitted_centroids(planted, monkeypatch):
    X, masks = planted
    seg = _seg().fit(X[:40])
    fitted = {k: np.copy(v) for k, v in vars(seg).items()
              if k.endswith("_") and isinstance(v, np.ndarray)}
    calls = []
    real = skseg._fit_stages.fit_kmeans
    monkeypatch.setattr(skseg._fit_stages, "fit_kmeans",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    held_out = seg.predict(X[40:])
    assert not calls  # no K-means is fitted at predict time
    for key, value in fitted.items():
        np.testing.assert_array_equal(getattr(seg, key), value)
    assert mean_iou(masks[40:], held_out) > 0.85
    # Predicting the training images gives the training masks.
    for a, b in zip(seg.predict(X[:40]), seg.labels_):
        np.testing.assert_array_equal(a, b)


def test_fit_predict_equals_fit_labels_and_is_deterministic(planted, fitted):
    X, _ = planted
    a = _seg().fit_predict(X)
    b = fitted.labels_
    c = _seg(n_jobs=2).fit(X).labels_
    for x, y, z in zip(a, b, c):
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(x, z)


def test_four_d_array_input(planted):
    X, masks = planted
    array = np.stack([f.patches for f in X])
    labels = _seg().fit_predict(array)
    assert labels[0].shape == (14, 14)
    assert mean_iou(masks, labels) > 0.85
    with pytest.raises(ValueError, match="4-D"):
        _seg().fit(array[0])


def test_masks_come_back_at_image_resolution(planted):
    X, masks = planted
    big = [ImageFeatures(patches=f.patches, cls=f.cls, image_shape=(112, 84)) for f in X]
    labels = _seg().fit_predict(big)
    assert labels[0].shape == (112, 84)
    # Nearest-patch downsampling of the labels agrees with the planted masks.
    rows = (np.arange(14) * 8 + 4)
    cols = (np.arange(14) * 6 + 3)
    small = [lab[np.ix_(rows, cols)] for lab in labels]
    assert mean_iou(masks, small) > 0.85


@pytest.mark.parametrize("refine", ["pamr", "crf"])
def test_refinement_uses_pixels_and_warns_without_them(planted, refine):
    rng = np.random.default_rng(0)
    features, truths = [], []
    for _ in range(12):
        image, truth = square_scene(rng)
        # Blocky patch features that only roughly follow the square.
        grid = truth.reshape(6, 8, 6, 8).mean((1, 3)) > 0.5
        patches = np.where(grid[..., None], 1.0, -1.0) * np.ones((6, 6, 8))
        patches = patches + 0.05 * rng.standard_normal(patches.shape)
        features.append(ImageFeatures(patches=patches, image=image, image_shape=(48, 48)))
        truths.append(truth.astype(int))
    plain = _seg(n_classes=1).fit_predict(features)
    refined = _seg(n_classes=1, refine=refine).fit_predict(features)
    assert mean_iou(truths, refined) > mean_iou(truths, plain) + 0.05
    X, _ = planted
    with pytest.warns(UserWarning, match="refinement is skipped"):
        _seg(refine=refine).fit(X[:10])


def test_crop_region_descriptors_re_encode_with_a_vit():
    rng = np.random.default_rng(0)
    features = []
    for _ in range(6):
        image, truth = square_scene(rng, size=64)
        grid = truth.reshape(8, 8, 8, 8).mean((1, 3)) > 0.5
        patches = np.where(grid[..., None], 1.0, -1.0) * np.ones((8, 8, 4))
        features.append(ImageFeatures(patches=patches + 0.05 * rng.standard_normal(patches.shape),
                                      image=image, image_shape=(64, 64)))
    encoder = ViTPatchTransformer("vit_small_patch16_224.dino", pretrained=False,
                                  image_size=32, device="cpu")
    seg = _seg(n_classes=2, region="crop", region_encoder=encoder).fit(features)
    assert seg.class_centroids_.shape == (2, 384)
    assert not hasattr(encoder, "patch_size_")  # the given encoder is cloned, not fitted
    labels = seg.predict(features[:2])
    assert set(np.unique(labels[0])) <= {0, 1, 2} and labels[0].max() > 0
    with pytest.raises(ValueError, match="region_encoder"):
        _seg(region="crop").fit(features)
    no_pixels = [ImageFeatures(patches=f.patches) for f in features]
    with pytest.raises(ValueError, match="image 0 carries no pixels"):
        _seg(region="crop", region_encoder=encoder).fit(no_pixels)


def test_bad_input_is_refused_before_clustering(planted, monkeypatch):
    X, _ = planted
    monkeypatch.setattr(skseg._fit_stages, "fit_kmeans",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("clustered")))
    nan = np.array(X[3].patches)
    nan[0, 0, 0] = np.nan
    cases = [
        ([], ValueError, "empty"),
        ("images", TypeError, "sequence of ImageFeatures"),
        ([X[0], np.zeros((4, 4, 64))], TypeError, r"X\[1\] is a ndarray"),
        ([X[0], ImageFeatures(patches=np.ones((4, 4, 8)), cls=np.ones(64))], ValueError,
         "image 1 has 8-dimensional"),
        ([X[0], ImageFeatures(patches=nan, cls=X[3].cls)], ValueError, "image 1 has NaN"),
        ([X[0], ImageFeatures(patches=np.ones((1, 1, 64)), cls=X[0].cls)], ValueError,
         "at least 2 patches"),
        ([X[0], ImageFeatures(patches=X[1].patches)], ValueError, "lacks a CLS token"),
        # Objects that hold numbers: their bytes are pointers, not content.
        ([X[0], ImageFeatures(patches=X[1].patches.astype(object), cls=X[1].cls)], TypeError,
         r"X\[1\] has patches of dtype object"),
        ([X[0], ImageFeatures(patches=X[1].patches, cls=X[1].cls.astype(object))], TypeError,
         r"X\[1\] has cls of dtype object"),
    ]
    for data, error, message in cases:
        with pytest.raises(error, match=message):
            _seg().fit(data)
    with pytest.raises(ValueError, match="no attention map"):
        _seg(foreground="attention").fit([X[0], ImageFeatures(patches=X[1].patches, cls=X[1].cls)])
    for params in ({"n_classes": 0}, {"n_dataset_clusters": 1}, {"consensus": "all"},
                   {"refine": "densecrf"}, {"min_region_size": 1.5}, {"refine_dilations": (0,)},
                   {"crf_radius": 0}, {"crf_bilateral_rgb": 0.0}, {"crf_gaussian_xy": -1.0},
                   {"crf_bilateral_weight": -1.0}, {"refine": "crf", "crf_stride": 7},
                   {"device": "tpu"}):
        with pytest.raises(ValueError):
            _seg(**params).fit(X)
    with pytest.raises(ValueError, match="crf_stride=7 exceeds crf_radius=6"):
        _seg(refine="crf", crf_stride=7).fit(X)


def test_predict_checks_the_feature_dimension(planted, fitted):
    X, _ = planted
    seg = fitted
    other, _ = make_patch_features(n_images=3, n_features=32, random_state=0)
    with pytest.raises(ValueError, match="fitted on 64"):
        seg.predict(other)
    with pytest.raises(ValueError, match="CLS tokens for all images or for none"):
        seg.predict(np.stack([f.patches for f in X[:2]]))


def test_corner_settings_are_legal(planted):
    X, _ = planted
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _seg(consensus="image", n_categories=1).fit_predict(X)
        _seg(n_dataset_clusters=5, n_classes=1).fit_predict(X[:10])
    with pytest.warns(UserWarning, match="exceeds the 3 images"):
        _seg(n_categories=10).fit(X[:3])
    with pytest.warns(UserWarning, match=r"n_classes=50 exceeds the \d+ object regions; using"):
        seg = _seg(n_classes=50, n_categories=2).fit(X[:5])
    assert seg.n_classes_ < 50


def test_estimator_conventions(planted, fitted):
    X, _ = planted
    seg = MultilevelSegmenter()
    assert not [k for k in vars(seg) if k.endswith("_")]
    restored = pickle.loads(pickle.dumps(fitted))
    for a, b in zip(restored.predict(X[:5]), fitted.predict(X[:5])):
        np.testing.assert_array_equal(a, b)
    cloned = clone(fitted)
    assert not hasattr(cloned, "labels_") and cloned.get_params() == fitted.get_params()
    assert fitted.n_features_in_ == 64
    assert fitted.dataset_centroids_.shape == (8, 64)
    assert fitted.category_centroids_.shape == (4, 2, 64)
    assert fitted.dataset_foreground_.shape == (8,)
    assert 0 < fitted.dataset_foreground_.sum() < 8


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_an_unavailable_device_fails_before_any_work(planted, monkeypatch):
    X, _ = planted
    monkeypatch.setattr(skseg._fit_stages, "fit_kmeans",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("clustered")))
    with pytest.raises(ValueError, match="CUDA is not available"):
        _seg(device="cuda").fit(X)
    with pytest.raises(ValueError, match="CUDA is not available"):
        ViTPatchTransformer("vit_small_patch16_224.dino", pretrained=False, device="cuda").fit()


def _shuffled(X, seed):
    order = np.random.default_rng(seed).permutation(len(X))
    return order, [X[i] for i in order]


@pytest.mark.parametrize("params", [{}, {"metric": "euclidean", "foreground": "attention"}])
def test_the_same_images_in_any_order_and_chunking_get_the_same_masks(planted, shared_fit,
                                                                     params):
    X, _ = planted
    reference = shared_fit(**params)
    for seed, extra in ((1, {"chunk_size": 7}), (2, {"chunk_size": 13, "n_jobs": 2})):
        order, shuffled = _shuffled(X, seed)
        seg = _seg(**params, **extra).fit(shuffled)
        for k, i in enumerate(order):
            np.testing.assert_array_equal(seg.labels_[k], reference.labels_[i])
        np.testing.assert_array_equal(seg.categories_, reference.categories_[order])
        np.testing.assert_allclose(seg.class_centroids_, reference.class_centroids_, atol=1e-6)


def test_features_that_differ_by_float_rounding_get_the_same_masks(planted):
    # A ViT's features of one image differ in their last bits with the batch
    # it ran in and the thread count (ViTPatchTransformer, Notes). The draws
    # are seeded from the image's content key, not the features' bytes, so
    # they stay the same, and so do the masks.
    X, _ = planted
    rng = np.random.default_rng(0)
    keyed = [dataclasses.replace(f, content_key=f"image {i}") for i, f in enumerate(X)]
    noise = [rng.uniform(1 - 1e-6, 1 + 1e-6, f.patches.shape) for f in keyed]
    rounded = [dataclasses.replace(f, patches=(f.patches * e).astype(f.patches.dtype))
               for f, e in zip(keyed, noise)]
    reference, seg = _seg().fit(keyed), _seg().fit(rounded)
    for a, b in zip(seg.labels_, reference.labels_):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(seg.dataset_centroids_, reference.dataset_centroids_, atol=1e-5)
    with pytest.raises(TypeError, match="content_key must be a str"):
        ImageFeatures(patches=X[0].patches, content_key=7)


def test_order_does_not_matter_with_refinement_either():
    rng = np.random.default_rng(0)
    features = []
    for _ in range(10):
        image, truth = square_scene(rng)
        grid = truth.reshape(6, 8, 6, 8).mean((1, 3)) > 0.5
        patches = np.where(grid[..., None], 1.0, -1.0) * np.ones((6, 6, 8))
        features.append(ImageFeatures(patches=patches + 0.3 * rng.standard_normal(patches.shape),
                                      image=image, image_shape=(48, 48)))
    reference = _seg(n_classes=2, refine="pamr").fit(features)
    order, shuffled = _shuffled(features, 3)
    seg = _seg(n_classes=2, refine="pamr", chunk_size=3).fit(shuffled)
    for k, i in enumerate(order):
        np.testing.assert_array_equal(seg.labels_[k], reference.labels_[i])


def test_max_samples_bounds_every_kmeans_fit(planted, monkeypatch):
    X, masks = planted
    sizes = []
    for fit in ("fit_kmeans", "category_pair"):
        real = getattr(skseg._fit_stages, fit)
        monkeypatch.setattr(skseg._fit_stages, fit, lambda rows, *a, real=real, **k:
                            sizes.append(len(rows)) or real(rows, *a, **k))
    labels = _seg(max_samples=50).fit_predict(X)
    # dataset level, categories (60 images), 4 category pairs, classes.
    assert len(sizes) == 7 and max(sizes) == 50 and sizes[0] == 50 and sizes[1] == 50
    assert sizes[2:6] == [50] * 4
    assert mean_iou(masks, labels) > 0.85
    sizes.clear()
    _seg().fit(X)
    assert sizes[0] == 60 * 14 * 14 and sizes[1] == 60  # fewer than max_samples: all


@pytest.mark.parametrize("n_classes", [4, "auto"])
def test_n_init_and_max_iter_reach_every_kmeans_fit(planted, monkeypatch, n_classes):
    X, _ = planted
    fits = []
    real_fit = skseg._fit_stages.fit_kmeans
    monkeypatch.setattr(skseg._fit_stages, "fit_kmeans", lambda rows, k, **kw:
                        fits.append((kw["n_init"], kw["max_iter"])) or real_fit(rows, k, **kw))
    real_kmeans = skseg._n_classes.KMeans.fit_predict
    monkeypatch.setattr(skseg._n_classes.KMeans, "fit_predict", lambda self, Z:
                        fits.append((self.n_init, self.max_iter)) or real_kmeans(self, Z))
    _seg(n_classes=n_classes, max_classes=3, n_init=2, max_iter=7).fit(X)
    # dataset level, categories, classes (and the searches of "auto").
    assert len(fits) == (3 if n_classes == 4 else 3 + 2 * 2)
    assert set(fits) == {(2, 7)}
    fits.clear()
    _seg(n_classes=n_classes, max_classes=3).fit(X)
    # "auto": 3 starts for the dataset level, 10 for every fit over descriptors.
    assert fits[0] == (3, 20) and set(fits[1:]) == {(10, 20)}


def test_cosine_metric_ignores_the_length_of_patch_features(planted, fitted):
    X, masks = planted
    rng = np.random.default_rng(0)
    rescaled = [
        ImageFeatures(patches=f.patches * rng.uniform(0.1, 10, f.grid_shape + (1,)), cls=f.cls)
        for f in X
    ]
    cosine = fitted
    for a, b in zip(cosine.predict(X[:6]), cosine.predict(rescaled[:6])):
        np.testing.assert_array_equal(a, b)
    assert mean_iou(masks, _seg().fit_predict(rescaled)) > 0.95
    # The Euclidean metric sees the lengths, and fits worse masks.
    assert mean_iou(masks, _seg(metric="euclidean").fit_predict(rescaled)) < 0.9


def test_a_fitted_region_encoder_is_used_as_is(monkeypatch):
    rng = np.random.default_rng(1)
    features = []
    for _ in range(4):
        image, truth = square_scene(rng, size=64)
        grid = truth.reshape(8, 8, 8, 8).mean((1, 3)) > 0.5
        patches = np.where(grid[..., None], 1.0, -1.0) * np.ones((8, 8, 4))
        features.append(ImageFeatures(patches=patches, image=image, image_shape=(64, 64)))
    encoder = ViTPatchTransformer("vit_small_patch16_224.dino", pretrained=False,
                                  image_size=32, device="cpu").fit()
    monkeypatch.setattr(type(encoder), "fit", lambda *a, **k: pytest.fail("refitted"))
    seg = _seg(n_classes=1, region="crop", region_encoder=encoder).fit(features)
    assert seg.region_encoder_ is encoder


def test_labels_are_a_sequence_of_masks_made_on_demand(fitted):
    seg = fitted
    labels = seg.labels_
    assert len(labels) == 60 and labels[-1].shape == (14, 14)
    np.testing.assert_array_equal(labels[3:5][1], labels[4])
    np.testing.assert_array_equal(labels[[5, 2]][0], labels[5])
    picked = labels[np.arange(60) % 2 == 1]
    assert len(picked) == 30
    np.testing.assert_array_equal(picked[0], labels[1])
    restored = pickle.loads(pickle.dumps(labels))
    np.testing.assert_array_equal(restored[7], labels[7])
    assert set(np.unique(np.concatenate([m.ravel() for m in labels]))) <= set(range(5))
    # Compact: far smaller than the masks it produces.
    assert len(pickle.dumps(labels)) < sum(m.nbytes for m in labels)


def test_parameters_are_validated_by_scikit_learn_and_can_be_skipped(planted, monkeypatch):
    from sklearn import config_context
    from sklearn.utils._param_validation import InvalidParameterError

    X, _ = planted
    with pytest.raises(InvalidParameterError, match="max_iter"):
        _seg(max_iter=0).fit(X)
    calls = []
    monkeypatch.setattr(MultilevelSegmenter, "_validate_params",
                        lambda self: calls.append(1))
    with config_context(skip_parameter_validation=True):
        _seg().fit(X[:10])
    assert not calls
    _seg().fit(X[:10])
    assert calls == [1]


def test_a_category_without_images_keeps_the_dataset_split(planted):
    # Two distinct images, each repeated: the third category centre is a
    # duplicate that no image is nearest, so its pair is the dataset split,
    # each side the count-weighted mean of its dataset centroids.
    X, _ = planted
    repeated = [X[0]] * 5 + [X[1]] * 5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # K-means: fewer distinct points than clusters
        seg = _seg(n_categories=3, n_classes=2).fit(repeated)
    empty = sorted(set(range(3)) - set(seg.categories_))
    assert len(empty) == 1
    patches = np.concatenate([f.patches.reshape(-1, f.patches.shape[2]) for f in repeated])
    patches /= np.linalg.norm(patches, axis=1, keepdims=True)
    nearest = ((patches[:, None] - seg.dataset_centroids_[None]) ** 2).sum(-1).argmin(1)
    counts = np.bincount(nearest, minlength=len(seg.dataset_centroids_))
    for side, foreground in enumerate((False, True)):
        weights = counts * (seg.dataset_foreground_ == foreground)
        expected = weights @ seg.dataset_centroids_ / weights.sum()
        np.testing.assert_allclose(seg.category_centroids_[empty[0], side], expected, rtol=1e-5,
                                   atol=1e-6)


def test_category_level_finds_the_foreground_whatever_the_seed(planted):
    # With a random (k-means++) start, one of these seeds split a category's
    # patches along something other than foreground (category level 0.58
    # accurate in that category, mIoU 0.78); started from the dataset level,
    # every seed finds it.
    X, masks = planted
    for seed in range(6):
        seg = _seg(random_state=seed).fit(X[:40])
        accuracy = [(lv["category"] == (m > 0)).mean()
                    for lv, m in zip(seg.predict_levels(X[:40]), masks[:40])]
        assert min(accuracy) > 0.95, seed


def _two_backgrounds(n_images=24, grid=8, seed=0):
    """Images on one of two opposite backgrounds (+e0, -e0), with a 3 x 3
    object of one of 3 classes (along e1, off both backgrounds) inside.

    The backgrounds hold most of the variance: a 2-means of all patches
    splits one background from the other, whatever its start, and puts the
    objects on either side.
    """
    rng = np.random.default_rng(seed)
    X, masks = [], []
    for i in range(n_images):
        patches = np.zeros((grid, grid, 8), np.float32)
        patches[..., 0] = 1.0 if i % 2 else -1.0
        y, x = rng.integers(1, grid - 4, 2)
        mask = np.zeros((grid, grid), int)
        mask[y:y + 3, x:x + 3] = 1 + i % 3
        patches[mask > 0] = 0
        patches[mask > 0, 1] = 1.0
        patches[mask > 0, 2 + i % 3] = 0.5
        patches += 0.05 * rng.standard_normal(patches.shape).astype(np.float32)
        X.append(ImageFeatures(patches=patches))
        masks.append(mask)
    return X, masks


@pytest.mark.parametrize("seed", range(5))
def test_two_kinds_of_background_do_not_collapse_the_foreground(seed):
    X, masks = _two_backgrounds(seed=seed)
    truth = np.concatenate([m.ravel() > 0 for m in masks])
    with warnings.catch_warnings():
        warnings.simplefilter("error", skseg.ForegroundWarning)
        seg = _seg(n_classes=3, random_state=seed).fit(X)
    assert mean_iou(masks, seg.labels_) == 1.0
    # Each background kind has clusters of its own, all called background.
    assignment = seg.dataset_foreground_[np.concatenate([
        ((f.patches.reshape(-1, 8) / np.linalg.norm(f.patches, axis=2).reshape(-1, 1))
         @ seg.dataset_centroids_.T - 0.5 * (seg.dataset_centroids_ ** 2).sum(1)).argmax(1)
        for f in X])]
    np.testing.assert_array_equal(assignment, truth)
    assert seg.foreground_share_ == pytest.approx(dict.fromkeys(
        ("dataset", "category", "image", "consensus"), truth.mean()))
    assert seg.border_foreground_share_ == dict.fromkeys(
        ("dataset", "category", "image", "consensus"), 0.0)
    assert seg.level_agreement_ == dict.fromkeys(
        ("dataset/category", "category/image", "dataset/image"), 1.0)


def test_a_two_way_dataset_split_collapses_and_says_so():
    # The same set with the dataset level cut in two: one background kind is
    # called foreground. The image level recovers where its category's mask
    # covers most of an image's border; the vote of the two levels above
    # still decides, and the fit warns with the numbers.
    X, masks = _two_backgrounds()
    with pytest.warns(skseg.ForegroundWarning) as record:
        seg = _seg(n_classes=3, n_dataset_clusters=2).fit(X)
    (message,) = [str(w.message) for w in record if w.category is skseg.ForegroundWarning]
    assert seg.border_foreground_share_ == {
        "dataset": 0.5, "category": 0.5, "image": 0.0, "consensus": 0.5}
    agreement = seg.level_agreement_["category/image"]
    assert agreement < 0.4
    assert "covers 50% of the image border patches" in message
    assert f"category and image levels disagree (foreground IoU {agreement:.3f})" in message
    assert "n_dataset_clusters (now 2)" in message and "foreground='attention'" in message
    # The image level alone found the objects: 14% of the patches, as planted.
    truth = np.mean([m > 0 for m in masks])
    assert seg.foreground_share_["image"] == truth
    assert mean_iou(masks, seg.labels_) < 0.6


def test_levels_that_disagree_warn(planted, monkeypatch):
    # An image level that finds no foreground disagrees with the levels above
    # it (IoU 0) while the consensus stays off the border.
    real = skseg._levels.image_foreground
    monkeypatch.setattr(skseg._levels, "image_foreground",
                        lambda *args, **kwargs: np.zeros_like(real(*args, **kwargs)))
    X, _ = planted
    with pytest.warns(skseg.ForegroundWarning, match=r"the category and image levels "
                      r"disagree \(foreground IoU 0.000\)"):
        seg = _seg().fit(X)
    assert seg.level_agreement_["category/image"] == 0.0
    assert seg.border_foreground_share_["consensus"] < 0.5


def test_a_refit_stopped_midway_leaves_the_estimator_unfitted(planted, monkeypatch):
    X, _ = planted
    seg = _seg().fit(X)
    monkeypatch.setattr(skseg._segmenter, "fit_classes", lambda *args: (_ for _ in ()).throw(
        KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        seg.fit(X)
    # The levels before the stop were refitted; nothing of the old fit is left.
    assert hasattr(seg, "dataset_centroids_")
    assert not hasattr(seg, "class_centroids_") and not hasattr(seg, "labels_")
    with pytest.raises(NotFittedError):
        seg.predict(X[:2])


@pytest.mark.parametrize("method", ["predict", "predict_levels"])
def test_predict_on_image_paths_says_to_extract_features_first(fitted, method, tmp_path):
    seg = fitted
    with pytest.raises(TypeError, match=r"X\[0\] is a PosixPath, not ImageFeatures; pass "
                       "images through ViTPatchTransformer first"):
        getattr(seg, method)([tmp_path / "photo.jpg"])


def test_max_samples_below_the_dataset_clusters_is_refused_naming_both(planted):
    X, _ = planted
    with pytest.raises(ValueError, match="max_samples=5 is below n_dataset_clusters=8"):
        _seg(max_samples=5).fit(X)
    _seg(max_samples=5, n_dataset_clusters=5).fit(X)


def test_passes_send_back_bounded_samples_and_the_same_fit_as_without_the_bound(
        planted, monkeypatch):
    # The process that calls fit receives from each task at most max_samples
    # patches per sample, and in all about twice max_samples per sample: only
    # the patches under a priority bound (computed beforehand, or the
    # merged sample's where tighter), which changes nothing in the fit;
    # where the bound was too tight (images smaller than image 0), the pass
    # runs again without it.
    X, _ = planted
    returned = {"survey": [], "dataset_statistics": []}

    def counted(name):
        real = getattr(skseg._fit_stages, name)

        def run(*args):
            result = real(*args)
            samples = [result[2]] if name == "survey" else result[2].values()
            returned[name].append([len(pickle.loads(pickle.dumps(s))._parts[0][1])
                                   for s in samples if s._parts])
            return result

        monkeypatch.setattr(skseg._fit_stages, name, run)

    def fit(bound, merged=True):
        monkeypatch.setattr(skseg._fit_stages, "priority_bound", bound)
        monkeypatch.setattr(skseg._chunks.CurrentBound, "for_task",
                            real_for_task if merged else lambda self, start, stop: None)
        for per_task in returned.values():
            per_task.clear()
        seg = _seg(max_samples=200, chunk_size=2).fit(X)
        return seg, {name: [sum(rows) for rows in per_task]
                     for name, per_task in returned.items()}

    counted("survey"), counted("dataset_statistics")
    real_for_task = skseg._chunks.CurrentBound.for_task
    seg, rows = fit(skseg._clustering.priority_bound)
    unbounded, rows_without = fit(lambda size, n_rows, margin=1: None, merged=False)
    too_tight, rows_too_tight = fit(lambda size, n_rows, margin=1: np.uint64(1 << 50))
    n_categories = 4
    for name in returned:
        assert len(rows[name]) == len(rows_without[name]) == 30
        assert max(rows[name]) <= 200 * (1 if name == "survey" else n_categories)
        # Twice the sample where the patch count is estimated from image 0,
        # once where from a sample of the images, plus eight standard deviations.
        margin, n_samples = (2, 1) if name == "survey" else (1, n_categories)
        assert sum(rows[name]) < 1.2 * n_samples * (margin * 200 + 8 * 200 ** 0.5)
        assert sum(rows_without[name]) > 4 * sum(rows[name])
        assert len(rows_too_tight[name]) == 60
    for other in (unbounded, too_tight):
        for name in ("dataset_centroids_", "category_centers_", "class_centroids_"):
            np.testing.assert_array_equal(getattr(seg, name), getattr(other, name))
        for a, b in zip(seg.labels_, other.labels_):
            np.testing.assert_array_equal(a, b)


def test_the_sample_of_image_descriptors_is_bounded_too_and_changes_nothing(
        planted, monkeypatch):
    # With max_samples under the number of images, the survey's tasks send
    # back only the descriptors under a bound as well.
    X, _ = planted
    seg = _seg(max_samples=20, chunk_size=5).fit(X)
    assert skseg._clustering.priority_bound(20, len(X)) is not None
    monkeypatch.setattr(skseg._fit_stages, "priority_bound", lambda size, n_rows, margin=1: None)
    unbounded = _seg(max_samples=20, chunk_size=5).fit(X)
    np.testing.assert_array_equal(seg.category_centers_, unbounded.category_centers_)
    np.testing.assert_array_equal(seg.categories_, unbounded.categories_)
    for a, b in zip(seg.labels_, unbounded.labels_):
        np.testing.assert_array_equal(a, b)


def test_verbose_names_every_stage_with_a_bar_per_pass_and_is_silent_by_default(
        planted, capsys):
    X, _ = planted
    MultilevelSegmenter(n_classes=3, refine=None, random_state=0).fit(X).predict(X[:2])
    assert capsys.readouterr() == ("", "")
    segmenter = MultilevelSegmenter(n_classes="auto", max_classes=4, refine=None,
                                    random_state=0, verbose=True)
    assert segmenter.get_params()["verbose"] is True
    segmenter.fit(X)
    err = capsys.readouterr().err
    stages = [line.split(": ")[1] for line in err.splitlines()
              if line.startswith("MultilevelSegmenter: ")]
    assert stages == ["survey", "dataset level", "dataset level", "category level",
                      "image level, consensus and refinement (none), then object regions "
                      "(pooled descriptors)", "labelling", "labelling"]
    assert f"labelling: {segmenter.n_classes_} classes chosen (silhouette" in err
    for bar in ("survey", "dataset level", "image level + refinement"):
        assert f"{bar}: 100%" in err
    with pytest.raises(ValueError, match="verbose"):
        MultilevelSegmenter(verbose="loud").fit(X)


@pytest.mark.slow
def test_with_labels_path_tasks_send_back_region_samples_bounded(planted, monkeypatch,
                                                                 tmp_path):
    # With labels_path, the per-image pass's tasks send back a content-keyed
    # sample of region descriptors, each only the rows under the bound of
    # the sample merged so far: fewer rows than without the bound, and the
    # same classes and masks as from every region's descriptor, as in memory.
    X, _ = planted
    sent = []
    real = skseg._per_image_path.segment

    def counted(*args):
        result = real(*args)
        sent.append(len(pickle.loads(pickle.dumps(result[4]))))
        return result

    def fit(name):
        sent.clear()
        return _seg(max_samples=10, chunk_size=2, labels_path=tmp_path / name).fit(X)

    in_memory = _seg(max_samples=10).fit(X)
    monkeypatch.setattr(skseg._per_image_path, "segment", counted)
    seg, bounded = fit("bounded"), sent.copy()
    monkeypatch.setattr(skseg._chunks.CurrentBound, "for_task", lambda self, start, stop: None)
    unbounded = fit("unbounded")
    n_regions = sum(int(in_memory.labels_.region_map(i).max()) for i in range(len(X)))
    assert len(bounded) == len(sent) == 30 and max(bounded) <= 10
    assert sum(sent) == n_regions > 5 * 10
    assert sum(bounded) < 0.6 * sum(sent)
    for other in (unbounded, in_memory):
        np.testing.assert_array_equal(seg.class_centroids_, other.class_centroids_)
    masks = [np.asarray(mask) for mask in seg.labels_]
    for a, b in zip(masks, in_memory.labels_):
        np.testing.assert_array_equal(a, b)
