"""
Predicting new images with a fitted pipeline
============================================

A fitted pipeline segments images it has never seen: the dataset-level,
category and class centroids learned in ``fit`` are reused, and only the
image-level clustering runs again. A fitted pipeline pickles (the ViT itself
is never pickled; it is rebuilt from its name), so it can be saved with
:func:`joblib.dump` and used later, as ``skseg segment --load-model`` does.
"""

import io
import sys

import joblib
import matplotlib.pyplot as plt
from sklearn.pipeline import Pipeline

from skseg import MultilevelSegmenter, ViTPatchTransformer
from skseg.datasets import make_scenes
from skseg.metrics import mean_iou

images, truths = make_scenes(n_images=40, n_classes=3, image_size=(160, 160), random_state=0)
train, new = images[:30], images[30:]

pipeline = Pipeline([
    ("vit", ViTPatchTransformer("vit_small_patch16_224.dino", pretrained=False)),
    ("seg", MultilevelSegmenter(n_classes=3, random_state=0)),
]).fit(train)

buffer = io.BytesIO()
joblib.dump(pipeline, buffer)
print(f"fitted pipeline: {buffer.tell() / 1024:.0f} KiB on disk")
buffer.seek(0)
restored = joblib.load(buffer)

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
