"""Where a feature store (or a fit's ``labels_path``) lives: a local folder
or an fsspec URL.

:class:`Location` is the store's only door to storage: it reads and lists
objects, creates them exclusively (``link()`` of a written file on a local
disk or NFS, a conditional PUT on S3), and turns object storage's failures
into one line that names the store.
"""

import os
import random
import shutil
import time

from ._store_format import CorruptedStoreError


def one_line(exc):
    return " ".join(str(exc).split()) or type(exc).__name__


class Location:
    """A store's folder or URL: small JSON objects written exclusively, and
    the zarr store its segments' arrays live in. ``kind`` names it in
    messages."""

    def __init__(self, url, storage_options=None, read_only=False, kind="feature store"):
        url = os.fspath(url)
        self.kind = kind
        self.read_only = read_only
        self.storage_options = dict(storage_options or {})
        protocol = url.split("://", 1)[0] if "://" in url else "file"
        if protocol == "file":
            if self.storage_options:
                raise ValueError(f"storage_options are for URLs; {url!r} is a local path.")
            self.local = True
            self.path = os.path.abspath(url.split("://", 1)[-1])
            self.url = self.path
            self.fs = None
        else:
            self.local = False
            self.protocol = protocol
            self.url = url.rstrip("/")
            self.fs, self.path = _filesystem(self.url, self.storage_options, kind)

    def __repr__(self):
        return repr(self.url)

    def full_path(self, key):
        return os.path.join(self.path, *key.split("/")) if self.local else f"{self.path}/{key}"

    def read(self, key):
        """The bytes of object ``key``, or None if there is none."""
        with self.errors(key):
            try:
                if self.local:
                    refuse_link(self, self.full_path(key))
                    with open(self.full_path(key), "rb") as handle:
                        return handle.read()
                return self.fs.cat_file(self.full_path(key))
            except FileNotFoundError:
                return None

    def exists(self, key):
        with self.errors(key):
            if self.local:
                return os.path.isfile(self.full_path(key))
            return self.fs.exists(self.full_path(key))

    def create(self, key, data):
        """Create object ``key`` holding ``data``, whole or not at all, unless
        it exists; True if this call created it."""
        self.refuse_read_only()
        full = self.full_path(key)
        if not self.local and self.protocol not in ATOMIC_CREATE:
            raise OSError(
                f"{self.kind} {self.url!r}: skseg writes a store only where an object "
                "can be created exclusively and atomically (a local disk, NFS, S3); "
                f"fsspec's {self.protocol!r} filesystem is not known to offer that, and "
                "writers there could lose each other's images. Write the store to one "
                "of those, or open this one with read_only=True."
            )
        with self.errors(key):
            if not self.local:
                self.check_conditional_writes()
                for attempt in range(_CONFLICT_RETRIES):
                    try:
                        self.fs.pipe_file(full, data, mode="create")
                        return True
                    except FileExistsError:
                        # A retried PUT whose first try succeeded answers 412
                        # too: ours if it holds our bytes (each is unique).
                        return self.fs.cat_file(full) == data
                    except OSError as exc:
                        # AWS answers overlapping conditional PUTs with 409
                        # ConditionalRequestConflict: "try again".
                        if "ConditionalRequestConflict" not in str(exc):
                            raise
                        time.sleep(0.05 * 2 ** attempt * (1 + random.random()))
                return self.fs.exists(full) and self.fs.cat_file(full) == data
            folder = os.path.dirname(full)
            if folder != self.path:  # the store's own folder may be a link
                refuse_link(self, folder)
            os.makedirs(folder, exist_ok=True)
            temporary = f"{full}.{os.getpid()}.{os.urandom(6).hex()}.partial"
            try:
                with open(temporary, "xb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.link(temporary, full)  # atomic, and fails if ``full`` exists
            except FileExistsError:
                # NFS may answer a retransmitted link that had succeeded with
                # EEXIST: ours if it holds our bytes (each is unique).
                return self.read(key) == data
            except OSError as exc:
                raise OSError(
                    f"{self.kind} {self.url!r}: cannot create {key!r} exclusively "
                    f"({one_line(exc)}); the store needs a filesystem with hard links "
                    "(a local disk or NFS), or S3."
                ) from exc
            finally:
                if os.path.lexists(temporary):
                    os.unlink(temporary)
            return True

    def check_conditional_writes(self):
        """Refuse a server that ignores ``If-None-Match`` (some S3-compatible
        ones do; s3fs itself vouches only for AWS): there, two writers would
        both "create" a commit and one's images would be silently lost. Tried
        once per location and process, on an object of its own."""
        verdict = _CONDITIONAL_WRITES.get(self.url)
        if verdict is None:
            probe = f"{self.path}/probes/{os.getpid()}-{os.urandom(8).hex()}"
            self.fs.pipe_file(probe, b"1", mode="create")
            try:
                self.fs.pipe_file(probe, b"2", mode="create")
                verdict = False
            except FileExistsError:
                verdict = True
            finally:
                try:
                    self.fs.rm_file(probe)
                except OSError:
                    pass
            _CONDITIONAL_WRITES[self.url] = verdict
        if not verdict:
            raise OSError(
                f"{self.kind} {self.url!r}: its object storage ignores conditional "
                "writes (If-None-Match), so concurrent writers could silently lose each "
                "other's images; skseg writes stores only where they are honoured (AWS "
                "S3, a local disk, NFS). Open it with read_only=True to read."
            )

    def sync_folder(self, prefix):
        """Flush a local folder's files to disk (object storage has no cache
        to flush: an object is there once its PUT has answered)."""
        if not self.local:
            return
        for folder, _, files in os.walk(self.full_path(prefix)):
            for name in [*files, "."]:
                descriptor = os.open(os.path.join(folder, name), os.O_RDONLY)
                try:
                    os.fsync(descriptor)
                finally:
                    os.close(descriptor)

    def put(self, key, data):
        """Write object ``key``, replacing it (only for hints)."""
        self.refuse_read_only()
        with self.errors(key):
            if not self.local:
                self.fs.pipe_file(self.full_path(key), data)
                return
            full = self.full_path(key)
            refuse_link(self, full)
            temporary = f"{full}.{os.getpid()}.{os.urandom(6).hex()}.partial"
            with open(temporary, "xb") as handle:
                handle.write(data)
            os.replace(temporary, full)

    def remove(self, prefix):
        """Delete everything under ``prefix``, if anything is there."""
        self.refuse_read_only()
        with self.errors(prefix):
            if self.local:
                shutil.rmtree(self.full_path(prefix), ignore_errors=True)
                return
            try:
                self.fs.rm(self.full_path(prefix), recursive=True)
            except FileNotFoundError:
                pass

    def list(self, prefix):
        """Names of the objects directly under ``prefix``."""
        with self.errors(prefix):
            if self.local:
                folder = self.full_path(prefix)
                return sorted(os.listdir(folder)) if os.path.isdir(folder) else []
            try:
                return sorted(p.rsplit("/", 1)[-1] for p in self.fs.ls(self.full_path(prefix),
                                                                      detail=False))
            except FileNotFoundError:
                return []

    def read_many(self, keys):
        """``{key: bytes or None}``, fetched concurrently from object storage."""
        if self.local or not keys:
            return {key: self.read(key) for key in keys}
        with self.errors(keys[0]):
            found = self.fs.cat([self.full_path(key) for key in keys], on_error="return")
        return {key: (None if isinstance(found[self.full_path(key)], Exception)
                      else found[self.full_path(key)]) for key in keys}

    def zarr_store(self):
        from zarr.storage import FsspecStore, LocalStore

        if self.local:
            return LocalStore(self.path, read_only=self.read_only)
        return FsspecStore.from_url(self.url, storage_options=self.storage_options,
                                    read_only=self.read_only)

    def refuse_read_only(self):
        if self.read_only:
            raise PermissionError(f"{self.kind} {self.url!r} is open read-only.")

    def refuse_if_gone(self):
        """A store moved or deleted under an open handle is not a damaged one."""
        if not self.exists("zarr.json"):
            raise FileNotFoundError(
                f"{self.kind} {self.url!r} is no longer there: it was moved "
                "or deleted while open. Open it again where it is now."
            )

    def errors(self, key):
        return _TranslatedErrors(self, key)


class _TranslatedErrors:
    """Object-storage failures as one line that names the store: the bucket
    that is not there, credentials that are missing or refused."""

    def __init__(self, location, key):
        self.location, self.key = location, key

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, traceback):
        if exc is None or self.location.local or isinstance(exc, CorruptedStoreError):
            return False
        url, kind = self.location.url, self.location.kind
        name = type(exc).__name__
        if name in ("NoCredentialsError", "PartialCredentialsError", "NoAuthTokenError") \
                or "credential" in str(exc).lower() and not isinstance(exc, FileNotFoundError):
            raise PermissionError(
                f"{kind} {url!r}: no credentials for its object storage "
                f"({one_line(exc)}); set them in the environment (e.g. AWS_ACCESS_KEY_ID "
                "and AWS_SECRET_ACCESS_KEY) or pass storage_options."
            ) from None
        if isinstance(exc, PermissionError):
            raise PermissionError(
                f"{kind} {url!r}: access denied to {self.key!r} "
                f"({one_line(exc)}); the credentials in use may not read or write there."
            ) from None
        if isinstance(exc, FileNotFoundError):
            bucket = self.location.path.split("/", 1)[0]
            raise FileNotFoundError(
                f"{kind} {url!r}: its bucket or container {bucket!r} does not "
                f"exist ({one_line(exc)}); create it first."
            ) from None
        if isinstance(exc, (OSError, ValueError)) and not isinstance(exc, FileExistsError):
            raise OSError(
                f"{kind} {url!r}: object storage failed on {self.key!r}: "
                f"{one_line(exc)}"
            ) from exc
        return False


# fsspec filesystems whose pipe_file(mode="create") is one atomic request
# (s3fs sends a conditional PUT, If-None-Match: *); fsspec's generic
# fallback checks then writes, which two writers can both pass.
ATOMIC_CREATE = {"s3", "s3a"}
# Per location, whether its server honours conditional writes (see
# Location.check_conditional_writes), and how often a 409 is retried.
_CONDITIONAL_WRITES = {}
_CONFLICT_RETRIES = 6
_EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "az": "azure",
           "abfs": "azure", "abfss": "azure"}


def _filesystem(url, storage_options, kind):
    from fsspec.core import url_to_fs

    try:
        return url_to_fs(url, **storage_options)
    except ImportError as exc:
        protocol = url.split("://", 1)[0]
        extra = _EXTRAS.get(protocol)
        hint = (f"pip install 'skseg[{extra}]'" if extra else
                "install the fsspec filesystem package for it")
        raise ImportError(
            f"{kind} {url!r} needs a filesystem package for {protocol!r} that is "
            f"not installed ({one_line(exc)}): {hint}."
        ) from None
    except ValueError as exc:
        raise ValueError(f"{kind} {url!r}: {one_line(exc)}") from None


def refuse_link(location, path):
    """Refuse a symbolic link inside a local store: writes through it would
    land outside the store."""
    if location.local and os.path.islink(path):
        raise CorruptedStoreError(
            f"{location.kind} {location.url!r}: {path} is a symbolic link; a store holds "
            "none (writes through it would land outside the store). Remove it, or "
            "extract the features into a new store."
        )
