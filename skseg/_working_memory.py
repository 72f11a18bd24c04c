"""How large each buffer may grow: shares of scikit-learn's ``working_memory``.

One setting sizes every block that skseg reads, computes or writes at once:
scikit-learn's ``working_memory`` (in MiB, 1024 by default), set with
``sklearn.set_config(working_memory=...)`` or, for one call,
``sklearn.config_context``. scikit-learn's settings belong to a thread, so
skseg carries the caller's along: the tasks of a pass carry them
(``skseg._chunks.Configured``, to worker processes or a Dask cluster too), and
the transformer's decoding and writing threads start with the caller's.

Each buffer takes a fixed share, so that the largest of them at once stay
well inside the setting (at the default: 32 MiB of features per chunk of a
pass, 64 MiB of records before a store commits them, 16 MiB for a block of
distances to centroids or a strip of an image being resized). Results never
depend on it.
"""

PASS_CHUNK = 1 / 32
STORE_BATCH = 1 / 16
DISTANCE_BLOCK = 1 / 64
IMAGE_STRIP = 1 / 64


def budget(share):
    """Bytes that ``share`` of the working memory allows."""
    from sklearn import get_config  # not at import: the store loads without it

    return int(get_config()["working_memory"] * (1 << 20) * share)


def rows_within(share, row_bytes):
    """How many rows of ``row_bytes`` each fit ``share`` of the working memory
    (at least one: a single row larger than that still has to be processed)."""
    return max(1, budget(share) // max(1, int(row_bytes)))
