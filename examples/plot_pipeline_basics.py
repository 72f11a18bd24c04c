"""
Segmenting a folder's worth of images with a Pipeline
=====================================================

The whole method in four lines: a :class:`~skseg.ViTPatchTransformer` turns
images into patch features, a :class:`~skseg.MultilevelSegmenter` clusters
them into one label mask per image, at the image's own resolution.

Here the ViT has random weights (nothing can be downloaded offline) and the
images are synthetic scenes with known masks. With DINO weights
(``pretrained=True``, the default) on real photographs we expect the key
features to separate objects from background far better than random ones
do; that is not yet measured here.
"""

import sys

import matplotlib.pyplot as plt
from sklearn.pipeline import Pipeline

from skseg import MultilevelSegmenter, ViTPatchTransformer
from skseg.datasets import make_scenes
from skseg.metrics import mean_iou

images, truths = make_scenes(n_images=24, n_classes=3, image_size=(160, 160), random_state=0)

pipeline = Pipeline([
    ("vit", ViTPatchTransformer("vit_small_patch16_224.dino", pretrained=False)),
    ("seg", MultilevelSegmenter(n_classes=3, random_state=0)),
])
masks = pipeline.fit(images).named_steps["seg"].labels_
print(f"mIoU against the known masks: {mean_iou(truths, masks):.3f}")

# %%
# Each mask has the image's size; 0 is background, 1..3 the discovered
# classes (arbitrary ids: the metric matches them to the true classes).
fig, axes = plt.subplots(3, 4, figsize=(9, 7))
for column in range(4):
    axes[0, column].imshow(images[column])
    axes[1, column].imshow(truths[column], vmin=0, vmax=3, cmap="tab10")
    axes[2, column].imshow(masks[column], vmin=0, vmax=3, cmap="tab10")
for row, title in enumerate(["image", "ground truth", "skseg"]):
    axes[row, 0].set_ylabel(title)
for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
plt.tight_layout()

if "sphinx_gallery" not in sys.modules:  # run as a script: write the figure
    plt.savefig("plot_pipeline_basics.png", dpi=100)
    print("wrote plot_pipeline_basics.png")
