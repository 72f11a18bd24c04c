"""Label PNGs and pictures: the VOC palette, atomic writes, overlays with a
legend, and contact sheets of images beside their masks."""

import functools
import os
import re
import secrets
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError

_LEGEND_SWATCH = 12
_LEGEND_ROW = 16


@functools.lru_cache(maxsize=1)
def voc_palette():
    """The PASCAL VOC colour map (256 x 3 uint8), as used by its label PNGs
    (made once, read-only)."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for label in range(256):
        value, colour = label, [0, 0, 0]
        for shift in range(7, -1, -1):
            for channel in range(3):
                colour[channel] |= ((value >> channel) & 1) << shift
            value >>= 3
        palette[label] = colour
    palette.flags.writeable = False
    return palette


# The temporary files of write_atomically: ".NAME.<12 hex digits>.tmp".
_TEMPORARY = re.compile(r"\..+\.[0-9a-f]{12}\.tmp")


def write_atomically(path, write):
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it.

    Never leaves half a file at ``path``. The temporary file is created with
    mode 0666 so that the process umask decides the permissions, as for any
    ordinary file (``tempfile.mkstemp`` would force 0600). An error says
    which file could not be written (a full disk's does not, by itself).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        if exc.filename is not None:
            raise
        raise OSError(exc.errno, f"{exc.strerror or exc} (writing {path})") from exc
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def remove_stale_temporaries(folder):
    """Remove the temporary files :func:`write_atomically` left in ``folder``
    when its process was killed. Only for a folder no other process is
    writing to (the caller holds its lock)."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if _TEMPORARY.fullmatch(entry.name) and entry.is_file() and not entry.is_symlink():
            entry.unlink(missing_ok=True)


def save_image(image, path, **kwargs):
    """Save a PIL image atomically, its format taken from the suffix."""
    image_format = Image.registered_extensions()[Path(path).suffix.lower()]
    write_atomically(path, lambda handle: image.save(handle, format=image_format, **kwargs))


def save_label_png(mask, path):
    """A palette PNG: pixel values are the labels, colours the VOC palette."""
    if mask.max(initial=0) > 255:
        raise ValueError(f"{path}: labels above 255 do not fit a palette PNG.")
    png = Image.fromarray(mask.astype(np.uint8), mode="P")
    png.putpalette(voc_palette().ravel().tolist())
    save_image(png, path)


def read_label_png(path):
    """Read a single-channel label image, naming the file in every error."""
    try:
        with Image.open(path) as img:
            img.load()
            mask = np.asarray(img)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise ValueError(f"{path} cannot be read as a label image: {exc}") from None
    if mask.ndim != 2:
        raise ValueError(f"{path} is not a single-channel label image (shape {mask.shape}).")
    return mask


def _legend_entries(mask, class_names):
    labels = [int(label) for label in np.unique(mask) if label > 0]
    names = class_names or {}
    return [(label, f"{label} {names[label]}" if label in names else str(label))
            for label in labels]


def overlay(rgb, mask, alpha=0.5, class_names=None):
    """The image with its labels blended in, and a legend strip below it.

    Parameters
    ----------
    rgb : ndarray of shape (H, W, 3)
        Floats in [0, 1].
    mask : ndarray of shape (H, W)
        Labels; 0 (background) is left unblended.
    alpha : float, default=0.5
        Weight of the label colours.
    class_names : dict of int to str, default=None
        Names shown next to the label ids (e.g. the classes that
        ``skseg evaluate --json`` matched them to).

    Returns
    -------
    picture : PIL.Image.Image
        ``W`` wide, ``H`` plus the legend rows high: one swatch in the label's
        colour and its id (and name) per label present.
    """
    palette = voc_palette()
    colours = palette[mask].astype(np.float32) / 255
    blended = np.where((mask > 0)[..., None], (1 - alpha) * rgb + alpha * colours, rgb)
    picture = Image.fromarray((blended * 255).round().astype(np.uint8))
    entries = _legend_entries(mask, class_names)
    width, height = picture.size
    draw = ImageDraw.Draw(picture)
    # Lay the entries out left to right, wrapping at the image width.
    placed, x, row = [], 0, 0
    for label, text in entries:
        entry_width = _LEGEND_SWATCH + 4 + int(draw.textlength(text)) + 10
        if x and x + entry_width > width:
            x, row = 0, row + 1
        placed.append((x, row, label, text))
        x += entry_width
    n_rows = row + 1 if entries else 0
    sheet = Image.new("RGB", (width, height + n_rows * _LEGEND_ROW), "white")
    sheet.paste(picture, (0, 0))
    draw = ImageDraw.Draw(sheet)
    for x, row, label, text in placed:
        top = height + row * _LEGEND_ROW + 2
        draw.rectangle([x + 2, top, x + 2 + _LEGEND_SWATCH, top + _LEGEND_SWATCH],
                       fill=tuple(int(c) for c in palette[label]), outline="black")
        draw.text((x + _LEGEND_SWATCH + 6, top), text, fill="black")
    return sheet


def _thumbnail(panel, cell):
    """An RGB image or a label mask as a PIL image fitting a cell x cell square."""
    panel = np.asarray(panel)
    if panel.ndim == 2:
        picture = Image.fromarray(voc_palette()[panel])
    else:
        if panel.dtype != np.uint8:
            panel = (np.clip(panel, 0, 1) * 255).round().astype(np.uint8)
        picture = Image.fromarray(panel)
    if max(picture.size) != cell:
        scale = cell / max(picture.size)
        size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
        # Labels must keep their exact colours: no interpolation between them.
        resample = Image.Resampling.NEAREST if panel.ndim == 2 else Image.Resampling.BILINEAR
        picture = picture.resize(size, resample)
    return picture


def contact_sheet(rows, titles, path, cell=160, gap=4, header=18):
    """Write a grid of pictures: one row per image, one column per title.

    Parameters
    ----------
    rows : list of sequences
        Each row holds one panel per title: an RGB image (uint8, or floats
        in [0, 1]) or a 2-D label mask (shown in VOC colours).
    titles : sequence of str
        Column headings.
    path : path-like
        The PNG written (atomically).
    cell : int, default=160
        Side of the square each panel is shrunk or grown to fit.
    """
    columns = len(titles)
    canvas = Image.new("RGB", (columns * (cell + gap), header + len(rows) * (cell + gap)),
                       "white")
    draw = ImageDraw.Draw(canvas)
    for c, title in enumerate(titles):
        draw.text((c * (cell + gap) + 4, 3), title, fill="black")
    for r, panels in enumerate(rows):
        for c, panel in enumerate(panels):
            canvas.paste(_thumbnail(panel, cell), (c * (cell + gap), header + r * (cell + gap)))
    save_image(canvas, path)
