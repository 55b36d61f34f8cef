"""The messages between the parent and the workers: what a task asks, what its result says.

Both sides import this module and nothing of each other: the parent (`pipeline`, `hashstep`)
builds tasks and reads results, the workers (`walk`, `hashtasks`, `entries`, `fullcompare`, via
`readers`) take one kind of task each, and `pool` carries them.  Every message is pickled once
per task, so files travel in columns (rows of the owner's store, sizes, and only where a file must
be read elsewhere its path), never as an object per file.
"""

from __future__ import annotations

import operator
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

from dedup_engine.model import Stage

DIGEST_SIZE = 32
#: A failed file's digest: it never matches, and no group keeps it.
NO_DIGEST = bytes(DIGEST_SIZE)


class _Message:
    """Pickled as its class and its fields' values, rebuilt by its constructor.

    A frozen, slotted dataclass is otherwise pickled with its fields looked up again for every
    object, both ways: a run sends some thousand results, and a scan every directory as a
    `DirJob` twice, and that look-up cost more than the pickling itself (41.6 ms against 17.2
    for 7,000 directories, out and back)."""

    __slots__ = ()

    def __reduce__(self) -> tuple[type, tuple[Any, ...]]:
        cls = type(self)
        values = _VALUES.get(cls)
        if values is None:
            values = _VALUES[cls] = _values_of(cls)
        return cls, values(self)


#: Each message class's fields' values, in order, as a tuple.
_VALUES: dict[type, Callable[[Any], tuple[Any, ...]]] = {}


def _values_of(cls: type) -> Callable[[Any], tuple[Any, ...]]:
    names = [f.name for f in fields(cls)]
    if len(names) == 1:  # attrgetter gives a lone field's value, not a tuple
        return lambda message: (getattr(message, names[0]),)
    return operator.attrgetter(*names)


@dataclass(frozen=True, slots=True)
class DirJob(_Message):
    """A directory to list.  `depth` is its depth below its root (the root is 0); `alias`: it
    was reached through a symlink to a directory (links followed), so each file below it is a
    name that may also be found by its real path, never a copy in its own right.
    `counts_under`: the root its files count under, where not `root` (whose filters and depth
    still apply): with links followed, a directory reached through a link into another root's
    tree."""

    path: str
    root: int
    depth: int
    root_dev: int
    #: The directory's identity where it was found: the one opened by `path` must be it.
    dev: int
    ino: int
    alias: bool = False
    counts_under: int | None = None

    @property
    def counted_root(self) -> int:
        """The root the directory's files count under."""
        return self.root if self.counts_under is None else self.counts_under


@dataclass(frozen=True, slots=True)
class ScanTask(_Message):
    """Directories for one worker to list (`walk.scan_dirs`), and file roots for it to take.

    `files` are (path, root index) of roots that are files, stat'ed by the worker like an entry;
    `file_roots` the paths of such roots in these directories, which their listing passes over.
    """

    dirs: tuple[DirJob, ...]
    files: tuple[tuple[str, int], ...] = ()
    file_roots: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class ScanResult(_Message):
    """The keys of the rows a scan task added to its worker's store, and the subdirectories it
    found: the coordinator never sees a file's name.

    Rows `first` to `first + len(sizes) - 1` are new.  `linked` are the offsets (from `first`) of
    the rows whose inode may be reached by another path (a link count above one, or any file with
    links followed), with their `devs` and `inos`; `aliases` the offsets of rows reached through a
    symlink to a file.
    """

    first: int
    sizes: array[int]
    linked: array[int]
    devs: array[int]
    inos: array[int]
    aliases: array[int]
    subdirs: tuple[DirJob, ...]
    subdir_devs: array[int]  # (dev, ino) of each subdir, so the parent can detect loops
    subdir_inos: array[int]
    issues: tuple[tuple[str, str], ...]
    dirs_scanned: int
    skipped_special: int
    skipped_symlinks: int


@dataclass(frozen=True, slots=True)
class Window(_Message):
    """Which bytes a hashing stage reads.

    `length` is the window for head and tail (0 for full).  A file no bigger than
    `max(length, whole)` is read whole in one go: its digest is then the digest of the file, and the
    file is complete, so it skips the later stages.  Files smaller than `min_size` skip this stage
    (their groups pass through unchanged): where a stage would cost about what the next one does,
    it is not worth an extra open.
    """

    stage: Stage
    length: int = 0
    whole: int = 0
    min_size: int = 0

    @property
    def whole_limit(self) -> float:
        return float("inf") if self.stage is Stage.FULL else max(self.length, self.whole)

    def reads_whole(self, size: int) -> bool:
        return size <= self.whole_limit

    def applies(self, size: int) -> bool:
        return size >= self.min_size


@dataclass(frozen=True, slots=True)
class HashTask(_Message):
    """Head or tail: a window of each of the worker's own `rows` (`hashtasks.hash_batch`), whose
    sizes the scan saw as `sizes`."""

    window: Window
    rows: array[int]
    sizes: array[int]
    follow_links: bool
    #: Write each file's dirty pages back before reading it (`fsidentity.expose_mapped_writes`):
    #: its digest is to be kept in the cache.
    writeback: bool = False
    #: Also give the whole-file digest the cache holds of each file above the window
    #: (`HashResult.whole`): a group whose every member has one needs no later stage.
    whole_known: bool = False


#: A file a task could not use: its position in the task, its path and why.
Failure = tuple[int, str, str]


@dataclass(frozen=True, slots=True)
class HashResult(_Message):
    """Digests in task order, `DIGEST_SIZE` bytes each; a failed file has zeros and a failure."""

    digests: bytes
    failed: tuple[Failure, ...]
    files_opened: int
    bytes_read: int
    cache_hits: int = 0
    cache_misses: int = 0
    #: With `HashTask.whole_known`: the cache's whole-file digests in task order, `NO_DIGEST`
    #: where it has none; empty where it has none at all.
    whole: bytes = b""


@dataclass(frozen=True, slots=True)
class DescribeTask(_Message):
    """The paths and scan identities of the worker's own `rows`, for the full stage to compare
    or for a final group's entries; a row whose byte in `check` is set has its path stat'ed
    again and is kept only if it is still the file the scan saw (`entries.describe`)."""

    rows: array[int]
    sizes: array[int]
    check: bytes
    follow_links: bool


@dataclass(frozen=True, slots=True)
class Described(_Message):
    """Rows in task order, in columns.  A row that failed its check is in `failed`; `uids`,
    `gids`, `modes` and `nlinks` (the link count) are known only for rows checked and found
    unchanged, and are zeros for the others."""

    paths: tuple[str, ...]
    roots: array[int]
    devs: array[int]
    inos: array[int]
    mtimes: array[int]
    ctimes: array[int]
    uids: array[int]
    gids: array[int]
    modes: array[int]
    nlinks: array[int]
    failed: tuple[Failure, ...]


@dataclass(frozen=True, slots=True)
class CompareTask(_Message):
    """The full stage: files named by path, laid end to end in groups of the sizes in `groups`,
    each group compared within (`fullcompare.compare_groups`); the files' paths are the only ones
    that travel, since the members of a group may be owned by different workers.  What the scan
    saw of each file is checked on the open file once it is read."""

    paths: tuple[str, ...]
    sizes: array[int]
    groups: array[int]
    devs: array[int]  # which device each file is on: its reader's concern (`readers`)
    inos: array[int]
    mtimes: array[int]
    ctimes: array[int]
    follow_links: bool
    chunk_size: int
    #: As `HashTask.writeback`.
    writeback: bool = False
    #: `--sample`: a group of files above `sample_above` bytes is compared on `sample` windows
    #: of `chunk_size` spread over them (0: in full).
    sample: int = 0
    sample_above: int = 0

    def subset(
        self, members: Sequence[int], groups: Sequence[int], writeback: bool = False
    ) -> CompareTask:
        """The task for some of its files (by position), laid out in groups of these sizes."""
        return CompareTask(
            tuple(self.paths[m] for m in members),
            array("q", [self.sizes[m] for m in members]),
            array("I", groups),
            array("Q", [self.devs[m] for m in members]),
            array("Q", [self.inos[m] for m in members]),
            array("q", [self.mtimes[m] for m in members]),
            array("q", [self.ctimes[m] for m in members]),
            self.follow_links,
            self.chunk_size,
            writeback,
            self.sample,
            self.sample_above,
        )

    def sampled(self, size: int) -> bool:
        """Whether a group of files of `size` bytes is compared on windows only."""
        return is_sampled(self.sample, self.sample_above, self.chunk_size, size)


def is_sampled(sample: int, above: int, window: int, size: int) -> bool:
    """`--sample`'s rule: files above `above` bytes are compared on `sample` windows of
    `window` bytes (0: none), but those the windows would cover whole, which are compared in
    full (and so verified) for no more reading."""
    return sample > 0 and size > above and size > sample * window


@dataclass(frozen=True, slots=True)
class CompareResult(_Message):
    """Digests in task order, as `HashResult`; and each file's owner and permission bits from the
    check on its open file (zeros where it failed)."""

    digests: bytes
    failed: tuple[Failure, ...]
    files_opened: int
    bytes_read: int
    uids: array[int]
    gids: array[int]
    modes: array[int]
    cache_hits: int = 0
    cache_misses: int = 0


@dataclass(frozen=True, slots=True)
class ListedDir(_Message):
    """One directory as its worker listed it (`--dirs`).  Its file rows in columns: `names`
    one after another (the bytes on disk), each ending at its `name_ends` offset, with `devs`,
    `inos` and `sizes`, and `linked` the places among them of files that may have other names
    (a link count above one); `subdirs`: (name, dev, ino); `others`: (name, kind) of every
    other entry, a symlink's kind being "link:" and its target; `whole`: every entry was listed
    and stat'ed."""

    path: str
    dev: int
    ino: int
    names: bytes
    name_ends: array[int]
    devs: array[int]
    inos: array[int]
    sizes: array[int]
    linked: array[int]
    subdirs: tuple[tuple[str, int, int], ...]
    others: tuple[tuple[str, str], ...]
    whole: bool


@dataclass(frozen=True, slots=True)
class TreeTask(_Message):
    """Ask a worker for the directories it listed from its `start`th, as many as hold about
    `files` files (one at least)."""

    start: int
    files: int


@dataclass(frozen=True, slots=True)
class TreeResult(_Message):
    dirs: tuple[ListedDir, ...]
    next: int | None  # where the worker's next directories start; None: no more


Task = ScanTask | HashTask | DescribeTask | CompareTask | TreeTask
Result = ScanResult | HashResult | Described | CompareResult | TreeResult

#: The kinds of task (`task_kind`) in the order `--stats` lists them: the scan, the stages that
#: read, the naming of files that serves them, and the listing `--dirs` asks for at the end.
TASK_KINDS = ("scan", "head", "tail", "full", "describe", "dirs")
_KIND_OF: dict[type, str] = {
    ScanTask: "scan",
    TreeTask: "dirs",
    CompareTask: "full",
    DescribeTask: "describe",
}


def task_kind(task: Task) -> str:
    """What a task's work is called where CPU time is told by task (`RunStats.task_cpu`): a
    window's stage for hashing (`head`, `tail`), `full` for the full stage's compare, `scan`,
    `dirs` (listing for `--dirs`) or `describe` (naming files, and checking them again)."""
    if isinstance(task, HashTask):
        return task.window.stage.value
    return _KIND_OF[type(task)]
