"""Grouping rows of the file table: by size with hard links collapsed, and into the final groups.

A candidate group is a list of row numbers, one per inode (its representative row); the other paths
of an inode hang off the representative in `links`.  Whether a group still counts is one rule,
`weight`: distinct inodes, or paths when hard links are to be reported as duplicates.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

from dedup_engine.records import DuplicateGroup, FileEntry
from dedup_engine.scanner import FileColumns

Group = list[int]


class SizeGroups:
    """Streams rows in, groups them by size, collapses hard links, and reports new candidates.

    `on_candidates` is called with representative rows as soon as their size group counts (two
    inodes, or two paths with `hard_links`), so the head stage can start while the walk goes on.
    """

    def __init__(
        self,
        table: FileColumns,
        hard_links: bool,
        on_candidates: Callable[[list[int]], None],
        *,
        every_inode: bool = False,
    ) -> None:
        self.table = table
        self.hard_links = hard_links
        self.links: dict[int, list[int]] = {}
        #: The rule for "still a group": `len` (inodes), or paths with `hard_links`.
        self.weight: Callable[[Group], int] = self._copies if hard_links else len
        self._on_candidates = on_candidates
        self._by_size: dict[int, Group] = {}
        self._extra: dict[int, int] = {}  # with hard_links: paths beyond one per inode, by size
        self._inodes: dict[tuple[int, int], int] = {}
        # Inodes are looked up only for files with a link count above 1, or watched ones (file
        # roots, which the walk may reach again), unless `every_inode`: a followed symlink
        # reaches a file by a second path without raising its link count.
        self._watch: set[tuple[int, int]] = set()
        self._min_links = 0 if every_inode else 1
        self.rows_in = 0
        self.paths_in_candidates = 0

    def watch(self, dev: int, ino: int) -> None:
        """Look this inode up whatever its link count: it may come again by the same path."""
        self._watch.add((dev, ino))

    def add(self, start: int, end: int) -> None:
        """Take table rows start..end-1."""
        table = self.table
        by_size, extra, min_links = self._by_size, self._extra, self._min_links
        watch, devs, inos = self._watch, table.dev, table.ino
        fresh: list[int] = []
        self.rows_in += end - start
        rows = range(start, end)
        columns = zip(rows, table.size[start:end], table.nlink[start:end], strict=True)
        for row, size, nlink in columns:
            if (nlink > min_links or (watch and (devs[row], inos[row]) in watch)) and self._is_link(
                row
            ):
                continue
            group = by_size.get(size)
            if group is None:
                by_size[size] = [row]
                continue
            group.append(row)
            now = len(group) + extra.get(size, 0) if extra else len(group)
            if now == 2:
                fresh.extend(group)
            elif now > 2:
                fresh.append(row)
        if fresh:
            self._on_candidates(fresh)

    def _is_link(self, row: int) -> bool:
        """Record another path of a known inode; False (and remember it) for a new inode."""
        table = self.table
        key = (table.dev[row], table.ino[row])
        rep = self._inodes.get(key)
        if rep is None:
            self._inodes[key] = row
            return False
        others = self.links.setdefault(rep, [])
        path = table.paths[row]
        if path == table.paths[rep] or any(table.paths[o] == path for o in others):
            return True  # the same path again (a file root the walk reached too)
        before = self._inode_copies(rep)
        others.append(row)
        if self.hard_links and self._inode_copies(rep) > before:
            size = table.size[rep]  # the inode's size as first seen: it may have changed since
            group = self._by_size[size]
            self._extra[size] = self._extra.get(size, 0) + 1
            if len(group) + self._extra[size] == 2:
                self._on_candidates(list(group))
        return True

    def _inode_copies(self, rep: int) -> int:
        """Paths of one inode that count as copies: names reached through a symlink do not."""
        alias = self.table.alias
        real = sum(1 for r in (rep, *self.links.get(rep, ())) if not alias[r])
        return max(1, real)

    def _copies(self, group: Group) -> int:
        links = self.links
        return sum(self._inode_copies(r) if r in links else 1 for r in group)

    def groups(self) -> list[Group]:
        """The size groups that count, in order of first appearance; frees the size index."""
        weight = self.weight
        out = [group for group in self._by_size.values() if weight(group) >= 2]
        self.paths_in_candidates = sum(map(self.paths, out))
        self._by_size = {}
        return out

    def paths(self, group: Group) -> int:
        links = self.links
        if not links:
            return len(group)
        return len(group) + sum(len(links[r]) for r in group if r in links)


class GroupBuilder:
    """Turns (digest, representative rows) into groups listing every path of every inode.

    Building is done in slices (`build_some`) so the parent can do it while the workers hash the
    next stage.  Order (`groups`): largest files first (most space at stake), then by first path;
    within a group, by the index of the root the file was found under, then by path.  Both orders
    are stable across runs.
    """

    def __init__(self, table: FileColumns, links: dict[int, list[int]]) -> None:
        self.table = table
        self.links = links
        self._pending: deque[tuple[bytes, Group]] = deque()
        self._built: list[DuplicateGroup] = []

    def add(self, finals: Iterable[tuple[bytes, Group]]) -> None:
        self._pending.extend(finals)

    def build_some(self, count: int = 256) -> bool:
        """Build up to `count` groups; True while some are left."""
        pending, built = self._pending, self._built
        table, links = self.table, self.links
        paths, roots, alias = table.paths, table.root, table.alias
        dev, ino, size, mtime, ctime = table.dev, table.ino, table.size, table.mtime, table.ctime
        single_root = not any(roots)
        for _ in range(min(count, len(pending))):
            digest, reps = pending.popleft()
            if links:
                rows: list[int] = []
                for rep in reps:
                    names = (rep, *links.get(rep, ()))
                    real = [r for r in names if not alias[r]]
                    # A name reached through a symlink is listed only when the file has no
                    # other: acting on a link while keeping its target's copies loses data.
                    rows.extend(real or names)
            else:
                rows = list(reps)
            if single_root:
                rows.sort(key=paths.__getitem__)
            else:
                rows.sort(key=lambda r: (roots[r], paths[r]))
            files = tuple(
                [FileEntry(paths[r], dev[r], ino[r], size[r], mtime[r], ctime[r]) for r in rows]
            )
            built.append(DuplicateGroup(size[reps[0]], digest.hex(), files))
        return bool(pending)

    def groups(self) -> list[DuplicateGroup]:
        while self.build_some(4096):
            pass
        self._built.sort(key=lambda g: (-g.size, g.files[0].path))
        return self._built
