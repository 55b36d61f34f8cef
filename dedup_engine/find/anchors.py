"""Where a worker opens the files it owns from: a handle on each of their directories, so that
an open looks up one name, not every directory on the way down from the root.

The head and tail stages open every candidate file once each (some 200k in a small tree).  Opened
by its full path, each file costs the kernel a lookup of every component of that path (a dozen in
a deep tree); opened relative to a handle on its directory (an `O_PATH` descriptor, opened the
first time one of the directory's files is read and held until the run ends), one.  A file so
opened must still be the inode the scan saw, as any read checks (`hashtasks`), so a directory
renamed or replaced since the scan reads nothing it should not.  The paths a report lists are
checked again by path before a group is final (`entries.describe` and the full stage's reads,
which keep opening by path), so a directory renamed since leaves its files out with an issue,
as before.

Handles are bounded (`handle_limit`): a share of the open-file limit, and `MAX_HANDLES` at most.
Directories past the bound, and those whose handle cannot be opened, are read by path as before.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from dedup_engine.find.store import RowStore
from dedup_engine.openflags import DIR_HANDLE
from dedup_engine.options import RESERVED_FDS

#: The most directory handles a worker holds: all the directories of a tree of a few million
#: files in directories of a few hundred, and little memory (one descriptor and a dict entry
#: each).  A worker that owns more directories reads the rest by path.
MAX_HANDLES = 4096


def handle_limit(open_files: int | None) -> int:
    """A worker's handles at most, under an open-file limit (None: none): a quarter of what the
    reserve leaves, so the readers' threads keep the rest (`readers.Readers`)."""
    if open_files is None:
        return MAX_HANDLES
    return max(0, min(MAX_HANDLES, (open_files - RESERVED_FDS) // 4))


class Anchors:
    """The handles of one worker's directories, opened as its reads first need them.

    Safe to use from the readers' threads: two threads that open the same directory's handle
    at once keep one and close the other.  `close` once no read is running.
    """

    __slots__ = ("_fds", "_limit", "_store")

    def __init__(self, store: RowStore, limit: int) -> None:
        self._store = store
        self._limit = limit
        #: Each directory's handle by its index in the store; None where it could not be opened
        #: (its files are then opened by path, and the error, if any, is theirs).
        self._fds: dict[int, int | None] = {}

    def located(self, rows: Sequence[int]) -> tuple[list[int | None], list[str]]:
        """Where each row is opened from, in order: a directory handle and the file's name in
        it, or None and the file's full path (`os.open`'s `dir_fd` None)."""
        store, fds = self._store, self._fds
        directories = store.directories(rows)
        for directory in set(directories) - fds.keys():
            self._open(directory)
        handles = list(map(fds.get, directories))
        names = store.names(rows)
        if None in handles:
            for position, handle in enumerate(handles):
                if handle is None:
                    names[position] = store.dir_path(directories[position]) + names[position]
        return handles, names

    def _open(self, directory: int) -> None:
        if len(self._fds) >= self._limit:
            return
        path = self._store.dir_path(directory)
        try:
            # Not through a symlink, as the directory was listed: one swapped for a link since
            # gets no handle, and its files' opens by path meet the link.
            fd: int | None = os.open(path.rstrip("/") or "/", DIR_HANDLE)
        except OSError:
            fd = None
        kept = self._fds.setdefault(directory, fd)
        if fd is not None and kept != fd:  # another thread's handle came first
            os.close(fd)

    def __len__(self) -> int:
        """Handles held."""
        return sum(fd is not None for fd in self._fds.values())

    def close(self) -> None:
        """Close every handle; no more are opened."""
        fds, self._fds, self._limit = self._fds, {}, 0
        for fd in fds.values():
            if fd is not None:
                os.close(fd)
