"""Grouping files by their keys: size groups with hard links collapsed, and the final groups
built from their entries.

The coordinator knows a file by a key, `(worker << 32) | row`: the worker that scanned it and
owns it, and its row in that worker's store (`file_key`, `owner_rows`); and by what the scan
sent: its size, and for a file that may have other names, its inode.  A candidate group is a
list of keys, one per inode (its representative); the other names of an inode hang off the
representative in `links`.  Whether a group still counts is one rule, `weight`: distinct inodes,
or names when hard links are to be reported as duplicates.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from dedup_engine.find.tasks import ScanResult
from dedup_engine.model import DuplicateGroup, FileEntry

Group = list[int]
#: Rows a worker's store may hold: the low half of a key.
ROW_BITS = 32
ROW_MASK = (1 << ROW_BITS) - 1
#: No file: the end of a chain of files of one size.
NONE = (1 << 64) - 1
#: A row not taken yet.
_GAP = array("Q", [NONE])


def file_key(worker: int, row: int) -> int:
    return (worker << ROW_BITS) | row


def owner_rows(keys: Sequence[int]) -> dict[int, tuple[array[int], array[int]]]:
    """The keys by owner: {worker: (positions in `keys`, rows of its store)}; none for none."""
    if not keys:
        return {}
    first = keys[0] >> ROW_BITS
    if all(k >> ROW_BITS == first for k in keys):  # one worker, or one owner for the batch
        return {first: (array("I", range(len(keys))), array("Q", [k & ROW_MASK for k in keys]))}
    out: dict[int, tuple[array[int], array[int]]] = {}
    for position, k in enumerate(keys):
        part = out.get(k >> ROW_BITS)
        if part is None:
            part = out[k >> ROW_BITS] = (array("I"), array("Q"))
        part[0].append(position)
        part[1].append(k & ROW_MASK)
    return out


class SizeIndex:
    """Takes each scan result's keys, groups rows by size, and collapses hard links.

    Files of one size are chained (`_prev`: per worker, the key of the file before, 8 bytes a
    row) from the last one seen (`_last`, one entry per distinct size): no list or object per
    file.  Only rows whose inode may be reached
    by another path (a link count above one, or any file with links followed) are looked up by
    inode; inodes that slip through anyway (a bind mount, a link made during the walk) are caught
    when the final group is built (`assemble`).
    """

    def __init__(
        self, hard_links: bool, spaces: Sequence[int] = (), *, restartable: bool = False
    ) -> None:
        self.hard_links = hard_links
        #: Whether a worker's rows may be dropped (`drop`) and the size groups taken again: a
        #: cluster's, whose workers may be lost mid-run.  The chains are then kept to the end.
        self._restartable = restartable
        self._dead: set[int] = set()  # workers whose rows are gone
        self._rep_size: dict[int, int] = {}  # restartable: each linked inode's size, by its rep
        #: Each worker's machine (`--root-on`: `cluster.ClusterPool.spaces`): an inode is one
        #: only within a machine, since two machines' disks may well number theirs alike.
        self._spaces = spaces if any(spaces) else ()
        self.links: dict[int, list[int]] = {}
        self.aliases: set[int] = set()  # rows reached through a symlink to a file
        self._last: dict[int, int] = {}
        self._prev: dict[int, array[int]] = {}
        self._received: dict[int, int] = {}  # rows taken, per worker: all of them at the end
        self._inodes: dict[tuple[int, ...], int] = {}
        self._real: dict[int, int] = {}  # names not reached through a symlink, per linked inode
        self.rows_in = 0
        self.paths_in_candidates = 0
        self.reps_in_candidates = 0

    def add(self, worker: int, result: ScanResult) -> None:
        """Take the rows of one of `worker`'s scan results (none of a worker dropped)."""
        if worker in self._dead:
            return
        sizes = result.sizes
        self.rows_in += len(sizes)
        last = self._last
        prev = self._prev.setdefault(worker, array("Q"))
        start, end = result.first, result.first + len(sizes)
        if end > ROW_MASK:
            raise OverflowError(f"worker {worker} holds more than {ROW_MASK} files: use more")
        # A worker's results may come in another order than its rows (a cluster's worker runs
        # its tasks in the order they reach it): each row has its place.
        if len(prev) < start:
            prev.extend(_GAP * (start - len(prev)))
        self._received[worker] = self._received.get(worker, 0) + len(sizes)
        first = file_key(worker, start)
        if result.aliases:
            self.aliases.update(first + offset for offset in result.aliases)
        identities: Iterable[tuple[int, ...]] = zip(result.devs, result.inos, strict=True)
        if self._spaces:
            space = self._spaces[worker]
            identities = ((space, dev, ino) for dev, ino in identities)
        keyed = dict(zip(result.linked, identities, strict=True))
        before = array("Q")
        put = before.append
        if not keyed:
            get = last.get
            for row, size in enumerate(sizes, first):
                put(get(size, NONE))
                last[size] = row
        else:
            for row, size in enumerate(sizes, first):
                key = keyed.get(row - first)
                if key is not None and self._is_link(row, key, size):
                    put(NONE)
                    continue
                put(last.get(size, NONE))
                last[size] = row
        prev[start:end] = before

    def _is_link(self, row: int, key: tuple[int, ...], size: int) -> bool:
        """Record another name of a known inode; False (and remember it) for a new inode."""
        rep = self._inodes.get(key)
        if rep is None:
            self._inodes[key] = row
            if self._restartable:
                self._rep_size[row] = size
            return False
        self.links.setdefault(rep, []).append(row)
        if row not in self.aliases:
            self._real[rep] = self._real.get(rep, 0 if rep in self.aliases else 1) + 1
        return True

    def drop(self, worker: int) -> None:
        """`worker`'s rows are gone (a cluster's worker was lost): none is a candidate from now
        on, and an inode it held the first name of is represented by its next name still here,
        if any.  The size groups are then taken again from the start (`candidates`)."""
        if not self._restartable:
            raise RuntimeError("this size index was not made to drop a worker's rows")
        dead = self._dead
        dead.add(worker)
        self.rows_in -= self._received.pop(worker, 0)
        for key, rep in list(self._inodes.items()):
            if rep >> ROW_BITS not in dead:
                continue
            del self._inodes[key]
            size = self._rep_size.pop(rep)
            self._real.pop(rep, None)
            living = [r for r in self.links.pop(rep, ()) if r >> ROW_BITS not in dead]
            if living:  # the next name becomes the inode's, in the chain of its size
                rep, names = living[0], living[1:]
                self._inodes[key] = rep
                self._rep_size[rep] = size
                self._prev[rep >> ROW_BITS][rep & ROW_MASK] = self._last.get(size, NONE)
                self._last[size] = rep
                self._name(rep, names)
        for rep, names in list(self.links.items()):
            living = [r for r in names if r >> ROW_BITS not in dead]
            if len(living) < len(names):
                self._name(rep, living)

    def _name(self, rep: int, links: list[int]) -> None:
        """The inode represented by `rep` has these other names (as `_is_link` counts them)."""
        self.links.pop(rep, None)
        self._real.pop(rep, None)
        if links:
            self.links[rep] = links
        real = sum(r not in self.aliases for r in links)
        if real:
            self._real[rep] = (0 if rep in self.aliases else 1) + real

    def _copies_of(self, rep: int) -> int:
        """Names of one inode that count as copies (a name reached through a symlink does not)."""
        real = self._real.get(rep)
        return 1 if real is None else max(1, real)

    @property
    def weight(self) -> Callable[[Group], int]:
        """Whether a group still counts: two or more inodes, or with hard_links two names."""
        return self._copies if self.hard_links else len

    def _copies(self, group: Group) -> int:
        return sum(map(self._copies_of, group))

    def candidates(self) -> Iterator[tuple[int, Group]]:
        """(size, representative rows) of each size group that counts, in order of first
        appearance; the index is emptied as it goes, but where it is `restartable`."""
        prev, links, hard_links, dead = self._prev, self.links, self.hard_links, self._dead
        for worker, rows in prev.items():
            if worker not in dead and self._received.get(worker) != len(rows):
                raise RuntimeError(f"worker {worker}'s scan results overlap or leave a gap")
        self.reps_in_candidates = self.paths_in_candidates = 0
        last = self._last
        if not self._restartable:
            self._last = {}
        for size, row in last.items():
            if prev[row >> ROW_BITS][row & ROW_MASK] == NONE and not (hard_links and row in links):
                continue  # the common case: a size seen once
            group: Group = []
            while row != NONE:
                if not dead or row >> ROW_BITS not in dead:
                    group.append(row)
                row = prev[row >> ROW_BITS][row & ROW_MASK]
            group.reverse()
            if self.weight(group) >= 2:
                self.reps_in_candidates += len(group)
                self.paths_in_candidates += len(group)
                if links:
                    self.paths_in_candidates += sum(len(links.get(r, ())) for r in group)
                yield size, group
        if not self._restartable:
            self._prev = {}


class Named(NamedTuple):
    """A name of a file in a group about to be final: its entry, root index, whether it was
    reached through a symlink, and its inode's link count when it was checked.

    A named tuple, not a dataclass: one is made for every file of every final group, and a
    tuple is built in a fraction of a frozen dataclass's time.
    """

    entry: FileEntry
    root: int
    alias: bool
    nlink: int


@dataclass(frozen=True, slots=True)
class RootRule:
    """Which groups count by the roots their files were found under (each file's innermost
    root): with `isolate`, only a group whose files lie under two roots or more, as fclones'
    `--isolate` (copies within one root alone are not reported); with `reference` roots (their
    indexes), only a group with a file under one of them and a file under none of them."""

    isolate: bool = False
    reference: frozenset[int] = frozenset()

    def counts(self, roots: Iterable[int]) -> bool:
        if not (self.isolate or self.reference):
            return True
        found = set(roots)
        if self.isolate and len(found) < 2:
            return False
        return not self.reference or (
            not found.isdisjoint(self.reference) and not found <= self.reference
        )


#: Every group counts, whatever its roots.
ANY_ROOTS = RootRule()


def assemble(
    size: int,
    digest: bytes,
    names: list[Named],
    hard_links: bool,
    rule: RootRule = ANY_ROOTS,
    spaces: Mapping[int, int] | None = None,
) -> DuplicateGroup | None:
    """The final group of these names, or None if it does not count.

    Names of one inode (by dev and ino, whatever the scan thought: a bind-mounted file, or one
    linked during the walk, is one file with two names) count once, or with `hard_links` once per
    name not reached through a symlink, up to the inode's link count (a bind mount shows one
    file under a second name without linking it).  A name reached through a symlink is listed
    only when its inode has no other: acting on a link while keeping its target's copies loses
    data.  Order: by the index of the root the file was found under, then by path.  `spaces`:
    each root's machine (`--root-on`), within which alone a (dev, ino) is one inode.
    """
    if len(names) < 2 or not rule.counts(n.root for n in names):
        return None  # one name: not a group, even of hard links
    space = (spaces or {}).get
    keys = [(space(n.root, 0), n.entry.dev, n.entry.ino) for n in names]
    distinct = len(set(keys)) == len(keys)
    if distinct and not any(n.alias for n in names):
        return DuplicateGroup(size, digest.hex(), _ordered(names))  # one name per inode
    inodes: dict[tuple[int, int, int], list[Named]] = {}
    for key, named in zip(keys, names, strict=True):
        inodes.setdefault(key, []).append(named)
    if hard_links:
        weight = sum(
            min(max(1, sum(not n.alias for n in same)), max(1, *(n.nlink for n in same)))
            for same in inodes.values()
        )
    else:
        weight = len(inodes)
    if weight < 2:
        return None
    listed: list[Named] = []
    for same in inodes.values():
        real = [n for n in same if not n.alias]
        listed.extend(real or same)
    if not rule.counts(n.root for n in listed):
        return None
    return DuplicateGroup(size, digest.hex(), _ordered(listed))


def _ordered(names: list[Named]) -> tuple[FileEntry, ...]:
    # An entry is a tuple that starts with its path, and no path is in a group twice: the
    # pairs sort by root, then path, without a key function.
    return tuple(entry for _, entry in sorted([(n.root, n.entry) for n in names]))
