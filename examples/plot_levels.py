"""
The three clustering levels and their consensus
===============================================

:class:`~skseg.MultilevelSegmenter` splits foreground from background three
times: over the whole dataset, within each pseudo-category of images, and
within each image. Each level picks its foreground cluster by agreement with
the level above, and ``consensus="vote"`` keeps a patch where at least two
levels agree. :meth:`~skseg.MultilevelSegmenter.predict_levels` shows them.

With random ViT weights the levels disagree a lot. With DINO features we
expect them to agree more, the dataset level alone to find most objects and
the image level to sharpen each image's split; none of this is measured yet.
"""

import sys

import matplotlib.pyplot as plt

from skseg import MultilevelSegmenter, ViTPatchTransformer
from skseg.datasets import make_scenes

images, _ = make_scenes(n_images=24, n_classes=3, image_size=(160, 160), random_state=0)
features = ViTPatchTransformer("vit_small_patch16_224.dino", pretrained=False).fit_transform(images)
segmenter = MultilevelSegmenter(n_classes=3, random_state=0).fit(features)
levels = segmenter.predict_levels(features[:4])

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
