"""Reading a feature store: a snapshot of its first commits.

A reader never waits for a writer: it names the commits it has seen, reads
each as it needs it (by bisection on the commits' first positions), and
reads the per-image index of the whole store (through checkpoints) only when
asked for it. The rows the commits point at are read, and verified against
the CRC-32 their commit carries, by ``_store_segments``.
"""

import itertools
import json

import numpy as np

from . import _store_format
from ._store_format import (
    FEATURE_KEY,
    IMAGE_COLUMNS,
    CorruptedStoreError,
    checkpoint_key,
    commit_key,
    extraction_digest,
    parse_commit,
    runs,
)
from ._store_location import one_line
from ._store_segments import SegmentReader

# Snapshots reopened from pickles in this process, by store and commit count.
_PINNED = {}
_MAX_PINNED = 8


def pinned_snapshot(location, store_id, n_commits):
    """The snapshot of a store's first ``n_commits`` commits, shared by the
    tasks a worker runs on it: a pinned snapshot never changes, so what one
    task has read of it (commits, opened arrays) serves the next."""
    key = (location.url, repr(sorted(location.storage_options.items())), store_id,
           n_commits)
    snapshot = _PINNED.pop(key, None) or Snapshot(location, n_commits)
    _PINNED[key] = snapshot  # the most recently used last
    while len(_PINNED) > _MAX_PINNED:
        _PINNED.pop(next(iter(_PINNED)))
    return snapshot


class Snapshot:
    """A store as it was when opened: its first ``n_commits`` commits.

    Commits are read as they are needed (a task that reads 100 images reads
    the few commits that hold them, found by bisection on their first
    positions); the per-image index of the whole store only when asked for.
    """

    def __init__(self, location, n_commits=None):
        self.location = location
        self.zarr = location.zarr_store()
        self.segments = SegmentReader(location, self.zarr)
        self.commits = {}
        self.probed = {}  # commits' bytes read while probing, not yet parsed
        self._index = None
        self.unique = None  # the distinct images' positions, when known
        self.recorded, self.extraction = self.read_extraction()
        self.n_commits = self.find_head() if n_commits is None else int(n_commits)
        self.layout = self.commit(0).layout if self.n_commits else None

    def read_extraction(self):
        """``(recorded, extraction)``: whether extraction.json exists, and the
        parameters it records (None for records appended by hand). It is
        created once, exclusively, before the first commit, so every writer
        is checked against the same one."""
        data = self.location.read("extraction.json")
        if data is None:
            return False, None
        try:
            record = json.loads(data)
            extraction = record["extraction"]
            if not (extraction is None or isinstance(extraction, dict)):
                raise TypeError(f"a {type(extraction).__name__}")
        except (ValueError, RecursionError, TypeError, KeyError) as exc:
            raise CorruptedStoreError(
                f"feature store {self.location.url!r}: its extraction.json is damaged "
                f"({one_line(exc)}); restore the store or extract its features again."
            ) from None
        return True, extraction

    def find_head(self, known=0):
        """The number of commits: probed forward from the hint (or ``known``)."""
        n = known
        hint = self.location.read("head.json")
        try:
            hinted = int(json.loads(hint)["commits"]) if hint else 0
        except (ValueError, KeyError, TypeError, RecursionError, OverflowError):
            hinted = 0
        # Probed by reading, not asking whether they exist: one request
        # each, and the last one is needed anyway.
        if hinted > n:
            if self._probe(hinted - 1):
                n = hinted
            else:  # a hint ahead of the commits: damaged; count them
                n = len([name for name in self.location.list("commits")
                         if name.endswith(".json")])
        while self._probe(n):
            n += 1
        return n

    def _probe(self, seq):
        """Whether commit ``seq`` exists; its bytes are kept for :meth:`commit`."""
        if seq in self.commits or seq in self.probed:
            return True
        data = self.location.read(commit_key(seq))
        if data is not None:
            self.probed[seq] = data
        return data is not None

    def refresh(self):
        """Catch up with commits made since; cheap when there were none."""
        n = self.find_head(self.n_commits)
        if n != self.n_commits:
            self.n_commits = n
            self._index = self.unique = None
            if self.layout is None:
                self.layout = self.commit(0).layout
        if not self.recorded:
            self.recorded, self.extraction = self.read_extraction()

    @property
    def n_stored(self):
        """Images over all commits, duplicates included."""
        return self.commit(self.n_commits - 1).stop if self.n_commits else 0

    def commit(self, seq):
        commit = self.commits.get(seq)
        if commit is None:
            data = self.probed.pop(seq, None) or self.location.read(commit_key(seq))
            if data is None:
                self.location.refuse_if_gone()
                raise CorruptedStoreError(
                    f"feature store {self.location.url!r}: commit {seq} of "
                    f"{self.n_commits} is missing ({commit_key(seq)}); the store is "
                    "damaged, restore it or extract its features again."
                )
            commit = self.accept(parse_commit(self.location, seq, data))
        return commit

    def accept(self, commit):
        """Keep a parsed commit, refused if it does not belong to this store."""
        if commit.seq and commit.layout != self.layout:
            raise CorruptedStoreError(
                f"feature store {self.location.url!r}: commit {commit.seq} has the layout "
                f"{commit.layout}, the store {self.layout}; it is damaged."
            )
        if commit.extraction != extraction_digest(self.extraction):
            raise CorruptedStoreError(
                f"feature store {self.location.url!r}: commit {commit.seq} was written "
                "without the store's recorded extraction (two writers with different "
                "extraction parameters met); extract its features into a new store."
            )
        # Checked against its neighbours when they are at hand: reading one
        # commit never reads all those before it.
        before, after = self.commits.get(commit.seq - 1), self.commits.get(commit.seq + 1)
        if (commit.seq == 0 and commit.first != 0) \
                or before is not None and commit.first != before.stop \
                or after is not None and after.first != commit.stop:
            raise CorruptedStoreError(
                f"feature store {self.location.url!r}: commit {commit.seq} starts at "
                f"image {commit.first}, which does not continue its neighbours; it is "
                "damaged."
            )
        self.commits[commit.seq] = commit
        return commit

    def published(self, commit, layout):
        """Take in a commit this process has just made, the next one."""
        self.layout = layout
        self.accept(commit)
        self.n_commits = commit.seq + 1
        self._index = self.unique = None

    def commit_at(self, position):
        """The commit holding stored image ``position``, found by bisection."""
        low, high = 0, self.n_commits
        while high - low > 1:
            middle = (low + high) // 2
            if self.commit(middle).first <= position:
                low = middle
            else:
                high = middle
        return self.commit(low)

    def pieces(self, start, stop):
        """``(commit, k0, k1)`` covering stored images [start, stop)."""
        pieces = []
        while start < stop:
            commit = self.commit_at(start)
            if not commit.first <= start < commit.stop:
                raise CorruptedStoreError(
                    f"feature store {self.location.url!r} holds no image {start} (its "
                    f"{self.n_commits} commits end at {self.n_stored}): the store was "
                    "replaced or damaged since this handle was made."
                )
            end = min(stop, commit.stop)
            pieces.append((commit, start - commit.first, end - commit.first))
            start = end
        return pieces

    # -- the whole index ---------------------------------------------------------

    @property
    def has_index(self):
        """Whether the per-image index of the whole store has been read."""
        return self._index is not None

    def index(self):
        """Every commit's columns over the whole store, the first position
        of each content key, and the distinct images' positions (None when
        all are): a content key stored twice is read once."""
        if self._index is None:
            self._read_all_commits()
            commits = [self.commit(seq) for seq in range(self.n_commits)]
            columns = {name: (np.concatenate([c.columns[name] for c in commits])
                              if commits else _empty_column(name))
                       for name in IMAGE_COLUMNS}
            first, repeated = {}, []
            for position, key in enumerate(columns["content_keys"].tolist()):
                if first.setdefault(key, position) != position \
                        and not key.startswith(FEATURE_KEY):
                    repeated.append(position)
            unique = None  # no duplicates: every stored image, in order
            if repeated:
                unique = np.setdiff1d(np.arange(len(columns["content_keys"])), repeated)
            self._index = columns, first, unique
        return self._index

    def _read_all_commits(self):
        """Every commit, through checkpoints where they exist; a writable
        reader makes the checkpoints that are missing, for the next one."""
        size = _store_format.CHECKPOINT_COMMITS
        n_full = self.n_commits // size
        wanted = [k for k in range(n_full)
                  if any(seq not in self.commits for seq in range(k * size, (k + 1) * size))]
        found = self.location.read_many([checkpoint_key(k) for k in wanted])
        for k in wanted:
            data = found[checkpoint_key(k)]
            try:
                records = json.loads(data)["commits"] if data is not None else None
            except (ValueError, RecursionError, TypeError, KeyError):
                records = None  # damaged: the commits themselves are the truth
            if not isinstance(records, list) or len(records) != size:
                continue
            try:
                parsed = [parse_commit(self.location, k * size + offset, record,
                                       checkpoint_key(k))
                          for offset, record in enumerate(records)]
            except CorruptedStoreError:
                continue  # a damaged checkpoint: the commits themselves are the truth
            known = [self.commits.get(c.seq) for c in parsed]
            if any(a.stop != b.first for a, b in itertools.pairwise(parsed)) or any(
                    c is not None and (c.first, c.segment) != (p.first, p.segment)
                    for c, p in zip(known, parsed)):
                continue  # records out of place: the commits are the truth
            for commit in parsed:
                if commit.seq not in self.commits:
                    self.accept(commit)
        missing = [seq for seq in range(self.n_commits) if seq not in self.commits]
        fetched = self.location.read_many([commit_key(seq) for seq in missing])
        for seq in missing:  # in order: each is checked against the one before
            data = fetched[commit_key(seq)]
            if data is None:
                self.commit(seq)  # raises, naming it
            self.accept(parse_commit(self.location, seq, data))
        if self.location.read_only:
            return
        for k in sorted({seq // size for seq in missing if seq < n_full * size}):
            self.write_checkpoint(k, fetched)

    def write_checkpoint(self, k, fetched=None):
        """Gather commits of checkpoint ``k`` into one object, if this
        location can be written: a reader's service to the next, never a
        reason for a read to fail."""
        keys = [commit_key(seq) for seq in range(k * _store_format.CHECKPOINT_COMMITS,
                                                 (k + 1) * _store_format.CHECKPOINT_COMMITS)]
        try:
            records = [json.loads((fetched or {}).get(key) or self.location.read(key))
                       for key in keys]
            self.location.create(checkpoint_key(k), json.dumps({"commits": records}).encode())
        except (OSError, ValueError, TypeError):
            pass

    def unique_positions(self):
        if self.unique is None:
            columns, _, unique = self.index()
            self.unique = np.arange(len(columns["content_keys"]), dtype=np.int64) \
                if unique is None else unique
        return self.unique

    def column(self, name, positions):
        """Column ``name`` at stored positions, from the whole index when it
        is loaded, else from the commits holding them."""
        if self._index is not None:
            return self._index[0][name][positions]
        parts = []
        for a, b in runs(positions):
            for commit, k0, k1 in self.pieces(a, b):
                parts.append(commit.columns[name][k0:k1])
        return np.concatenate(parts) if parts else _empty_column(name)

    # -- data ----------------------------------------------------------------------

    def read(self, name, start, stop):
        """Rows of segment array ``name`` for stored images [start, stop),
        each image verified, and the images' row offsets in the block."""
        return self.segments.read(name, self.pieces(start, stop), self.layout)


def _empty_column(name):
    kind, row = IMAGE_COLUMNS[name]
    return np.zeros(0, object) if kind == "str" else np.zeros((0, *row), np.int64)
