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

Handles are bounded (`handle_limit`): a share of what the open-file limit leaves once the
descriptors open at the start are counted (an in-process caller's own among them), and
`MAX_HANDLES` at most; the first open that finds no descriptor left stops them.  Directories past
the bound, and those whose handle cannot be opened, are read by path as before.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence

from dedup_engine.find.store import RowStore
from dedup_engine.openflags import handle_flags
from dedup_engine.options import RESERVED_FDS

#: The most directory handles a worker holds: all the directories of a tree of a few million
#: files in directories of a few hundred, and little memory (one descriptor and a dict entry
#: each).  A worker that owns more directories reads the rest by path.
MAX_HANDLES = 4096


def handle_limit(open_files: int | None, in_use: int = 0) -> int:
    """A worker's handles at most, under an open-file limit (None: none) with `in_use`
    descriptors open already: a quarter of what they and the reserve leave, so the readers'
    threads keep the rest (`readers.Readers`)."""
    if open_files is None:
        return MAX_HANDLES
    return max(0, min(MAX_HANDLES, (open_files - RESERVED_FDS - in_use) // 4))


#: The errors of an open that found no descriptor left: the process's (EMFILE) or the system's.
OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE})


def descriptors_in_use() -> int:
    """This process's open descriptors now; 0 where the system does not list them."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


class Anchors:
    """The handles of one worker's directories, opened as its reads first need them.

    Safe to use from the readers' threads: two threads that open the same directory's handle
    at once keep one and close the other.  `close` once no read is running.
    """

    __slots__ = ("_fds", "_flags", "_limit", "_store", "limit")

    def __init__(self, store: RowStore, limit: int, follow_links: bool = False) -> None:
        self._store = store
        #: The most handles this worker may hold, which its readers leave to it.
        self.limit = limit
        # The directories it may still look at, those that got no handle counted too: 0 once
        # the descriptors ran out, or after `close`.
        self._limit = limit
        # With links followed, a directory may have been listed through a symlink to it.
        self._flags = handle_flags(follow_links)
        #: Each directory's handle by its index in the store; None where it could not be opened
        #: (its files are then opened by path, and the error, if any, is theirs).
        self._fds: dict[int, int | None] = {}

    def located(self, rows: Sequence[int]) -> tuple[list[int | None], list[str]]:
        """Where each row is opened from, in order: a directory handle and the file's name in
        it, or None and the file's full path (`os.open`'s `dir_fd` None)."""
        store, fds = self._store, self._fds
        directories = store.directories(rows)
        # Each look at `fds` a single one, which another thread's insert cannot break.
        for directory in [d for d in set(directories) if d not in fds]:
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
            # Not through a symlink (unless links are followed), as the directory was listed:
            # one swapped for a link since gets no handle, and its files' opens by path meet it.
            fd: int | None = os.open(path.rstrip("/") or "/", self._flags)
        except OSError as exc:
            fd = None
            if exc.errno in OUT_OF_DESCRIPTORS:  # the files' own opens need the rest
                self._limit = 0
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
