"""Worker side of `--dirs`: what each directory a worker listed holds, kept for the search for
duplicate directories once the file groups are final (`dirgroups`, in the coordinator).

A worker's file rows already hold each directory's files (`store.RowStore`); the walk adds, per
directory it lists, what rows do not hold: its identity, the sizes of its files, its
subdirectories (by name and identity, walked or not), and its other entries by name and type
(an empty file, a symlink with its target, a FIFO, a socket, a device).  A directory whose
listing failed part way, or one of whose entries could not be stat'ed, is marked incomplete: its
contents are not known whole, so it is never a copy of another.  Entries the options leave out
(patterns, hidden names, sizes out of bounds) are not part of any tree.  Kept only with `--dirs`:
about 600 bytes a directory and eight a file, each directory's freed once handed over.
"""

from __future__ import annotations

import os
import stat
from array import array
from dataclasses import dataclass

from dedup_engine.find.store import RowStore
from dedup_engine.find.tasks import ListedDir, TreeResult, TreeTask

#: What an entry that is not a file row is, in a listing: an empty file, a symlink (its
#: target follows), and the special files.
EMPTY, LINK, FIFO, SOCKET, CHAR, BLOCK, OTHER = (
    "empty",
    "link",
    "fifo",
    "socket",
    "char",
    "block",
    "?",
)


def special_kind(mode: int) -> str:
    """The kind of a special file, from its mode."""
    if stat.S_ISFIFO(mode):
        return FIFO
    if stat.S_ISSOCK(mode):
        return SOCKET
    if stat.S_ISCHR(mode):
        return CHAR
    return BLOCK if stat.S_ISBLK(mode) else OTHER


@dataclass(slots=True)
class _Record:
    """A directory's record, filled in as its listing goes (hence not frozen)."""

    prefix: str  # with its trailing "/"
    dev: int
    ino: int
    first: int  # its rows in the store: first to end - 1
    end: int
    sizes: array[int]
    linked: array[int]
    subdirs: list[tuple[str, int, int]]
    others: list[tuple[str, str]]
    whole: bool
    # Files that are roots of their own, whose rows lie elsewhere: (name, dev, ino, size, linked)
    root_files: list[tuple[str, int, int, int, bool]] | None = None


class DirTree:
    """The directories one worker listed, in the order it listed them."""

    def __init__(self) -> None:
        self._records: list[_Record | None] = []  # None once handed over
        self._open: _Record | None = None

    def begin(self, prefix: str, dev: int, ino: int, first_row: int) -> None:
        """A directory's listing starts; its file rows will follow `first_row`."""
        self._open = _Record(
            prefix, dev, ino, first_row, first_row, array("q"), array("Q"), [], [], True
        )

    def subdir(self, name: str, st: os.stat_result) -> None:
        if self._open is not None:
            self._open.subdirs.append((name, st.st_dev, st.st_ino))

    def other(self, name: str, kind: str) -> None:
        if self._open is not None:
            self._open.others.append((name, kind))

    def link(self, name: str, dir_fd: int) -> None:
        """A symlink not followed, by its target, read relative to its directory's descriptor:
        one that cannot be read leaves its directory incomplete."""
        if self._open is None:
            return
        try:
            target = os.readlink(name, dir_fd=dir_fd)
        except OSError:
            self._open.whole = False
            return
        self._open.others.append((name, f"{LINK}:{target}"))

    def root_file(self, name: str, st: os.stat_result) -> None:
        """A file that is a root of its own: the scan took it as that root, not in this
        listing, but it is part of this directory's tree all the same."""
        if self._open is not None:
            if self._open.root_files is None:
                self._open.root_files = []
            self._open.root_files.append((name, st.st_dev, st.st_ino, st.st_size, st.st_nlink > 1))

    def incomplete(self) -> None:
        """An entry could not be listed or stat'ed."""
        if self._open is not None:
            self._open.whole = False

    def end(self, end_row: int, sizes: array[int], linked: array[int]) -> None:
        """The listing is done: its rows end before `end_row`, `sizes` are theirs, and `linked`
        are the places among them of files that may have other names."""
        record, self._open = self._open, None
        if record is not None:
            record.end, record.sizes, record.linked = end_row, sizes, linked
            self._records.append(record)

    def listed(self, task: TreeTask, store: RowStore) -> TreeResult:
        """Worker side of a `TreeTask`."""
        records, end, files = self._records, task.start, 0
        chosen: list[_Record] = []
        while end < len(records) and (files < task.files or end == task.start):
            record = records[end]
            assert record is not None, "a directory handed over twice"
            chosen.append(record)
            files += record.end - record.first
            records[end] = None  # handed over: its memory goes
            end += 1
        dirs = tuple(_listed(record, store) for record in chosen)
        return TreeResult(dirs, end if end < len(records) else None)


def _listed(record: _Record, store: RowStore) -> ListedDir:
    first, end = record.first, record.end
    names, ends = store.names_between(first, end)
    devs, inos = store.devs(range(first, end)), store.ino[first:end]
    sizes, linked = record.sizes, record.linked
    if record.root_files:
        sizes, linked = array("q", sizes), array("Q", linked)
        for name, dev, ino, size, has_links in record.root_files:
            if has_links:
                linked.append(len(sizes))
            names += os.fsencode(name)
            ends.append(len(names))
            devs.append(dev)
            inos.append(ino)
            sizes.append(size)
    return ListedDir(
        record.prefix.rstrip("/") or "/",
        record.dev,
        record.ino,
        names,
        ends,
        devs,
        inos,
        sizes,
        linked,
        tuple(record.subdirs),
        tuple(record.others),
        record.whole,
    )
