"""
Refinement: from patch masks to object edges
============================================

The consensus mask lives on the patch grid (14 x 14 for ViT-S/16 at 224 px).
Upsampled bilinearly it is blocky; the dense CRF (``refine="crf"``, the
default) and pixel-adaptive mask refinement (PAMR, ``refine="pamr"``) move
its edges onto the image's own colour edges.

Both only look at the image's colours. On these flat-coloured scenes both
help; on real photos, starting from the truth on the patch grid, PAMR
degrades good masks where the CRF keeps them (see the performance page).
"""

import sys

import matplotlib.pyplot as plt

from skseg import MultilevelSegmenter, ViTPatchTransformer
from skseg.datasets import make_scenes
from skseg.metrics import mean_iou

images, truths = make_scenes(n_images=24, n_classes=3, image_size=(160, 160), random_state=0)
features = ViTPatchTransformer("vit_small_patch16_224.dino", pretrained=False).fit_transform(images)
plain = MultilevelSegmenter(n_classes=3, refine=None, random_state=0).fit_predict(features)
crf = MultilevelSegmenter(n_classes=3, refine="crf", random_state=0).fit_predict(features)
pamr = MultilevelSegmenter(n_classes=3, refine="pamr", random_state=0).fit_predict(features)
print(f"mIoU without refinement {mean_iou(truths, plain):.3f}, "
      f"with the CRF {mean_iou(truths, crf):.3f}, with PAMR {mean_iou(truths, pamr):.3f}")

fig, axes = plt.subplots(3, 4, figsize=(9, 7))
for row, i in enumerate([3, 4, 5]):
    for column, (title, picture) in enumerate(
        [("image", images[i]), ("no refinement", plain[i] > 0), ("CRF", crf[i] > 0),
         ("PAMR", pamr[i] > 0)]
    ):
        axes[row, column].imshow(picture, cmap="gray")
        axes[0, column].set_title(title)
        axes[row, column].set_xticks([])
        axes[row, column].set_yticks([])
plt.tight_layout()

if "sphinx_gallery" not in sys.modules:  # run as a script: write the figure
    plt.savefig("plot_refinement.png", dpi=100)
    print("wrote plot_refinement.png")
