"""Masks drawn for people: overlays of masks on their images, contact sheets
and grids, each with a legend naming the labels.

The public face of this module is :mod:`skseg.io`.
"""

import os

import numpy as np
from PIL import Image, ImageDraw

from ._io import save_image
from ._palettes import IGNORE_LABEL, resolve_palette

_LEGEND_SWATCH = 12
_LEGEND_ROW = 16


def _legend_entries(masks, class_names):
    labels = sorted({int(label) for mask in masks for label in np.unique(mask)
                     if 0 < label < IGNORE_LABEL})
    names = class_names or {}
    return [(label, f"{label} {names[label]}" if label in names else str(label))
            for label in labels]


def _legend(entries, width, palette):
    """A white strip ``width`` wide with a swatch and text per entry, wrapping
    at the width; None when there are no entries."""
    if not entries:
        return None
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    placed, x, row = [], 0, 0
    for label, text in entries:
        entry_width = _LEGEND_SWATCH + 4 + int(draw.textlength(text)) + 10
        if x and x + entry_width > width:
            x, row = 0, row + 1
        placed.append((x, row, label, text))
        x += entry_width
    strip = Image.new("RGB", (width, (row + 1) * _LEGEND_ROW), "white")
    draw = ImageDraw.Draw(strip)
    for x, row, label, text in placed:
        top = row * _LEGEND_ROW + 2
        draw.rectangle([x + 2, top, x + 2 + _LEGEND_SWATCH, top + _LEGEND_SWATCH],
                       fill=tuple(int(c) for c in palette[label]), outline="black")
        draw.text((x + _LEGEND_SWATCH + 6, top), text, fill="black")
    return strip


def _with_legend(picture, entries, palette):
    strip = _legend(entries, picture.width, palette)
    if strip is None:
        return picture
    sheet = Image.new("RGB", (picture.width, picture.height + strip.height), "white")
    sheet.paste(picture, (0, 0))
    sheet.paste(strip, (0, picture.height))
    return sheet


def _as_rgb(image):
    """An RGB image as floats in [0, 1]: a path or PIL image through
    :func:`skseg._image_decoding.load_rgb`, uint8 scaled, floats as they are."""
    if isinstance(image, (str, os.PathLike, Image.Image)):
        from ._image_decoding import load_rgb

        return load_rgb(image)
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"an image is (H, W, 3), not an array of shape {image.shape}.")
    image = image[..., :3]
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255
    return np.clip(image.astype(np.float32), 0, 1)


def overlay(image, mask, alpha=0.5, class_names=None, palette=None):
    """The image with its labels blended in, and a legend strip below it.

    Parameters
    ----------
    image : ndarray of shape (H, W, 3), path-like or PIL.Image.Image
        uint8, or floats in [0, 1]; a file is read as the segmenter reads it
        (EXIF orientation honoured).
    mask : ndarray of shape (H, W)
        Labels; 0 (background) is left unblended.
    alpha : float, default=0.5
        Weight of the label colours.
    class_names : dict of int to str, default=None
        Names shown next to the label ids (see :func:`read_class_names`).
    palette : {None, "clusters", "voc"} or array-like of shape (n, 3), default=None
        As for :func:`save_masks`.

    Returns
    -------
    picture : PIL.Image.Image
        ``W`` wide, ``H`` plus the legend rows high: one swatch in the
        label's colour and its id (and name) per label present, 255 (ignore)
        left out.

    Examples
    --------
    >>> import numpy as np
    >>> from skseg.io import overlay
    >>> mask = np.zeros((40, 60), np.uint8); mask[10:30, 10:30] = 1
    >>> overlay(np.full((40, 60, 3), 0.5), mask, class_names={1: "cat"}).size
    (60, 56)
    """
    rgb = _as_rgb(image)
    mask = np.asarray(mask)
    if mask.shape != rgb.shape[:2]:
        raise ValueError(f"the mask is {mask.shape[0]} x {mask.shape[1]} pixels but the "
                         f"image {rgb.shape[0]} x {rgb.shape[1]}.")
    colours = resolve_palette(palette)
    tint = colours[mask].astype(np.float32) / 255
    blended = np.where((mask > 0)[..., None], (1 - alpha) * rgb + alpha * tint, rgb)
    picture = Image.fromarray((blended * 255).round().astype(np.uint8))
    return _with_legend(picture, _legend_entries([mask], class_names), colours)


def _fit(picture, cell, nearest):
    """``picture`` shrunk or grown to fit a ``cell`` x ``cell`` square."""
    if max(picture.size) == cell:
        return picture
    scale = cell / max(picture.size)
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    # Labels keep their exact colours: no interpolation between them.
    return picture.resize(size, Image.Resampling.NEAREST if nearest
                          else Image.Resampling.BILINEAR)


def _caption(text, width, draw):
    """``text`` cut (with an ellipsis in the middle) to fit ``width`` pixels."""
    if draw.textlength(text) <= width:
        return text
    keep = len(text)
    while keep > 2 and draw.textlength(f"{text[:keep // 2]}...{text[-(keep // 2):]}") > width:
        keep -= 1
    return f"{text[:keep // 2]}...{text[-(keep // 2):]}"


def grid_sheet(rows, titles, path, cell=160, gap=4, header=18, palette=None):
    """Write a grid of pictures: one row per image, one column per title.

    Parameters
    ----------
    rows : list of sequences
        Each row holds one panel per title: an RGB image (uint8, or floats
        in [0, 1]) or a 2-D label mask (in ``palette``'s colours).
    titles : sequence of str
        Column headings.
    path : path-like
        The PNG written (atomically).
    cell : int, default=160
        Side of the square each panel is shrunk or grown to fit.
    """
    colours = resolve_palette(palette)
    canvas = Image.new("RGB", (len(titles) * (cell + gap),
                               header + len(rows) * (cell + gap)), "white")
    draw = ImageDraw.Draw(canvas)
    for c, title in enumerate(titles):
        draw.text((c * (cell + gap) + 4, 3), title, fill="black")
    for r, panels in enumerate(rows):
        for c, panel in enumerate(panels):
            panel = np.asarray(panel)
            if panel.ndim == 2:
                picture = _fit(Image.fromarray(colours[panel]), cell, True)
            else:
                rgb = (_as_rgb(panel) * 255).round().astype(np.uint8)
                picture = _fit(Image.fromarray(rgb), cell, False)
            canvas.paste(picture, (c * (cell + gap), header + r * (cell + gap)))
    save_image(canvas, path)


def contact_sheet(images, masks, path, names=None, class_names=None, palette=None,
                  columns=4, cell=128):
    """Write a PNG grid of images beside their masks, with a legend.

    Each tile is an image and its mask, each shrunk or grown to fit a
    ``cell`` x ``cell`` square (masks without blending colours), captioned
    with its name; the legend below the grid shows every label present.

    Parameters
    ----------
    images : sequence of ndarray, path-like or PIL.Image.Image
        As for :func:`overlay`.
    masks : sequence of ndarray of shape (H, W)
        One per image.
    path : path-like
        The PNG written (atomically).
    names : sequence of str, default=None
        Tile captions (cut in the middle when too long); ``None``: the image
        paths, or positions for arrays.
    class_names : dict of int to str, default=None
        Names shown in the legend.
    palette : {None, "clusters", "voc"} or array-like of shape (n, 3), default=None
        As for :func:`save_masks`.
    columns : int, default=4
        Tiles per row.
    cell : int, default=128
        Side of the square each image and mask is fitted to.
    """
    images, masks = list(images), list(masks)
    if len(images) != len(masks):
        raise ValueError(f"{len(images)} images for {len(masks)} masks.")
    if names is None:
        names = [os.fspath(image) if isinstance(image, (str, os.PathLike)) else str(index)
                 for index, image in enumerate(images)]
    names = [os.fspath(name) for name in names]
    if len(names) != len(images):
        raise ValueError(f"{len(names)} names for {len(images)} images.")
    colours = resolve_palette(palette)
    gap, caption = 4, 14
    tile_width, tile_height = 2 * cell + gap, cell + caption
    n_columns = max(1, min(columns, len(images)))
    n_rows = -(-len(images) // n_columns)
    grid = Image.new("RGB", (n_columns * (tile_width + 2 * gap),
                             max(1, n_rows) * (tile_height + gap)), "white")
    draw = ImageDraw.Draw(grid)
    for index, (image, mask, name) in enumerate(zip(images, masks, names)):
        mask = np.asarray(mask)
        left = (index % n_columns) * (tile_width + 2 * gap)
        top = (index // n_columns) * (tile_height + gap)
        rgb = _fit(Image.fromarray((_as_rgb(image) * 255).round().astype(np.uint8)), cell,
                   False)
        labels = _fit(Image.fromarray(colours[mask]), cell, True)
        grid.paste(rgb, (left, top))
        grid.paste(labels, (left + cell + gap, top))
        draw.text((left, top + max(rgb.height, labels.height) + 1),
                  _caption(name, tile_width, draw), fill="black")
    save_image(_with_legend(grid, _legend_entries(masks, class_names), colours), path)
