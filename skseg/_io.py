"""Masks on disk: atomic writes, label PNGs written and read back, folders of
masks, and class-name files.

The public face of this module is :mod:`skseg.io`.
"""

import json
import os
import re
import secrets
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError

from ._palettes import resolve_palette

CLASS_NAMES_FILE = "classes.json"


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
