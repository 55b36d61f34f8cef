"""Listing directories: turning a batch of directories into file rows and subdirectories.

Runs in the worker processes.  One `os.scandir` per directory and at most one stat per entry (from
the DirEntry); FIFOs, sockets and devices are recognised from the directory entry's type and never
opened or stat'ed.  Results are columnar (a list of paths and arrays of numbers) because pickling a
tuple per file costs more than the listing itself.
"""

from __future__ import annotations

import os
import stat
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field

from dedup_engine.globs import Globs
from dedup_engine.openflags import dir_flags
from dedup_engine.options import ScanOptions
from dedup_engine.oserror import describe_error


@dataclass(frozen=True, slots=True)
class DirJob:
    """A directory to list.  `depth` is its depth below its root (the root is 0)."""

    path: str
    root: int
    depth: int
    root_dev: int


@dataclass(frozen=True, slots=True)
class ScanTask:
    dirs: tuple[DirJob, ...]


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


@dataclass(frozen=True, slots=True)
class ScanResult:
    files: FileColumns
    subdirs: tuple[DirJob, ...]
    subdir_devs: array[int]  # (dev, ino) of each subdir, so the caller can detect loops
    subdir_inos: array[int]
    issues: tuple[tuple[str, str], ...]
    dirs_scanned: int
    skipped_special: int
    skipped_symlinks: int


class Filter:
    """Name filters and limits from the options, compiled once per process."""

    def __init__(self, options: ScanOptions, roots: Sequence[str]) -> None:
        self.options = options
        self.roots = tuple(roots)
        self._include = Globs(options.include)
        self._exclude = Globs(options.exclude)
        self.has_include = bool(options.include)
        self.has_exclude = bool(options.exclude)

    def excluded(self, name: str, path: str, root: int, is_dir: bool = False) -> bool:
        if not self.options.hidden and name.startswith("."):
            return True
        return self.has_exclude and self._exclude.match(name, path, self.roots[root], is_dir)

    def included(self, name: str, path: str, root: int) -> bool:
        return not self.has_include or self._include.match(name, path, self.roots[root])


def scan_dirs(task: ScanTask, flt: Filter) -> ScanResult:
    """List every directory of the task; errors become issues and the listing goes on.

    Runs once per directory entry, so the common case (a regular file, no patterns) is kept to a
    type check, one stat and two appends; the columns are built once at the end.
    """
    opts = flt.options
    follow = opts.follow_links
    open_flags = dir_flags(follow)
    max_depth = opts.max_depth
    filtering = flt.has_include or flt.has_exclude or not opts.hidden
    min_size = max(opts.min_size, 1)
    max_size = opts.max_size if opts.max_size is not None else 1 << 63
    empty = opts.empty
    paths: list[str] = []
    stats: list[os.stat_result] = []
    roots = array("I")
    aliases: list[int] = []  # positions in `paths` reached through a file symlink
    subdirs: list[DirJob] = []
    subdir_devs = array("Q")
    subdir_inos = array("Q")
    issues: list[tuple[str, str]] = []
    special = 0
    symlinks = 0
    scanned = 0
    add_path, add_stat = paths.append, stats.append

    def add_dir(path: str, root: int, parent: DirJob, st: os.stat_result) -> None:
        if not opts.one_file_system or st.st_dev == parent.root_dev:
            subdirs.append(DirJob(path, root, parent.depth + 1, parent.root_dev))
            subdir_devs.append(st.st_dev)
            subdir_inos.append(st.st_ino)

    for job in task.dirs:
        # The directory is opened without following a symlink (unless links are followed), so
        # one swapped for a link after its parent was listed is refused, and each entry is then
        # stat'ed relative to it, which is also a shorter lookup than the full path.
        try:
            dir_fd = os.open(job.path, open_flags)
        except OSError as exc:
            issues.append((job.path, _describe(exc)))
            continue
        try:
            listing = os.scandir(dir_fd)
        except OSError as exc:
            os.close(dir_fd)
            issues.append((job.path, _describe(exc)))
            continue
        scanned += 1
        root = job.root
        before = len(paths)
        descend = max_depth is None or job.depth < max_depth
        prefix = job.path if job.path.endswith("/") else job.path + "/"
        try:
            with listing:
                while True:
                    try:
                        entry = next(listing)
                    except StopIteration:
                        break
                    except OSError as exc:  # EIO in the middle of a listing: keep what we have
                        issues.append((job.path, _describe(exc)))
                        break
                    path = prefix + entry.name
                    try:
                        if entry.is_file(follow_symlinks=False):
                            if filtering and (
                                flt.excluded(entry.name, path, root)
                                or not flt.included(entry.name, path, root)
                            ):
                                continue
                            st = entry.stat(follow_symlinks=False)
                            size = st.st_size
                            if (min_size <= size <= max_size) if size else empty:
                                add_path(path)
                                add_stat(st)
                            continue
                        if entry.is_dir(follow_symlinks=False):
                            if descend and not (
                                filtering and flt.excluded(entry.name, path, root, True)
                            ):
                                st = entry.stat(follow_symlinks=False)
                                add_dir(path, root, job, st)
                            continue
                        if not entry.is_symlink():
                            special += 1  # FIFO, socket or device: known from the entry alone
                            continue
                        if not follow:
                            symlinks += 1
                            continue
                        try:
                            st = os.stat(path)
                        except OSError:  # dangling, looping or unreadable target
                            symlinks += 1
                            continue
                        is_dir = stat.S_ISDIR(st.st_mode)
                        if flt.excluded(entry.name, path, root, is_dir):
                            continue
                        if is_dir:
                            if descend:
                                add_dir(path, root, job, st)
                        elif stat.S_ISREG(st.st_mode):
                            if flt.included(entry.name, path, root) and opts.accepts_size(
                                st.st_size
                            ):
                                aliases.append(len(paths))
                                add_path(path)
                                add_stat(st)
                        else:
                            special += 1
                    except OSError as exc:  # vanished between listing and stat, or EACCES
                        issues.append((path, _describe(exc)))
        finally:
            os.close(dir_fd)
        roots.extend(array("I", [root]) * (len(paths) - before))
    alias = array("B", bytes(len(paths)))
    for position in aliases:
        alias[position] = 1
    files = FileColumns.from_stats(paths, roots, stats, alias)
    return ScanResult(
        files, tuple(subdirs), subdir_devs, subdir_inos, tuple(issues), scanned, special, symlinks
    )


def _describe(exc: OSError) -> str:
    return f"cannot list or stat: {describe_error(exc)}"
