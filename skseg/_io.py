"""Masks on disk and in pictures: palettes, atomic writes, label PNGs written
and read back, class-name files, overlays with a legend, and contact sheets.

The public face of this module is :mod:`skseg.io`.
"""

import functools
import json
import os
import re
import secrets
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError

_LEGEND_SWATCH = 12
_LEGEND_ROW = 16
CLASS_NAMES_FILE = "classes.json"
# Colour of label 255, "ignore" in VOC and COCO-Stuff ground truth, in both palettes.
_IGNORE = 255


@functools.lru_cache(maxsize=1)
def voc_palette():
    """The PASCAL VOC colour map: a (256, 3) uint8 array, read-only.

    The colours of VOC's label PNGs: use it for masks whose ids are VOC
    classes (ground truth, or predictions relabelled to their matched class).
    """
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


def _lab(rgb):
    """CIELAB (D65) coordinates of sRGB colours given as uint8 rows."""
    c = np.asarray(rgb, np.float64) / 255
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = linear @ np.array([[0.4124, 0.3576, 0.1805],
                             [0.2126, 0.7152, 0.0722],
                             [0.0193, 0.1192, 0.9505]]).T
    xyz /= (0.95047, 1.0, 1.08883)
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]),
                     200 * (f[:, 1] - f[:, 2])], axis=1)


@functools.lru_cache(maxsize=1)
def cluster_palette():
    """Colours for discovered cluster ids: a (256, 3) uint8 array, read-only.

    0 is black (background) and 255 VOC's "ignore" colour, as in
    :func:`voc_palette`; ids 1..254 are picked one by one, each the colour
    farthest (in CIELAB) from black, white, every VOC class colour and the
    colours already picked, among mid-light colours. Low ids are thus the most
    distinct, and no id can be taken for a VOC class by its colour.
    """
    levels = np.arange(0, 256, 15)
    candidates = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1)
    candidates = candidates.reshape(-1, 3).astype(np.uint8)
    lab = _lab(candidates)
    # Neither near black (background) nor near white (the legend's paper).
    keep = (lab[:, 0] > 30) & (lab[:, 0] < 90)
    candidates, lab = candidates[keep], lab[keep]
    voc = voc_palette()
    avoided = np.concatenate([voc[:21], voc[[_IGNORE]], [[255, 255, 255]]])
    distance = np.full(len(candidates), np.inf)
    for colour in _lab(avoided):
        distance = np.minimum(distance, np.linalg.norm(lab - colour, axis=1))
    palette = np.zeros((256, 3), np.uint8)
    palette[_IGNORE] = voc[_IGNORE]
    for label in range(1, _IGNORE):
        best = int(np.argmax(distance))
        palette[label] = candidates[best]
        distance = np.minimum(distance, np.linalg.norm(lab - lab[best], axis=1))
    palette.flags.writeable = False
    return palette


def resolve_palette(palette):
    """A (256, 3) uint8 palette for ``palette``: None (the cluster palette),
    ``"clusters"``, ``"voc"``, or an array of up to 256 RGB rows."""
    if palette is None or (isinstance(palette, str) and palette == "clusters"):
        return cluster_palette()
    if isinstance(palette, str):
        if palette == "voc":
            return voc_palette()
        raise ValueError(f"palette={palette!r}: give 'clusters', 'voc' or an array of "
                         "RGB rows.")
    colours = np.asarray(palette)
    if colours.ndim != 2 or colours.shape[1] != 3 or not 1 <= len(colours) <= 256:
        raise ValueError(f"a palette is up to 256 RGB rows, not an array of shape "
                         f"{colours.shape}.")
    if colours.dtype.kind not in "iu" or colours.min() < 0 or colours.max() > 255:
        raise ValueError("palette colours are whole numbers from 0 to 255.")
    full = np.zeros((256, 3), np.uint8)
    full[:len(colours)] = colours
    return full


def matched_palette(assignment, base="voc"):
    """The cluster palette, with each cluster id ``k`` of ``assignment``
    (``{k: class}``, as matched by ``skseg evaluate``) drawn in the colour of
    its class in ``base``."""
    palette = cluster_palette().copy()
    base = resolve_palette(base)
    for label, cls in assignment.items():
        if 0 <= label < 256 and 0 <= cls < 256:
            palette[label] = base[cls]
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


def save_label_png(mask, path, palette=None):
    """A palette PNG: pixel values are the labels, colours ``palette``'s
    (see :func:`resolve_palette`)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{path}: a mask is a 2-D array, not one of shape {mask.shape}.")
    if mask.dtype.kind not in "biu":
        raise TypeError(f"{path}: mask labels must be integers, not {mask.dtype}.")
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise ValueError(f"{path}: labels below 0 or above 255 do not fit a palette PNG.")
    png = Image.fromarray(mask.astype(np.uint8), mode="P")
    png.putpalette(resolve_palette(palette).ravel().tolist())
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


def mask_name(name):
    """The mask file name for ``name``: its image suffix made ``.png``, as a
    relative POSIX path that cannot leave the folder it is joined to."""
    from .datasets import IMAGE_SUFFIXES

    text = os.fspath(name)
    relative = PurePosixPath(text.replace(os.sep, "/"))
    if not text or relative.is_absolute() or ".." in relative.parts or \
            relative.name in ("", "."):
        raise ValueError(f"mask name {text!r} would land outside the folder; give a "
                         "relative path without '..'.")
    if any(part.startswith(".") for part in relative.parts):
        raise ValueError(f"mask name {text!r} is hidden (a name starting with a dot), and "
                         "read_masks would leave it out.")
    if relative.suffix.lower() in IMAGE_SUFFIXES:
        return relative.with_suffix(".png")
    return relative.with_name(relative.name + ".png")


def inside(folder, relative):
    """``folder / relative``, refused (ValueError) if a link below ``folder``
    would lead it elsewhere."""
    target = Path(folder) / relative
    real_folder = os.path.realpath(folder)
    if ".." in PurePosixPath(relative).parts or not Path(
            os.path.realpath(target.parent)).is_relative_to(real_folder):
        raise ValueError(f"output {target} would land outside {folder}; refusing to write "
                         "it.")
    return target


def save_masks(masks, folder, names=None, palette=None):
    """Write label masks as palette PNGs below ``folder``.

    Each PNG stores the labels as its pixel values (read back exactly by
    :func:`read_masks`, or by any tool reading palette indices, as VOC's
    ``SegmentationClass`` PNGs are read) and shows them in ``palette``'s
    colours. Files are written atomically (never half a file) with the
    permissions the umask gives.

    Parameters
    ----------
    masks : sequence of ndarray of shape (H, W)
        Integer labels from 0 to 255 (a :class:`~skseg.LabelMasks` makes each
        mask only when it is written).
    folder : path-like
        Created if needed.
    names : sequence of str or path-like, default=None
        Relative file name of each mask, sub-folders allowed (the names of
        the images, for instance): an image suffix becomes ``.png``, other
        names get ``.png`` added. A name that is absolute, holds ``..``, or
        would be reached through a link leading out of ``folder`` is refused
        before anything is written, as are two names giving the same file.
        ``None``: ``0.png``, ``1.png``... zero-padded so that they sort in
        order.
    palette : {None, "clusters", "voc"} or array-like of shape (n, 3), default=None
        Colours: ``None`` or ``"clusters"`` for discovered cluster ids (see
        :func:`cluster_palette`), ``"voc"`` for masks whose ids are PASCAL VOC
        classes, or up to 256 RGB rows.

    Returns
    -------
    paths : list of pathlib.Path
        The files written, in the order of ``masks``.

    See Also
    --------
    read_masks : Read the masks back.
    skseg.LabelMasks.save : The same, as a method.

    Examples
    --------
    >>> import numpy as np, tempfile
    >>> from skseg.io import read_masks, save_masks
    >>> folder = tempfile.mkdtemp()
    >>> mask = np.zeros((4, 6), np.uint8); mask[1:3, 2:5] = 1
    >>> [path.name for path in save_masks([mask], folder, names=["holiday/beach.jpg"])]
    ['beach.png']
    >>> masks = read_masks(folder)
    >>> masks.names, (masks[0] == mask).all()
    (['holiday/beach.png'], np.True_)
    """
    n_masks = len(masks)
    if names is None:
        width = len(str(max(n_masks - 1, 0)))
        relatives = [PurePosixPath(f"{index:0{width}d}.png") for index in range(n_masks)]
    else:
        names = list(names)
        if len(names) != n_masks:
            raise ValueError(f"{len(names)} names for {n_masks} masks.")
        relatives = [mask_name(name) for name in names]
        first = {}
        for name, relative in zip(names, relatives):
            if relative in first:
                raise ValueError(f"names {first[relative]!r} and {os.fspath(name)!r} both "
                                 f"give the mask {relative}.")
            first[relative] = os.fspath(name)
    folder = Path(folder)
    colours = resolve_palette(palette)
    for relative in relatives:  # every name checked before anything is written
        _existing_part_inside(folder, relative)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for relative, mask in zip(relatives, masks):
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        path = inside(folder, relative)
        save_label_png(mask, path, colours)
        paths.append(path)
    return paths


def _existing_part_inside(folder, relative):
    """Refuse ``relative`` if the folders of ``folder / relative`` that exist
    already lead out of ``folder`` (through a link)."""
    deepest = Path(folder)
    if not deepest.exists():
        return
    for part in PurePosixPath(relative).parent.parts:
        if not (deepest / part).exists() and not (deepest / part).is_symlink():
            break
        deepest = deepest / part
    if not Path(os.path.realpath(deepest)).is_relative_to(os.path.realpath(folder)):
        raise ValueError(f"output {Path(folder) / relative} would land outside {folder}; "
                         "refusing to write it.")


def _visible_pngs(folder):
    """Relative paths of the PNGs below ``folder``, hidden names left out."""
    found = []
    for directory, folders, files in os.walk(folder):
        folders[:] = sorted(name for name in folders if not name.startswith("."))
        relative = PurePosixPath(Path(directory).relative_to(folder).as_posix())
        found += [relative / name for name in files
                  if name.lower().endswith(".png") and not name.startswith(".")]
    return sorted(found, key=str)


def mask_names(folder):
    """The masks of ``folder``: those its ``skseg segment`` run record lists,
    or else every visible PNG below it, as sorted relative paths."""
    from ._run_record import read_record

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder.")
    record = read_record(folder)
    if record is None:
        return _visible_pngs(folder)
    names = sorted(record["outputs"])
    for name in names:
        inside(folder, name)
    return [PurePosixPath(name) for name in names]


def read_masks(folder):
    """The label masks below ``folder``, each read from its PNG when indexed.

    Parameters
    ----------
    folder : path-like
        The output folder of ``skseg segment`` (its masks are those its run
        record lists; overlays, previews and hidden files are left out), or
        any folder of label PNGs (every PNG below it whose name does not start
        with a dot).

    Returns
    -------
    masks : skseg.datasets.MaskFiles
        ``masks[i]`` is the ``(H, W)`` label array of mask ``i`` (palette
        PNGs give their palette indices); ``masks.names`` are their paths
        relative to ``folder``, sorted, and ``masks.paths`` their files.
        Integer, slice and array indexing (integers, or booleans with one
        entry per mask) as for :class:`~skseg.LabelMasks`; indexing by
        several positions gives another lazy sequence.

    Raises
    ------
    FileNotFoundError
        ``folder`` is not a folder.
    ValueError
        When a mask is read: the file is not a single-channel image (the
        message names it).

    See Also
    --------
    save_masks : Write masks.
    read_class_names : The names of the classes, from ``classes.json``.
    """
    from .datasets import MaskFiles

    folder = Path(folder)
    names = mask_names(folder)
    return MaskFiles([folder / name for name in names], names=[str(n) for n in names])


def read_class_names(path):
    """Class id to name, from a ``classes.json`` file.

    The file is a JSON object of ``"<id>": "<name>"`` entries, ids written
    as strings (as JSON requires) from ``"0"`` to ``"255"``: ``{"1": "cat",
    "2": "sky"}``. ``skseg segment --legend-names`` writes one in its output
    folder; overlays, contact sheets and ``skseg export`` read it.

    Parameters
    ----------
    path : path-like
        The JSON file.

    Returns
    -------
    class_names : dict of int to str

    Raises
    ------
    ValueError
        The file cannot be read, is not JSON, or holds anything but ids and
        names; the message names the file.

    See Also
    --------
    save_class_names : Write such a file.
    """
    try:
        table = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} cannot be read: {exc}") from None
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{path} is not JSON: {exc}") from None
    if not isinstance(table, dict):
        raise ValueError(f"{path} is not a class names file: it holds a "
                         f"{type(table).__name__}, not an object of id: name.")
    names = {}
    for key, name in table.items():
        if not re.fullmatch(r"[0-9]{1,3}", key) or int(key) > 255 or not isinstance(name, str):
            raise ValueError(f"{path} is not a class names file: entry {key!r}: {name!r} "
                             "is not a class id (0 to 255, as a string) and a name.")
        names[int(key)] = name
    return names


def save_class_names(class_names, path):
    """Write class names as a ``classes.json`` file (atomically).

    Parameters
    ----------
    class_names : dict of int to str
        Class id (0 to 255) to name.
    path : path-like
        The JSON file, e.g. ``OUTDIR / "classes.json"``.

    See Also
    --------
    read_class_names : Read it back.
    """
    table = {}
    for label, name in class_names.items():
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or \
                not 0 <= label <= 255 or not isinstance(name, str):
            raise ValueError(f"class names map ids (0 to 255) to strings; not "
                             f"{label!r}: {name!r}.")
        table[int(label)] = name
    text = json.dumps({str(label): table[label] for label in sorted(table)}, indent=1,
                      ensure_ascii=False).encode("utf-8")
    write_atomically(path, lambda handle: handle.write(text + b"\n"))


def _legend_entries(masks, class_names):
    labels = sorted({int(label) for mask in masks for label in np.unique(mask)
                     if 0 < label < _IGNORE})
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
    :func:`skseg._images.load_rgb`, uint8 scaled, floats as they are."""
    if isinstance(image, (str, os.PathLike, Image.Image)):
        from ._images import load_rgb

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
