"""Grouping rows of the file table: by size with hard links collapsed, and into the final groups.

A candidate group is a list of row numbers, one per inode (its representative row); the other paths
of an inode hang off the representative in `links`.  Whether a group still counts is one rule,
`weight`: distinct inodes, or paths when hard links are to be reported as duplicates.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

from dedup_engine.find.table import FileColumns
from dedup_engine.model import DuplicateGroup, FileEntry

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
        self._on_candidates = on_candidates
        self._by_size: dict[int, Group] = {}
        self._extra: dict[int, int] = {}  # with hard_links: paths beyond one per inode, by size
        self._inodes: dict[tuple[int, int], int] = {}
        self._real: dict[int, int] = {}  # names not reached through a symlink, per linked inode
        # Inodes are looked up only for files with a link count above 1, or watched ones (file
        # roots, which the walk may reach again), unless `every_inode`: a followed symlink
        # reaches a file by a second path without raising its link count.  Inodes that slip
        # through anyway (a bind mount, a link made during the walk) are caught by `settle`.
        self._watch: set[tuple[int, int]] = set()
        self._watched_paths: set[str] = set()
        self._min_links = 0 if every_inode else 1
        self.rows_in = 0
        self.paths_in_candidates = 0

    def watch(self, dev: int, ino: int, path: str) -> None:
        """Look this inode up whatever its link count: it may come again by the same path."""
        self._watch.add((dev, ino))
        self._watched_paths.add(path)

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
        path = table.paths[row]
        if path in self._watched_paths and key in self._watch:
            return True  # the same path again (a file root the walk reached too)
        before = self._copies_of(rep)
        self.links.setdefault(rep, []).append(row)
        if not table.alias[row]:
            self._real[rep] = self._real.get(rep, 0 if table.alias[rep] else 1) + 1
        if self.hard_links and self._copies_of(rep) > before:
            size = table.size[rep]  # the inode's size as first seen: it may have changed since
            group = self._by_size[size]
            self._extra[size] = self._extra.get(size, 0) + 1
            if len(group) + self._extra[size] == 2:
                self._on_candidates(list(group))
        return True

    def _copies_of(self, rep: int) -> int:
        """Names of one inode that count as copies (a name reached through a symlink does not)."""
        real = self._real.get(rep)
        return 1 if real is None else max(1, real)

    def copies(self, group: Group) -> int:
        """With hard_links, a group's weight: the names that count as copies."""
        return sum(map(self._copies_of, group))

    def groups(self) -> list[Group]:
        """The size groups that count, in order of first appearance; frees the size index."""
        weight = self.copies if self.hard_links else len
        out = [group for group in self._by_size.values() if weight(group) >= 2]
        self.paths_in_candidates = sum(map(self.paths, out))
        self._by_size = {}
        return out

    def paths(self, group: Group) -> int:
        links = self.links
        if not links:
            return len(group)
        return len(group) + sum(len(links[r]) for r in group if r in links)

    def settle(self, groups: list[tuple[bytes, Group]]) -> list[tuple[bytes, Group]]:
        """Final groups with no inode twice: a bind-mounted file, or one linked during the walk,
        reached two ways with a link count of 1 each time, becomes one file with two names."""
        table = self.table
        out: list[tuple[bytes, Group]] = []
        for digest, reps in groups:
            keys = [(table.dev[r], table.ino[r]) for r in reps]
            if len(set(keys)) == len(reps):
                out.append((digest, reps))
                continue
            first: dict[tuple[int, int], int] = {}
            kept: Group = []
            for rep, key in zip(reps, keys, strict=True):
                if key in first:
                    owner = first[key]
                    self.links.setdefault(owner, []).extend([rep, *self.links.pop(rep, [])])
                    self._real[owner] = self._copies_of(owner) + self._copies_of(rep)
                else:
                    first[key] = rep
                    kept.append(rep)
            weight = self.copies(kept) if self.hard_links else len(kept)
            if weight >= 2:
                out.append((digest, kept))
        return out


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
        self._single_root = not any(table.root)

    def add(self, finals: Iterable[tuple[bytes, Group]]) -> None:
        self._pending.extend(finals)

    def build_some(self, count: int = 256) -> bool:
        """Build up to `count` groups; True while some are left."""
        pending, built = self._pending, self._built
        table, links = self.table, self.links
        paths, roots, alias = table.paths, table.root, table.alias
        dev, ino, size, mtime, ctime = table.dev, table.ino, table.size, table.mtime, table.ctime
        uid, gid, mode = table.uid, table.gid, table.mode
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
            if self._single_root:
                rows.sort(key=paths.__getitem__)
            else:
                rows.sort(key=lambda r: (roots[r], paths[r]))
            files = tuple(
                [
                    FileEntry(
                        paths[r],
                        dev[r],
                        ino[r],
                        size[r],
                        mtime[r],
                        ctime[r],
                        uid[r],
                        gid[r],
                        mode[r],
                    )
                    for r in rows
                ]
            )
            built.append(DuplicateGroup(size[reps[0]], digest.hex(), files))
        return bool(pending)

    def groups(self) -> list[DuplicateGroup]:
        while self.build_some(4096):
            pass
        self._built.sort(key=lambda g: (-g.size, g.files[0].path))
        return self._built
