"""
Choosing cluster counts with GridSearchCV and the mIoU scorer
=============================================================

With a few labelled images, the numbers of classes and categories can be
chosen by cross-validation: :data:`skseg.metrics.miou_scorer` scores each
fold's predictions with Hungarian-matched mIoU, the field's protocol.
Without labels, ``n_classes="auto"`` chooses the count instead (see
:ref:`sphx_glr_auto_examples_plot_choose_n_classes.py`).

The ViT forward pass is by far the most expensive step, so extract the
features once and search the segmenter alone; a full Pipeline search with the
transformer's feature store (``store=``) is shown at the end and runs the ViT
at most once per image too.
"""

import sys

import matplotlib.pyplot as plt
import numpy as np
from sklearn.model_selection import GridSearchCV, KFold

from skseg import MultilevelSegmenter, ViTPatchTransformer
from skseg.datasets import make_scenes
from skseg.metrics import miou_scorer

images, truths = make_scenes(n_images=30, n_classes=3, image_size=(128, 128), random_state=1)
features = ViTPatchTransformer("vit_small_patch16_224.dino", pretrained=False).fit_transform(images)

search = GridSearchCV(
    MultilevelSegmenter(refine=None, random_state=0),
    param_grid={"n_classes": [1, 2, 3, 5], "n_categories": [1, 3]},
    scoring=miou_scorer,
    cv=KFold(3),
).fit(features, truths)
print("best:", search.best_params_, f"mIoU {search.best_score_:.3f}")

# %%
# The scores of every candidate. With random weights the differences are
# small; with DINO weights we expect the number of classes to matter much
# more (not yet measured). Class counts are integers, and so are the ticks.
scores = search.cv_results_["mean_test_score"].reshape(4, 2)
plt.figure(figsize=(5, 3.5))
for j, n_categories in enumerate([1, 3]):
    plt.plot([1, 2, 3, 5], scores[:, j], marker="o", label=f"n_categories={n_categories}")
plt.xticks([1, 2, 3, 5])
plt.xlabel("n_classes")
plt.ylabel("cross-validated mIoU")
plt.legend()
plt.tight_layout()

if "sphinx_gallery" not in sys.modules:  # run as a script: write the figure
    plt.savefig("plot_grid_search.png", dpi=100)
    print("wrote plot_grid_search.png")

# %%
# The same search over a whole Pipeline: parameters are prefixed with the
# step name, and the feature store makes every fold and candidate after the
# first free of ViT work: images it holds are not run again.
import tempfile  # noqa: E402

from sklearn.pipeline import Pipeline  # noqa: E402

with tempfile.TemporaryDirectory() as cache:
    pipeline = Pipeline([
        ("vit", ViTPatchTransformer("vit_small_patch16_224.dino", pretrained=False,
                                    store=f"{cache}/features.zarr")),
        ("seg", MultilevelSegmenter(refine=None, random_state=0)),
    ])
    search = GridSearchCV(pipeline, {"seg__n_classes": [2, 3]}, scoring=miou_scorer,
                          cv=KFold(3)).fit(images, truths)
print("pipeline search:", search.best_params_, np.round(search.cv_results_["mean_test_score"], 3))
