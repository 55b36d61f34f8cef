"""The messages between the parent and the workers: what a task asks, what its result says.

Both sides import this module and nothing of each other: the parent (`pipeline`, `hashstep`)
builds tasks and reads results, the workers (`walk`, `hashtasks`, `fullcompare`) take one kind of
task each, and `pool` carries them.  Every message is pickled once per task, so files travel in
columns (a tuple of paths and arrays of numbers), never as an object per file.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field

from dedup_engine.find.table import FileColumns
from dedup_engine.model import Stage

DIGEST_SIZE = 32
#: A failed file's digest: it never matches, and no group keeps it.
NO_DIGEST = bytes(DIGEST_SIZE)


@dataclass(frozen=True, slots=True)
class DirJob:
    """A directory to list.  `depth` is its depth below its root (the root is 0)."""

    path: str
    root: int
    depth: int
    root_dev: int


@dataclass(frozen=True, slots=True)
class ScanTask:
    """Directories for one worker to list (`walk.scan_dirs`)."""

    dirs: tuple[DirJob, ...]


@dataclass(frozen=True, slots=True)
class ScanResult:
    """The files and subdirectories a scan task found, and what it passed over."""

    files: FileColumns
    subdirs: tuple[DirJob, ...]
    subdir_devs: array[int]  # (dev, ino) of each subdir, so the parent can detect loops
    subdir_inos: array[int]
    issues: tuple[tuple[str, str], ...]
    dirs_scanned: int
    skipped_special: int
    skipped_symlinks: int


@dataclass(frozen=True, slots=True)
class Window:
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
class HashTask:
    """A batch of files for one window; `ids` are the parent's row numbers, echoed back.

    A task with `groups` is the full stage's (`fullcompare.compare_groups`), one without is a
    head or tail window's (`hashtasks.hash_batch`).
    """

    window: Window
    ids: array[int]
    paths: tuple[str, ...]
    sizes: array[int]
    follow_links: bool
    chunk_size: int
    #: Full stage: the files come as consecutive groups of these sizes, compared within each group.
    groups: array[int] = field(default_factory=lambda: array("I"))
    #: Full stage: what the scan saw of each file, checked on the open file once it is read.  The
    #: partial windows go without: their digests are never final but for files read whole, which
    #: the parent re-checks by path once every read of their group is done.
    inos: array[int] = field(default_factory=lambda: array("Q"))
    mtimes: array[int] = field(default_factory=lambda: array("q"))
    ctimes: array[int] = field(default_factory=lambda: array("q"))


@dataclass(frozen=True, slots=True)
class HashResult:
    """Digests in task order, `DIGEST_SIZE` bytes each; a failed file has zeros and an entry in
    `failed`."""

    window: Window
    ids: array[int]
    digests: bytes
    failed: tuple[tuple[int, str], ...]
    files_opened: int
    bytes_read: int
    groups: array[int] = field(default_factory=lambda: array("I"))  #: the task's, echoed


Task = ScanTask | HashTask
Result = ScanResult | HashResult
