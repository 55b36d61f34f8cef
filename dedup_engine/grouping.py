"""Grouping rows of the file table: by size with hard links collapsed, and into the final groups.

A candidate group is a list of row numbers, one per inode (its representative row); the other paths
of an inode hang off the representative in `links`.  Whether a group still counts is one rule,
`weight`: distinct inodes, or paths when hard links are to be reported as duplicates.
"""

from __future__ import annotations

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
        self, table: FileColumns, hard_links: bool, on_candidates: Callable[[list[int]], None]
    ) -> None:
        self.table = table
        self.hard_links = hard_links
        self.links: dict[int, list[int]] = {}
        self._on_candidates = on_candidates
        self._by_size: dict[int, Group] = {}
        self._weight: dict[int, int] = {}
        self._inodes: dict[tuple[int, int], int] = {}
        self.rows_in = 0
        self.paths_in_candidates = 0

    def add(self, start: int, end: int) -> None:
        """Take table rows start..end-1."""
        table = self.table
        sizes, nlinks, devs, inos = table.size, table.nlink, table.dev, table.ino
        by_size, weight, inodes, links = self._by_size, self._weight, self._inodes, self.links
        fresh: list[int] = []
        self.rows_in += end - start
        for row in range(start, end):
            size = sizes[row]
            if nlinks[row] > 1:
                # Only multiply-linked files can share an inode, so only they pay for the lookup.
                key = (devs[row], inos[row])
                rep = inodes.get(key)
                if rep is not None:
                    links.setdefault(rep, []).append(row)
                    if self.hard_links:
                        now = weight[size] + 1
                        weight[size] = now
                        if now == 2:
                            fresh.extend(by_size[size])
                    continue
                inodes[key] = row
            group = by_size.get(size)
            if group is None:
                by_size[size] = [row]
                weight[size] = 1
                continue
            group.append(row)
            now = weight[size] + 1
            weight[size] = now
            if now == 2:
                fresh.extend(group)
            elif now > 2:
                fresh.append(row)
        if fresh:
            self._on_candidates(fresh)

    def groups(self) -> list[Group]:
        """The size groups that count, in order of first appearance."""
        weight = self._weight
        out = [group for size, group in self._by_size.items() if weight[size] >= 2]
        self.paths_in_candidates = sum(self.paths(g) for g in out)
        return out

    def paths(self, group: Group) -> int:
        links = self.links
        return len(group) + sum(len(links[r]) for r in group if r in links)

    def weight(self, group: Group) -> int:
        return self.paths(group) if self.hard_links else len(group)


def build_groups(
    table: FileColumns,
    finals: Iterable[tuple[bytes, Group]],
    links: dict[int, list[int]],
) -> list[DuplicateGroup]:
    """Turn (digest, representative rows) into groups listing every path of every inode.

    Order: largest files first (most space at stake), then by first path; within a group, by the
    index of the root the file was found under, then by path.  Both orders are stable across runs.
    """
    out: list[DuplicateGroup] = []
    for digest, reps in finals:
        rows = [row for rep in reps for row in (rep, *links.get(rep, ()))]
        rows.sort(key=lambda r: (table.root[r], table.paths[r]))
        files = tuple(
            FileEntry(
                table.paths[r],
                table.dev[r],
                table.ino[r],
                table.size[r],
                table.mtime[r],
                table.ctime[r],
            )
            for r in rows
        )
        out.append(DuplicateGroup(table.size[reps[0]], digest.hex(), files))
    out.sort(key=lambda g: (-g.size, g.files[0].path))
    return out
