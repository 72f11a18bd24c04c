"""``skseg segment``'s inputs: files, folders and globs expanded to images, each
with the name of its output below OUTDIR.

Every image is found once (two spellings of one file are one input), a walk
never follows a symbolic-link loop, the output folder is never read as input,
and no output name can leave the output folder.
"""

import fnmatch
import glob
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..datasets import IMAGE_SUFFIXES, skipped_folder
from .messages import UserError


@dataclass(frozen=True)
class InputImage:
    """One input image and where its outputs go."""

    path: Path
    name: PurePosixPath  # relative to OUTDIR, suffix included, never with ".."
    real: Path  # the file's real path, symbolic links resolved

    @property
    def mask_name(self):
        return self.name.with_suffix(".png")

    @property
    def overlay_name(self):
        return overlay_name(self.mask_name)


def overlay_name(mask_name):
    """Where the overlay of the mask ``mask_name`` goes, beside it."""
    return mask_name.with_name(mask_name.stem + "_overlay.jpg")


def _real(path):
    return Path(os.path.realpath(path))


def _is_image(path):
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def _walk(folder, recursive, skip):
    """Image files below ``folder``, as paths relative to it.

    Symbolic links to folders are followed, but each real folder is entered
    once, so a link loop ends the descent instead of repeating it; links are
    entered after the whole real tree, so a file is named by its real place
    when it has one below ``folder``. Hidden folders, VOC mask folders
    (``SegmentationClass/``...) and the real folders in ``skip`` are not
    entered.
    """
    entered, links = set(), []

    def visit(directory, relative):
        real = _real(directory)
        if real in entered or real in skip:
            return
        entered.add(real)
        try:
            entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
        except OSError:
            return
        for entry in entries:
            child = relative / entry.name
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                if recursive and not skipped_folder(entry.name):
                    if entry.is_symlink():
                        links.append((Path(entry.path), child))
                    else:
                        yield from visit(Path(entry.path), child)
            elif entry.is_file() and _is_image(entry.name):
                yield child

    yield from visit(Path(folder), PurePosixPath())
    while links:
        yield from visit(*links.pop(0))


def _matches(pattern_parts, path_parts):
    """Glob match of path components, ``**`` standing for any number of folders."""
    if not pattern_parts:
        return not path_parts
    head, rest = pattern_parts[0], pattern_parts[1:]
    if head == "**":
        if _matches(rest, path_parts):
            return True
        return bool(path_parts) and _matches(pattern_parts, path_parts[1:])
    if not path_parts or not fnmatch.fnmatchcase(path_parts[0], head):
        return False
    return _matches(rest, path_parts[1:])


def _expand_glob(item, recursive, skip):
    """(path, output name) for each image a glob matches."""
    parts = Path(item).parts
    first_magic = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    base = Path(*parts[:first_magic]) if first_magic else Path(".")
    if recursive and "**" in parts[first_magic:]:
        # glob.glob would follow link loops below "**": walk loop-safely instead
        # (the walk, like glob, never yields hidden names).
        pattern = parts[first_magic:]
        matches = [base / relative for relative in _walk(base, True, skip)
                   if _matches(pattern, relative.parts)]
    else:
        matches = [Path(m) for m in sorted(glob.glob(item)) if _is_image(m)]
    found = []
    for match in matches:
        if not match.is_file():
            continue
        # Lexically, so that "a*/../../elsewhere/x.png" cannot name a path
        # above the glob's base: such a match is named by its file name only.
        relative = os.path.relpath(os.path.abspath(match), os.path.abspath(base))
        name = PurePosixPath(Path(relative).as_posix())
        if name.parts[0] == "..":
            name = PurePosixPath(match.name)
        found.append((match, name))
    return found


def _read_list(list_file):
    try:
        lines = Path(list_file).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--list {list_file} cannot be read: {exc}") from None
    entries = [line.strip() for line in lines]
    return [entry for entry in entries if entry and not entry.startswith("#")]


def _keep_listed(found, list_file):
    """The inputs a list names, by id (file name without suffix, or path below
    the input folder without suffix, as VOC's ImageSets lists) or by path."""
    entries = _read_list(list_file)
    # An entry naming a file by path matches it however the path is spelt.
    entries_by_spelling = {}
    for entry in entries:
        for spelling in (entry, os.path.realpath(entry)):
            entries_by_spelling.setdefault(spelling, set()).add(entry)
    used, kept = set(), []
    for image in found:
        keys = (image.path.stem, image.name.with_suffix("").as_posix(),
                image.name.as_posix(), str(image.real))
        hits = set().union(*(entries_by_spelling.get(key, ()) for key in keys))
        if hits:
            kept.append(image)
            used |= hits
    unmatched = [entry for entry in entries if entry not in used]
    if unmatched:
        raise UserError(
            f"{len(unmatched)} entr{'y' if len(unmatched) == 1 else 'ies'} of --list "
            f"{list_file} match no input image, e.g. {', '.join(unmatched[:3])}.")
    return kept


def _excluded(image, patterns):
    candidates = (image.name.as_posix(), image.name.name, str(image.path))
    return any(fnmatch.fnmatchcase(text, pattern)
               for pattern in patterns for text in candidates)


def _collision_message(first, second, target):
    message = (f"inputs {first.path} and {second.path} would both write {target}")
    if _real(first.path.parent) == _real(second.path.parent):
        return (message + "; rename one of them, or leave one out with "
                f"--exclude '{second.path.name}'.")
    return message + ("; pass the folder holding both (with --recursive) so that "
                      "their outputs keep their sub-folders.")


def find_inputs(inputs, output, *, recursive=False, exclude=(), list_file=None):
    """Expand command-line inputs into :class:`InputImage` records.

    Parameters
    ----------
    inputs : list of str
        Files, folders and globs.
    output : path-like
        The output folder: refused if it is, or holds, an input; skipped when
        a folder walk passes through it.
    recursive : bool, default=False
        Walk sub-folders, and let ``**`` in a glob span folders.
    exclude : sequence of str, default=()
        Globs matched against each input's output name, file name and path.
    list_file : path-like, default=None
        Keep only the images this file lists (one id or path per line).

    Returns
    -------
    images : list of InputImage
        In the order found, each real file once.
    """
    output_real = _real(output)
    skip = {output_real}
    found, seen = [], {}
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            real = _real(path)
            if real == output_real or real.is_relative_to(output_real):
                raise UserError(f"the output folder {output} is, or holds, the input "
                                f"folder {item}; choose a separate output folder.")
            pairs = [(path / relative, relative) for relative in _walk(path, recursive, skip)]
        elif path.is_file():
            pairs = [(path, PurePosixPath(path.name))]
        elif glob.has_magic(item):
            pairs = _expand_glob(item, recursive, skip)
        else:
            raise UserError(f"input {item!r} is neither a file, a folder nor a matching glob.")
        for file, name in pairs:
            real = _real(file)
            if real in seen:  # the same file reached twice: one input
                continue
            if real.is_relative_to(output_real):
                raise UserError(f"input {file} lies inside the output folder {output}; "
                                "choose a separate output folder.")
            seen[real] = True
            found.append(InputImage(path=file, name=name, real=real))
    if list_file is not None:
        found = _keep_listed(found, list_file)
    if exclude:
        found = [image for image in found if not _excluded(image, exclude)]
    if not found:
        raise UserError("no input images found" + ("" if recursive else
                                                    " (folders are read with --recursive too)"))
    by_target = {}
    for image in found:
        target = image.mask_name.as_posix()
        if target in by_target:
            raise UserError(_collision_message(by_target[target], image, output / target))
        by_target[target] = image
    return found
