"""The records the engine hands out: files, duplicate groups, issues and per-stage statistics.

These are the public result types of `find_duplicates`, immutable (frozen and slotted, or named
tuples): cheap, hashable and safe to pass between processes.  Inside the search a file is a row of
the worker that scanned it (`find.store.RowStore`) and a key in the coordinator; only files that
end up in a group become these records.
`Findings` is what a report is written from: a `FindResult`, or the same with spooled groups.
"""

from __future__ import annotations

import enum
import functools
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol


class Stage(str, enum.Enum):
    """A pipeline stage; also the `stage` of an issue, so a user can tell where a file fell out."""

    SCAN = "scan"
    SIZE = "size"
    HARDLINK = "hardlink"
    HEAD = "head"
    TAIL = "tail"
    FULL = "full"


class Owner(NamedTuple):
    """Who may read and write a file.  A hard link or symlink makes a path share its target's,
    so `apply` acts only among files whose owners are equal (unless told otherwise)."""

    uid: int
    gid: int
    mode: int  # permission bits with the set-id and sticky bits (S_IMODE)

    def __str__(self) -> str:
        return f"uid {self.uid}, gid {self.gid}, mode {self.mode:04o}"


class FileEntry(NamedTuple):
    """One path of a file in a duplicate group, with the identity `apply` re-checks first.

    A named tuple, not a dataclass like the other records: one is made for every file of every
    final group, and a tuple is built in a fifth of a frozen dataclass's time (0.2 us against
    1.2 us: a second at a few million files).
    """

    path: str
    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int
    uid: int
    gid: int
    mode: int  # S_IMODE of st_mode

    @property
    def owner(self) -> Owner:
        return Owner(self.uid, self.gid, self.mode)


#: A FileEntry's (dev, ino), without a Python-level frame: every group's inodes are counted
#: as the group is reported.
_IDENTITY = operator.itemgetter(1, 2)

#: A FileEntry from its fields in order, as `FileEntry._make` makes one but without its
#: Python-level frame: one is made for every file of every final group, and again as a report
#: reads them back.
entry_of = functools.partial(tuple.__new__, FileEntry)


class Verified(str, enum.Enum):
    """How a group's files were found equal."""

    BYTES = "bytes"  # every byte compared (and hashed)
    DIGEST = "digest"  # every byte hashed, files compared by their BLAKE3 digests (`--root-on`)
    SAMPLED = "sampled"  # `--sample`: windows spread over the files only; not verified


@dataclass(frozen=True, slots=True)
class DuplicateGroup:
    """Files with identical content: equal size and equal BLAKE3 digest of every byte.

    `files` lists every path of every inode in the group, hard links included, ordered by the
    index of the root they were found under and then by path.  A group `Verified.SAMPLED` was
    compared on `--sample` windows only: its digest is that of the windows, and its files may
    differ elsewhere.
    """

    size: int
    digest: str
    files: tuple[FileEntry, ...]
    verified: Verified = Verified.BYTES

    @property
    def inodes(self) -> int:
        """How many distinct files (dev, ino) the group holds."""
        return len(set(map(_IDENTITY, self.files)))

    @property
    def reclaimable(self) -> int:
        """Bytes freed if all but one inode of the group were removed."""
        return reclaimable_bytes(self.size, self.inodes)


def reclaimable_bytes(size: int, inodes: int) -> int:
    """Bytes freed if all but one of `inodes` files of `size` bytes were removed (for a caller
    that has counted a group's inodes already)."""
    return size * (inodes - 1)


def report_order(group: DuplicateGroup) -> tuple[int, str]:
    """Where a group comes in a report: largest files first (most space at stake), then by first
    path; stable across runs."""
    return -group.size, group.files[0].path if group.files else ""


@dataclass(frozen=True, slots=True)
class DirectoryGroup:
    """Directories whose whole trees hold the same names, types and bytes (`--dirs`).

    `bytes` is what one of them holds (the sum of its files' sizes, each name counted); `paths`
    are sorted.
    """

    bytes: int
    paths: tuple[str, ...]


def directory_order(group: DirectoryGroup) -> tuple[int, str]:
    """Where a directory group comes in a report: largest first, then by first path."""
    return -group.bytes, group.paths[0] if group.paths else ""


@dataclass(frozen=True, slots=True)
class Issue:
    """A file that could not be examined; it was excluded from matching and the run went on."""

    path: str
    stage: Stage
    message: str


@dataclass(slots=True)
class StageStats:
    """Work done by one stage; counts are exact, so they can gate regressions where times cannot."""

    stage: Stage
    files_in: int = 0
    files_out: int = 0
    files_opened: int = 0
    bytes_read: int = 0
    seconds: float = 0.0
    #: Files whose digest the cache held (`--cache`), and files it was asked for and did not.
    cache_hits: int = 0
    cache_misses: int = 0

    def as_dict(self) -> dict[str, int | float | str]:
        return {
            "stage": self.stage.value,
            "files_in": self.files_in,
            "files_out": self.files_out,
            "files_opened": self.files_opened,
            "bytes_read": self.bytes_read,
            "seconds": round(self.seconds, 6),
            "cache_hits": self.cache_hits,
            "cache_misses": self.cache_misses,
        }


@dataclass(slots=True)
class RunStats:
    """Totals for a whole run plus the per-stage rows, in pipeline order."""

    stages: list[StageStats] = field(default_factory=list)
    dirs_scanned: int = 0
    files_scanned: int = 0
    bytes_scanned: int = 0
    skipped_special: int = 0
    skipped_symlinks: int = 0
    dirs_revisited: int = 0
    groups: int = 0
    files_in_groups: int = 0
    bytes_reclaimable: int = 0
    workers: int = 0
    seconds: float = 0.0
    #: What the user should hear of once, that is no file's issue (a cache rebuilt).
    warnings: list[str] = field(default_factory=list)
    #: CPU seconds of the tasks the worker processes of this machine ran (with no worker
    #: processes, of those run in this one), by kind: `scan`, `head`, `tail`, `full` (the full
    #: stage's compare), `describe` (naming files, and checking again those read whole) and
    #: `dirs` (`--dirs`).
    #: Empty for a cluster's workers.  Not in reports: unlike the counts, it differs every run.
    task_cpu: dict[str, float] = field(default_factory=dict)

    def stage(self, stage: Stage) -> StageStats:
        for row in self.stages:
            if row.stage is stage:
                return row
        row = StageStats(stage)
        self.stages.append(row)
        return row

    def as_dict(self) -> dict[str, object]:
        return {
            "dirs_scanned": self.dirs_scanned,
            "files_scanned": self.files_scanned,
            "bytes_scanned": self.bytes_scanned,
            "skipped_special": self.skipped_special,
            "skipped_symlinks": self.skipped_symlinks,
            "dirs_revisited": self.dirs_revisited,
            "groups": self.groups,
            "files_in_groups": self.files_in_groups,
            "bytes_reclaimable": self.bytes_reclaimable,
            "workers": self.workers,
            "seconds": round(self.seconds, 6),
            "stages": [row.as_dict() for row in self.stages],
        }


@dataclass(frozen=True, slots=True)
class FindResult:
    """What `find_duplicates` returns: the groups, the files it could not read, the work done."""

    #: Every root searched, in the order given (`find.roots.Roots` keeps a list of millions on
    #: disk, not in memory).
    roots: Sequence[str]
    groups: tuple[DuplicateGroup, ...]
    issues: tuple[Issue, ...]
    stats: RunStats
    #: The roots among `roots` given with `--reference`, whose files are never acted on.
    reference_roots: tuple[str, ...] = ()
    #: With `--dirs`: groups of duplicate directories, largest first.
    directory_groups: tuple[DirectoryGroup, ...] = ()


class Findings(Protocol):
    """What a report is written from: a search's roots, issues and statistics, all known before
    writing starts, and its groups in report order, read once as the report is written.

    `FindResult` is one; a command that spools its groups as they become final passes another, so
    the groups never need to be in memory all at once.
    """

    @property
    def roots(self) -> Sequence[str]: ...

    @property
    def reference_roots(self) -> Sequence[str]: ...

    @property
    def directory_groups(self) -> Sequence[DirectoryGroup]: ...

    @property
    def groups(self) -> Iterable[DuplicateGroup]: ...

    @property
    def issues(self) -> Sequence[Issue]: ...

    @property
    def stats(self) -> RunStats: ...
