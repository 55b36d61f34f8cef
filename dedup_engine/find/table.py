"""The run's file table: one row per file found, kept in columns.

Built on both sides: a worker lists its directories into a `FileColumns` (`walk`), and the parent
appends each one to the run's table; from then on the parent refers to a file by its row number.
Columns of numbers, not an object per file: pickling a tuple per file costs more than the listing
itself, and the table of a large tree stays a few arrays.
"""

from __future__ import annotations

import os
from array import array
from dataclasses import dataclass, field


@dataclass(slots=True)
class FileColumns:
    """File rows in columns: the scan's output and, appended together, the run's file table."""

    paths: list[str] = field(default_factory=list)
    root: array[int] = field(default_factory=lambda: array("I"))
    dev: array[int] = field(default_factory=lambda: array("Q"))
    ino: array[int] = field(default_factory=lambda: array("Q"))
    nlink: array[int] = field(default_factory=lambda: array("Q"))
    size: array[int] = field(default_factory=lambda: array("q"))
    mtime: array[int] = field(default_factory=lambda: array("q"))
    ctime: array[int] = field(default_factory=lambda: array("q"))
    #: Owner and permission bits (S_IMODE): `apply` acts only among files that share them.
    uid: array[int] = field(default_factory=lambda: array("I"))
    gid: array[int] = field(default_factory=lambda: array("I"))
    mode: array[int] = field(default_factory=lambda: array("H"))
    #: Rows reached through a symlink to a file (with follow_links): another name of a file
    #: that may also be found by its real path, so never a copy in its own right.
    alias: array[int] = field(default_factory=lambda: array("B"))

    def __len__(self) -> int:
        return len(self.paths)

    def extend(self, other: FileColumns) -> None:
        self.paths.extend(other.paths)
        self.root.extend(other.root)
        self.dev.extend(other.dev)
        self.ino.extend(other.ino)
        self.nlink.extend(other.nlink)
        self.size.extend(other.size)
        self.mtime.extend(other.mtime)
        self.ctime.extend(other.ctime)
        self.uid.extend(other.uid)
        self.gid.extend(other.gid)
        self.mode.extend(other.mode)
        self.alias.extend(other.alias)

    @classmethod
    def from_stats(
        cls, paths: list[str], roots: array[int], stats: list[os.stat_result], alias: array[int]
    ) -> FileColumns:
        return cls(
            paths,
            roots,
            array("Q", [st.st_dev for st in stats]),
            array("Q", [st.st_ino for st in stats]),
            array("Q", [st.st_nlink for st in stats]),
            array("q", [st.st_size for st in stats]),
            array("q", [st.st_mtime_ns for st in stats]),
            array("q", [st.st_ctime_ns for st in stats]),
            array("I", [st.st_uid for st in stats]),
            array("I", [st.st_gid for st in stats]),
            array("H", [st.st_mode & 0o7777 for st in stats]),
            alias,
        )

    def add(self, path: str, root: int, st: os.stat_result) -> None:
        self.paths.append(path)
        self.root.append(root)
        self.dev.append(st.st_dev)
        self.ino.append(st.st_ino)
        self.nlink.append(st.st_nlink)
        self.size.append(st.st_size)
        self.mtime.append(st.st_mtime_ns)
        self.ctime.append(st.st_ctime_ns)
        self.uid.append(st.st_uid)
        self.gid.append(st.st_gid)
        self.mode.append(st.st_mode & 0o7777)
        self.alias.append(0)

    def as_scanned(self, row: int, st: os.stat_result) -> bool:
        """Whether `st` shows the file of `row` as the scan saw it: the same inode, size, mtime
        and ctime (a write since the scan changes both times)."""
        return (
            st.st_ctime_ns == self.ctime[row]
            and st.st_mtime_ns == self.mtime[row]
            and st.st_ino == self.ino[row]
            and st.st_dev == self.dev[row]
            and st.st_size == self.size[row]
        )
