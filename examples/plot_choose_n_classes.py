"""
Choosing the number of classes without labels
=============================================

A folder of photographs comes without a class count, and
:class:`~sklearn.model_selection.GridSearchCV` needs labels to score one.
``n_classes="auto"`` chooses the count from the region descriptors alone:
for every count from 2 to ``max_classes`` it runs K-means and computes the
mean silhouette coefficient (how much closer each region is to its own class
than to the next one), and keeps the count with the highest silhouette.
``n_classes_scores_`` holds the whole curve. The user guide explains why
this criterion was chosen over the others scikit-learn offers.

The ViT with random weights that the other examples use gives region
descriptors with no class structure to find, so this example uses planted
patch features (:func:`skseg.datasets.make_patch_features`): 6 classes, each
image holding one or two objects. With DINO features on photographs we expect
a flatter curve, as real classes overlap; that is not yet measured.
"""

import sys

import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from skseg import MultilevelSegmenter
from skseg.datasets import make_patch_features
from skseg.metrics import mean_iou

X, truths = make_patch_features(n_images=150, n_classes=6, random_state=0)
segmenter = MultilevelSegmenter("auto", max_classes=12, refine=None, random_state=0).fit(X)
print(f"chosen: {segmenter.n_classes_} classes (6 planted), "
      f"{segmenter.n_categories_} image categories")
print(f"mIoU against the planted masks: {mean_iou(truths, segmenter.labels_):.3f}")

# %%
# The criterion over the candidate counts, and the masks with the chosen
# count (at patch resolution: these features have no pixels). Class ids are
# arbitrary; the metric matches them to the planted classes.
scores = segmenter.n_classes_scores_
fig, axes = plt.subplot_mosaic(
    [["curve"] * 5, [f"truth{i}" for i in range(5)], [f"mask{i}" for i in range(5)]],
    figsize=(9, 6.5), height_ratios=[1.6, 1, 1],
)
curve = axes["curve"]
curve.plot(list(scores), list(scores.values()), marker="o")
curve.axvline(segmenter.n_classes_, color="tab:red", linestyle="--",
              label=f"chosen: {segmenter.n_classes_}")
curve.xaxis.set_major_locator(MaxNLocator(integer=True))
curve.set_xlabel("number of classes")
curve.set_ylabel("mean silhouette")
curve.legend()
for i in range(5):
    axes[f"truth{i}"].imshow(truths[i], vmin=0, vmax=12, cmap="tab20", interpolation="nearest")
    axes[f"mask{i}"].imshow(segmenter.labels_[i], vmin=0, vmax=12, cmap="tab20",
                            interpolation="nearest")
    for name in (f"truth{i}", f"mask{i}"):
        axes[name].set_xticks([])
        axes[name].set_yticks([])
axes["truth0"].set_ylabel("planted")
axes["mask0"].set_ylabel("auto")
fig.tight_layout()

if "sphinx_gallery" not in sys.modules:  # run as a script: write the figure
    fig.savefig("plot_choose_n_classes.png", dpi=100)
    print("wrote plot_choose_n_classes.png")
