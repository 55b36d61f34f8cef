"""The generic hashing step: hash one window of candidate files on the pool, then split the groups.

Head, tail and full are the same `HashStep` with a different `Window`.  Rows are fed in (during the
walk for the head stage), sent out in batches bounded by count and bytes, and `refine` splits each
group by digest, dropping groups that fall below two members.
"""

from __future__ import annotations

import time
from array import array
from collections import deque
from collections.abc import Callable

from dedup_engine.find.groups import Group
from dedup_engine.find.hashtasks import DIGEST_SIZE, NO_DIGEST, HashResult, HashTask, Window
from dedup_engine.find.pool import Pool
from dedup_engine.find.walk import FileColumns
from dedup_engine.model import Issue, Stage, StageStats

#: Files per task: enough that a task costs a few ms of small reads, against ~50 us of pipe and
#: pickle overhead per task.
BATCH_FILES = 512
#: Bytes per task in the full stage: a big file goes alone, so both workers stay busy to the end.
BATCH_BYTES = 8 * 1024 * 1024


class HashStep:
    """One hashing stage: feeds rows to the pool in batches, collects digests, splits groups."""

    def __init__(
        self,
        pool: Pool,
        table: FileColumns,
        window: Window,
        stats: StageStats,
        issues: list[Issue],
        *,
        follow_links: bool,
        chunk_size: int,
        in_flight: int,
        weight: Callable[[Group], int] = len,
        split_on_arrival: bool = False,
        tick: Callable[[], None] | None = None,
    ) -> None:
        self.pool = pool
        self.table = table
        self.window = window
        self.stats = stats
        self.issues = issues
        self.follow_links = follow_links
        self.chunk_size = chunk_size
        self.limit = in_flight
        self.weight = weight
        # Full stage: a task holds whole groups, so each is split as its result arrives and the
        # parent can build the finished groups while the workers go on.  (Not with hard_links:
        # there the groups are fed one file at a time and must be split together, at the end.)
        self.split_on_arrival = split_on_arrival
        self._finished: list[tuple[bytes, Group]] = []
        self._handed_out = 0  # files in the groups take_finished has handed out
        self._column = b""  # the digests as bytes while refine runs slice by slice
        # One digest column for the whole table, DIGEST_SIZE bytes a row: no object per file.
        self.digests = bytearray()
        self._pending: list[int] = []
        # Full stage: the sizes of the groups laid end to end in _pending, in order.
        self._bounds: deque[int] = deque()
        self._outstanding = 0
        self._started: float | None = None
        self._tick = tick

    def feed(self, rows: list[int]) -> None:
        """Queue files for a partial window; each is hashed on its own."""
        if self._started is None:
            self._started = time.perf_counter()
        self.stats.files_in += len(rows)
        self._pending.extend(rows)

    def feed_groups(self, groups: list[Group]) -> None:
        """Queue whole groups for the full stage, which compares the members of a group together.

        Largest first: the long reads start early and the short ones fill in at the end.
        """
        if self._started is None:
            self._started = time.perf_counter()
        sizes = self.table.size
        for group in sorted(groups, key=lambda g: -sizes[g[0]]):
            self.stats.files_in += len(group)
            self._pending.extend(group)
            self._bounds.append(len(group))

    def flush(self, final: bool = False) -> None:
        """Submit batches while the pool has room; with `final`, the last partial one too."""
        pending = self._pending
        while pending and self.pool.in_flight < self.limit:
            if not final and len(pending) < BATCH_FILES:
                return
            self._submit(self._take_batch())

    def _take_batch(self) -> tuple[list[int], array[int]]:
        pending = self._pending
        bounds = array("I")
        if not self._bounds:
            count = min(len(pending), BATCH_FILES)
        else:
            # Whole groups, at least one, up to the byte and file budgets.
            sizes = self.table.size
            count = 0
            total = 0
            while self._bounds and (
                count == 0 or (count + self._bounds[0] <= BATCH_FILES and total < BATCH_BYTES)
            ):
                members = self._bounds.popleft()
                total += sizes[pending[count]] * members
                count += members
                bounds.append(members)
        batch = pending[:count]
        del pending[:count]
        return batch, bounds

    def _submit(self, batch: tuple[list[int], array[int]]) -> None:
        rows, bounds = batch
        table = self.table
        # What the scan saw goes with the full stage's files only: its digests are final, and it
        # checks them on the open files (the parent re-checks files read whole by a window).
        checked = rows if self.window.stage is Stage.FULL else ()
        task = HashTask(
            self.window,
            array("Q", rows),
            tuple(map(table.paths.__getitem__, rows)),
            array("q", map(table.size.__getitem__, rows)),
            self.follow_links,
            self.chunk_size,
            bounds,
            array("Q", map(table.ino.__getitem__, checked)),
            array("q", map(table.mtime.__getitem__, checked)),
            array("q", map(table.ctime.__getitem__, checked)),
        )
        self._outstanding += 1
        self.pool.submit(task, self._done)

    def _done(self, result: HashResult) -> None:
        self._outstanding -= 1
        if self.split_on_arrival:
            self._split_groups(result)
        else:
            self._store(result)
        paths = self.table.paths
        stage = self.stats.stage
        for position, message in result.failed:
            self.issues.append(Issue(paths[result.ids[position]], stage, message))
        self.stats.files_opened += result.files_opened
        self.stats.bytes_read += result.bytes_read
        if self._tick is not None:
            self._tick()

    def _split_groups(self, result: HashResult) -> None:
        blob = result.digests
        ids = result.ids
        start = 0
        for members in result.groups:
            digests = [
                blob[p * DIGEST_SIZE : (p + 1) * DIGEST_SIZE] for p in range(start, start + members)
            ]
            self._finished.extend(
                _split(ids[start : start + members].tolist(), digests, self.weight)
            )
            start += members

    def take_finished(self) -> list[tuple[bytes, Group]]:
        """The groups the full stage has confirmed so far, each handed out once."""
        finished, self._finished = self._finished, []
        self._handed_out += sum(len(members) for _, members in finished)
        return finished

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

    def refine(self, groups: list[Group]) -> tuple[list[tuple[bytes, Group]], list[Group]]:
        """Split fed groups by this window's digest: (groups finished, with full digests; the
        rest).  May be called a slice of the groups at a time, after `drain`."""
        if self.split_on_arrival:
            last = self.take_finished()  # split as their results came
            self.stats.files_out = self._handed_out
            return last, []
        if not self._column:
            self._column = bytes(self.digests)  # slices of bytes are hashable keys
            self.digests = bytearray()  # all results are in: one copy is enough
        column = self._column
        weight = self.weight
        width = DIGEST_SIZE
        sizes = self.table.size
        reads_whole = self.window.reads_whole
        done: list[tuple[bytes, Group]] = []
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


def _split(
    rows: list[int], digests: list[bytes], weight: Callable[[Group], int]
) -> list[tuple[bytes, Group]]:
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
