"""
Saving, reading and drawing masks
=================================

:attr:`~skseg.MultilevelSegmenter.labels_` holds the masks of the training
images. :func:`skseg.io.save_masks` writes them as palette PNGs (pixel
values are label ids; colours are :func:`skseg.io.cluster_palette`'s, which
no PASCAL VOC class uses), :func:`skseg.io.read_masks` reads them back one at
a time, and :func:`skseg.io.overlay` draws one over its image with a legend
named by ``classes.json``. ``skseg export`` (or :func:`skseg.io.export`)
then turns a ``skseg segment`` folder into a COCO, VOC or Hugging Face
dataset, to train a segmentation network on the pseudo-labels.
"""

import sys
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
from sklearn.pipeline import Pipeline

from skseg import MultilevelSegmenter, ViTPatchTransformer
from skseg.datasets import make_scenes
from skseg.io import overlay, read_class_names, read_masks, save_class_names, save_masks

images, _ = make_scenes(n_images=30, n_classes=3, image_size=(160, 160), random_state=0)
pipeline = Pipeline([
    ("vit", ViTPatchTransformer("vit_small_patch16_224.dino", pretrained=False)),
    ("seg", MultilevelSegmenter(n_classes=3, random_state=0)),
]).fit(images)

folder = Path(tempfile.mkdtemp())
names = [f"scene{i:02d}.jpg" for i in range(len(images))]  # sorted as listed
save_masks(pipeline.named_steps["seg"].labels_, folder, names=names)
save_class_names({1: "first", 2: "second", 3: "third"}, folder / "classes.json")

masks = read_masks(folder)
print(masks.names[:3], masks[0].shape, masks[0].dtype)
class_names = read_class_names(folder / "classes.json")

fig, axes = plt.subplots(1, 3, figsize=(10, 4))
for ax, index in zip(axes, range(3)):
    ax.imshow(overlay(images[index], masks[index], class_names=class_names))
    ax.set_title(masks.names[index])
    ax.set_axis_off()
plt.tight_layout()

if "sphinx_gallery" not in sys.modules:  # run as a script: write the figure
    plt.savefig("plot_save_and_export_masks.png", dpi=100)
    print("wrote plot_save_and_export_masks.png")
