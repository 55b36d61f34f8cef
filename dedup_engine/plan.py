"""Planning what `apply` will do: groups and a policy in, a list of operations out.

Pure: it reads no file and changes none, so a plan can be printed (`--dry-run`), reviewed and
tested exactly.  The acting step re-checks every file against the report before each operation.
Rules: which copy is kept follows `--keep-path`, then the `--keep` order; at least `min_copies`
distinct files (inodes) survive in every group, and further names of a kept file do not count
as copies; a protected path is never touched (its file is kept, and counts as a copy); a group
whose names are all one file is left alone; a move never sends two files to one target (the same
path below two roots): that group is left alone, with the reason.
"""

from __future__ import annotations

import enum
import fnmatch
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dedup_engine.records import DuplicateGroup, FileEntry


class Action(str, enum.Enum):
    DELETE = "delete"
    HARDLINK = "hardlink"
    SYMLINK = "symlink"
    REFLINK = "reflink"
    MOVE = "move"


class Keep(str, enum.Enum):
    """Which file of a group is kept (after `--keep-path`)."""

    FIRST_ROOT = "first-root"  # under the earliest root given to find, then the shortest path
    OLDEST = "oldest"  # earliest mtime
    NEWEST = "newest"  # latest mtime
    SHORTEST_PATH = "shortest-path"
    LONGEST_PATH = "longest-path"


@dataclass(frozen=True, slots=True)
class Policy:
    action: Action
    keep: Keep = Keep.FIRST_ROOT
    keep_paths: tuple[str, ...] = ()
    protect: tuple[str, ...] = ()
    min_copies: int = 1
    move_to: str | None = None

    def __post_init__(self) -> None:
        if self.min_copies < 1:
            raise ValueError("--min-copies must be at least 1: one copy always survives")
        if (self.action is Action.MOVE) != (self.move_to is not None):
            raise ValueError("--to DIR goes with --action move, and only with it")


@dataclass(frozen=True, slots=True)
class Operation:
    """Act on `victim` (one name of a file to be replaced or removed), keeping `keep`."""

    group: int  # index of the group in the report
    action: Action
    victim: FileEntry
    keep: FileEntry
    target: str | None = None  # for move: where the victim goes
    also_kept: tuple[FileEntry, ...] = ()  # the group's other kept files: re-checked, never touched


@dataclass(frozen=True, slots=True)
class Skipped:
    group: int
    reason: str


@dataclass(frozen=True, slots=True)
class Plan:
    operations: tuple[Operation, ...]
    skipped: tuple[Skipped, ...]


def make_plan(groups: Sequence[DuplicateGroup], roots: Sequence[str], policy: Policy) -> Plan:
    """The operations for every group, in report order; groups with nothing to do are skipped."""
    operations: list[Operation] = []
    skipped: list[Skipped] = []
    targets: set[str] = set()  # move targets planned so far: each receives one file
    order = _order(policy, roots)
    for index, group in enumerate(groups):
        files: dict[tuple[int, int], list[FileEntry]] = {}
        for entry in group.files:
            files.setdefault((entry.dev, entry.ino), []).append(entry)
        if len(files) < 2:
            skipped.append(Skipped(index, "all its names are one file (hard links)"))
            continue
        # A file is represented by its best name; files are ranked by their best names.
        names = {key: sorted(entries, key=order) for key, entries in files.items()}
        ranked = sorted(names, key=lambda key: order(names[key][0]))
        protected = [
            key for key in ranked if any(matches(e.path, policy.protect) for e in files[key])
        ]
        kept = ranked[: policy.min_copies]
        kept += [key for key in protected if key not in kept]
        victims = [key for key in ranked if key not in kept]
        if not victims:
            reason = f"no file beyond the {len(kept)} kept (--min-copies, --protect)"
            skipped.append(Skipped(index, reason))
            continue
        keep = names[kept[0]][0]
        also_kept = tuple(names[key][0] for key in kept[1:])
        planned = []
        for key in victims:
            entries = names[key]
            if policy.action is Action.REFLINK:
                entries = entries[:1]  # one name shares the file's blocks for all its names
            for victim in entries:
                target = _moved(victim.path, roots, policy.move_to) if policy.move_to else None
                planned.append(Operation(index, policy.action, victim, keep, target, also_kept))
        clash = _clash(planned, targets)
        if clash:
            skipped.append(Skipped(index, f"two files would move to {clash!r} (same path below "
                                   "two roots); move them in separate runs"))  # fmt: skip
            continue
        targets.update(op.target for op in planned if op.target)
        operations.extend(planned)
    return Plan(tuple(operations), tuple(skipped))


def _clash(planned: Sequence[Operation], targets: set[str]) -> str | None:
    """A move target already taken by an earlier operation, or by two of these."""
    seen = set(targets)
    for op in planned:
        if op.target is not None:
            if op.target in seen:
                return op.target
            seen.add(op.target)
    return None


def _order(policy: Policy, roots: Sequence[str]) -> Callable[[FileEntry], tuple[object, ...]]:
    def root_index(path: str) -> int:
        for number, root in enumerate(roots):
            if path == root or path.startswith(root.rstrip("/") + "/"):
                return number
        return len(roots)

    def key(entry: FileEntry) -> tuple[object, ...]:
        wanted = 0 if matches(entry.path, policy.keep_paths) else 1
        path = entry.path
        rank: tuple[object, ...]
        if policy.keep is Keep.FIRST_ROOT:
            rank = (root_index(path), len(path))
        elif policy.keep is Keep.OLDEST:
            rank = (entry.mtime_ns, root_index(path), len(path))
        elif policy.keep is Keep.NEWEST:
            rank = (-entry.mtime_ns, root_index(path), len(path))
        elif policy.keep is Keep.SHORTEST_PATH:
            rank = (len(path),)
        else:
            rank = (-len(path),)
        return (wanted, *rank, path)  # the path last: equal ranks still order the same way

    return key


def matches(path: str, patterns: Sequence[str]) -> bool:
    # A pattern with a "/" matches the whole path; one without, the file's name.
    name = os.path.basename(path)
    return any(
        fnmatch.fnmatchcase(path if "/" in pattern else name, pattern) for pattern in patterns
    )


def _moved(path: str, roots: Sequence[str], destination: str) -> str:
    """The path under `destination` that keeps `path`'s place below its root."""
    for root in roots:
        base = root.rstrip("/") + "/"
        if path.startswith(base):
            return os.path.join(destination, path[len(base) :])
    return os.path.join(destination, path.lstrip("/"))
