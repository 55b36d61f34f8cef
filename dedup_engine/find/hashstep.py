"""Parent side of the stages after the scan: whole groups out to the workers in batches, results
in, groups split by them, and final groups handed on.

Every stage is one `Step`: a queue of groups, sent out a batch of whole groups at a time while the
pool has room, and each batch finished once all its tasks are back.  A file is named by its owner
and row, so a batch is scattered to the workers that own its files (`Scatter`) and gathered in
order.  The steps differ in what a batch asks and what a finished batch gives:

- `WindowStep` (head, tail): each owner hashes a window of its own files (`hashtasks`); each
  group is split by the digests, and a group whose files were read whole is finished (to be
  re-checked), the others go on to the next stage.
- `FullStep` (full): the owners name the files (`entries`), then one worker reads each group's
  members side by side (`fullcompare`); the groups split so are final.
- `RecheckStep`: the owners stat the names of a group a window finished again (`entries`), and
  the files still as the scan saw them make the final group.

Each drops a group that falls below two members (its `weight`).
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
import itertools
import time
from abc import ABC, abstractmethod
from array import array
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dedup_engine.find.groups import (
    ANY_ROOTS,
    ROW_BITS,
    Group,
    Named,
    RootRule,
    SizeIndex,
    assemble,
    owner_rows,
)
from dedup_engine.find.pool import Pool
from dedup_engine.find.tasks import (
    DIGEST_SIZE,
    NO_DIGEST,
    CompareResult,
    CompareTask,
    Described,
    DescribeTask,
    Failure,
    HashResult,
    HashTask,
    Task,
    Window,
    is_sampled,
)
from dedup_engine.model import (
    DuplicateGroup,
    FileEntry,
    Issue,
    RunStats,
    Stage,
    Verified,
    entry_of,
)

#: Files per task and worker: enough that a task costs a few ms of small reads, against ~50 us
#: of pipe and pickle overhead per task.
BATCH_FILES = 512
#: Bytes per task in the full stage: a big file goes alone, so both workers stay busy to the end.
BATCH_BYTES = 8 * 1024 * 1024

#: Groups split by a digest: (the digest, the rows that share it).
Split = list[tuple[bytes, Group]]
#: Where a step hands a group on: (size, digest so far, representative rows).
Sink = Callable[[int, bytes, Group], None]


@dataclass(frozen=True, slots=True)
class StepContext:
    """What the steps of one run share: the pool and how many tasks it may hold, the size index
    (links and weights), the run's counts and issues, the read settings, where final groups go,
    and the progress tick."""

    pool: Pool
    sizes: SizeIndex
    stats: RunStats
    issues: list[Issue]
    follow_links: bool
    chunk_size: int
    in_flight: int
    emit: Callable[[DuplicateGroup], None]
    tick: Callable[[], None] | None
    #: Which final groups count by their roots (`--isolate`).
    rule: RootRule = ANY_ROOTS
    #: `--sample` windows (0: none), for files above `sample_above` bytes.
    sample: int = 0
    sample_above: int = 0
    #: Each root's machine, where a cluster's workers hold roots of their own (`--root-on`):
    #: a (dev, ino) is one file only within one (`groups.assemble`).
    root_spaces: Mapping[int, int] = dataclasses.field(default_factory=dict)
    #: Files of two sites may not be read by one worker (`Pool.sites`): they are compared by
    #: their digests.
    sited: bool = False

    @property
    def room(self) -> bool:
        return self.pool.in_flight < self.in_flight

    @property
    def batch_files(self) -> int:
        return BATCH_FILES * self.pool.batch_scale * max(1, self.pool.workers)

    def fail(self, stage: Stage, failed: Sequence[Failure]) -> None:
        self.issues.extend(Issue(path, stage, message) for _, path, message in failed)


class Scatter:
    """One batch's tasks to the workers that own its files; `done` once every part is back.

    `make` builds an owner's task from the positions (in the batch's keys) of its files and
    their rows in its store; `take` gets each part's result with those positions.  An owner's
    share of more than a batch's files (`StepContext.batch_files`) goes in several tasks: a
    batch holds whole groups, and one size group can hold a large share of a tree (its files of
    a few bytes: some 62,000 of the 1M-file `scale` tree, 6% of it), whose task would otherwise
    hold a name, an inode and more for each of them in its worker at once, some 200 bytes a
    file.
    """

    def __init__(
        self,
        context: StepContext,
        keys: Sequence[int],
        make: Callable[[array[int], array[int]], Task],
        take: Callable[[array[int], Any], None],
        done: Callable[[], None],
    ) -> None:
        self._take = take
        self._done = done
        most = context.batch_files
        parts = [
            (worker, positions[at : at + most], local[at : at + most])
            for worker, (positions, local) in owner_rows(keys).items()
            for at in range(0, len(positions), most)
        ]
        self._left = len(parts)
        if not parts:
            done()
        for worker, positions, local in parts:
            context.pool.submit(make(positions, local), self._part(positions), worker)

    def _part(self, positions: array[int]) -> Callable[[Any], None]:
        def arrived(result: Any) -> None:
            self._take(positions, result)
            self._left -= 1
            if not self._left:
                self._done()

        return arrived


class Step(ABC):
    """What every stage after the scan does on the parent side: queue groups, send batches of
    whole groups while the pool has room, count, and say when it is done."""

    def __init__(self, context: StepContext, stage: Stage) -> None:
        self.context = context
        self.stage = stage
        self.stats = context.stats.stage(stage)
        self.outstanding = 0  # batches out
        self.queued = 0  # files queued
        self._started: float | None = None

    @property
    def idle(self) -> bool:
        return not self.queued and not self.outstanding

    @property
    def ready(self) -> bool:
        """Whether it holds a whole batch to send."""
        return self.queued >= self._batch_size()

    def flush(self, final: bool) -> None:
        """Send batches while the pool has room; a part batch only with `final` (nothing more
        can come)."""
        context = self.context
        while self.queued and context.room:
            if not final and self.queued < self._batch_size():
                return
            self._send_batch()

    def _batch_size(self) -> int:
        return self.context.batch_files

    def _count_in(self, files: int) -> None:
        if self._started is None:
            self._started = time.perf_counter()
        self.stats.files_in += files
        self.queued += files

    def finish(self) -> None:
        """The stage is over: its time is counted."""
        if self._started is not None:
            self.stats.seconds = time.perf_counter() - self._started

    def _count_read(self, result: HashResult | CompareResult) -> None:
        stats = self.stats
        stats.files_opened += result.files_opened
        stats.bytes_read += result.bytes_read
        stats.cache_hits += result.cache_hits
        stats.cache_misses += result.cache_misses
        if self.context.tick is not None:
            self.context.tick()

    @abstractmethod
    def _send_batch(self) -> None:
        """Send the next batch of queued groups."""

    def _ask_owners(self, names: _Names, reps: bool, then: Callable[[], None]) -> None:
        """Have the owners describe a batch's names (`_Names.describe`), then `then`."""
        Scatter(
            self.context,
            names.keys,
            names.describe(reps, self.context.follow_links),
            lambda positions, result: self._described(names, positions, result),
            then,
        )

    def _described(self, names: _Names, positions: array[int], result: Described) -> None:
        """An owner's part of a batch's names: kept, and each that failed its check an issue."""
        names.take(positions, result)
        self.context.fail(self.stage, result.failed)


class WindowStep(Step):
    """The head or the tail stage: each file hashed over a window by its owner, each group split
    by the digests once the whole batch is back.

    With `whole_known` (the first window, with the cache on), the owners also give the
    whole-file digests the cache holds: a group whose every member has one is split by them and
    finished here, its files counted in the full stage as cache hits.
    """

    def __init__(
        self,
        context: StepContext,
        window: Window,
        finished: Sink,
        onward: Sink,
        whole_known: bool = False,
    ) -> None:
        super().__init__(context, window.stage)
        self.window = window
        self._finished = finished
        self._onward = onward
        self._whole_known = whole_known
        self._queue: deque[tuple[int, Group]] = deque()

    def feed(self, size: int, group: Group) -> None:
        self._queue.append((size, group))
        self._count_in(len(group))

    def _send_batch(self) -> None:
        batch: list[tuple[int, Group]] = []
        rows: list[int] = []
        sizes = array("q")
        queue, limit = self._queue, self._batch_size()
        while queue and (not rows or len(rows) + len(queue[0][1]) <= limit):
            size, group = queue.popleft()
            batch.append((size, group))
            rows.extend(group)
            sizes.extend(array("q", [size]) * len(group))
        self.queued -= len(rows)
        self.outstanding += 1
        digests: list[bytes] = [NO_DIGEST] * len(rows)
        wholes: list[bytes] = []  # made only once an owner knows one
        window, follow, known = self.window, self.context.follow_links, self._whole_known

        def take(positions: array[int], result: HashResult) -> None:
            _place(digests, positions, result.digests)
            if result.whole:
                if not wholes:
                    wholes.extend([NO_DIGEST] * len(digests))
                _place(wholes, positions, result.whole)
            self.context.fail(self.stage, result.failed)
            self._count_read(result)

        Scatter(
            self.context,
            rows,
            lambda positions, local: HashTask(
                window, local, array("q", [sizes[p] for p in positions]), follow, whole_known=known
            ),
            take,
            lambda: self._refine(batch, digests, wholes),
        )

    def _refine(
        self, batch: list[tuple[int, Group]], column: list[bytes], wholes: list[bytes]
    ) -> None:
        """Split each group of a batch by its digests: a group read whole, or whose whole-file
        digests are all known, is finished; the others go on."""
        self.outstanding -= 1
        weight = self.context.sizes.weight
        limit = self.window.whole_limit  # read whole up to here (`Window.reads_whole`)
        start = 0
        out = 0
        for size, group in batch:
            end = start + len(group)
            digests = column[start:end]
            known = self._known(size, group, wholes[start:end]) if wholes else None
            start = end
            whole = size <= limit
            for digest, members in split(group, digests, weight):
                out += len(members)
                if whole:
                    self._finished(size, digest, members)
                elif known is None or not self._finish_known(size, known, members):
                    self._onward(size, digest, members)
        self.stats.files_out += out

    def _known(self, size: int, group: Group, wholes: list[bytes]) -> dict[int, bytes] | None:
        """The whole-file digests of a group's rows, if any is known and may be used (not for
        sizes `--sample` compares on windows, whose groups say so)."""
        context = self.context
        if wholes.count(NO_DIGEST) == len(wholes) or is_sampled(
            context.sample, context.sample_above, context.chunk_size, size
        ):
            return None
        return dict(zip(group, wholes, strict=True))

    def _finish_known(self, size: int, known: dict[int, bytes], members: Group) -> bool:
        """Split `members` by their whole-file digests and finish them, if every one is
        `known`; else False.  Not members on two sites: the full stage hashes those apart, and
        its groups say they were found equal by digest."""
        digests = [known[row] for row in members]
        if NO_DIGEST in digests:
            return False
        context = self.context
        if context.sited and _on_sites(context.pool.sites, members) > 1:
            return False
        full = context.stats.stage(Stage.FULL)
        full.files_in += len(members)
        full.cache_hits += len(members)
        for digest, same in split(members, digests, context.sizes.weight):
            full.files_out += len(same)
            self._finished(size, digest, same)
        return True


def _place(column: list[bytes], positions: array[int], blob: bytes) -> None:
    """An owner's digests (`DIGEST_SIZE` bytes each, in its task's order) into a batch's
    column at their positions."""
    width = DIGEST_SIZE
    chunks = [blob[at : at + width] for at in range(0, len(blob), width)]
    if len(chunks) == len(column):  # one owner for the whole batch, in order
        column[:] = chunks
    else:
        for position, chunk in zip(positions, chunks, strict=True):
            column[position] = chunk


class _Names:
    """The names of a batch's groups, each representative followed by its inode's other names,
    and what their owners said of them, by position."""

    def __init__(self, context: StepContext, groups: Sequence[tuple[int, Group]]) -> None:
        links = context.sizes.links
        self.keys: list[int] = []
        self.sizes = array("q")  # the size the scan saw, the group's
        for size, group in groups:
            if links:
                for rep in group:
                    self.keys.append(rep)
                    self.keys.extend(links.get(rep, ()))
            else:
                self.keys.extend(group)
            self.sizes.extend(array("q", [size]) * (len(self.keys) - len(self.sizes)))
        count = len(self.keys)
        # A representative's position; its other names follow it.
        self.at = (
            dict(zip(self.keys, range(count), strict=True)) if not links else self._reps(groups)
        )
        self.described: list[Described] = []
        self._positions: list[array[int]] = []  # each description's positions
        self._made: list[list[FileEntry]] = []  # each description's entries, once made
        self.part = array("I", bytes(4 * count))  # which result describes each position
        self.index = array("I", bytes(4 * count))  # and where in it
        self.failed = bytearray(count)

    def _reps(self, groups: Sequence[tuple[int, Group]]) -> dict[int, int]:
        reps = {rep for _, group in groups for rep in group}
        return {key: p for p, key in enumerate(self.keys) if key in reps}

    def describe(
        self, reps: bool, follow_links: bool
    ) -> Callable[[array[int], array[int]], DescribeTask]:
        """How to ask an owner for its part of the names: every name checked again, or with
        `reps` False all but the representatives (which the full stage checks as it reads)."""
        sizes = self.sizes
        check = bytearray(b"\x01") * len(self.keys)
        if not reps:
            for position in self.at.values():
                check[position] = 0
        return lambda positions, local: DescribeTask(
            local,
            array("q", [sizes[p] for p in positions]),
            bytes(check[p] for p in positions),
            follow_links,
        )

    def take(self, positions: array[int], result: Described) -> None:
        part, where = len(self.described), self.index
        self.described.append(result)
        self._positions.append(positions)
        for index, position in enumerate(positions):
            self.part[position] = part
            where[position] = index
        for index, _, _ in result.failed:
            self.failed[positions[index]] = 1

    def own(self, reps: Sequence[int], result: CompareResult) -> None:
        """Owner and mode of the representatives from where they were checked (the full
        stage's reads), in place of their owners' columns, which hold none for them."""
        described, parts, where, at = self.described, self.part, self.index, self.at
        for p, rep in enumerate(reps):
            position = at[rep]
            d, i = described[parts[position]], where[position]
            d.uids[i], d.gids[i], d.modes[i] = result.uids[p], result.gids[p], result.modes[p]

    def _entries(self) -> list[list[FileEntry]]:
        """The entries of each owner's part, made all at once when first asked: after `take`
        and `own`, before any final group."""
        made, sizes = self._made, self.sizes
        if len(made) == len(self.described):  # every final group but a batch's first
            return made
        for d, positions in zip(
            self.described[len(made) :], self._positions[len(made) :], strict=True
        ):
            columns = zip(
                d.paths,
                d.devs,
                d.inos,
                [sizes[p] for p in positions],
                d.mtimes,
                d.ctimes,
                d.uids,
                d.gids,
                d.modes,
                strict=True,
            )
            made.append(list(map(entry_of, columns)))
        return made

    def compare_task(
        self, reps: list[int], groups: array[int], context: StepContext
    ) -> CompareTask:
        """The full stage's task for these representatives, from their owners' descriptions."""
        described, parts, where = self.described, self.part, self.index
        positions = [self.at[rep] for rep in reps]
        located = [(described[parts[p]], where[p]) for p in positions]
        return CompareTask(
            tuple(d.paths[i] for d, i in located),
            array("q", [self.sizes[p] for p in positions]),
            groups,
            array("Q", [d.devs[i] for d, i in located]),
            array("Q", [d.inos[i] for d, i in located]),
            array("q", [d.mtimes[i] for d, i in located]),
            array("q", [d.ctimes[i] for d, i in located]),
            context.follow_links,
            context.chunk_size,
            sample=context.sample,
            sample_above=context.sample_above,
        )

    def final(
        self,
        context: StepContext,
        size: int,
        digest: bytes,
        group: Group,
        apart: bool = False,
    ) -> DuplicateGroup | None:
        """The final group of these representatives' names that passed their checks, or None
        if it does not count (`groups.assemble`).  One whose files are on two sites or more,
        or whose files were hashed `apart` (their candidate group was on two sites), was found
        equal by the files' digests, and says so."""
        final = self._final(context, size, digest, group)
        if final is None or not context.sited:
            return final
        if apart or _on_sites(context.pool.sites, group) > 1:
            return dataclasses.replace(final, verified=Verified.DIGEST)
        return final

    def _final(
        self, context: StepContext, size: int, digest: bytes, group: Group
    ) -> DuplicateGroup | None:
        entries, parts, where, at, failed = (
            self._entries(),
            self.part,
            self.index,
            self.at,
            self.failed,
        )
        sizes, rule = context.sizes, context.rule
        if sizes.links or sizes.aliases:
            named = self._named(context, group)
            return assemble(size, digest, named, sizes.hard_links, rule, context.root_spaces)
        # One name per file, none through a symlink: `assemble`'s common case, without a
        # `Named` per file.
        described = self.described
        kept = [
            (described[parts[p]].roots[where[p]], entries[parts[p]][where[p]])
            for p in [at[rep] for rep in group]
            if not failed[p]
        ]
        if len(kept) < 2 or len({entry[1:3] for _, entry in kept}) < len(kept):
            # Too few, or one inode under two names after all (a bind mount, a link made
            # during the walk): the general rule decides, with each name's link count.
            named = self._named(context, group)
            return assemble(size, digest, named, sizes.hard_links, rule, context.root_spaces)
        if not rule.counts(root for root, _ in kept):
            return None
        kept.sort()  # by root, then path (first in an entry, and never twice in a group)
        return DuplicateGroup(size, digest.hex(), tuple([entry for _, entry in kept]))

    def _named(self, context: StepContext, group: Group) -> list[Named]:
        """The names of a group that passed their checks, with their roots, link counts and
        whether each was reached through a symlink: a representative that failed takes its
        inode's other names with it."""
        entries, parts, where, failed = self._entries(), self.part, self.index, self.failed
        links, aliases, keys, described = (
            context.sizes.links,
            context.sizes.aliases,
            self.keys,
            self.described,
        )
        out: list[Named] = []
        for rep in group:
            start = self.at[rep]
            if failed[start]:
                continue
            for position in range(start, start + 1 + len(links.get(rep, ()))):
                if not failed[position]:
                    d, i = described[parts[position]], where[position]
                    entry = entries[parts[position]][i]
                    out.append(Named(entry, d.roots[i], keys[position] in aliases, d.nlinks[i]))
        return out


class RecheckStep(Step):
    """Groups a window read whole: every name stat'ed again by its owner, once every read of
    the group is done, and the final group made of those still as the scan saw them.

    The worker that read such a file checked only its size.  A file still as the scan saw it now
    held the bytes read from its scan to now; so all the files of a group kept do, at once, even
    when one was read early and another later.
    """

    def __init__(self, context: StepContext, stage: Stage) -> None:
        super().__init__(context, stage)
        self._queue: deque[tuple[int, bytes, Group]] = deque()

    def feed(self, size: int, digest: bytes, group: Group) -> None:
        # Its work completes the window's, whose row counts it: no files in, no time of its own.
        self._queue.append((size, digest, group))
        self.queued += len(group)

    def finish(self) -> None:
        pass

    def _send_batch(self) -> None:
        batch: list[tuple[int, bytes, Group]] = []
        count = 0
        queue, limit = self._queue, self._batch_size()
        while queue and (not batch or count + len(queue[0][2]) <= limit):
            batch.append(queue.popleft())
            count += len(batch[-1][2])
        self.queued -= count
        self.outstanding += 1
        names = _Names(self.context, [(size, group) for size, _, group in batch])
        self._ask_owners(names, True, lambda: self._build(batch, names))

    def _build(self, batch: list[tuple[int, bytes, Group]], names: _Names) -> None:
        self.outstanding -= 1
        context = self.context
        for size, digest, group in batch:
            final = names.final(context, size, digest, group)
            if final is not None:
                context.emit(final)


class FullStep(Step):
    """The full stage: the owners name each batch's files, then one worker compares each group's
    members side by side, and each group split so is final.

    Largest files first: the long reads start early and the short ones fill in at the end.  With
    `alone`, each member is hashed on its own rather than compared with the others (with
    --hard-links, where a lone inode can be a group by its names alone, and comparing would drop
    a member left alone); its group is still split as a whole.
    """

    def __init__(self, context: StepContext, alone: bool) -> None:
        super().__init__(context, Stage.FULL)
        self.alone = alone
        self._heap: list[tuple[int, int, Group]] = []
        self._order = itertools.count()

    def feed(self, size: int, digest: bytes, group: Group) -> None:
        heapq.heappush(self._heap, (-size, next(self._order), group))
        self._count_in(len(group))

    def _batch_size(self) -> int:
        return BATCH_FILES * self.context.pool.batch_scale

    def _send_batch(self) -> None:
        heap = self._heap
        batch: list[tuple[int, Group]] = []
        count = total = 0
        files, size = self._batch_size(), BATCH_BYTES * self.context.pool.batch_scale
        while heap and (not batch or (count + len(heap[0][2]) <= files and total < size)):
            negative, _, group = heapq.heappop(heap)
            batch.append((-negative, group))
            count += len(group)
            total += -negative * len(group)
        self.queued -= count
        self.outstanding += 1
        names = _Names(self.context, batch)
        # A name other than the one compared (a hard link, or with links followed a symlink)
        # must still lead to the inode the scan saw; the compared one is checked as it is read.
        self._ask_owners(names, False, lambda: self._compare(batch, names))

    def _compare(self, batch: list[tuple[int, Group]], names: _Names) -> None:
        """Every name is known: one worker compares the representatives, each checked on its
        open file as it is read (`fullcompare`)."""
        reps = [row for _, group in batch for row in group]
        groups = array("I", [len(group) for _, group in batch])
        if self.alone:
            groups = array("I", [1]) * len(reps)
        if not self.context.sited:
            task = names.compare_task(reps, groups, self.context)
            self.context.pool.submit(task, lambda result: self._split(batch, names, reps, result))
            return
        parts = _by_site(self.context.pool.sites, reps, groups)
        gathered = _Gathered(len(reps), len(parts), lambda r: self._split(batch, names, reps, r))
        for site, (positions, sizes) in parts.items():
            task = names.compare_task([reps[p] for p in positions], sizes, self.context)
            among = [n for n, s in enumerate(self.context.pool.sites) if s == site]
            self.context.pool.submit(task, functools.partial(gathered.take, positions), None, among)

    def _split(
        self, batch: list[tuple[int, Group]], names: _Names, reps: list[int], result: CompareResult
    ) -> None:
        self.outstanding -= 1
        context = self.context
        context.fail(self.stage, result.failed)
        self._count_read(result)
        blob = result.digests
        names.own(reps, result)
        start = out = 0
        for size, group in batch:
            end = start + len(group)
            digests = [blob[p * DIGEST_SIZE : (p + 1) * DIGEST_SIZE] for p in range(start, end)]
            start = end
            sampled = is_sampled(context.sample, context.sample_above, context.chunk_size, size)
            apart = context.sited and _on_sites(context.pool.sites, group) > 1
            for digest, members in split(group, digests, context.sizes.weight):
                out += len(members)
                final = names.final(context, size, digest, members, apart)
                if final is not None:
                    if sampled:
                        final = dataclasses.replace(final, verified=Verified.SAMPLED)
                    context.emit(final)
        self.stats.files_out += out


def _on_sites(sites: Sequence[int], group: Group) -> int:
    """How many sites a group's files are on."""
    return len({sites[rep >> ROW_BITS] for rep in group})


def _by_site(
    sites: Sequence[int], reps: list[int], groups: array[int]
) -> dict[int, tuple[list[int], array[int]]]:
    """The full stage's files split by the site whose workers may read them: (positions in
    `reps`, group sizes) for each site.  A group on one site stays whole there, to be compared
    byte by byte; one on several is hashed file by file on each, to be split by digest."""
    parts: dict[int, tuple[list[int], array[int]]] = {}
    start = 0
    for members in groups:
        end = start + members
        apart = _on_sites(sites, reps[start:end]) > 1
        for p in range(start, end):
            site = sites[reps[p] >> ROW_BITS]
            positions, sizes = parts.setdefault(site, ([], array("I")))
            positions.append(p)
            if apart:
                sizes.append(1)
            elif p == start:
                sizes.append(members)
        start = end
    return parts


class _Gathered:
    """The compare results of a batch's sites, put back in the batch's order: one result, as
    one worker would have given it, once every site's is in."""

    def __init__(self, count: int, parts: int, done: Callable[[CompareResult], None]) -> None:
        self._digests = bytearray(NO_DIGEST * count)
        self._owners = [array("I", bytes(4 * count)), array("I", bytes(4 * count))]
        self._modes = array("H", bytes(2 * count))
        self._failed: list[Failure] = []
        self._counts = [0, 0, 0, 0]
        self._left = parts
        self._done = done

    def take(self, positions: list[int], result: CompareResult) -> None:
        digests, blob = self._digests, result.digests
        uids, gids = self._owners
        for index, p in enumerate(positions):
            digests[p * DIGEST_SIZE : (p + 1) * DIGEST_SIZE] = blob[
                index * DIGEST_SIZE : (index + 1) * DIGEST_SIZE
            ]
            uids[p], gids[p], self._modes[p] = (
                result.uids[index],
                result.gids[index],
                result.modes[index],
            )
        self._failed.extend((positions[i], path, why) for i, path, why in result.failed)
        counts = (result.files_opened, result.bytes_read, result.cache_hits, result.cache_misses)
        self._counts = [a + b for a, b in zip(self._counts, counts, strict=True)]
        self._left -= 1
        if not self._left:
            opened, read, hits, misses = self._counts
            uids, gids = self._owners
            self._done(
                CompareResult(
                    bytes(self._digests),
                    tuple(self._failed),
                    opened,
                    read,
                    uids,
                    gids,
                    self._modes,
                    hits,
                    misses,
                )
            )


#: The weight of a group when only distinct inodes count: its length.
len_of: Callable[[Group], int] = len


def split(rows: Group, digests: list[bytes], weight: Callable[[Group], int]) -> Split:
    """The rows that share a digest, in groups that still count; a failed file (zeros) in none."""
    if weight is len_of:  # one name per row: the common fates told by a set, without a loop
        distinct = len(set(digests))
        if distinct == len(digests):
            return []  # all different: the common fate of unrelated same-size files
        if distinct == 1:
            first = digests[0]
            return [(first, rows)] if first != NO_DIGEST else []
    buckets: dict[bytes, Group] = {}
    for row, digest in zip(rows, digests, strict=True):
        bucket = buckets.get(digest)
        if bucket is None:
            buckets[digest] = [row]
        else:
            bucket.append(row)
    if len(buckets) == len(rows) and len(rows) == weight(rows):
        return []
    return [(d, m) for d, m in buckets.items() if d != NO_DIGEST and weight(m) >= 2]
