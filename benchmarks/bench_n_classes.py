"""Criteria for choosing the number of classes without labels, compared.

Planted structures with 3, 6 and 9 classes of varied sizes go through the
real segmenter; the region descriptors it clusters are recorded, and each
criterion that scikit-learn or scipy provide picks a count from 2 to
``--max-classes``. Prints, per criterion, how often it found the planted
count, what it chose, and its time. The user guide quotes the figures.

    python benchmarks/bench_n_classes.py --seeds 0 1 2 3 4 [--categories]
"""

import argparse
import time
import warnings
from unittest import mock

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import (
    adjusted_rand_score,
    calinski_harabasz_score,
    davies_bouldin_score,
    silhouette_score,
)
from sklearn.mixture import BayesianGaussianMixture

import skseg._fit_stages
from skseg import MultilevelSegmenter
from skseg._n_classes import choose_n_clusters
from skseg.datasets import make_patch_features
from skseg.metrics import mean_iou


def planted(n_classes, n_images, random_state):
    """``make_patch_features`` with classes of varied sizes.

    Images are kept with a probability that falls linearly from 1 for the
    first class to 0.2 for the last (the mean over the classes an image
    holds), so the rarest class has about a fifth of the regions of the
    commonest.
    """
    X, masks = make_patch_features(n_images=n_images, n_classes=n_classes,
                                   random_state=random_state)
    weight = np.linspace(1.0, 0.2, n_classes)
    rng = np.random.default_rng(random_state)
    keep = [i for i, mask in enumerate(masks)
            if rng.random() < weight[np.unique(mask)[1:] - 1].mean()]
    return [X[i] for i in keep], [masks[i] for i in keep]


def region_descriptors(X, max_classes=30, random_state=0):
    """The descriptors the segmenter's ``n_classes="auto"`` looks at."""
    seen = []

    def recording(descriptors, *args, **kwargs):
        if kwargs["parameter"] == "n_classes":  # not the image categories
            seen.append(descriptors)
        return choose_n_clusters(descriptors, *args, **kwargs)

    with mock.patch.object(skseg._fit_stages, "choose_n_clusters", recording):
        MultilevelSegmenter("auto", max_classes=max_classes, refine=None,
                            random_state=random_state, device="cpu").fit(X)
    return seen[0]


def _kmeans_labels(Z, k, seed):
    return KMeans(k, n_init=10, random_state=seed).fit_predict(Z)


def _argmax(scores):
    return max(scores, key=lambda k: (scores[k], -k))


def by_index(name, score, project=True):
    """A criterion that scores every K-means partition and takes the best."""
    def choose(D, max_classes, seed):
        Z = PCA(max_classes, random_state=seed).fit_transform(D) if project else D
        return _argmax({k: score(Z, _kmeans_labels(Z, k, seed))
                        for k in range(2, max_classes + 1)})
    choose.__name__ = name
    return choose


def gap_statistic(D, max_classes, seed, n_references=10):
    """Tibshirani, Walther and Hastie (2001): the smallest k with
    gap(k) >= gap(k + 1) - s(k + 1), references uniform in the PCA box."""
    Z = PCA(max_classes, random_state=seed).fit_transform(D)
    rng = np.random.default_rng(seed)
    references = [rng.uniform(Z.min(0), Z.max(0), size=Z.shape) for _ in range(n_references)]
    gap, spread = [], []
    for k in range(1, max_classes + 2):
        log_w = np.log(KMeans(k, n_init=10, random_state=seed).fit(Z).inertia_)
        log_ref = np.log([KMeans(k, n_init=1, random_state=seed).fit(R).inertia_
                          for R in references])
        gap.append(log_ref.mean() - log_w)
        spread.append(log_ref.std() * np.sqrt(1 + 1 / n_references))
    for k in range(1, max_classes + 1):
        if gap[k - 1] >= gap[k] - spread[k]:
            return k
    return max_classes


def stability(D, max_classes, seed, n_pairs=5, fraction=0.8):
    """Mean adjusted Rand index between K-means fits on two random subsets,
    compared on all descriptors (Ben-Hur, Elisseeff and Guyon, 2002)."""
    Z = PCA(max_classes, random_state=seed).fit_transform(D)
    rng = np.random.RandomState(seed)
    scores = {}
    for k in range(2, max_classes + 1):
        agreement = []
        for _ in range(n_pairs):
            fits = [
                KMeans(k, n_init=1, random_state=rng.randint(1 << 30))
                .fit(Z[rng.choice(len(Z), int(fraction * len(Z)), replace=False)])
                for _ in range(2)
            ]
            agreement.append(adjusted_rand_score(fits[0].predict(Z), fits[1].predict(Z)))
        scores[k] = np.mean(agreement)
    return _argmax(scores)


def bayesian_mixture(D, max_classes, seed):
    """Components of a Dirichlet-process Gaussian mixture holding at least
    half a uniform share of the weight."""
    Z = PCA(max_classes, random_state=seed).fit_transform(D)
    mixture = BayesianGaussianMixture(
        n_components=max_classes, covariance_type="diag", max_iter=500, random_state=seed,
    ).fit(Z)
    return max(1, int((mixture.weights_ >= 0.5 / max_classes).sum()))


def chosen(D, max_classes, seed):
    return choose_n_clusters(D, max_classes, random_state=seed)[0]


CRITERIA = {
    "silhouette, PCA (chosen)": chosen,
    "silhouette, full space": by_index("silhouette", silhouette_score, project=False),
    "Calinski-Harabasz, PCA": by_index("calinski_harabasz", calinski_harabasz_score),
    "Davies-Bouldin, PCA": by_index("davies_bouldin",
                                    lambda Z, labels: -davies_bouldin_score(Z, labels)),
    "gap statistic, PCA": gap_statistic,
    "stability (ARI), PCA": stability,
    "Bayesian GMM, PCA": bayesian_mixture,
}


def compare_categories(sets, max_classes):
    """mIoU with n_categories "auto", 1, n_classes and 30, n_classes given."""
    print("\nn_categories with n_classes given: chosen count and mIoU per set")
    totals = {}
    for (n_classes, seed), (X, masks) in sets.items():
        shown = []
        for n_categories in ("auto", 1, n_classes, 30):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                segmenter = MultilevelSegmenter(
                    n_classes, n_categories=n_categories, max_classes=max_classes,
                    refine=None, random_state=0, device="cpu").fit(X)
            score = mean_iou(masks, segmenter.labels_)
            key = "n_classes" if n_categories == n_classes else str(n_categories)
            totals.setdefault(key, []).append(score)
            shown.append(f"{key}: {segmenter.n_categories_} -> {score:.3f}")
        print(f"  {n_classes} classes, seed {seed}: " + ", ".join(shown), flush=True)
    print("  mean mIoU: " + ", ".join(f"{key} {np.mean(v):.3f}" for key, v in totals.items()))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--classes", type=int, nargs="+", default=[3, 6, 9])
    parser.add_argument("--max-classes", type=int, default=12)
    parser.add_argument("--images-per-class", type=int, default=30)
    parser.add_argument("--categories", action="store_true",
                        help="also compare n_categories='auto' with fixed counts")
    args = parser.parse_args(argv)
    data, sets = {}, {}
    for n_classes in args.classes:
        for seed in args.seeds:
            sets[n_classes, seed] = planted(n_classes, args.images_per_class * n_classes, seed)
            data[n_classes, seed] = region_descriptors(sets[n_classes, seed][0],
                                                       args.max_classes)
    sizes = [len(D) for D in data.values()]
    print(f"{len(data)} planted sets, {min(sizes)} to {max(sizes)} region descriptors of "
          f"dimension {next(iter(data.values())).shape[1]}; candidates 2..{args.max_classes}")
    print(f"{'criterion':28s} {'found':>7s}  {'seconds':>7s}  chosen count per set",
          flush=True)
    results = {}
    for name, criterion in CRITERIA.items():
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            picks = {key: criterion(D, args.max_classes, key[1]) for key, D in data.items()}
        seconds = time.perf_counter() - start
        found = sum(pick == key[0] for key, pick in picks.items())
        shown = " ".join(f"{key[0]}:{pick}" for key, pick in picks.items())
        print(f"{name:28s} {found:3d}/{len(picks):<3d}  {seconds:7.1f}  {shown}", flush=True)
        results[name] = picks
    if args.categories:
        compare_categories(sets, args.max_classes)
    return results


if __name__ == "__main__":
    main()
