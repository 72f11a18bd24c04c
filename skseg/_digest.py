"""What names content: one SHA-1 digest for files, arrays and parameters.

skseg hashes for two reasons, each in one place. *Identity*, here: an image
file, a feature array or a set of extraction parameters is named by the
SHA-1 of its bytes (a file's digest is what ``sha1sum`` prints, so a user
can check a run record or a store by hand). *Sampling*: the priorities that
draw samples (:func:`skseg._clustering.patch_priorities`) mix a 64-bit key
taken from an image's identity digest (:func:`sampling_key`) with the seed.

The feature store's per-image CRC-32 is neither: it is the format's
integrity check, verified on every read.
"""

import hashlib
import json

import numpy as np


def file_digest(path):
    """The SHA-1 of a file's bytes, as hex (read in blocks)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha1").hexdigest()


def bytes_digest(data):
    """The SHA-1 of ``data`` (bytes-like), as hex."""
    return hashlib.sha1(data).hexdigest()


def array_digest(*arrays, header=""):
    """The SHA-1 of arrays' dtypes, shapes and bytes (None skipped), as hex;
    ``header`` names what they are, so that equal bytes of other things differ."""
    digest = hashlib.sha1(header.encode())
    for array in arrays:
        if array is not None:
            array = np.ascontiguousarray(array)
            digest.update(f"{array.dtype.str}{array.shape}".encode())
            digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def json_digest(value):
    """The SHA-1 of JSON values, keys sorted, as hex: names a set of parameters."""
    return bytes_digest(json.dumps(value, sort_keys=True).encode())


def sampling_key(content_key=None, arrays=()):
    """A 64-bit key that seeds an image's random draws.

    From the image's content key when it has one (the digest of its file:
    the ViT's features of one image differ in their last bits with the batch
    they ran in and the number of threads, and a key of their bytes would
    then re-seed every draw); else from its feature arrays.
    """
    digest = (bytes_digest(content_key.encode()) if content_key is not None
              else array_digest(*arrays))
    return int(digest[:16], 16)
