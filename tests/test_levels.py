"""Each decision of the three levels, on inputs where the right answer is known."""

import numpy as np
import pytest
import torch

import skseg._levels
from skseg._levels import (
    agreement,
    attention_foreground,
    border_foreground,
    border_patches,
    border_ratios,
    border_share,
    level_counts,
    category_foreground,
    category_pair,
    chunk_levels,
    combine_levels,
    group_indices,
    image_foreground,
    oriented_pair,
    split_by_score,
)


def _mask(bits):
    return np.array([c == "1" for c in bits])


def test_agreement_is_intersection_over_union():
    reference = _mask("110000")
    wide = _mask("111111")  # intersection 2, union 6
    narrow = _mask("100000")  # intersection 1, union 2
    assert agreement(wide, reference) == pytest.approx(2 / 6)
    assert agreement(narrow, reference) == pytest.approx(1 / 2)
    # Rows of a batch are compared along the last axis; empty masks give 0.
    np.testing.assert_allclose(
        agreement(np.stack([wide, narrow, ~wide]), reference), [2 / 6, 1 / 2, 0]
    )


def test_split_by_score_is_otsus_threshold_weighted_by_patches():
    # Sorted scores 5 | 4 | 1 | 0: the widest between-side variance puts the
    # first two on the foreground side.
    scores, weights = np.array([1.0, 5.0, 0.0, 4.0]), np.array([10, 10, 10, 10])
    np.testing.assert_array_equal(split_by_score(scores, weights), [False, True, False, True])
    # Weights move the threshold: the middle cluster joins the side whose
    # split leaves the most weight on both sides, apart.
    np.testing.assert_array_equal(
        split_by_score(np.array([10.0, 4.0, 0.0]), np.array([1, 100, 100])), [True, True, False]
    )
    np.testing.assert_array_equal(
        split_by_score(np.array([10.0, 4.0, 0.0]), np.array([100, 100, 1])), [True, False, False]
    )


def test_split_by_score_keeps_one_cluster_on_each_side():
    # All scores tied: every split scores 0; the first (fewest foreground,
    # the first cluster in order) wins.
    np.testing.assert_array_equal(split_by_score(np.zeros(3), np.ones(3)), [True, False, False])
    # Two clusters are always one of each, whatever their weights.
    np.testing.assert_array_equal(split_by_score(np.array([0.0, 1.0]), np.array([1, 1000])),
                                  [False, True])
    # A cluster without patches weighs nothing and, with no evidence either
    # way, is background (the split itself puts it with the second cluster).
    np.testing.assert_array_equal(
        split_by_score(np.array([9.0, 1.0, 0.1, 0.0]), np.array([0, 10, 10, 10])),
        [False, True, False, False],
    )
    np.testing.assert_array_equal(split_by_score(np.array([1.0, 0.0]), np.zeros(2)),
                                  [True, False])


def test_split_by_score_never_cuts_between_equal_scores():
    np.testing.assert_array_equal(split_by_score(np.array([1.0, 1.0, 0.0]), np.array([1, 100, 1])),
                                  [True, True, False])
    # Eight clusters with the same border ratio (every patch on the border):
    # the rounding of the between-side variances must not pick a split.
    counts = np.array([3, 7, 5, 11, 2, 9, 4, 6])
    np.testing.assert_array_equal(border_foreground(counts, counts), [True] + [False] * 7)


def test_border_ratios_compare_border_and_overall_shares():
    # Cluster 0: 30% of patches, 60% of border patches.
    np.testing.assert_allclose(border_ratios(np.array([30, 50, 20]), np.array([60, 30, 10])),
                               [2.0, 0.6, 0.5])


def test_border_rule_splits_at_the_gap_not_at_ratio_one():
    # An over-clustered dataset level: five background clusters, two of
    # which lean off the border (ratio 0.8 < 1), and three object clusters
    # that seldom touch it (ratios 0.2). A fixed "ratio <= 1" rule called the
    # leaning background foreground; the threshold goes in the gap.
    counts = np.array([100, 100, 100, 100, 100, 20, 20, 20])
    ratios = np.array([0.8, 0.8, 1.2, 1.3, 1.3, 0.2, 0.2, 0.2])
    border = ratios * counts  # border counts in proportion
    np.testing.assert_allclose(border_ratios(counts, border), ratios * counts.sum()
                               / border.sum())
    np.testing.assert_array_equal(border_foreground(counts, border), [False] * 5 + [True] * 3)


def test_border_rule_treats_clusters_that_never_touch_the_border_like_rare_ones():
    # Ratios 0, 0.15, 0.2 against background at about 1.2. Without the 0.1
    # offset, log(0) would isolate the never-on-border cluster as the only
    # foreground.
    counts = np.array([400, 400, 20, 20, 20])
    border = np.array([500, 470, 0, 3, 4])
    assert border_ratios(counts, border)[2] == 0
    np.testing.assert_array_equal(border_foreground(counts, border), [False, False, True, True, True])
    np.testing.assert_array_equal(
        split_by_score(-np.log(np.maximum(border_ratios(counts, border), 1e-6)), counts),
        [False, False, True, False, False],
    )


def test_border_rule_with_two_clusters_calls_the_border_crowding_one_background():
    np.testing.assert_array_equal(
        border_foreground(np.array([50, 50]), np.array([70, 30])), [False, True]
    )
    np.testing.assert_array_equal(
        border_foreground(np.array([80, 20]), np.array([10, 90])), [True, False]
    )


def test_attention_rule_splits_mean_attention_weighted_by_counts():
    counts = np.array([10, 10, 80])
    sums = np.array([9.0, 1.0, 20.0])  # means 0.9, 0.1, 0.25
    np.testing.assert_array_equal(attention_foreground(counts, sums), [True, False, False])
    # Means 0.1, 0.4, 0.4: the two high ones together.
    np.testing.assert_array_equal(
        attention_foreground(np.array([10, 10, 10]), np.array([1.0, 4.0, 4.0])),
        [False, True, True],
    )
    # Tied means: one cluster on each side.
    np.testing.assert_array_equal(
        attention_foreground(np.array([10, 10]), np.array([2.0, 2.0])), [True, False]
    )


def test_border_patches_are_the_grid_outline():
    expected = np.array([[1, 1, 1, 1], [1, 0, 0, 1], [1, 1, 1, 1]], bool)
    np.testing.assert_array_equal(border_patches((3, 4)), expected.ravel())


def test_category_pair_is_flipped_to_agree_with_the_dataset_level():
    patches = np.array([[0.0], [0.1], [1.0], [1.1], [1.2]], np.float32)
    pair = np.array([[1.1], [0.05]], np.float32)  # cluster 1 sits on the first two
    reference = _mask("00111")
    np.testing.assert_array_equal(oriented_pair(pair, patches, reference), pair[::-1])
    np.testing.assert_array_equal(oriented_pair(pair[::-1], patches, reference), pair[::-1])


def test_category_pair_orientation_uses_iou_not_intersection():
    patches = np.arange(6, dtype=np.float32)[:, None]
    # Cluster 1 covers all but the first patch (intersection 2 of reference
    # 2, IoU 2/5); cluster 0 the first patch only (intersection 1, IoU 1/2).
    pair = np.array([[0.0], [3.5]], np.float32)
    reference = _mask("110000")
    np.testing.assert_array_equal(oriented_pair(pair, patches, reference), pair[::-1])


def test_category_2_means_starts_from_the_dataset_split():
    # Three equal blobs on a line: {A} | {B, C} and {A, B} | {C} are both
    # fixed points of 2-means; the one found is the one the dataset level
    # starts it from, background first.
    rng = np.random.default_rng(0)
    blobs = [np.array([x, 0.0]) + 0.05 * rng.standard_normal((30, 2)) for x in (-1, 0, 1)]
    patches = np.concatenate(blobs).astype(np.float32)
    a, b, c = (np.repeat(np.eye(3, dtype=bool)[k], 30) for k in range(3))
    for background, foreground in ((a, b | c), (a | b, c)):
        pair = category_pair(patches, foreground, max_iter=20)
        np.testing.assert_allclose(pair, [patches[background].mean(0), patches[foreground].mean(0)],
                                   rtol=1e-5, atol=1e-6)
    # The same split given as background is still returned (background, foreground).
    pair = category_pair(patches, ~(b | c), max_iter=20)
    np.testing.assert_allclose(pair[1], patches[a].mean(0), rtol=1e-5, atol=1e-6)


def test_category_rule_is_nearest_of_the_two_centroids():
    rng = np.random.default_rng(0)
    patches = rng.standard_normal((200, 5)).astype(np.float32)
    pairs = rng.standard_normal((3, 2, 5)).astype(np.float32)
    categories = rng.integers(0, 3, 200)
    distances = ((patches[:, None] - pairs[categories]) ** 2).sum(-1)
    np.testing.assert_array_equal(
        category_foreground(patches, pairs, categories), distances[:, 1] < distances[:, 0]
    )


def _off_border(X):
    """No patch on the border: the border check never fires."""
    return np.zeros(X.shape[1], dtype=bool)


def _two_blobs(n=20, d=4, seed=0):
    rng = np.random.default_rng(seed)
    X = 0.05 * rng.standard_normal((1, n, d)).astype(np.float32)
    X[0, : n // 2, 0] += 1.0
    return torch.from_numpy(X)


def test_image_level_keeps_the_cluster_that_agrees_with_the_category():
    X = _two_blobs()
    category = torch.zeros(1, 20, dtype=torch.bool)
    category[0, :8] = True  # roughly the first blob
    fg_centroid = torch.zeros(1, 4)
    foreground = image_foreground(X, category, fg_centroid, _off_border(X), max_iter=10)
    np.testing.assert_array_equal(foreground[0], np.arange(20) < 10)


def test_image_level_flips_its_clusters_to_agree_with_the_category():
    # The category mask covers the second blob and a little of the first; the
    # 2-means started from it converges with cluster 1 on the second blob.
    X = _two_blobs()
    category = torch.zeros(1, 20, dtype=torch.bool)
    category[0, 9:] = True
    foreground = image_foreground(X, category, torch.zeros(1, 4), _off_border(X), max_iter=10)
    np.testing.assert_array_equal(foreground[0], np.arange(20) >= 10)
    # Inverted init: the split is the same partition, oriented by agreement.
    inverted = image_foreground(X, ~category, torch.zeros(1, 4), _off_border(X), max_iter=10)
    np.testing.assert_array_equal(inverted[0], np.arange(20) < 10)


def test_image_level_tie_rule_uses_the_category_foreground_centroid():
    # The category put no patch of the image in the foreground: no agreement
    # to compare, so the cluster nearer the category's foreground centroid wins.
    X = _two_blobs()
    empty = torch.zeros(1, 20, dtype=torch.bool)
    near_first_blob = torch.tensor([[1.0, 0, 0, 0]])
    near_second_blob = torch.tensor([[0.0, 0, 0, 0]])
    np.testing.assert_array_equal(
        image_foreground(X, empty, near_first_blob, _off_border(X), max_iter=10)[0], np.arange(20) < 10
    )
    np.testing.assert_array_equal(
        image_foreground(X, empty, near_second_blob, _off_border(X), max_iter=10)[0], np.arange(20) >= 10
    )


def test_image_level_runs_every_image_of_a_batch_independently():
    X = torch.cat([_two_blobs(seed=0), _two_blobs(seed=1)])
    category = torch.zeros(2, 20, dtype=torch.bool)
    category[0, :10] = True
    category[1, 10:] = True
    foreground = image_foreground(X, category, torch.zeros(2, 4), _off_border(X), max_iter=10)
    np.testing.assert_array_equal(foreground[0], np.arange(20) < 10)
    np.testing.assert_array_equal(foreground[1], np.arange(20) >= 10)


@pytest.mark.parametrize(
    "rule, expected",
    [("vote", [0, 1 / 3, 2 / 3, 1, 2 / 3]),
     ("intersection", [0, 0, 0, 1, 0]),
     ("image", [0, 0, 1, 1, 0])],
)
def test_consensus_rules(rule, expected):
    dataset = _mask("01011")
    category = _mask("00111")
    image = _mask("00110")
    soft = combine_levels(dataset, category, image, rule)
    assert soft.dtype == np.float32
    np.testing.assert_allclose(soft, expected, rtol=1e-6)


def test_agreement_of_single_patch_masks():
    assert agreement(_mask("10"), _mask("10")) == 1.0


def test_category_pair_keeps_its_order_on_a_tie():
    patches = np.array([[0.0], [1.0]], np.float32)
    pair = np.array([[0.0], [1.0]], np.float32)
    np.testing.assert_array_equal(oriented_pair(pair, patches, _mask("00")), pair)


def test_category_rule_sends_equidistant_patches_to_the_background():
    pairs = np.array([[[0.0], [2.0]]], np.float32)
    np.testing.assert_array_equal(
        category_foreground(np.array([[1.0], [1.5]], np.float32), pairs, np.array([0, 0])),
        [False, True],
    )


def test_image_level_flips_when_its_foreground_cluster_ends_on_the_other_side():
    # Three groups: G1 (10 patches at 0), G2 (10 at 1), G3 (2 at 10). The
    # category says G2 and G3. Started from that, 2-means ends with cluster 1
    # on the outliers G3 and cluster 0 on G1 and G2; G1 and G2 agree better
    # with the category (IoU 10/22 against 2/12), so they are foreground.
    values = np.concatenate([np.zeros(10), np.ones(10), np.full(2, 10.0)])
    X = torch.from_numpy(np.stack([values, np.zeros(22)], 1).astype(np.float32))[None]
    category = torch.from_numpy(values > 0.5)[None]
    foreground = image_foreground(X, category, torch.zeros(1, 2), _off_border(X), max_iter=10)
    np.testing.assert_array_equal(foreground[0], values < 5)


def test_image_level_tie_rule_per_image_of_a_batch():
    X = torch.cat([_two_blobs(seed=0), _two_blobs(seed=1)])
    empty = torch.zeros(2, 20, dtype=torch.bool)
    centroids = torch.tensor([[0.0, 0, 0, 0], [1.0, 0, 0, 0]])  # second blob, first blob
    foreground = image_foreground(X, empty, centroids, _off_border(X), max_iter=10)
    np.testing.assert_array_equal(foreground[0], np.arange(20) >= 10)
    np.testing.assert_array_equal(foreground[1], np.arange(20) < 10)


def _framed_object(n_images=3, grid=6, seed=0):
    """Background patches (along e0) around a 2 x 2 object (along e1)."""
    rng = np.random.default_rng(seed)
    obj = np.zeros((grid, grid), bool)
    obj[2:4, 2:4] = True
    X = np.where(obj.ravel()[:, None], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0])
    X = X + 0.02 * rng.standard_normal((n_images, grid * grid, 3))
    return torch.from_numpy(X.astype(np.float32)), obj.ravel(), border_patches((grid, grid))


def test_an_image_level_recovers_from_a_mask_that_fills_the_border():
    X, obj, border = _framed_object()
    # The category called the background foreground: the 2-means started
    # from it and oriented by agreement with it would keep the background.
    inherited = torch.from_numpy(np.tile(~obj, (3, 1)))
    foreground = image_foreground(X, inherited, torch.zeros(3, 3), border, max_iter=10)
    np.testing.assert_array_equal(foreground, np.tile(obj, (3, 1)))
    # Without the border, nothing tells it is wrong: the inherited split stays.
    kept = image_foreground(X, inherited, torch.zeros(3, 3), np.zeros_like(border), max_iter=10)
    np.testing.assert_array_equal(kept, np.tile(~obj, (3, 1)))


def test_only_images_whose_foreground_covers_nearly_all_the_border_are_redone(monkeypatch):
    X, obj, border = _framed_object(n_images=3)
    on_border = np.flatnonzero(border)
    inherited = np.tile(obj, (3, 1))
    inherited[0] = ~obj  # the whole border: redone
    inherited[1, on_border[:18]] = True  # 90% of it: redone
    inherited[2, on_border[:17]] = True  # 85%: kept
    # The border patches taken as foreground look like the object, so the
    # 2-means from the inherited masks keeps them.
    X[1, on_border[:18]] = X[1, np.flatnonzero(obj)[0]].clone()
    X[2, on_border[:17]] = X[2, np.flatnonzero(obj)[0]].clone()
    runs = []
    real = skseg._levels.batched_two_means
    monkeypatch.setattr(skseg._levels, "batched_two_means",
                        lambda X, init, **kw: runs.append(init.numpy().copy()) or real(X, init, **kw))
    foreground = image_foreground(X, torch.from_numpy(inherited), torch.zeros(3, 3), border,
                                  max_iter=10)
    # One batched run from the inherited masks, then one from the border
    # prior for images 0 and 1 only.
    assert len(runs) == 2
    np.testing.assert_array_equal(runs[1], np.tile(~border, (2, 1)))
    np.testing.assert_array_equal(foreground[0], obj)
    np.testing.assert_array_equal(foreground[2], inherited[2])
    # Image 1's redone split is the same partition, oriented by the border:
    # the 2 border patches left as background become the foreground.
    np.testing.assert_array_equal(foreground[1], ~inherited[1])


def test_a_close_up_keeps_the_orientation_of_the_levels_above():
    # An object filling columns 1-7 of an 8 x 8 grid: 71% of the border.
    # The category mask is right; by the border alone it would be inverted.
    obj = np.zeros((8, 8), bool)
    obj[:, 1:] = True
    obj = obj.ravel()
    border = border_patches((8, 8))
    assert 0.7 < border_share(obj, border) < 0.9
    X = torch.from_numpy(np.where(obj[:, None], [0.0, 1.0], [1.0, 0.0]).astype(np.float32)[None])
    foreground = image_foreground(X, torch.from_numpy(obj[None]), torch.zeros(1, 2), border,
                                  max_iter=10)
    np.testing.assert_array_equal(foreground[0], obj)


def test_border_share_counts_border_patches_in_the_foreground():
    border = border_patches((3, 3))
    mask = np.zeros((2, 9), bool)
    mask[0, :3] = True  # the top row: 3 of the 8 border patches
    mask[1, 4] = True  # the centre: none
    np.testing.assert_allclose(border_share(mask, border), [3 / 8, 0])


def test_border_rule_keeps_a_background_that_leans_off_the_border_with_the_background():
    # Shares of patches and border ratios of 8 clusters: three objects (0.11
    # to 0.32) and backgrounds from 0.71 up. The logarithm spreads the low
    # ratios apart from the background's; with a large offset it is nearly
    # linear in the ratio and the 0.71 background joins the objects.
    ratios = np.array([0.32, 0.19, 0.11, 0.71, 1.43, 1.52, 1.25, 1.36])
    counts = np.array([400, 600, 500, 800, 2700, 900, 2400, 1200])
    border = ratios * counts
    expected = [True, True, True, False, False, False, False, False]
    np.testing.assert_array_equal(border_foreground(counts, border), expected)
    scale = counts.sum() / border.sum()  # border_ratios normalises the shares
    np.testing.assert_array_equal(
        split_by_score(-np.log(ratios * scale + 1.1), counts), [True] * 4 + [False] * 4
    )


def test_level_counts_sum_what_the_diagnostics_need():
    levels = {
        "dataset": _mask("110100"),
        "category": _mask("110000"),
        "image": _mask("011000"),
        "consensus": np.array([0.7, 1.0, 0.6, 0.5, 0.0, 0.0], np.float32),
    }
    on_border = _mask("100011")
    counts = level_counts(levels, on_border)
    assert counts["patches"].tolist() == [6] and counts["border"].tolist() == [3]
    # dataset, category, image, consensus (above 0.5: 0.5 itself is not).
    assert counts["foreground"].tolist() == [3, 2, 2, 3]
    assert counts["border_foreground"].tolist() == [1, 1, 0, 1]
    # dataset/category, category/image, dataset/image.
    assert counts["intersection"].tolist() == [2, 1, 1]
    assert counts["union"].tolist() == [3, 3, 4]


def test_a_redone_image_level_takes_the_side_off_the_border_as_foreground():
    # A 4 x 4 grid of background (e0) with an object (e1) on one patch of
    # its top edge. Started from the border prior, the 2-means ends with the
    # side started from the interior on the background (15 patches, 11 of
    # the 12 on the border): the side that touches the border less, the
    # object, is foreground.
    grid = (4, 4)
    border = border_patches(grid)
    obj = np.zeros(16, bool)
    obj[1] = True
    X = torch.from_numpy(np.where(obj[:, None], [0.0, 1.0], [1.0, 0.0]).astype(np.float32)[None])
    inherited = torch.from_numpy(~obj[None])  # the category took the background
    foreground = image_foreground(X, inherited, torch.zeros(1, 2), border, max_iter=10)
    np.testing.assert_array_equal(foreground[0], obj)


def test_split_by_score_ranks_scores_of_any_numeric_type_by_value():
    # Unsigned scores (e.g. counts) are ranked by value, not by their
    # wrapped-around negation (which would put a score of 0 first).
    for dtype in (np.uint8, np.int64, np.float32):
        np.testing.assert_array_equal(
            split_by_score(np.array([9, 0, 8], dtype), np.array([10, 10, 10])),
            [True, False, True],
        )


def test_split_by_score_with_no_patches_at_all_splits_by_score_alone():
    # Every cluster empty: the clusters count alike, so the split is Otsu's
    # on the scores themselves ({5, 4} | {0}, not the first alone).
    np.testing.assert_array_equal(split_by_score(np.array([5.0, 4.0, 0.0]), np.zeros(3)),
                                  [True, True, False])
    np.testing.assert_array_equal(split_by_score(np.array([0.0, 1.0, 5.0]), np.zeros(3)),
                                  [False, False, True])


def test_split_by_score_depends_on_relative_weights_only():
    # Patch counts or their shares (all below one) give the same split,
    # including the rule that an empty cluster is background.
    cases = [
        (np.array([10.0, 4.0, 0.0]), np.array([1, 100, 100])),
        (np.array([10.0, 4.0, 0.0]), np.array([100, 100, 1])),
        (np.array([9.0, 1.0, 0.1, 0.0]), np.array([0, 10, 10, 10])),
        (np.array([5.0, 3.0, 2.9, 0.0]), np.array([3, 1, 1, 4])),
    ]
    for scores, counts in cases:
        expected = split_by_score(scores, counts)
        for scale in (1e-3, 1 / counts.sum(), 7.0):
            np.testing.assert_array_equal(split_by_score(scores, counts * scale), expected)
    # A single-patch cluster counts as evidence, like any cluster with patches.
    np.testing.assert_array_equal(
        split_by_score(np.array([9.0, 5.0, 0.0]), np.array([0, 1, 10])), [False, True, False]
    )


def test_split_by_score_keeps_equal_scores_together_below_the_top():
    # Sorted scores 3 | 1, 1 | 0 with most weight on the tied pair: the best
    # unconstrained cut would separate the pair; it is never cut, wherever
    # it lies in the order.
    scores = np.array([3.0, 1.0, 1.0, 0.0])
    for weights in ([1, 50, 1, 50], [50, 1, 50, 1], [1, 1, 1, 1], [5, 1, 100, 3]):
        foreground = split_by_score(scores, np.array(weights))
        assert foreground[1] == foreground[2], weights
    # Tied clusters without patches, with the only patches below them: no
    # cut has any evidence, and still the tied pair is not split.
    np.testing.assert_array_equal(split_by_score(np.array([2.0, 2.0, 1.0]), np.array([0, 0, 3])),
                                  [True, True, False])
    # Billions of patches: a one-patch cluster tied with a big one makes the
    # cut between them as good as the best to within rounding; it is still
    # not taken.
    np.testing.assert_array_equal(
        split_by_score(np.array([3.0, 1.0, 1.0, 0.0]), np.array([10**9, 10**10, 1, 10**10])),
        [True, True, True, False],
    )


def test_border_ratios_depend_on_shares_not_on_counts():
    counts, border = np.array([30, 50, 20]), np.array([60, 30, 10])
    expected = border_ratios(counts, border)
    np.testing.assert_allclose(border_ratios(counts / counts.sum(), border / border.sum()),
                               expected)
    # A single patch, on the border: it is there exactly as often as chance.
    np.testing.assert_allclose(border_ratios(np.array([1, 0]), np.array([1, 0])), [1, 0])


def test_attention_rule_judges_a_single_patch_cluster_by_its_attention():
    # Mean attention 0.9 (one patch) against 0.5 (ten patches).
    np.testing.assert_array_equal(
        attention_foreground(np.array([1, 10]), np.array([0.9, 5.0])), [True, False]
    )


def test_border_share_of_a_one_patch_border():
    # A 1 x 1 grid: its only patch is the whole border.
    border = border_patches((1, 1))
    np.testing.assert_array_equal(border, [True])
    np.testing.assert_allclose(border_share(np.array([[True], [False]]), border), [1, 0])


def test_image_level_on_equal_agreement_keeps_the_side_grown_from_the_category():
    # Blob A {0, 1} and blob B {10, 11}; the category says {0, 10}. The
    # 2-means started from it ends on A | B, and A and B agree equally with
    # the category (IoU 1/3 each): the side grown from the category's
    # foreground (0 and 1 nearer its mean 5 than the rest's mean 6) stays.
    values = np.array([0.0, 1.0, 10.0, 11.0], np.float32)
    X = torch.from_numpy(np.stack([values, np.zeros(4, np.float32)], 1))[None]
    category = torch.tensor([[True, False, True, False]])
    foreground = image_foreground(X, category, torch.zeros(1, 2), _off_border(X), max_iter=10)
    np.testing.assert_array_equal(foreground[0], [True, True, False, False])


def test_a_redone_split_even_on_the_border_keeps_the_side_grown_from_the_interior():
    # A 4 x 4 grid of P (e0) on 6 border patches, Q (e1) on the other 6 and
    # on 3 of the 4 interior patches, and R (3 e1) on the last. The category
    # took P and Q: the 2-means from it keeps P + Q | R, whose foreground
    # fills the border, so the image level is redone from the border prior.
    # From the interior (mostly Q) it ends on P | Q + R: each side holds 6
    # of the 12 border patches, and the side grown from the interior, Q + R,
    # stays the foreground.
    p = np.zeros((4, 4), bool)
    p[0, :] = True
    p[1:3, 0] = True
    r = np.zeros((4, 4), bool)
    r[2, 2] = True
    p, r = p.ravel(), r.ravel()
    border = border_patches((4, 4))
    assert (p & border).sum() == (~p & border).sum() == 6
    X = np.where(p[:, None], [1.0, 0.0], [0.0, 1.0])
    X[r] = [0.0, 3.0]
    X = torch.from_numpy(X.astype(np.float32)[None])
    foreground = image_foreground(X, torch.from_numpy(~r[None]), torch.zeros(1, 2), border,
                                  max_iter=10)
    np.testing.assert_array_equal(foreground[0], ~p)
    # Without the border check the inherited P + Q would have stayed.
    kept = image_foreground(X, torch.from_numpy(~r[None]), torch.zeros(1, 2),
                            np.zeros_like(border), max_iter=10)
    np.testing.assert_array_equal(kept[0], ~r)


def test_group_indices_in_order_of_first_appearance():
    assert group_indices([(4, 4), (3, 5), (4, 4), (2, 2), (3, 5)]) == [
        ((4, 4), [0, 2]), ((3, 5), [1, 4]), ((2, 2), [3])]
    assert group_indices([]) == []


class _Chunk:
    """The parts of a chunk of images that the levels read."""

    def __init__(self, images, descriptors):
        self.grids = [image.shape[:2] for image in images]
        sizes = [h * w for h, w in self.grids]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)])
        self.image_of_patch = np.repeat(np.arange(len(images)), sizes)
        self.patches = np.concatenate([image.reshape(-1, image.shape[-1]) for image in images])
        self.descriptors = np.asarray(descriptors, np.float32)


def _scene(grid, object_patches, seed):
    """Background patches near e0 and object patches near e1, in 3-D."""
    rng = np.random.default_rng(seed)
    obj = np.zeros(grid, bool)
    obj[object_patches] = True
    X = np.where(obj[..., None], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0])
    return (X + 0.03 * rng.standard_normal(X.shape)).astype(np.float32), obj.ravel()


def _fitted():
    # Dataset level: background (e0), object (e1), and a far cluster that no
    # patch is near; only the second is foreground.
    dataset_centroids = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 9]], np.float32)
    dataset_foreground = np.array([False, True, False])
    category_centers = np.array([[1, 0], [0, 1], [-1, 0]], np.float32)
    category_pairs = np.array([
        [[1, 0, 0], [0, 1, 0]],  # category 0: right way round
        [[0, 1, 0], [1, 0, 0]],  # category 1: took the background as foreground
        # Category 2: every patch nearer its background centroid; its
        # foreground centroid is nearer the object than the background.
        [[0.6, 0.4, 0], [0, 3, 0]],
    ], np.float32)
    return dataset_centroids, dataset_foreground, category_centers, category_pairs


def _four_images():
    """Images of two grid sizes, interleaved, objects off the border in
    different places, with descriptors of categories 1, 0, 2, 1."""
    scenes = [
        _scene((4, 4), (slice(1, 3), slice(1, 3)), 0),
        _scene((3, 5), (slice(1, 2), slice(1, 4)), 1),
        _scene((4, 4), (slice(1, 3), slice(2, 3)), 2),
        _scene((3, 5), (slice(1, 2), slice(2, 3)), 3),
    ]
    descriptors = [[0.1, 0.9], [0.9, -0.1], [-0.8, 0.1], [0, 1.2]]
    chunk = _Chunk([X for X, _ in scenes], descriptors)
    return chunk, [obj for _, obj in scenes]


@pytest.mark.parametrize("consensus", ["vote", "intersection", "image"])
def test_chunk_levels_of_images_of_several_grids_and_categories(consensus):
    chunk, objects = _four_images()
    levels = chunk_levels(chunk, *_fitted(), consensus=consensus, max_iter=10,
                          device=torch.device("cpu"))
    obj = np.concatenate(objects)
    np.testing.assert_array_equal(levels["category_index"], [1, 0, 2, 1])
    # Dataset level: the patches nearest its foreground centroid.
    np.testing.assert_array_equal(levels["dataset"], obj)
    # Category level: by each image's own category's pair; category 1 has
    # it inverted and category 2 puts nothing in the foreground.
    inverted = np.isin(chunk.image_of_patch, [0, 3])
    empty = chunk.image_of_patch == 2
    np.testing.assert_array_equal(levels["category"], np.where(inverted, ~obj, obj & ~empty))
    # Image level: the inverted images fill their border and are redone
    # from the border prior; the image with an empty category mask takes
    # the cluster nearer its category's foreground centroid. Every image
    # finds its own object, whatever the order and grids of the chunk.
    assert levels["image"].dtype == bool
    np.testing.assert_array_equal(levels["image"], obj)
    np.testing.assert_array_equal(
        levels["consensus"],
        combine_levels(levels["dataset"], levels["category"], levels["image"], consensus),
    )
    expected = {"vote": np.where(obj, np.where(inverted | empty, 2 / 3, 1), np.where(inverted, 1 / 3, 0)),
                "intersection": obj & ~inverted & ~empty, "image": obj}[consensus]
    np.testing.assert_allclose(levels["consensus"], expected, rtol=1e-6)


def test_chunk_levels_equal_each_image_alone():
    # The images of one grid run their 2-means as a batch: each image's
    # levels are those it gets in a chunk of its own.
    chunk, objects = _four_images()
    fitted = _fitted()
    together = chunk_levels(chunk, *fitted, consensus="vote", max_iter=10, device="cpu")
    for j in range(len(objects)):
        rows = slice(chunk.offsets[j], chunk.offsets[j + 1])
        alone = _Chunk([chunk.patches[rows].reshape(*chunk.grids[j], -1)],
                       chunk.descriptors[j:j + 1])
        levels = chunk_levels(alone, *fitted, consensus="vote", max_iter=10, device="cpu")
        for name in ("dataset", "category", "image", "consensus"):
            np.testing.assert_array_equal(together[name][rows], levels[name], err_msg=name)



@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_chunk_levels_on_a_gpu_equal_those_on_the_cpu():
    chunk, _ = _four_images()
    fitted = _fitted()
    cpu = chunk_levels(chunk, *fitted, consensus="vote", max_iter=10, device=torch.device("cpu"))
    gpu = chunk_levels(chunk, *fitted, consensus="vote", max_iter=10, device=torch.device("cuda"))
    for name in ("dataset", "category", "image", "consensus", "category_index"):
        np.testing.assert_array_equal(gpu[name], cpu[name], err_msg=name)
