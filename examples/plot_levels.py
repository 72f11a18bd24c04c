"""
The three clustering levels and their consensus
===============================================

:class:`~skseg.MultilevelSegmenter` splits foreground from background three
times: over the whole dataset, within each pseudo-category of images, and
within each image. Each level picks its foreground cluster by agreement with
the level above, and ``consensus="vote"`` keeps a patch where at least two
levels agree. :meth:`~skseg.MultilevelSegmenter.predict_levels` shows them.

The fitted segmenter also records how the decision went: the share of the
patches (and of the border patches) in the foreground at each level, and how
much the levels agree; a :class:`~skseg.ForegroundWarning` says when these
look wrong. With DINO features we expect the levels to agree more than with
the random weights used here; that is not measured yet.
"""

import sys

import matplotlib.pyplot as plt

from skseg import MultilevelSegmenter, ViTPatchTransformer
from skseg.datasets import make_scenes

images, _ = make_scenes(n_images=24, n_classes=3, image_size=(160, 160), random_state=0)
features = ViTPatchTransformer("vit_small_patch16_224.dino", pretrained=False).fit_transform(images)
segmenter = MultilevelSegmenter(n_classes=3, random_state=0).fit(features)
levels = segmenter.predict_levels(features[:4])
print("foreground share:", {k: round(v, 2) for k, v in segmenter.foreground_share_.items()})
print("on the border:", {k: round(v, 2) for k, v in segmenter.border_foreground_share_.items()})
print("agreement (IoU):", {k: round(v, 2) for k, v in segmenter.level_agreement_.items()})

names = ["dataset", "category", "image", "consensus"]
fig, axes = plt.subplots(4, 5, figsize=(10, 8))
for row, (image, level) in enumerate(zip(images, levels)):
    axes[row, 0].imshow(image)
    for column, name in enumerate(names, start=1):
        axes[row, column].imshow(level[name], vmin=0, vmax=1, cmap="gray")
for column, title in enumerate(["image", *names]):
    axes[0, column].set_title(title)
for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
plt.tight_layout()

if "sphinx_gallery" not in sys.modules:  # run as a script: write the figure
    plt.savefig("plot_levels.png", dpi=100)
    print("wrote plot_levels.png")
