"""
Predicting new images with a fitted pipeline
============================================

A fitted pipeline segments images it has never seen: the dataset-level,
category and class centroids learned in ``fit`` are reused, and only the
image-level clustering runs again. A fitted pipeline saves with
:func:`skseg.io.save_model` in the skops format, which loads without running
code from the file (the ViT itself is never saved; it is rebuilt from its
name), as ``skseg segment --save-model`` and ``--load-model`` do. It also
pickles, so :func:`joblib.dump` works too.
"""

import os
import sys
import tempfile

import matplotlib.pyplot as plt
from sklearn.pipeline import Pipeline

from skseg import MultilevelSegmenter, ViTPatchTransformer
from skseg.datasets import make_scenes
from skseg.io import load_model, save_model
from skseg.metrics import mean_iou

images, truths = make_scenes(n_images=40, n_classes=3, image_size=(160, 160), random_state=0)
train, new = images[:30], images[30:]

pipeline = Pipeline([
    ("vit", ViTPatchTransformer("vit_small_patch16_224.dino", pretrained=False)),
    ("seg", MultilevelSegmenter(n_classes=3, random_state=0)),
]).fit(train)

path = os.path.join(tempfile.mkdtemp(), "model.skops")
save_model(pipeline, path)  # the centroids, not the training masks
print(f"fitted pipeline: {os.path.getsize(path) / 1024:.0f} KiB on disk")
restored = load_model(path)

predicted = restored.predict(new)
print(f"mIoU on the 10 new images: {mean_iou(truths[30:], predicted):.3f}")

fig, axes = plt.subplots(2, 5, figsize=(10, 4))
for column in range(5):
    axes[0, column].imshow(new[column])
    axes[1, column].imshow(predicted[column], vmin=0, vmax=3, cmap="tab10")
for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
plt.tight_layout()

if "sphinx_gallery" not in sys.modules:  # run as a script: write the figure
    plt.savefig("plot_predict_new_images.png", dpi=100)
    print("wrote plot_predict_new_images.png")
