"""Worker side of the scan: listing directories into file rows and subdirectories.

`scan_dirs` runs in the worker processes (the parent side, which queues directories and drops
those seen before, is `pipeline`).  One `os.scandir` per directory and at most one stat per entry
(from the DirEntry); FIFOs, sockets and devices are recognised from the directory entry's type
and never opened or stat'ed.  The files go into the worker's `store.RowStore`; the result holds
only their keys (sizes, and the inodes of linked files), in columns.
"""

from __future__ import annotations

import errno
import os
import stat
from array import array
from collections.abc import Iterator, Mapping, Sequence

from dedup_engine.find import reach
from dedup_engine.find.dirtree import EMPTY, DirTree, special_kind
from dedup_engine.find.store import RowStore
from dedup_engine.find.tasks import DirJob, ScanResult, ScanTask
from dedup_engine.globs import Globs
from dedup_engine.openflags import dir_flags
from dedup_engine.options import ScanOptions
from dedup_engine.oserror import describe_error
from dedup_engine.paths import RootIndex


class Filter:
    """Name filters and limits from the options, compiled once per process."""

    def __init__(self, options: ScanOptions, roots: Mapping[int, str]) -> None:
        self.options = options
        #: The directory roots, by number: file roots are taken whole, and never walked.
        self.roots = dict(roots)
        self._include = Globs(options.include)
        self._exclude = Globs(options.exclude)
        self.has_include = bool(options.include)
        self.has_exclude = bool(options.exclude)
        self._holders: RootIndex | None = None  # made when first needed

    def excluded(self, name: str, path: str, root: int, is_dir: bool = False) -> bool:
        if not self.options.hidden and name.startswith("."):
            return True
        return self.has_exclude and self._exclude.match(name, path, self.roots[root], is_dir)

    def included(self, name: str, path: str, root: int) -> bool:
        return not self.has_include or self._include.match(name, path, self.roots[root])

    def root_holding(self, real: str, default: int) -> int:
        """The index of the innermost root that holds the symlink-free path `real`, or
        `default` where none does."""
        if self._holders is None:
            self._holders = RootIndex(list(self.roots.values()), numbers=list(self.roots))
        holding = self._holders.holding(real)
        return holding[0] if holding else default


def scan_dirs(
    task: ScanTask, flt: Filter, store: RowStore, tree: DirTree | None = None
) -> ScanResult:
    """List every directory of the task into `store` (and what else each holds into `tree`,
    with `--dirs`); errors become issues and the listing goes on."""
    listing = _Listing(flt, store, tree, task.file_roots)
    if task.files:
        listing.add_file_roots(task.files)
    for job in task.dirs:
        listing.list_dir(job)
    return listing.result()


class _Listing:
    """What one scan task has found so far: its rows go straight into the store, their keys into
    columns for the coordinator."""

    def __init__(
        self,
        flt: Filter,
        store: RowStore,
        tree: DirTree | None = None,
        file_roots: frozenset[str] = frozenset(),
    ) -> None:
        opts = flt.options
        self.flt = flt
        self.file_roots = file_roots  # paths the listing passes over: each a root of its own
        self.opts = opts
        self.store = store
        self.tree = tree
        self._dir_fd = -1  # the directory being listed (symlinks in it are read through it)
        self.first = len(store)
        self.open_flags = dir_flags(opts.follow_links)
        self.filtering = flt.has_include or flt.has_exclude or not opts.hidden
        self.sizes = array("q")
        # With links followed, one inode can be reached by two paths with a link count of 1.
        self.min_links = 0 if opts.follow_links else 1
        self.linked = array("Q")
        self.devs = array("Q")
        self.inos = array("Q")
        self.aliases = array("Q")
        self.subdirs: list[DirJob] = []
        self.subdir_devs = array("Q")
        self.subdir_inos = array("Q")
        self.issues: list[tuple[str, str]] = []
        self.special = 0
        self.symlinks = 0
        self.scanned = 0
        # The current directory's files, taken into the store together once it is listed.
        self._names: list[str] = []
        self._stats: list[os.stat_result] = []
        self._aliased: list[int] = []  # positions in _names reached through a symlink
        self._counted_under: list[tuple[int, int]] = []  # (position, root) of such a name

    def add_file_roots(self, files: Sequence[tuple[str, int]]) -> None:
        """Roots that are files, taken as the walk would take them, each reached without
        following a symlink (`reach`).  Those of one directory numbered one after another share
        its record in the store."""
        store, accepts = self.store, self.opts.accepts_size
        following: tuple[str, int, int] | None = None  # what continues the current run
        with reach.Reached() as reached:
            for path, root in files:
                try:
                    st = reached.stat(path)
                except OSError as exc:  # vanished since the roots were checked, or a link put above
                    self.issues.append((path, f"cannot stat root: {describe_error(exc)}"))
                    continue
                if not stat.S_ISREG(st.st_mode):  # replaced since the roots were checked
                    self.issues.append((path, "cannot take root: it is no longer a regular file"))
                    continue
                if not accepts(st.st_size):
                    continue
                head, _, name = path.rpartition("/")  # canonical: "/" is the parent of "/x"
                prefix = head + "/"
                if (prefix, root, st.st_dev) != following:
                    self._commit()
                    if not store.continues(prefix, root, st.st_dev):
                        store.start_dir(prefix, root, st.st_dev, stepping=True)
                self._names.append(name)
                self._stats.append(st)
                following = (prefix, root + 1, st.st_dev)
        self._commit()

    def _commit(self) -> None:
        """The current directory's files into the store, and their keys into the columns."""
        names, stats = self._names, self._stats
        if not names:
            return
        offset, first = len(self.sizes), len(self.store)
        self.store.add(names, stats)
        for position, root in self._counted_under:
            self.store.count_under(first + position, root)
        self.sizes.extend([st.st_size for st in stats])
        min_links = self.min_links
        for index, st in enumerate(stats):
            if st.st_nlink > min_links:
                self.linked.append(offset + index)
                self.devs.append(st.st_dev)
                self.inos.append(st.st_ino)
        self.aliases.extend(offset + index for index in self._aliased)
        self._names, self._stats, self._aliased, self._counted_under = [], [], [], []

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
            st = os.fstat(dir_fd)
            if (st.st_dev, st.st_ino) != (job.dev, job.ino):
                raise OSError(errno.ESTALE, _REPLACED)
            entries = os.scandir(dir_fd)
        except OSError as exc:
            os.close(dir_fd)
            self.issues.append((job.path, _describe(exc)))
            return
        dev = st.st_dev
        self.scanned += 1
        prefix = job.path if job.path.endswith("/") else job.path + "/"
        self.store.start_dir(prefix, job.counted_root, dev)
        tree, first, linked = self.tree, len(self.store), len(self.linked)
        if tree is not None:
            tree.begin(prefix, st.st_dev, st.st_ino, first)
        self._dir_fd = dir_fd  # symlinks below are read relative to it
        try:
            with entries:
                self._take(job, prefix, entries)
        except OSError as exc:  # EIO in the middle of a listing: keep what we have
            self.issues.append((job.path, _describe(exc)))
            if tree is not None:
                tree.incomplete()
        finally:
            self._commit()
            self._dir_fd = -1
            os.close(dir_fd)
            if tree is not None:
                start = first - self.first  # this directory's first row among the task's
                tree.end(
                    len(self.store),
                    self.sizes[start:],
                    array("Q", [offset - start for offset in self.linked[linked:]]),
                )

    def _take(self, job: DirJob, prefix: str, entries: Iterator[os.DirEntry[str]]) -> None:
        """Take a directory's entries; an entry that cannot be stat'ed becomes an issue.

        Runs once per directory entry, so the common case (a regular file, no patterns) is kept
        to a type check, one stat and two appends; the files go into the store together.
        """
        flt, filtering, issues = self.flt, self.filtering, self.issues
        opts = self.opts
        min_size = max(opts.min_size, 1)
        max_size = opts.max_size if opts.max_size is not None else 1 << 63
        empty = opts.empty
        add_name, add_stat = self._names.append, self._stats.append
        plain = not (job.alias or self.file_roots)  # no file needs a second look
        root = job.root
        descend = opts.max_depth is None or job.depth < opts.max_depth
        tree = self.tree
        for entry in entries:
            name = entry.name
            try:
                if entry.is_file(follow_symlinks=False):
                    if filtering and (
                        flt.excluded(name, prefix + name, root)
                        or not flt.included(name, prefix + name, root)
                    ):
                        continue
                    st = entry.stat(follow_symlinks=False)
                    size = st.st_size
                    if not ((min_size <= size <= max_size) if size else empty):
                        if tree is not None and not size:
                            tree.other(name, EMPTY)
                        continue
                    if plain and stat.S_ISREG(st.st_mode):  # no path string: the store keeps names
                        add_name(name)
                        add_stat(st)
                    else:
                        self._take_file(name, prefix + name, st, job)
                else:
                    self._take_other(entry, prefix, job, descend)
            except OSError as exc:  # vanished between listing and stat, or EACCES
                issues.append((prefix + name, _describe(exc)))
                if tree is not None:
                    tree.incomplete()

    def _take_other(self, entry: os.DirEntry[str], prefix: str, job: DirJob, descend: bool) -> None:
        """An entry that is not a regular file: a directory, a symlink, or a special file."""
        name, tree = entry.name, self.tree
        if entry.is_dir(follow_symlinks=False):
            path = prefix + name
            if (descend or tree is not None) and not (
                self.filtering and self.flt.excluded(name, path, job.root, True)
            ):
                st = entry.stat(follow_symlinks=False)
                if tree is not None:
                    tree.subdir(name, st)  # walked or not: part of the tree
                if descend:
                    self._add_dir(path, job, st)
        elif not entry.is_symlink():
            self.special += 1  # FIFO, socket or device: known from the entry alone
            if tree is not None and self._in_tree(name, prefix + name, job):
                tree.other(name, special_kind(entry.stat(follow_symlinks=False).st_mode))
        elif self.opts.follow_links:
            self._follow(name, prefix + name, job, descend)
        else:
            self.symlinks += 1
            if tree is not None and self._in_tree(name, prefix + name, job):
                tree.link(name, self._dir_fd)

    def _in_tree(self, name: str, path: str, job: DirJob) -> bool:
        """Whether an entry that is no file row is part of its directory's tree for `--dirs`:
        not one the options leave out (as they leave out a file of that name)."""
        flt = self.flt
        return not self.filtering or not (
            flt.excluded(name, path, job.root) or not flt.included(name, path, job.root)
        )

    def _take_file(self, name: str, path: str, st: os.stat_result, job: DirJob) -> None:
        """A file that needs a second look: one swapped for something else since the listing, a
        root of its own, or one below a directory reached through a symlink."""
        if not stat.S_ISREG(st.st_mode):
            self.special += 1
            if self.tree is not None:
                self.tree.other(name, special_kind(st.st_mode))
        elif path in self.file_roots:  # a root of its own is listed once, as that root
            if self.tree is not None:
                self.tree.root_file(name, st)  # its row lies elsewhere
        else:
            if job.alias:
                self._aliased.append(len(self._names))
            self._names.append(name)
            self._stats.append(st)

    def _follow(self, name: str, path: str, job: DirJob, descend: bool) -> None:
        """A symbolic link, with links followed: what it points to, once it passes the filters."""
        tree = self.tree
        try:
            st = os.stat(path)
        except OSError:  # dangling, looping or unreadable target
            self.symlinks += 1
            if tree is not None and self._in_tree(name, path, job):
                tree.link(name, self._dir_fd)
            return
        is_dir = stat.S_ISDIR(st.st_mode)
        if self.flt.excluded(name, path, job.root, is_dir):
            return
        if is_dir:
            if tree is not None:
                tree.subdir(name, st)
            if descend:
                # The directory is walked once, by whichever name reaches it first: its files
                # count under the root that holds it, not under the link's.  (A link changed
                # since the stat fails here, and is an issue as any entry that fails.)
                real = os.path.realpath(path, strict=True)
                root = self.flt.root_holding(real, job.counted_root)
                self._add_dir(path, job, st, alias=True, root=root)
        elif not stat.S_ISREG(st.st_mode):
            self.special += 1
            if tree is not None:
                tree.other(name, special_kind(st.st_mode))
        elif self.flt.included(name, path, job.root) and self.opts.accepts_size(st.st_size):
            # A name of a file that may lie under another root: it counts under that one.
            holder = self.flt.root_holding(os.path.realpath(path, strict=True), -1)
            if holder >= 0 and holder != job.counted_root:
                self._counted_under.append((len(self._names), holder))
            self._aliased.append(len(self._names))
            self._names.append(name)
            self._stats.append(st)
        elif tree is not None and not st.st_size and self.flt.included(name, path, job.root):
            tree.other(name, EMPTY)

    def _add_dir(
        self,
        path: str,
        parent: DirJob,
        st: os.stat_result,
        alias: bool = False,
        root: int | None = None,
    ) -> None:
        """Queue a subdirectory; `root`: the root its files count under, where not its
        parent's."""
        if not self.opts.one_file_system or st.st_dev == parent.root_dev:
            alias = alias or parent.alias
            job = DirJob(
                path,
                parent.root,
                parent.depth + 1,
                parent.root_dev,
                st.st_dev,
                st.st_ino,
                alias,
                parent.counts_under if root is None else root,
            )
            self.subdirs.append(job)
            self.subdir_devs.append(st.st_dev)
            self.subdir_inos.append(st.st_ino)

    def result(self) -> ScanResult:
        return ScanResult(
            self.first,
            self.sizes,
            self.linked,
            self.devs,
            self.inos,
            self.aliases,
            tuple(self.subdirs),
            self.subdir_devs,
            self.subdir_inos,
            tuple(self.issues),
            self.scanned,
            self.special,
            self.symlinks,
        )


#: A directory opened by its path that is not the one its parent's listing (or the root's
#: resolution) found: renamed, replaced, or reached through a symlink put on its path since.
_REPLACED = "no longer the directory found there; it was replaced or moved during the scan"


def _describe(exc: OSError) -> str:
    return f"cannot list or stat: {describe_error(exc)}"
