"""Each decision of the three levels, on inputs where the right answer is known."""

import numpy as np
import pytest
import torch

from skseg._levels import (
    agreement,
    attention_foreground,
    border_foreground,
    border_patches,
    category_foreground,
    category_pair,
    combine_levels,
    image_foreground,
    oriented_pair,
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


def test_border_rule_makes_clusters_over_represented_on_the_border_background():
    # Cluster 0 holds 30% of patches but 60% of border patches: background.
    counts, border = np.array([30, 50, 20]), np.array([60, 30, 10])
    np.testing.assert_array_equal(border_foreground(counts, border), [False, True, True])
    # Equal shares count as foreground (the rule is "exceeds").
    np.testing.assert_array_equal(
        border_foreground(np.array([50, 30, 20]), np.array([50, 40, 10])), [True, False, True]
    )


def test_border_rule_keeps_one_background_cluster_when_all_shares_tie():
    # Every ratio is 1: all would be foreground, so the one with the highest
    # border ratio (the first, on a tie) becomes background.
    np.testing.assert_array_equal(
        border_foreground(np.array([50, 50]), np.array([10, 10])), [False, True]
    )
    np.testing.assert_array_equal(
        border_foreground(np.array([40, 40, 20]), np.array([20, 20, 10])), [False, True, True]
    )


def test_attention_rule_compares_cluster_means_with_the_overall_mean():
    counts = np.array([10, 10, 80])
    sums = np.array([9.0, 1.0, 20.0])  # means 0.9, 0.1, 0.25; overall 0.3
    np.testing.assert_array_equal(attention_foreground(counts, sums), [True, False, False])


def test_attention_rule_keeps_one_cluster_on_each_side():
    # All clusters exactly at the mean: none is above it, yet one becomes
    # foreground (the first of the tied highest).
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
    foreground = image_foreground(X, category, fg_centroid, max_iter=10)
    np.testing.assert_array_equal(foreground[0], np.arange(20) < 10)


def test_image_level_flips_its_clusters_to_agree_with_the_category():
    # The category mask covers the second blob and a little of the first; the
    # 2-means started from it converges with cluster 1 on the second blob.
    X = _two_blobs()
    category = torch.zeros(1, 20, dtype=torch.bool)
    category[0, 9:] = True
    foreground = image_foreground(X, category, torch.zeros(1, 4), max_iter=10)
    np.testing.assert_array_equal(foreground[0], np.arange(20) >= 10)
    # Inverted init: the split is the same partition, oriented by agreement.
    inverted = image_foreground(X, ~category, torch.zeros(1, 4), max_iter=10)
    np.testing.assert_array_equal(inverted[0], np.arange(20) < 10)


def test_image_level_tie_rule_uses_the_category_foreground_centroid():
    # The category put no patch of the image in the foreground: no agreement
    # to compare, so the cluster nearer the category's foreground centroid wins.
    X = _two_blobs()
    empty = torch.zeros(1, 20, dtype=torch.bool)
    near_first_blob = torch.tensor([[1.0, 0, 0, 0]])
    near_second_blob = torch.tensor([[0.0, 0, 0, 0]])
    np.testing.assert_array_equal(
        image_foreground(X, empty, near_first_blob, max_iter=10)[0], np.arange(20) < 10
    )
    np.testing.assert_array_equal(
        image_foreground(X, empty, near_second_blob, max_iter=10)[0], np.arange(20) >= 10
    )


def test_image_level_runs_every_image_of_a_batch_independently():
    X = torch.cat([_two_blobs(seed=0), _two_blobs(seed=1)])
    category = torch.zeros(2, 20, dtype=torch.bool)
    category[0, :10] = True
    category[1, 10:] = True
    foreground = image_foreground(X, category, torch.zeros(2, 4), max_iter=10)
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


def test_border_rule_can_find_several_background_clusters():
    # Two clusters crowd the border (ratio 1.6), one keeps off it (0.4).
    np.testing.assert_array_equal(
        border_foreground(np.array([25, 25, 50]), np.array([40, 40, 20])), [False, False, True]
    )
    border = border_patches((4, 4))
    assert border.dtype == bool and border.sum() == 12


def test_attention_rule_is_strictly_above_the_mean_and_weighs_by_counts():
    # Means 0.1, 0.2, 0.3; overall 0.2: only the third is above it.
    np.testing.assert_array_equal(
        attention_foreground(np.array([10, 10, 10]), np.array([1.0, 2.0, 3.0])),
        [False, False, True],
    )
    # Means 0.1, 0.4, 0.4; overall 0.3: two foreground clusters.
    np.testing.assert_array_equal(
        attention_foreground(np.array([10, 10, 10]), np.array([1.0, 4.0, 4.0])),
        [False, True, True],
    )
    # A single-patch cluster: its mean is its one value (0.3 > overall 0.2).
    np.testing.assert_array_equal(
        attention_foreground(np.array([1, 4]), np.array([0.3, 0.7])), [True, False]
    )


def test_at_least_one_each_decides_by_score():
    from skseg._levels import _at_least_one_each

    np.testing.assert_array_equal(
        _at_least_one_each(_mask("111"), np.array([3.0, 1.0, 2.0])), [True, False, True]
    )
    np.testing.assert_array_equal(
        _at_least_one_each(_mask("000"), np.array([1.0, 3.0, 2.0])), [False, True, False]
    )
    kept = _mask("010")
    np.testing.assert_array_equal(_at_least_one_each(kept, np.array([9.0, 0, 9])), kept)


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
    foreground = image_foreground(X, category, torch.zeros(1, 2), max_iter=10)
    np.testing.assert_array_equal(foreground[0], values < 5)


def test_image_level_tie_rule_per_image_of_a_batch():
    X = torch.cat([_two_blobs(seed=0), _two_blobs(seed=1)])
    empty = torch.zeros(2, 20, dtype=torch.bool)
    centroids = torch.tensor([[0.0, 0, 0, 0], [1.0, 0, 0, 0]])  # second blob, first blob
    foreground = image_foreground(X, empty, centroids, max_iter=10)
    np.testing.assert_array_equal(foreground[0], np.arange(20) >= 10)
    np.testing.assert_array_equal(foreground[1], np.arange(20) < 10)
