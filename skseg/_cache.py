"""A per-image feature cache in a format that cannot execute code when read.

Each entry is one ``.npz`` file of plain arrays, read with
``numpy.load(allow_pickle=False)``, under a folder named by a digest of the
feature configuration (which ``config.json`` beside the entries spells out).
Files are written under a temporary name and renamed, so concurrent writers
(joblib workers sharing one cache) never expose a half-written entry.
"""

import json
import os
import warnings
import zipfile
from pathlib import Path

import numpy as np

from ._digest import json_digest
from ._io import write_atomically

# Bumped from joblib's pickle cache (v1): older entries are never read.
_CACHE_FORMAT = "skseg-features-v2"
_FIELDS = ("patches", "cls", "attention")


def _location(memory):
    """The cache folder named by ``memory`` (a path or a joblib.Memory), or None."""
    if memory is None:
        return None
    if hasattr(memory, "cache"):  # joblib.Memory: reuse its folder, not its pickles
        location = getattr(memory, "location", None)
        return None if location is None else Path(location)
    return Path(os.fspath(memory))


def config_digest(config):
    """A short digest of an extraction's parameters (JSON values), which names
    the folder or store holding its features."""
    return json_digest(config)[:32]


class FeatureCache:
    """Look up and store per-image feature records.

    Parameters
    ----------
    memory : None, str, path-like or joblib.Memory
        Where to keep the cache (a joblib.Memory lends its folder); ``None``
        disables it.
    config : dict
        Everything besides the image content that changes the features, as
        JSON-compatible values.
    """

    def __init__(self, memory, config):
        location = _location(memory)
        self.enabled = location is not None
        self.config = config
        if self.enabled:
            self.folder = location / _CACHE_FORMAT / config_digest(config)
            self._config_text = json.dumps(config, sort_keys=True)

    def _path(self, image_key):
        return self.folder / f"{image_key}.npz"

    def get(self, image_key):
        """Return the stored record, or None (also for a damaged entry, with a warning)."""
        if not self.enabled:
            return None
        path = self._path(image_key)
        try:
            # Opened here so that a file numpy fails to parse is still closed.
            with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as entry:
                record = {name: entry[name] if name in entry.files else None
                          for name in _FIELDS}
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
            warnings.warn(
                f"feature cache entry {os.fspath(path)!r} is damaged ({exc}); its "
                "features are computed again and the entry rewritten.",
                RuntimeWarning, stacklevel=3,
            )
            return None
        if not self._plausible(record):
            warnings.warn(
                f"feature cache entry {os.fspath(path)!r} does not hold a feature "
                "record of this configuration; its features are computed again and "
                "the entry rewritten.", RuntimeWarning, stacklevel=3,
            )
            return None
        return record

    def _plausible(self, record):
        patches, cls, attention = (record[name] for name in _FIELDS)
        if patches is None or patches.ndim != 3 or cls is None or cls.ndim != 1:
            return False
        if (attention is not None) != bool(self.config.get("attention")):
            return False
        return attention is None or attention.shape == patches.shape[:2]

    def put(self, image_key, record):
        if not self.enabled:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        config_file = self.folder / "config.json"
        if not config_file.exists():
            write_atomically(config_file, lambda fh: fh.write(self._config_text.encode()))
        arrays = {name: record[name] for name in _FIELDS if record[name] is not None}
        write_atomically(self._path(image_key), lambda fh: np.savez(fh, **arrays))
