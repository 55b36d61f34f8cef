"""Duplicate directories (`--dirs`): directories whose whole trees hold the same relative names,
the same types and the same bytes, found from the final file groups without reading a file
again.

Each file in a final group takes its group's number as its content; any other file is unique
but to its own hard links, so its content is its (dev, ino); an empty file is "empty".  Each
worker hands over the directories it listed (`dirtree`); a directory's signature is the BLAKE3
digest of its entries in name order (a file by its content, a symlink by its target, another
entry by its type, a subdirectory by the subdirectory's signature), made bottom-up.  A directory
not known whole (a failed listing, an entry that could not be stat'ed, a subdirectory not
walked: beyond `--max-depth`, on another filesystem with `-x`, unreadable) has no signature, nor
has any directory above it, nor has a directory holding an entry in the issue list.
Directories of one signature are a group when their trees hold a byte; a group whose members are
the same-named children of distinct members of a group reported (or itself implied) is implied
by it and not reported.  Files of a sampled group (`--sample`) are not known equal: they count
as copies of nothing.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from blake3 import blake3

from dedup_engine.find.dirtree import EMPTY
from dedup_engine.find.groups import RootRule
from dedup_engine.find.pool import Pool, Recovering
from dedup_engine.find.tasks import ListedDir, TreeResult, TreeTask
from dedup_engine.model import DirectoryGroup, DuplicateGroup, Verified, directory_order
from dedup_engine.paths import RootIndex

_EMPTY = EMPTY.encode()
#: Files whose directories a worker hands over per task: a few MB of names and numbers.
FILES_PER_TASK = 20_000

DirKey = tuple[int, int]  # (st_dev, st_ino)


class Contents:
    """The content of each file in a final group, by `dev << 64 | ino`: its group's number (an
    int key, not a tuple: this holds every file in a group)."""

    def __init__(self) -> None:
        self.of: dict[int, int] = {}
        self._groups = 0

    def add(self, group: DuplicateGroup) -> None:
        """A final group: its files have one content, but for a sampled group (`--sample`),
        whose files may differ, which leaves them copies of nothing (a directory holding one is
        never a copy: its bytes are not known equal)."""
        if group.verified is not Verified.BYTES:
            return
        self._groups += 1
        number = self._groups
        self.of.update((entry.dev << 64 | entry.ino, number) for entry in group.files)


@dataclass(frozen=True, slots=True)
class _Node:
    path: str
    local: bytes | None  # digest of the entries but subdirectories; None: a copy of nothing
    size: int  # bytes of its own files
    subdirs: tuple[tuple[str, int, int], ...]
    whole: bool


def find_directory_groups(
    pool: Pool, contents: Contents, roots: RootIndex, rule: RootRule, issues: Iterable[str] = ()
) -> tuple[DirectoryGroup, ...]:
    """The groups of duplicate directories, largest first, from every worker's listings;
    `issues` are the paths the run could not examine (their directories are not known whole)."""
    unsure = {os.path.dirname(path) for path in issues}
    nodes: dict[DirKey, _Node] = {}
    for listed in _listings(pool):
        node = _node(listed, contents)
        if node.path in unsure:
            node = dataclasses.replace(node, whole=False)
        nodes[(listed.dev, listed.ino)] = node
    signatures = _signatures(nodes)
    by_signature: dict[bytes, list[DirKey]] = {}
    for key, (signature, size) in signatures.items():
        if signature is not None and size > 0:
            by_signature.setdefault(signature, []).append(key)
    candidates = [
        (signatures[keys[0]][1], sorted(nodes[key].path for key in keys))
        for keys in by_signature.values()
        if len(keys) >= 2
    ]
    return tuple(sorted(_reported(candidates, roots, rule), key=directory_order))


def _reported(
    candidates: Sequence[tuple[int, list[str]]], roots: RootIndex, rule: RootRule
) -> list[DirectoryGroup]:
    """The groups the rules let through and no other accounts for, shallowest first: a group
    is implied by its parents' group where each of its members is the same-named child of a
    different member of that group, which the run reports or itself implies (a group the
    roots' rules drop implies nothing)."""
    order = sorted(
        range(len(candidates)), key=lambda n: min(p.count("/") for p in candidates[n][1])
    )
    group_of = {path: number for number, (_, paths) in enumerate(candidates) for path in paths}
    accounted: set[int] = set()
    found = []
    for number in order:
        size, paths = candidates[number]
        if not rule.counts(_roots_of(paths, roots)):
            continue
        accounted.add(number)
        if not _implied(paths, group_of, accounted):
            found.append(DirectoryGroup(size, tuple(paths)))
    return found


def _listings(pool: Pool) -> Iterable[ListedDir]:
    """Every directory each worker listed, about `FILES_PER_TASK` files' worth at a time from
    each, each answer taken before the worker is asked for more (memory stays bounded)."""
    arrived: list[TreeResult] = []

    def ask(worker: int, start: int) -> None:
        pool.submit(TreeTask(start, FILES_PER_TASK), _taken(worker), worker)

    def _taken(worker: int) -> Callable[[TreeResult], None]:
        def take(result: TreeResult) -> None:
            arrived.append(result)
            if result.next is not None:
                ask(worker, result.next)

        return take

    gone = pool.gone if isinstance(pool, Recovering) else frozenset()
    for worker in range(max(1, pool.workers)):
        if worker not in gone:  # what it listed was listed again by the others
            ask(worker, 0)
    while pool.in_flight or arrived:
        if not arrived:
            pool.wait_one()
            continue
        yield from arrived.pop().dirs


def _node(listed: ListedDir, contents: Contents) -> _Node:
    """A directory's own entries, digested in name order (names are unique in a directory, and
    neither a name nor a symlink's target holds a NUL, so NULs separate them)."""
    of, blob, ends = contents.of, listed.names, listed.name_ends
    if _holds_a_lone_file(listed, of):
        return _Node(listed.path, None, sum(listed.sizes), listed.subdirs, listed.whole)
    entries: list[bytes] = []
    add = entries.append
    for (start, stop), dev, ino, size in zip(
        itertools.pairwise([0, *ends]), listed.devs, listed.inos, listed.sizes, strict=True
    ):
        number = of.get(dev << 64 | ino)
        if number is not None:
            add(b"%s\0file:%d" % (blob[start:stop], number))
        elif not size:
            add(b"%s\0%s" % (blob[start:stop], _EMPTY))
        else:  # in no group: a copy of nothing but its own hard links
            add(b"%s\0inode:%d:%d" % (blob[start:stop], dev, ino))
    entries.extend(os.fsencode(name) + b"\0" + os.fsencode(kind) for name, kind in listed.others)
    entries.sort()
    return _Node(
        listed.path,
        blake3(b"\0".join(entries)).digest(),
        sum(listed.sizes),
        tuple(sorted(listed.subdirs)),  # by name: the order their signatures are digested in
        listed.whole,
    )


def _holds_a_lone_file(listed: ListedDir, of: dict[int, int]) -> bool:
    """Whether the directory holds a file in no group, not empty, and with no other name: a
    copy of nothing, which no other directory can hold.  Most directories of a disk hold one,
    found among their first files, and need no digest."""
    linked = frozenset(listed.linked)
    return any(
        size and (dev << 64 | ino) not in of and place not in linked
        for place, (dev, ino, size) in enumerate(
            zip(listed.devs, listed.inos, listed.sizes, strict=True)
        )
    )


def _field(digest: blake3, data: bytes) -> None:
    digest.update(len(data).to_bytes(8, "little"))
    digest.update(data)


def _signatures(nodes: dict[DirKey, _Node]) -> dict[DirKey, tuple[bytes | None, int]]:
    """Each directory's signature (None: not known whole) and the bytes of its tree, made
    bottom-up without recursion; a directory met again on its own way down (a loop) has
    none."""
    done: dict[DirKey, tuple[bytes | None, int]] = {}
    on_path: set[DirKey] = set()
    for top in nodes:
        stack: list[DirKey] = [top]
        while stack:
            key = stack[-1]
            if key in done:
                stack.pop()
                continue
            node = nodes[key]
            children = [(sub[1], sub[2]) for sub in node.subdirs]
            waiting = [c for c in children if c in nodes and c not in done and c not in on_path]
            if waiting:
                on_path.add(key)
                stack.extend(waiting)
                continue
            on_path.discard(key)
            stack.pop()
            done[key] = _signature(node, children, nodes, done)
    return done


def _signature(
    node: _Node,
    children: Sequence[DirKey],
    nodes: dict[DirKey, _Node],
    done: dict[DirKey, tuple[bytes | None, int]],
) -> tuple[bytes | None, int]:
    size = node.size
    if not node.whole or node.local is None:
        return None, size
    digest = blake3(node.local)
    for (name, _, _), child in zip(node.subdirs, children, strict=True):
        signature, bytes_below = done.get(child, (None, 0))
        if signature is None:
            return None, size  # not walked, not whole, or a loop
        _field(digest, os.fsencode(name))
        digest.update(signature)
        size += bytes_below
    return digest.digest(), size


def _roots_of(paths: Iterable[str], roots: RootIndex) -> list[int]:
    """The innermost root of each path (every member lies under a root: it was walked)."""
    return [holding[0] for holding in map(roots.holding, paths) if holding]


def _implied(paths: Sequence[str], group_of: dict[str, int], accounted: set[int]) -> bool:
    """Whether the members are the same-named children of distinct members of one group that
    is accounted for (then that group says it all)."""
    parents = [os.path.dirname(path) for path in paths]
    groups = {group_of.get(parent) for parent in parents}
    return (
        len(groups) == 1
        and groups <= accounted
        and len(set(parents)) == len(parents)
        and len({os.path.basename(path) for path in paths}) == 1
    )
