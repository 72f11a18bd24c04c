"""A per-image feature cache on top of :class:`joblib.Memory`."""

import os
import threading

from sklearn.utils.validation import check_memory

# joblib stores what a cached function returns. Features are computed in
# batches, outside any cached call, so they are handed to the cached function
# through this table when they are stored.
_PENDING = {}
_PENDING_LOCK = threading.Lock()


def _image_features_record(image_key, config):
    """Cached under (image content digest, feature configuration)."""
    with _PENDING_LOCK:
        return _PENDING.pop((image_key, config))


class FeatureCache:
    """Look up and store per-image feature records.

    Parameters
    ----------
    memory : None, str, path-like or joblib.Memory
        Where to keep the cache; ``None`` disables it.
    config : tuple
        Everything besides the image content that changes the features.
    """

    def __init__(self, memory, config):
        if isinstance(memory, os.PathLike):
            memory = os.fspath(memory)
        self.memory = check_memory(memory)
        self.enabled = self.memory.location is not None
        self.config = config
        self._cached = self.memory.cache(_image_features_record)

    def get(self, image_key):
        """Return the stored record, or None."""
        if self.enabled and self._cached.check_call_in_cache(image_key, self.config):
            return self._cached(image_key, self.config)
        return None

    def put(self, image_key, record):
        if not self.enabled:
            return
        with _PENDING_LOCK:
            _PENDING[(image_key, self.config)] = record
        self._cached(image_key, self.config)
        with _PENDING_LOCK:  # already stored by another process: nothing was taken
            _PENDING.pop((image_key, self.config), None)
