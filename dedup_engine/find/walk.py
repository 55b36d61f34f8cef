"""Worker side of the scan: listing directories into file rows and subdirectories.

`scan_dirs` runs in the worker processes (the parent side, which queues directories and drops
those seen before, is `pipeline`).  One `os.scandir` per directory and at most one stat per entry
(from the DirEntry); FIFOs, sockets and devices are recognised from the directory entry's type
and never opened or stat'ed.  Results are columnar (`table.FileColumns`).
"""

from __future__ import annotations

import os
import stat
from array import array
from collections.abc import Iterator, Sequence

from dedup_engine.find.table import FileColumns
from dedup_engine.find.tasks import DirJob, ScanResult, ScanTask
from dedup_engine.globs import Globs
from dedup_engine.openflags import dir_flags
from dedup_engine.options import ScanOptions
from dedup_engine.oserror import describe_error


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
    """List every directory of the task; errors become issues and the listing goes on."""
    listing = _Listing(flt)
    for job in task.dirs:
        listing.list_dir(job)
    return listing.result()


class _Listing:
    """What one scan task has found so far; the columns are built once, at the end."""

    def __init__(self, flt: Filter) -> None:
        opts = flt.options
        self.flt = flt
        self.opts = opts
        self.open_flags = dir_flags(opts.follow_links)
        self.filtering = flt.has_include or flt.has_exclude or not opts.hidden
        self.paths: list[str] = []
        self.stats: list[os.stat_result] = []
        self.roots = array("I")
        self.aliases: list[int] = []  # positions in `paths` reached through a file symlink
        self.subdirs: list[DirJob] = []
        self.subdir_devs = array("Q")
        self.subdir_inos = array("Q")
        self.issues: list[tuple[str, str]] = []
        self.special = 0
        self.symlinks = 0
        self.scanned = 0

    def list_dir(self, job: DirJob) -> None:
        # The directory is opened without following a symlink (unless links are followed), so
        # one swapped for a link after its parent was listed is refused, and each entry is then
        # stat'ed relative to it, which is also a shorter lookup than the full path.
        try:
            dir_fd = os.open(job.path, self.open_flags)
        except OSError as exc:
            self.issues.append((job.path, _describe(exc)))
            return
        try:
            entries = os.scandir(dir_fd)
        except OSError as exc:
            os.close(dir_fd)
            self.issues.append((job.path, _describe(exc)))
            return
        self.scanned += 1
        before = len(self.paths)
        try:
            with entries:
                self._take(job, entries)
        except OSError as exc:  # EIO in the middle of a listing: keep what we have
            self.issues.append((job.path, _describe(exc)))
        finally:
            os.close(dir_fd)
        self.roots.extend(array("I", [job.root]) * (len(self.paths) - before))

    def _take(self, job: DirJob, entries: Iterator[os.DirEntry[str]]) -> None:
        """Take a directory's entries; an entry that cannot be stat'ed becomes an issue.

        Runs once per directory entry, so the common case (a regular file, no patterns) is kept
        to a type check, one stat and two appends.
        """
        flt, filtering, issues = self.flt, self.filtering, self.issues
        opts = self.opts
        min_size = max(opts.min_size, 1)
        max_size = opts.max_size if opts.max_size is not None else 1 << 63
        empty = opts.empty
        add_path, add_stat = self.paths.append, self.stats.append
        root = job.root
        descend = opts.max_depth is None or job.depth < opts.max_depth
        prefix = job.path if job.path.endswith("/") else job.path + "/"
        for entry in entries:
            name = entry.name
            path = prefix + name
            try:
                if entry.is_file(follow_symlinks=False):
                    if filtering and (
                        flt.excluded(name, path, root) or not flt.included(name, path, root)
                    ):
                        continue
                    st = entry.stat(follow_symlinks=False)
                    size = st.st_size
                    if (min_size <= size <= max_size) if size else empty:
                        add_path(path)
                        add_stat(st)
                elif entry.is_dir(follow_symlinks=False):
                    if descend and not (filtering and flt.excluded(name, path, root, True)):
                        self._add_dir(path, job, entry.stat(follow_symlinks=False))
                elif not entry.is_symlink():
                    self.special += 1  # FIFO, socket or device: known from the entry alone
                elif self.opts.follow_links:
                    self._follow(name, path, job, descend)
                else:
                    self.symlinks += 1
            except OSError as exc:  # vanished between listing and stat, or EACCES
                issues.append((path, _describe(exc)))

    def _follow(self, name: str, path: str, job: DirJob, descend: bool) -> None:
        """A symbolic link, with links followed: what it points to, once it passes the filters."""
        try:
            st = os.stat(path)
        except OSError:  # dangling, looping or unreadable target
            self.symlinks += 1
            return
        is_dir = stat.S_ISDIR(st.st_mode)
        if self.flt.excluded(name, path, job.root, is_dir):
            return
        if is_dir:
            if descend:
                self._add_dir(path, job, st)
        elif not stat.S_ISREG(st.st_mode):
            self.special += 1
        elif self.flt.included(name, path, job.root) and self.opts.accepts_size(st.st_size):
            self.aliases.append(len(self.paths))
            self.paths.append(path)
            self.stats.append(st)

    def _add_dir(self, path: str, parent: DirJob, st: os.stat_result) -> None:
        if not self.opts.one_file_system or st.st_dev == parent.root_dev:
            self.subdirs.append(DirJob(path, parent.root, parent.depth + 1, parent.root_dev))
            self.subdir_devs.append(st.st_dev)
            self.subdir_inos.append(st.st_ino)

    def result(self) -> ScanResult:
        paths = self.paths
        alias = array("B", bytes(len(paths)))
        for position in self.aliases:
            alias[position] = 1
        files = FileColumns.from_stats(paths, self.roots, self.stats, alias)
        return ScanResult(
            files,
            tuple(self.subdirs),
            self.subdir_devs,
            self.subdir_inos,
            tuple(self.issues),
            self.scanned,
            self.special,
            self.symlinks,
        )


def _describe(exc: OSError) -> str:
    return f"cannot list or stat: {describe_error(exc)}"
