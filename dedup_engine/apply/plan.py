"""Planning what `apply` will do: groups and a policy in, a list of operations out.

Pure: it reads no file and changes none, so a plan can be printed (`--dry-run`), reviewed,
tested exactly, and made again from the same report by `--resume`.  The acting step re-checks
every file against the report before each operation.
Rules: a group is first split into sets of files that share owner, group and mode (a hard link
or symlink would otherwise hand a path to another owner, and a delete or move would leave a user
only a copy they may not read), unless `across_owners`; reflinks keep each file's own metadata
and are not split.  In each set, which copy is kept follows `--keep-path`, then the `--keep`
order; at least `min_copies` distinct files (inodes) survive, and further names of a kept file
do not count as copies; a protected path is never touched (its file is kept, and counts as a
copy); a set whose names are all one file is left alone; a move never sends two files to one
target (the same path below two roots): that set is left alone, with the reason.
"""

from __future__ import annotations

import dataclasses
import enum
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dedup_engine.globs import Globs, pattern_problem
from dedup_engine.model import DuplicateGroup, FileEntry, Owner, Verified
from dedup_engine.paths import RootIndex, below
from dedup_engine.report.read import path_problem


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
    #: Act among files of different owner, group or mode (see the module docstring).
    across_owners: bool = False
    #: Act on groups found on `--sample` windows only; their bytes are compared all the same.
    trust_sampled: bool = False

    def __post_init__(self) -> None:
        if self.min_copies < 1:
            raise ValueError("--min-copies must be at least 1: one copy always survives")
        if (self.action is Action.MOVE) != (self.move_to is not None):
            raise ValueError("--to DIR goes with --action move, and only with it")
        if self.move_to is not None and not os.path.isabs(self.move_to):
            raise ValueError(f"--to {self.move_to!r} must be an absolute path")
        for option, patterns in (("--keep-path", self.keep_paths), ("--protect", self.protect)):
            for pattern in patterns:
                problem = pattern_problem(pattern, files_only=True)
                if problem:
                    raise ValueError(f"{option}: {problem}")

    @property
    def splits_by_owner(self) -> bool:
        return not self.across_owners and self.action is not Action.REFLINK

    def as_dict(self) -> dict[str, object]:
        """For the journal, which `--resume` makes the same plan again from."""
        return {
            "action": self.action.value,
            "keep": self.keep.value,
            "keep_paths": list(self.keep_paths),
            "protect": list(self.protect),
            "min_copies": self.min_copies,
            "move_to": self.move_to,
            "across_owners": self.across_owners,
            "trust_sampled": self.trust_sampled,
        }

    @classmethod
    def from_dict(cls, data: object) -> Policy:
        """The inverse of `as_dict`; `ValueError` for anything it would not have written."""
        if not isinstance(data, dict):
            raise ValueError("not a policy")
        data = {**_LATER_FIELDS, **data}  # a journal written before a field was added
        if set(data) != set(_POLICY_FIELDS):
            raise ValueError("not a policy")
        for key, kind in _POLICY_FIELDS.items():
            value = data[key]
            if key == "move_to" and value is None:
                continue
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise ValueError(f"policy {key}: {value!r}")
        lists = [data["keep_paths"], data["protect"]]
        if not all(isinstance(p, str) for patterns in lists for p in patterns):
            raise ValueError("policy patterns must be strings")
        if data["move_to"] is not None and path_problem(data["move_to"]):
            raise ValueError(f"policy move_to: {path_problem(data['move_to'])}")
        return cls(
            Action(data["action"]),
            Keep(data["keep"]),
            tuple(data["keep_paths"]),
            tuple(data["protect"]),
            data["min_copies"],
            data["move_to"],
            data["across_owners"],
            data["trust_sampled"],
        )


_POLICY_FIELDS: dict[str, type] = {
    "action": str,
    "keep": str,
    "keep_paths": list,
    "protect": list,
    "min_copies": int,
    "move_to": str,
    "across_owners": bool,
    "trust_sampled": bool,
}
#: Fields added since journals were first written, with the value an older journal means.
_LATER_FIELDS: dict[str, object] = {"trust_sampled": False}


@dataclass(frozen=True, slots=True)
class Operation:
    """Act on `victim` (one name of a file to be replaced or removed), keeping `keep`."""

    group: int  # index of the group in the report
    action: Action
    victim: FileEntry
    keep: FileEntry
    target: str | None = None  # for move: where the victim goes
    also_kept: tuple[FileEntry, ...] = ()  # the group's other kept files: re-checked, never touched
    reference: bool = False  # `keep` lies under a reference root
    #: The group was found on `--sample` windows: its bytes are compared even with --no-verify.
    sampled: bool = False


class LeftAloneKind(str, enum.Enum):
    """Why the plan does nothing to (part of) a group."""

    ONE_FILE = "one file"  # all its names are one file (hard links)
    ALL_KEPT = "all kept"  # --min-copies and --protect keep every file
    OWNER = "owner"  # no other file with the same owner, group and mode
    MOVE_CLASH = "move clash"  # two files would move to one target
    SAMPLED = "sampled"  # found on sampled windows only, without --trust-sampled


@dataclass(frozen=True, slots=True)
class LeftAlone:
    """(Part of) a group the plan does nothing to, and why."""

    group: int
    reason: str
    kind: LeftAloneKind


@dataclass(frozen=True, slots=True)
class Plan:
    """What `apply` will do: the operations in order, and what it leaves alone."""

    operations: tuple[Operation, ...]
    left_alone: tuple[LeftAlone, ...]
    #: The policy said so: `apply` then does not refuse a kept file of another owner or mode.
    across_owners: bool = False


#: Why a sampled group is left alone with --min-copies: each victim is compared with the first
#: kept file only, so another kept file would count as a copy unverified.
_UNCOUNTED = (
    "compared on sampled windows only (dedup find --sample): with --min-copies above 1 its "
    "other kept files would count as copies without a byte compared"
)
#: Why a group found with `dedup find --sample` is left alone.
_UNVERIFIED = (
    "compared on sampled windows only (dedup find --sample), not byte for byte: "
    "--trust-sampled acts on it, comparing every byte first"
)


def make_plan(
    groups: Sequence[DuplicateGroup],
    roots: Sequence[str],
    policy: Policy,
    reference: Sequence[str] = (),
) -> Plan:
    """The operations for every group, in report order; groups with nothing to do are left
    alone.  Files under the `reference` roots (those of `roots` given with `--reference`) are
    all kept, whatever the policy, and kept first: the others are linked to one of them."""
    operations: list[Operation] = []
    left_alone: list[LeftAlone] = []
    targets: set[str] = set()  # move targets planned so far: each receives one file
    holders = RootIndex(roots, reference)
    order = _order(policy, holders)
    protect = Globs(policy.protect)
    for index, group in enumerate(groups):
        sampled = group.verified is Verified.SAMPLED
        if sampled and (not policy.trust_sampled or policy.min_copies > 1):
            why = _UNVERIFIED if not policy.trust_sampled else _UNCOUNTED
            left_alone.append(LeftAlone(index, why, LeftAloneKind.SAMPLED))
            continue
        sets = _owner_sets(group.files, order) if policy.splits_by_owner else [list(group.files)]
        for files in sets:
            planned, left = _plan_set(
                index, files, policy, order, holders, protect, split=len(sets) > 1
            )
            clash = _clash(planned, targets)
            if clash:
                why = f"two files would move to {clash!r} (same path below two roots); "
                left = LeftAlone(
                    index, why + "move them in separate runs", LeftAloneKind.MOVE_CLASH
                )
            if left is not None:
                left_alone.append(left)
                continue
            targets.update(op.target for op in planned if op.target)
            operations.extend(
                dataclasses.replace(op, sampled=True) if sampled else op for op in planned
            )
    return Plan(tuple(operations), tuple(left_alone), policy.across_owners)


def _owner_sets(
    files: Sequence[FileEntry], order: Callable[[FileEntry], tuple[object, ...]]
) -> list[list[FileEntry]]:
    """The group's files by owner, group and mode; sets in the order of their best file."""
    sets: dict[Owner, list[FileEntry]] = {}
    for entry in files:
        sets.setdefault(entry.owner, []).append(entry)
    return sorted(sets.values(), key=lambda members: min(map(order, members)))


def _plan_set(
    index: int,
    files: Sequence[FileEntry],
    policy: Policy,
    order: Callable[[FileEntry], tuple[object, ...]],
    roots: RootIndex,
    protect: Globs,
    *,
    split: bool,
) -> tuple[list[Operation], LeftAlone | None]:
    """The operations for one set of files that may be acted on together."""
    inodes: dict[tuple[int, int], list[FileEntry]] = {}
    for entry in files:
        inodes.setdefault((entry.dev, entry.ino), []).append(entry)
    if len(inodes) < 2:
        if split:
            reason = (f"{files[0].path!r} ({files[0].owner}) has no copy of the same owner, "
                      "group and mode (--across-owners acts across them)")  # fmt: skip
            return [], LeftAlone(index, reason, LeftAloneKind.OWNER)
        return [], LeftAlone(
            index, "all its names are one file (hard links)", LeftAloneKind.ONE_FILE
        )
    # A file is represented by its best name; files are ranked by their best names, a file
    # with a name under a reference root before all others.
    names = {key: sorted(entries, key=order) for key, entries in inodes.items()}
    reference = {
        key
        for key, entries in inodes.items()
        if any(map(roots.is_reference, (e.path for e in entries)))
    }
    ranked = sorted(names, key=lambda key: (key not in reference, order(names[key][0])))
    protected = [
        key for key in ranked if any(protect.match_file(e.path, roots) for e in inodes[key])
    ]
    kept = ranked[: max(policy.min_copies, len(reference))]
    kept += [key for key in protected if key not in kept]
    victims = [key for key in ranked if key not in kept]
    if not victims:
        reason = f"no file beyond the {len(kept)} kept (--min-copies, --protect, reference roots)"
        return [], LeftAlone(index, reason, LeftAloneKind.ALL_KEPT)
    keep = names[kept[0]][0]
    also_kept = tuple(names[key][0] for key in kept[1:])
    planned = []
    for key in victims:
        entries = names[key]
        if policy.action is Action.REFLINK:
            entries = entries[:1]  # one name shares the file's blocks for all its names
        for victim in entries:
            target = _moved(victim.path, roots, policy.move_to) if policy.move_to else None
            planned.append(
                Operation(
                    index, policy.action, victim, keep, target, also_kept, kept[0] in reference
                )
            )
    return planned, None


def _clash(planned: Sequence[Operation], targets: set[str]) -> str | None:
    """A move target already taken by an earlier operation, or by two of these."""
    seen = set(targets)
    for op in planned:
        if op.target is not None:
            if op.target in seen:
                return op.target
            seen.add(op.target)
    return None


def _order(policy: Policy, roots: RootIndex) -> Callable[[FileEntry], tuple[object, ...]]:
    keep_paths = Globs(policy.keep_paths)

    def root_index(path: str) -> int:
        number = roots.first(path)
        return len(roots.roots) if number is None else number

    def key(entry: FileEntry) -> tuple[object, ...]:
        wanted = 0 if keep_paths.match_file(entry.path, roots) else 1
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


def _moved(path: str, roots: RootIndex, destination: str) -> str:
    """The path under `destination` that keeps `path`'s place below its root (the first root
    holding it, but a file root itself)."""
    below_a_root = [number for number in roots.holding(path) if roots.roots[number] != path]
    if below_a_root:
        part = below(path, roots.roots[min(below_a_root)])
        if part:
            return os.path.join(destination, part)
    return os.path.join(destination, path.lstrip("/"))
