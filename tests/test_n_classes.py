"""Choosing the number of classes without labels: skseg._n_classes and
MultilevelSegmenter(n_classes="auto")."""

import importlib.util
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import make_blobs

import skseg._n_classes
from skseg import MultilevelSegmenter
from skseg._n_classes import choose_n_clusters
from skseg.datasets import make_patch_features
from skseg.metrics import mean_iou

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_n_classes.py"
_spec = importlib.util.spec_from_file_location("bench_n_classes", BENCH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def _seg(n_classes="auto", **kwargs):
    params = dict(max_classes=10, refine=None, random_state=0, device="cpu")
    params.update(kwargs)
    return MultilevelSegmenter(n_classes, **params)


@pytest.mark.parametrize("planted_classes", [3, 6, 9])
@pytest.mark.slow
def test_auto_recovers_the_planted_count_and_scores_as_the_true_count(planted_classes):
    # Classes of varied sizes: the rarest has about a fifth of the commonest's regions.
    X, masks = bench.planted(planted_classes, 30 * planted_classes, random_state=0)
    auto = _seg().fit(X)
    assert auto.n_classes_ == planted_classes
    assert list(auto.n_classes_scores_) == list(range(2, 11))
    assert max(auto.n_classes_scores_.values()) == auto.n_classes_scores_[planted_classes]
    # Choosing draws from a copy of the generator, so auto fits exactly as
    # the true count given explicitly (with the categories auto chose) does.
    given = _seg(planted_classes, n_categories=auto.n_categories_).fit(X)
    for a, b in zip(auto.labels_, given.labels_):
        np.testing.assert_array_equal(a, b)
    # And it scores as well as the true count with the default categories.
    true_count = _seg(planted_classes).fit(X)
    assert mean_iou(masks, auto.labels_) >= mean_iou(masks, true_count.labels_) - 0.02


def test_blobs_are_counted_and_candidates_stop_below_the_rows():
    X, _ = make_blobs(n_samples=200, n_features=40, centers=5, cluster_std=2.0,
                      random_state=0)
    count, scores = choose_n_clusters(X, 8, random_state=0, n_init=2)
    assert count == 5 and list(scores) == list(range(2, 9))
    assert all(-1 <= s <= 1 for s in scores.values())
    count, scores = choose_n_clusters(X[:5], 10, random_state=0)
    assert list(scores) == [2, 3, 4]  # silhouette needs fewer clusters than rows


@pytest.mark.slow
def test_criterion_is_deterministic_for_a_fixed_random_state():
    X, _ = bench.planted(3, 60, random_state=1)
    a, b = _seg(max_classes=5).fit(X), _seg(max_classes=5).fit(X)
    assert a.n_classes_scores_ == b.n_classes_scores_
    assert a.n_categories_scores_ == b.n_categories_scores_
    D = bench.region_descriptors(X, max_classes=5)
    first = choose_n_clusters(D, 5, random_state=3, n_init=2)
    assert choose_n_clusters(D, 5, random_state=3, n_init=2) == first
    # The sample and the K-means starts depend on the seed.
    assert choose_n_clusters(D, 5, random_state=4, max_samples=30, n_init=2)[1] != \
        choose_n_clusters(D, 5, random_state=3, max_samples=30, n_init=2)[1]


def test_cost_is_bounded_by_max_samples(monkeypatch):
    X, _ = make_blobs(n_samples=3000, n_features=16, centers=3, random_state=0)
    seen = []
    real = skseg._n_classes.silhouette_score
    monkeypatch.setattr(skseg._n_classes, "silhouette_score",
                        lambda Z, labels: seen.append(Z.shape) or real(Z, labels))
    count, _ = choose_n_clusters(X, 4, random_state=0, max_samples=300, n_init=2)
    assert count == 3
    assert seen == [(300, 4)] * 3  # 300 rows on 4 principal components, k = 2..4


def test_candidate_kmeans_run_at_one_openmp_thread_and_torch_keeps_its_own(monkeypatch,
                                                                           two_torch_threads):
    # Hundreds of small K-means: a second OpenMP thread only waits (on a busy
    # machine, 76 s against 13 s); the limit ends with the choice.
    import torch
    from sklearn.utils._openmp_helpers import _openmp_effective_n_threads

    X, _ = make_blobs(n_samples=300, n_features=16, centers=3, random_state=0)
    threads = []
    real_fit = skseg._n_classes.KMeans.fit_predict
    monkeypatch.setattr(skseg._n_classes.KMeans, "fit_predict",
                        lambda self, Z: threads.append(_openmp_effective_n_threads())
                        or real_fit(self, Z))
    torch_threads = torch.get_num_threads()
    assert choose_n_clusters(X, 4, random_state=0, n_init=2)[0] == 3
    assert threads == [1, 1, 1]
    assert torch.get_num_threads() == torch_threads


def test_kmeans_sees_max_samples_rows_and_the_silhouette_a_bounded_share(monkeypatch):
    X, _ = make_blobs(n_samples=3000, n_features=16, centers=3, random_state=0)
    fitted, scored = [], []
    real_fit, real_score = skseg._n_classes.KMeans.fit_predict, skseg._n_classes.silhouette_score
    monkeypatch.setattr(skseg._n_classes.KMeans, "fit_predict",
                        lambda self, Z: fitted.append((len(Z), self.n_init, self.max_iter))
                        or real_fit(self, Z))
    monkeypatch.setattr(skseg._n_classes, "silhouette_score",
                        lambda Z, labels: scored.append(len(Z)) or real_score(Z, labels))
    monkeypatch.setattr(skseg._n_classes, "SILHOUETTE_ROWS", 500)
    count, _ = choose_n_clusters(X, 3, random_state=0, max_samples=2000, n_init=3, max_iter=7)
    assert count == 3
    assert fitted == [(2000, 3, 7)] * 2 and scored == [500] * 2


def test_a_count_with_empty_clusters_scores_worst():
    # Three distinct descriptors, repeated: no partition into 4 or 5 exists.
    X = np.repeat(np.eye(3, 8), 10, axis=0)
    count, scores = choose_n_clusters(X, 5, random_state=0)
    assert count == 3 and scores[3] == pytest.approx(1.0)
    assert scores[4] == scores[5] == -1.0


@pytest.mark.slow
def test_n_categories_auto_alone():
    X, masks = bench.planted(3, 60, random_state=2)
    seg = _seg(3, n_categories="auto", max_classes=6).fit(X)
    chosen = max(seg.n_categories_scores_, key=seg.n_categories_scores_.get)
    assert seg.n_categories_ == chosen
    assert not hasattr(seg, "n_classes_scores_")
    given = _seg(3, n_categories=chosen, max_classes=6).fit(X)
    for a, b in zip(seg.labels_, given.labels_):
        np.testing.assert_array_equal(a, b)
    # With an explicit n_classes, None still means n_classes; a refit
    # without "auto" keeps no scores from an earlier one.
    refitted = seg.set_params(n_categories=None).fit(X)
    assert refitted.n_categories_ == 3 and not hasattr(refitted, "n_categories_scores_")


def test_bad_values_give_clear_errors():
    X, _ = make_patch_features(n_images=6, n_classes=2, random_state=0)
    with pytest.raises(ValueError, match="max_classes"):
        _seg(max_classes=1).fit(X)
    with pytest.raises(ValueError, match="n_classes"):
        _seg("several").fit(X)
    with pytest.raises(ValueError, match="max_clusters=1 must be an integer of at least 2"):
        choose_n_clusters(np.eye(4), 1)
    with pytest.raises(ValueError, match="NaN"):
        choose_n_clusters(np.full((4, 2), np.nan), 3)
    # A single object region: nothing to compare.
    one, _ = make_patch_features(n_images=1, n_classes=1, max_objects=1, random_state=0)
    with pytest.raises(ValueError, match=r"Only 1 object regions found: n_classes='auto' "
                                         r"needs at least 3"):
        _seg(n_categories=1).fit(one)
    with pytest.raises(ValueError, match=r"Only 2 images found: n_categories='auto'"):
        _seg(n_categories="auto").fit(X[:2])
    # The fixed default still warns when there are fewer regions than classes.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _seg(20, n_categories=1).fit(one).n_classes_ == 1
    assert any("n_classes=20 exceeds the 1 object regions" in str(w.message) for w in caught)


@pytest.mark.slow
def test_reproduce_voc_reports_the_spread_over_seeds():
    path = BENCH.with_name("reproduce_voc.py")
    spec = importlib.util.spec_from_file_location("reproduce_voc", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.parse_args(["--root", "voc", "--seeds", "0", "1", "2"]).seeds == [0, 1, 2]
    X, masks = make_patch_features(n_images=20, n_classes=3, random_state=0)
    segmenter = _seg(3)
    # A seed already fitted is not refitted: its known score is kept as given.
    by_seed, mean, std = script.seed_spread(segmenter, X, masks, [4, 0, 1], known={4: 0.5})
    assert list(by_seed) == [4, 0, 1] and by_seed[4] == 0.5
    refitted = mean_iou(masks, _seg(3, random_state=1).fit_predict(X))
    assert by_seed[1] == pytest.approx(refitted)
    assert mean == pytest.approx(np.mean(list(by_seed.values())))
    assert std == pytest.approx(np.std(list(by_seed.values()), ddof=1))
    assert script.seed_spread(segmenter, X, masks, [0])[2] == 0.0


@pytest.mark.slow
def test_choose_n_classes_example_writes_its_figure_when_run_as_a_script(tmp_path):
    pytest.importorskip("matplotlib")
    example = BENCH.parents[1] / "examples" / "plot_choose_n_classes.py"
    env = {**os.environ, "MPLBACKEND": "Agg",
           "PYTHONPATH": os.pathsep.join([str(BENCH.parents[1]), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(example)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "chosen: 6 classes (6 planted)" in done.stdout
    assert (tmp_path / "plot_choose_n_classes.png").stat().st_size > 10_000
