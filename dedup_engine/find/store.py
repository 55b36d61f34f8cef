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
from collections.abc import Iterable, Sequence
from itertools import accumulate

#: Name offsets are 4 bytes while the arena is under 4 GiB, and 8 past it.
_SMALL_OFFSETS = 1 << 32


class RowStore:
    """Rows appended a directory at a time; read back by row number."""

    __slots__ = (
        "_dir_dev",
        "_dir_first",
        "_dir_root",
        "_dir_step",
        "_dirs",
        "_many_devs",
        "_name_end",
        "_names",
        "_other_dev",
        "_other_root",
        "_stepping",
        "ctime",
        "ino",
        "mtime",
    )

    def __init__(self) -> None:
        self._dirs: list[str] = []  # each directory's path with its trailing "/"
        # Its first row; a list, not an array, since every row's lookup bisects it: an array
        # makes an int object at each of the bisection's steps, a list holds them already
        # (one object a directory, not a file).
        self._dir_first: list[int] = []
        self._dir_root = array("I")  # the index of the root it was found under
        # 1 where each row is a root of its own, numbered from the directory's root on (file
        # roots, which a list names one after another in their directory)
        self._dir_step = array("B")
        self._stepping = False
        self._dir_dev = array("Q")  # its st_dev: what its files have, but for a mount point
        self._other_dev: dict[int, int] = {}  # rows on another device than their directory
        self._other_root: dict[int, int] = {}  # rows counting under another root than theirs
        self._many_devs = False  # directories on more than one device
        self._names = bytearray()
        self._name_end = array("I")
        self.ino = array("Q")
        self.mtime = array("q")
        self.ctime = array("q")

    def __len__(self) -> int:
        return len(self.ino)

    def start_dir(self, prefix: str, root: int, dev: int, stepping: bool = False) -> None:
        """The rows added next are in the directory `prefix` (ending in "/"), and count under
        `root`, or with `stepping` each under its own, numbered on from `root`."""
        if self._dir_dev and dev != self._dir_dev[0]:
            self._many_devs = True
        self._stepping = self._stepping or stepping
        first = len(self.ino)
        if self._dir_first and self._dir_first[-1] == first:  # the last one had no file
            self._dirs[-1] = prefix
            self._dir_root[-1] = root
            self._dir_dev[-1] = dev
            self._dir_step[-1] = stepping
            return
        self._dirs.append(prefix)
        self._dir_first.append(first)
        self._dir_root.append(root)
        self._dir_dev.append(dev)
        self._dir_step.append(stepping)

    def continues(self, prefix: str, root: int, dev: int) -> bool:
        """Whether a file root numbered `root` in `prefix` on `dev` is the next row of the last
        directory (one of file roots), which it then joins without a directory of its own."""
        if not self._dir_step or not self._dir_step[-1]:
            return False
        rows = len(self.ino) - self._dir_first[-1]
        return (
            self._dir_root[-1] + rows == root
            and self._dir_dev[-1] == dev
            and self._dirs[-1] == prefix
        )

    def add(self, names: list[str], stats: list[os.stat_result]) -> None:
        """Files of the current directory, as stat'ed by the scan.

        A directory at a time, each step over all its files at once: a name holds no NUL, so
        the names are encoded joined by NULs and measured by splitting there.
        """
        if not names:
            return
        dev, first = self._dir_dev[-1], len(self.ino)
        if any(st.st_dev != dev for st in stats):  # a file bind-mounted over another
            self._other_dev.update(
                (first + i, st.st_dev) for i, st in enumerate(stats) if st.st_dev != dev
            )
        blob = "\0".join(names).encode("utf-8", "surrogateescape")
        ends = self._name_end
        if len(self._names) + len(blob) >= _SMALL_OFFSETS and ends.typecode == "I":
            self._name_end = ends = array("Q", ends)
        lengths = accumulate(map(len, blob.split(b"\0")), initial=len(self._names))
        next(lengths)
        ends.extend(lengths)
        self._names += blob.replace(b"\0", b"")
        self.ino.extend([st.st_ino for st in stats])
        self.mtime.extend([st.st_mtime_ns for st in stats])
        self.ctime.extend([st.st_ctime_ns for st in stats])

    def paths(self, rows: Iterable[int]) -> list[str]:
        """The paths of many rows, without a call per row."""
        dirs, firsts, ends, names = self._dirs, self._dir_first, self._name_end, self._names
        return [
            dirs[bisect_right(firsts, row) - 1]
            + names[ends[row - 1] if row else 0 : ends[row]].decode("utf-8", "surrogateescape")
            for row in rows
        ]

    def directories(self, rows: Iterable[int]) -> list[int]:
        """The directory of many rows (its index, for `dir_path`), without a call per row."""
        firsts = self._dir_first
        return [bisect_right(firsts, row) - 1 for row in rows]

    def names(self, rows: Iterable[int]) -> list[str]:
        """The names of many rows in their directories, without a call per row."""
        ends, names = self._name_end, self._names
        return [
            names[ends[row - 1] if row else 0 : ends[row]].decode("utf-8", "surrogateescape")
            for row in rows
        ]

    def dir_path(self, directory: int) -> str:
        """A directory's path, ending in "/"."""
        return self._dirs[directory]

    def devs(self, rows: Sequence[int]) -> array[int]:
        """The device of many rows, in a column; with one device, without a look at each."""
        one = self.one_dev
        if one is not None:
            return array("Q", [one]) * len(rows)
        return self.roots_devs(rows)[1]

    def roots_devs(self, rows: Sequence[int]) -> tuple[array[int], array[int]]:
        """The root index and the device of many rows, in columns."""
        firsts, dir_root = self._dir_first, self._dir_root
        directories = [bisect_right(firsts, row) - 1 for row in rows]
        if self._stepping:
            step = self._dir_step
            roots = array(
                "I",
                [
                    dir_root[d] + (row - firsts[d] if step[d] else 0)
                    for row, d in zip(rows, directories, strict=True)
                ],
            )
        else:
            roots = array("I", [dir_root[d] for d in directories])
        if self._other_root:
            other_root = self._other_root
            roots = array("I", [other_root.get(row, r) for row, r in zip(rows, roots, strict=True)])
        one = self.one_dev
        if one is not None:
            return roots, array("Q", [one]) * len(directories)
        dir_dev, other = self._dir_dev, self._other_dev
        devs = array(
            "Q",
            [other.get(row, dir_dev[d]) for row, d in zip(rows, directories, strict=True)]
            if other
            else [dir_dev[d] for d in directories],
        )
        return roots, devs

    def count_under(self, row: int, root: int) -> None:
        """The row counts under `root`, not its directory's: a file reached through a link
        (links followed) that lies under another root."""
        self._other_root[row] = root

    def names_between(self, first: int, end: int) -> tuple[bytes, array[int]]:
        """The names of rows `first` to `end - 1` (one directory's), one after another as bytes,
        and where each ends among them."""
        ends = self._name_end
        base = ends[first - 1] if first else 0
        top = ends[end - 1] if end > first else base
        return bytes(self._names[base:top]), array("Q", [e - base for e in ends[first:end]])

    def _name(self, row: int) -> str:
        ends = self._name_end
        start = ends[row - 1] if row else 0
        return self._names[start : ends[row]].decode("utf-8", "surrogateescape")

    def directory(self, row: int) -> int:
        """The index of the row's directory, for `path_in` and `dev_in`."""
        return bisect_right(self._dir_first, row) - 1

    def path_in(self, directory: int, row: int) -> str:
        return self._dirs[directory] + self._name(row)

    def dev(self, row: int) -> int:
        return self.dev_in(self.directory(row), row)

    def dev_in(self, directory: int, row: int) -> int:
        other = self._other_dev.get(row) if self._other_dev else None
        return self._dir_dev[directory] if other is None else other

    @property
    def one_dev(self) -> int | None:
        """The device of every row, where they are all on one; else None."""
        if self._many_devs or self._other_dev or not self._dir_dev:
            return None
        return self._dir_dev[0]
