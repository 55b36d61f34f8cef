"""Parent side of the hashing stages: candidate files out to the workers in batches, digests in,
groups split by them.

Head, tail and full share `HashStep` (batches out while the pool has room, results in, counts)
and each has its `Window`; they differ in what a batch holds and when a group can be split:

- `WindowStep` (head, tail): files, each hashed on its own by the workers (`hashtasks`).  Its
  rows are fed as they turn up (during the walk for the head stage), the digests go into one
  column, and `refine` splits each group by them once every result is in.
- `FullStep` (full): whole groups, compared within by the workers (`fullcompare`).  Each group
  comes back with its task, so it is split on arrival, and the parent builds finished groups
  while the workers go on.

Either drops a group that falls below two members (its `weight`).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from array import array
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from dedup_engine.find.groups import Group
from dedup_engine.find.pool import Pool
from dedup_engine.find.table import FileColumns
from dedup_engine.find.tasks import DIGEST_SIZE, NO_DIGEST, HashResult, HashTask, Window
from dedup_engine.model import Issue, RunStats, Stage

#: Files per task: enough that a task costs a few ms of small reads, against ~50 us of pipe and
#: pickle overhead per task.
BATCH_FILES = 512
#: Bytes per task in the full stage: a big file goes alone, so both workers stay busy to the end.
BATCH_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class StepContext:
    """What the hashing steps of one run share: the pool and how many tasks it may hold, the file
    table, the run's counts and issues, the read settings, and the progress tick."""

    pool: Pool
    table: FileColumns
    stats: RunStats
    issues: list[Issue]
    follow_links: bool
    chunk_size: int
    in_flight: int
    tick: Callable[[], None] | None


#: Groups split by a digest: (the digest, the rows that share it).
Split = list[tuple[bytes, Group]]


class RowQueue:
    """Rows waiting for a batch, first in first out: taking a batch costs the batch, not the
    queue (a slice deleted from the front of a list moves every row behind it)."""

    __slots__ = ("_head", "_rows")

    def __init__(self) -> None:
        self._rows: list[int] = []
        self._head = 0

    def __len__(self) -> int:
        return len(self._rows) - self._head

    def extend(self, rows: list[int]) -> None:
        self._rows.extend(rows)

    def peek(self, offset: int) -> int:
        """The row `offset` places from the front."""
        return self._rows[self._head + offset]

    def take(self, count: int) -> list[int]:
        """The first `count` rows, removed."""
        head = self._head
        batch = self._rows[head : head + count]
        head += len(batch)
        # The taken rows are dropped once they are half the list: amortised, each row is moved
        # at most once more.
        if head * 2 >= len(self._rows):
            del self._rows[:head]
            head = 0
        self._head = head
        return batch


class HashStep(ABC):
    """What every hashing stage does on the parent side: queue rows, send them out in batches
    while the pool has room, wait for the results, and count."""

    def __init__(
        self, context: StepContext, window: Window, weight: Callable[[Group], int] = len
    ) -> None:
        self.pool = context.pool
        self.table = context.table
        self.issues = context.issues
        self.context = context
        self.window = window
        self.stats = context.stats.stage(window.stage)
        #: A group's weight: it still counts while this is two or more.
        self.weight = weight
        self._pending = RowQueue()
        self._outstanding = 0
        self._started: float | None = None

    def flush(self, final: bool = False) -> None:
        """Submit batches while the pool has room; with `final`, the last partial one too."""
        pending = self._pending
        while pending and self.pool.in_flight < self.context.in_flight:
            if not final and len(pending) < BATCH_FILES:
                return
            self._submit_batch()

    def drain(self, idle: Callable[[], object] | None = None) -> None:
        """Hash everything fed so far and wait for it.

        `idle` is the parent's own work, done in small slices while tasks are out.
        """
        while self._pending or self._outstanding:
            self.flush(final=True)
            if idle is not None and self._outstanding:
                idle()
            self.pool.wait_one()
        if self._started is not None:
            self.stats.seconds += time.perf_counter() - self._started

    @abstractmethod
    def _submit_batch(self) -> None:
        """Send the next batch of pending rows to the pool."""

    def _queue(self, rows: list[int]) -> None:
        if self._started is None:
            self._started = time.perf_counter()
        self.stats.files_in += len(rows)
        self._pending.extend(rows)

    def _send(
        self,
        rows: list[int],
        groups: array[int],
        checked: list[int],
        collect: Callable[[HashResult], None],
    ) -> None:
        """Submit a task for `rows`, to be compared in `groups` (none: each on its own), with
        what the scan saw of the `checked` rows; `collect` takes its result."""
        table = self.table
        task = HashTask(
            self.window,
            array("Q", rows),
            tuple(map(table.paths.__getitem__, rows)),
            array("q", map(table.size.__getitem__, rows)),
            self.context.follow_links,
            self.context.chunk_size,
            groups,
            array("Q", map(table.ino.__getitem__, checked)),
            array("q", map(table.mtime.__getitem__, checked)),
            array("q", map(table.ctime.__getitem__, checked)),
        )
        self._outstanding += 1
        self.pool.submit(task, partial(self._done, collect))

    def _done(self, collect: Callable[[HashResult], None], result: HashResult) -> None:
        self._outstanding -= 1
        collect(result)
        paths = self.table.paths
        stage = self.stats.stage
        for position, message in result.failed:
            self.issues.append(Issue(paths[result.ids[position]], stage, message))
        self.stats.files_opened += result.files_opened
        self.stats.bytes_read += result.bytes_read
        if self.context.tick is not None:
            self.context.tick()


class WindowStep(HashStep):
    """The head or the tail stage: files hashed one by one over a window, and each group split
    by their digests once all of them are in (`refine`)."""

    def __init__(
        self, context: StepContext, window: Window, weight: Callable[[Group], int] = len
    ) -> None:
        super().__init__(context, window, weight)
        # One digest column for the whole table, DIGEST_SIZE bytes a row: no object per file.
        self.digests = bytearray()
        self._column = b""  # the digests as bytes while refine runs slice by slice

    def feed(self, rows: list[int]) -> None:
        """Queue files to be hashed, each on its own."""
        self._queue(rows)

    def _submit_batch(self) -> None:
        # The scan's view of a file goes without: a window's digest is final only for files
        # read whole, which the parent re-checks by path once every read of their group is done.
        rows = self._pending.take(min(len(self._pending), BATCH_FILES))
        self._send(rows, array("I"), [], self._store)

    def _store(self, result: HashResult) -> None:
        column = self.digests
        need = (max(result.ids) + 1) * DIGEST_SIZE
        if len(column) < need:
            column.extend(bytes(max(need, len(self.table) * DIGEST_SIZE) - len(column)))
        blob = result.digests
        # Failed files carry zeros, which refine drops.
        for position, row in enumerate(result.ids):
            at = row * DIGEST_SIZE
            src = position * DIGEST_SIZE
            column[at : at + DIGEST_SIZE] = blob[src : src + DIGEST_SIZE]

    def refine(self, groups: list[Group]) -> tuple[Split, list[Group]]:
        """Split fed groups by this window's digest: (groups finished, with full digests; the
        rest).  May be called a slice of the groups at a time, after `drain`."""
        if not self._column:
            self._column = bytes(self.digests)  # slices of bytes are hashable keys
            self.digests = bytearray()  # all results are in: one copy is enough
        column = self._column
        weight = self.weight
        width = DIGEST_SIZE
        sizes = self.table.size
        reads_whole = self.window.reads_whole
        done: Split = []
        rest: list[Group] = []
        for group in groups:
            digests = [column[row * width : (row + 1) * width] for row in group]
            kept = _split(group, digests, weight)
            if reads_whole(sizes[group[0]]):
                done.extend(kept)
            else:
                rest.extend(members for _, members in kept)
        self.stats.files_out += sum(map(len, rest)) + sum(len(g) for _, g in done)
        return done, rest

    def release(self) -> None:
        """Drop this stage's digests: each stage holds only its own, and only until refined."""
        self.digests = bytearray()
        self._column = b""


class FullStep(HashStep):
    """The full stage: groups sent out whole, compared within, and each split as its result
    arrives; the confirmed groups are handed out by `take_finished`.

    With `alone`, each member is hashed on its own rather than compared with the others (with
    --hard-links, where a lone inode can be a group by its names alone, and comparing would drop
    a member left alone); its group is still split as a whole.
    """

    def __init__(self, context: StepContext, weight: Callable[[Group], int], alone: bool) -> None:
        super().__init__(context, Window(Stage.FULL), weight)
        self.alone = alone
        # The sizes of the groups laid end to end in _pending, in order.
        self._bounds: deque[int] = deque()
        self._finished: Split = []

    def feed(self, groups: list[Group]) -> None:
        """Queue whole groups, largest files first: the long reads start early and the short
        ones fill in at the end."""
        sizes = self.table.size
        for group in sorted(groups, key=lambda g: -sizes[g[0]]):
            self._queue(group)
            self._bounds.append(len(group))

    def take_finished(self) -> Split:
        """The groups confirmed so far, each handed out once."""
        finished, self._finished = self._finished, []
        self.stats.files_out += sum(len(members) for _, members in finished)
        return finished

    def _submit_batch(self) -> None:
        # Whole groups, at least one, up to the byte and file budgets.
        pending, bounds, sizes = self._pending, self._bounds, self.table.size
        groups = array("I")
        count = 0
        total = 0
        while bounds and (count == 0 or (count + bounds[0] <= BATCH_FILES and total < BATCH_BYTES)):
            members = bounds.popleft()
            total += sizes[pending.peek(count)] * members
            count += members
            groups.append(members)
        rows = self._pending.take(count)
        compared = array("I", [1]) * count if self.alone else groups
        # What the scan saw goes with every file: these digests are final, and the workers check
        # them on the open files.
        self._send(rows, compared, rows, partial(self._split, groups))

    def _split(self, groups: array[int], result: HashResult) -> None:
        blob = result.digests
        ids = result.ids
        start = 0
        for members in groups:
            end = start + members
            digests = [blob[p * DIGEST_SIZE : (p + 1) * DIGEST_SIZE] for p in range(start, end)]
            self._finished.extend(_split(ids[start:end].tolist(), digests, self.weight))
            start = end


def _split(rows: list[int], digests: list[bytes], weight: Callable[[Group], int]) -> Split:
    """The rows that share a digest, in groups that still count; a failed file (zeros) in none."""
    buckets: dict[bytes, Group] = {}
    for row, digest in zip(rows, digests, strict=True):
        bucket = buckets.get(digest)
        if bucket is None:
            buckets[digest] = [row]
        else:
            bucket.append(row)
    if len(buckets) == len(rows) and weight is len:
        return []  # all different: the common fate of unrelated same-size files
    return [(d, m) for d, m in buckets.items() if d != NO_DIGEST and weight(m) >= 2]
