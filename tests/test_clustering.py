"""The clustering kernels: content-keyed samples, K-means, batched 2-means."""

import numpy as np
import torch
from sklearn.cluster import KMeans

from skseg._clustering import (
    BoundedSample,
    batched_two_means,
    fit_kmeans,
    image_priorities,
    nearest_centroid,
    patch_priorities,
    priority_bound,
    second_is_nearer,
    unit_rows,
)


def test_bounded_sample_keeps_the_smallest_priorities_in_any_order_and_chunking():
    rng = np.random.default_rng(0)
    priorities = rng.integers(0, 2**63, 1000).astype(np.uint64)
    rows = np.arange(1000)
    expected = rows[np.argsort(priorities)[:50]]
    for seed in range(3):
        order = np.random.default_rng(seed).permutation(1000)
        sample = BoundedSample(50)
        for part in np.array_split(order, 7 + seed * 13):
            sample.offer(priorities[part], rows[part])
        np.testing.assert_array_equal(sample.result(), expected)
        assert len(sample) == 50


def test_bounded_sample_merges_partial_samples_and_keeps_all_when_small():
    priorities = np.array([5, 1, 4, 2, 3], dtype=np.uint64)
    rows = np.array([[50], [10], [40], [20], [30]])
    left, right = BoundedSample(3), BoundedSample(3)
    left.offer(priorities[:2], rows[:2])
    right.offer(priorities[2:], rows[2:])
    left.merge(right)
    np.testing.assert_array_equal(left.result(), [[10], [20], [30]])
    small = BoundedSample(10)
    small.offer(priorities, rows)
    assert len(small) == 5
    np.testing.assert_array_equal(small.result(), [[10], [20], [30], [40], [50]])


def test_priorities_depend_on_seed_content_and_position_only():
    a = patch_priorities(0, 123, 50)
    np.testing.assert_array_equal(a, patch_priorities(0, 123, 50))
    np.testing.assert_array_equal(a[:10], patch_priorities(0, 123, 10))
    assert len(set(a.tolist())) == 50
    assert not np.array_equal(a, patch_priorities(1, 123, 50))
    assert not np.array_equal(a, patch_priorities(0, 124, 50))
    keys = np.array([1, 2, 3], dtype=np.uint64)
    np.testing.assert_array_equal(image_priorities(7, keys)[::-1], image_priorities(7, keys[::-1]))
    # A uniform sample: the smallest tenth of priorities is spread over positions.
    many = patch_priorities(3, 99, 10_000)
    chosen = np.argsort(many)[:1000]
    assert 400 < (chosen < 5000).sum() < 600


def test_unit_rows_scales_in_place_and_keeps_zero_rows():
    X = np.array([[3.0, 4.0], [0.0, 0.0]], np.float32)
    out = unit_rows(X)
    assert out is X
    np.testing.assert_allclose(X, [[0.6, 0.8], [0.0, 0.0]])
    assert unit_rows(np.zeros((0, 3))).shape == (0, 3)


def test_nearest_centroid_matches_brute_force():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 6)).astype(np.float32)
    C = rng.standard_normal((5, 6)).astype(np.float32)
    expected = ((X[:, None] - C) ** 2).sum(-1).argmin(1)
    np.testing.assert_array_equal(nearest_centroid(X, C), expected)


def test_second_is_nearer_is_the_nearest_centroid_rule():
    rng = np.random.default_rng(1)
    pairs = rng.standard_normal((2, 4)).astype(np.float32)
    X = rng.standard_normal((100, 4)).astype(np.float32)
    direction, offset = second_is_nearer(pairs)
    np.testing.assert_array_equal(X @ direction > offset, nearest_centroid(X, pairs) == 1)


def test_batched_two_means_matches_a_per_image_loop():
    rng = np.random.default_rng(0)
    X = torch.from_numpy(rng.standard_normal((5, 30, 4)).astype(np.float32))
    X[:, :10] += 3
    init = torch.zeros(5, 30, dtype=torch.bool)
    init[:, :12] = True
    init[4] = False  # the level above saw no foreground here
    split, centroids = batched_two_means(X, init, max_iter=50)
    for b in range(5):
        km = KMeans(2, init=centroids[b].numpy(), n_init=1).fit(X[b].numpy())
        assert (km.labels_ == split[b].numpy()).all() or (km.labels_ != split[b].numpy()).all()
        assert split[b, :10].all() != split[b, 10:].any()


def test_batched_two_means_seeds_an_empty_side_from_the_farthest_patch():
    # Every patch starts on one side; the other side starts at the patch
    # farthest from their mean, so one step separates the outlier.
    X = torch.zeros(1, 6, 2)
    X[0, 5] = torch.tensor([10.0, 0.0])
    outlier = np.arange(6) == 5
    for side in (True, False):
        split, centroids = batched_two_means(X, torch.full((1, 6), side), max_iter=1)
        # The seeded side holds the outlier alone.
        np.testing.assert_array_equal(split[0].numpy(), ~outlier if side else outlier)
        np.testing.assert_allclose(centroids[0, 0 if side else 1].numpy(), [10.0, 0.0])


def test_batched_two_means_starts_from_the_level_above():
    # Two equally good splits; the one the level above suggests is kept.
    X = torch.tensor([[[0.0], [0.0], [1.0], [1.0]]])
    init = torch.tensor([[True, True, False, False]])
    split, _ = batched_two_means(X, init, max_iter=5)
    np.testing.assert_array_equal(split[0].numpy(), [True, True, False, False])


def test_bounded_sample_is_exact_for_small_sizes_and_empty_when_offered_nothing():
    rng = np.random.default_rng(5)
    for _ in range(200):
        # Sizes below and above half the 40 rows, and above all of them: some
        # samples are compacted as rows arrive, some only when the result is
        # asked for, some keep every row.
        size = int(rng.integers(2, 50))
        priorities = rng.permutation(40).astype(np.uint64)
        sample = BoundedSample(size)
        for part in np.array_split(np.arange(40), int(rng.integers(1, 9))):
            sample.offer(priorities[part], part)
        np.testing.assert_array_equal(sample.result(), np.argsort(priorities)[:size])
    assert len(BoundedSample(3).result()) == 0


def test_bounded_sample_holds_fewer_than_twice_its_size():
    # Falling priorities: every row offered beats the sample, the worst case.
    sample = BoundedSample(10)
    priorities = np.arange(3000, 0, -1).astype(np.uint64)
    for start in range(0, 3000, 10):
        sample.offer(priorities[start:start + 10], np.arange(start, start + 10))
        assert sum(len(p) for p, _ in sample._parts) < 2 * 10
    np.testing.assert_array_equal(sample.result(), np.arange(2999, 2989, -1))


def test_priorities_of_different_images_are_unrelated():
    keys = np.arange(1000, dtype=np.uint64)
    assert len(set(image_priorities(7, keys).tolist())) == 1000
    assert len({int(patch_priorities(7, int(k), 1)[0]) for k in keys}) == 1000


def test_nearest_centroid_covers_every_row_of_large_inputs():
    X = np.zeros((70_000, 2), np.float32)
    X[-5:] = 10.0
    assigned = nearest_centroid(X, np.array([[0.0, 0.0], [10.0, 10.0]], np.float32))
    assert assigned.dtype.kind == "i"  # indices, used to index the cluster rules
    assert assigned[:-5].sum() == 0 and (assigned[-5:] == 1).all()


def test_bounded_sample_keeps_the_values_of_rows_of_different_types():
    sample = BoundedSample(3)
    sample.offer(np.array([5, 1], np.uint64), np.array([[1], [2]], np.int64))
    sample.offer(np.array([3, 0], np.uint64), np.array([[1.25], [2.5]]))
    np.testing.assert_array_equal(sample.result(), [[2.5], [2], [1.25]])
    # Rows of one type keep it (float32 patches stay float32: half the memory).
    single = BoundedSample(2)
    for start in range(0, 6, 2):
        single.offer(np.arange(start, start + 2, dtype=np.uint64),
                     np.ones((2, 3), np.float32))
    assert single.result().dtype == np.float32


def test_a_sample_travels_with_at_most_its_size_and_keeps_only_rows_under_its_bound():
    import pickle

    priorities = np.arange(100, dtype=np.uint64)[::-1].copy()
    rows = np.arange(100)[:, None]
    sample = BoundedSample(30)
    sample.offer(priorities[:55], rows[:55])  # under twice its size: not yet compacted
    travelled = pickle.loads(pickle.dumps(sample))
    assert sum(len(p) for p, _ in travelled._parts) == 30
    np.testing.assert_array_equal(travelled.result(), sample.result())
    below = BoundedSample(30, below=np.uint64(10))
    below.offer(priorities, rows)
    np.testing.assert_array_equal(below.result()[:, 0], np.arange(99, 89, -1))


def test_the_priority_bound_keeps_margin_times_the_sample_and_never_too_few():
    assert priority_bound(100, 180) is None  # it would keep every row
    assert priority_bound(100, 10**5) == priority_bound(100, 10**5, margin=1)  # exact counts
    for margin in (1, 2):
        for n_rows in (1_000, 100_000):
            bound = priority_bound(100, n_rows, margin)
            counts = [(patch_priorities(seed, 7, n_rows) < bound).sum() for seed in range(20)]
            assert 100 < min(counts) and max(counts) < margin * 100 + 8 * 10 + 40
            assert abs(np.median(counts) - (margin * 100 + 80)) < 20


def test_rows_at_or_under_the_largest_priority_are_the_sample_again():
    # What the workers keep of a sample whose priorities alone came back:
    # the rows at or under its largest priority, offered from anywhere,
    # make the same sample.
    rng = np.random.default_rng(1)
    priorities = rng.integers(0, 2**64 - 1, 500, dtype=np.uint64, endpoint=True)
    rows = rng.standard_normal((500, 3))
    whole = BoundedSample(40)
    for part in np.array_split(np.arange(500), 9):
        whole.offer(priorities[part], rows[part])
    kept = priorities <= whole.largest()
    assert kept.sum() == 40
    again = BoundedSample(40)
    again.offer(priorities[kept], rows[kept])
    np.testing.assert_array_equal(again.result(), whole.result())
    np.testing.assert_array_equal(whole.items()[0], np.sort(priorities)[:40])
    assert BoundedSample(3).largest() is None


def test_nearest_centroid_is_the_same_whatever_the_working_memory():
    import sklearn

    rng = np.random.default_rng(0)
    X = rng.standard_normal((5000, 16)).astype(np.float32)
    centroids = rng.standard_normal((7, 16)).astype(np.float32)
    expected = ((X[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
    np.testing.assert_array_equal(nearest_centroid(X, centroids), expected)
    with sklearn.config_context(working_memory=0.01):  # blocks of a few hundred rows
        np.testing.assert_array_equal(nearest_centroid(X, centroids), expected)


_MASK64 = (1 << 64) - 1


def _splitmix64_reference(state):
    """SplitMix64's output for ``state`` (Steele, Lea and Flood; Vigna's
    reference code), in Python integers."""
    z = (state + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def test_priorities_are_splitmix64_of_seed_key_and_position():
    # Pinned values: a random_state draws the same samples, hence the same
    # masks, on every platform and in every version that keeps this rule.
    assert _splitmix64_reference(0) == 0xE220A8397B1DCDAF  # the published first output
    seed, key = 42, 0x0123456789ABCDEF
    base = _splitmix64_reference(seed) ^ key
    expected = [_splitmix64_reference((base + i * 0x9E3779B97F4A7C15) & _MASK64)
                for i in range(5)]
    assert patch_priorities(seed, key, 5).tolist() == expected
    keys = [key, 7, _MASK64]
    assert image_priorities(seed, keys).tolist() == [
        _splitmix64_reference(_splitmix64_reference(seed) ^ k) for k in keys]
    assert image_priorities(seed, keys).dtype == np.uint64


def test_fit_kmeans_finds_separated_clusters_the_same_way_for_a_seed():
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [10, 0], [0, 10]], np.float64)
    X = np.concatenate([c + rng.normal(scale=0.1, size=(50, 2)) for c in centres])
    found = fit_kmeans(X, 3, n_init=2, max_iter=50, seed=0)
    assert found.dtype == np.float32 and found.shape == (3, 2)
    distances = np.linalg.norm(centres[:, None] - found[None], axis=-1)
    assert sorted(distances.argmin(1)) == [0, 1, 2] and distances.min(1).max() < 0.1
    np.testing.assert_array_equal(fit_kmeans(X, 3, n_init=2, max_iter=50, seed=0), found)
    # Uniform rows take several iterations: max_iter stops them earlier.
    uniform = rng.random((500, 2))
    assert not np.array_equal(fit_kmeans(uniform, 5, n_init=1, max_iter=1, seed=3),
                              fit_kmeans(uniform, 5, n_init=1, max_iter=100, seed=3))


def test_fit_kmeans_on_fewer_distinct_rows_than_clusters_is_silent():
    import warnings

    X = np.repeat(np.eye(2), 5, axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        centroids = fit_kmeans(X, 3, n_init=1, max_iter=10, seed=0)
    assert {tuple(c) for c in centroids} <= {(1.0, 0.0), (0.0, 1.0)}
