"""
Which ViT features: keys, queries, values or tokens
===================================================

``facet`` chooses what :class:`~skseg.ViTPatchTransformer` reads from the
last block: the attention keys (the default, following the paper's
"attention features"), the queries, the values, or the block's output tokens.

With random weights the facets are all weak and their ranking means little.
Keys are the default because the paper clusters "attention features"; we
expect them to separate foreground from background most cleanly with DINO
weights, but that is not yet measured here.
"""

import sys

import matplotlib.pyplot as plt

from skseg import MultilevelSegmenter, ViTPatchTransformer
from skseg.datasets import make_scenes
from skseg.metrics import mean_iou

images, truths = make_scenes(n_images=24, n_classes=3, image_size=(160, 160), random_state=0)
facets = ["key", "query", "value", "token"]
masks, scores = {}, {}
for facet in facets:
    features = ViTPatchTransformer("vit_small_patch16_224.dino", pretrained=False,
                                   facet=facet).fit_transform(images)
    masks[facet] = MultilevelSegmenter(n_classes=3, random_state=0).fit_predict(features)
    scores[facet] = mean_iou(truths, masks[facet])
    print(f"{facet:6s} mIoU {scores[facet]:.3f}")

fig, axes = plt.subplots(2, 5, figsize=(11, 4.5))
for row, i in enumerate([0, 3]):
    axes[row, 0].imshow(images[i])
    for column, facet in enumerate(facets, start=1):
        axes[row, column].imshow(masks[facet][i], vmin=0, vmax=3, cmap="tab10")
        axes[0, column].set_title(f"{facet} ({scores[facet]:.2f})")
for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
plt.tight_layout()

if "sphinx_gallery" not in sys.modules:  # run as a script: write the figure
    plt.savefig("plot_facets.png", dpi=100)
    print("wrote plot_facets.png")
