"""The rows a worker owns: every file it listed, kept compactly until the run ends.

A worker lists directories (`walk`) into its `RowStore`; from then on the file is named by its
row number in that store, and only keys (size, and the inode of a linked file) go to the
coordinator.  Tasks that read a file name the owner's rows, and the owner finds the path and what
the scan saw here.  Nothing in the store is a Python object per file: names are one byte arena
with an end offset per row, a directory's rows are consecutive (one path string per directory),
and the numbers the re-checks need are typed arrays.  About 28 bytes a file plus its name; not
its size, which the coordinator groups by and sends with every task that needs it.
"""

from __future__ import annotations

import os
from array import array
from bisect import bisect_right
from dataclasses import dataclass

#: Name offsets are 4 bytes while the arena is under 4 GiB, and 8 past it.
_SMALL_OFFSETS = 1 << 32


@dataclass(frozen=True, slots=True)
class Scanned:
    """What the scan saw of one row: enough to tell whether the file is still that one."""

    dev: int
    ino: int
    size: int
    mtime: int
    ctime: int

    def matches(self, st: os.stat_result) -> bool:
        """The same inode, size, mtime and ctime (a write since the scan changes both times)."""
        return (
            st.st_ctime_ns == self.ctime
            and st.st_mtime_ns == self.mtime
            and st.st_ino == self.ino
            and st.st_dev == self.dev
            and st.st_size == self.size
        )


class RowStore:
    """Rows appended a directory at a time; read back by row number."""

    __slots__ = (
        "_dir_dev",
        "_dir_first",
        "_dir_root",
        "_dirs",
        "_many_devs",
        "_name_end",
        "_names",
        "_other_dev",
        "ctime",
        "ino",
        "mtime",
    )

    def __init__(self) -> None:
        self._dirs: list[str] = []  # each directory's path with its trailing "/"
        self._dir_first = array("Q")  # its first row
        self._dir_root = array("I")  # the index of the root it was found under
        self._dir_dev = array("Q")  # its st_dev: what its files have, but for a mount point
        self._other_dev: dict[int, int] = {}  # rows on another device than their directory
        self._many_devs = False  # directories on more than one device
        self._names = bytearray()
        self._name_end = array("I")
        self.ino = array("Q")
        self.mtime = array("q")
        self.ctime = array("q")

    def __len__(self) -> int:
        return len(self.ino)

    def start_dir(self, prefix: str, root: int, dev: int) -> None:
        """The rows added next are in the directory `prefix` (ending in "/")."""
        if self._dir_dev and dev != self._dir_dev[0]:
            self._many_devs = True
        first = len(self.ino)
        if self._dir_first and self._dir_first[-1] == first:  # the last one had no file
            self._dirs[-1] = prefix
            self._dir_root[-1] = root
            self._dir_dev[-1] = dev
            return
        self._dirs.append(prefix)
        self._dir_first.append(first)
        self._dir_root.append(root)
        self._dir_dev.append(dev)

    def add(self, name: str, st: os.stat_result) -> None:
        """A file of the current directory, as stat'ed by the scan."""
        if st.st_dev != self._dir_dev[-1]:  # a file bind-mounted over another
            self._other_dev[len(self.ino)] = st.st_dev
        self._names += os.fsencode(name)
        ends = self._name_end
        if len(self._names) >= _SMALL_OFFSETS and ends.typecode == "I":
            self._name_end = ends = array("Q", ends)
        ends.append(len(self._names))
        self.ino.append(st.st_ino)
        self.mtime.append(st.st_mtime_ns)
        self.ctime.append(st.st_ctime_ns)

    def path(self, row: int) -> str:
        directory = bisect_right(self._dir_first, row) - 1
        ends = self._name_end
        start = ends[row - 1] if row else 0
        return self._dirs[directory] + os.fsdecode(bytes(self._names[start : ends[row]]))

    def root(self, row: int) -> int:
        return self._dir_root[bisect_right(self._dir_first, row) - 1]

    def dev(self, row: int) -> int:
        other = self._other_dev.get(row)
        if other is not None:
            return other
        return self._dir_dev[bisect_right(self._dir_first, row) - 1]

    @property
    def one_dev(self) -> int | None:
        """The device of every row, where they are all on one; else None."""
        if self._many_devs or self._other_dev or not self._dir_dev:
            return None
        return self._dir_dev[0]

    def scanned(self, row: int, size: int) -> Scanned:
        """What the scan saw of `row`, whose size the coordinator says was `size`."""
        return Scanned(self.dev(row), self.ino[row], size, self.mtime[row], self.ctime[row])

    def nbytes(self) -> int:
        """The store's own memory, near enough: its arrays and the arena."""
        arrays = (self._name_end, self.ino, self.mtime, self.ctime, self._dir_first)
        return (
            len(self._names)
            + sum(a.itemsize * len(a) for a in arrays)
            + sum(len(d) + 57 for d in self._dirs)
        )
