"""Parent side of the whole duplicate search, start to end: `find_duplicates`.

scan → by size → hard links → head → tail → full → groups (`_Run.search`).  The stages overlap:
a file is sent for its head hash as soon as a second inode of its size turns up during the walk,
each later stage starts on the groups the one before has refined so far, and finished groups are
built while the workers hash.  The workers' side of each stage is `walk`, `hashtasks` and
`fullcompare`, reached through `pool`.
"""

from __future__ import annotations

import os
import stat
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from dedup_engine.find.changes import describe, what_changed
from dedup_engine.find.groups import Group, GroupBuilder, SizeGroups
from dedup_engine.find.hashstep import FullStep, HashStep, Split, StepContext, WindowStep
from dedup_engine.find.pool import Pool, open_pool
from dedup_engine.find.table import FileColumns
from dedup_engine.find.tasks import DirJob, ScanResult, ScanTask, Window
from dedup_engine.model import DuplicateGroup, FindResult, Issue, RunStats, Stage
from dedup_engine.options import OptionsError, ScanOptions
from dedup_engine.oserror import describe_error

#: Tasks in flight per worker: enough to hide the queue round trip, few enough to keep memory flat.
IN_FLIGHT_PER_WORKER = 3
#: Directories per scan task, at most; fewer while there are few to share out.
SCAN_BATCH_DIRS = 16
#: Groups refined between two feeds of the next stage.
REFINE_SLICE = 2048
#: Groups re-checked at a time while the workers hash (an lstat, some 3 us, per file).
RECHECK_SLICE = 256


@dataclass(frozen=True, slots=True)
class Progress:
    """A snapshot for progress displays: the stage running and what it has done so far."""

    stage: Stage
    files: int
    bytes: int
    total: int | None
    finished: bool = False


ProgressCallback = Callable[[Progress], None]


def canonical_roots(roots: Iterable[str | os.PathLike[str]]) -> tuple[str, ...]:
    """Absolute, symlink-free roots, each once, in the order given; missing roots are fatal.

    Nested directory roots are kept (a file under both is attributed to the innermost): the walk
    visits each directory once by (st_dev, st_ino).  A file root inside a directory root is kept
    too, and listed once: the size grouping drops a path it has already seen.
    """
    out: list[str] = []
    for root in roots:
        text = os.fspath(root)
        if not text:
            raise OptionsError("an empty root was given")
        real = os.path.realpath(text)
        try:
            st = os.stat(real)
        except OSError as exc:
            raise OptionsError(f"root {text!r}: {describe_error(exc)}") from None
        if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
            raise OptionsError(f"root {text!r} is neither a directory nor a regular file")
        if real not in out:
            out.append(real)
    if not out:
        raise OptionsError("no root given")
    return tuple(out)


def find_duplicates(
    roots: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
    options: ScanOptions | None = None,
    *,
    progress: ProgressCallback | None = None,
) -> FindResult:
    """Find every group of files with identical content under the roots.

    Reads files but never changes them.  Per-file failures are returned as issues; bad options and
    missing roots raise `OptionsError` before any work starts.
    """
    opts = options or ScanOptions()
    if isinstance(roots, str | Path) or not isinstance(roots, Sequence):
        roots = [roots]
    canon = canonical_roots(roots)
    started = time.perf_counter()
    stats = RunStats()
    issues: list[Issue] = []
    pool = open_pool(opts, canon)
    run = None
    try:
        run = _Run(pool, canon, opts, stats, issues, progress)
        groups = run.search()
    except BaseException:  # KeyboardInterrupt, a dead worker: stop the workers at once
        pool.abort()
        raise
    else:
        pool.close()
    finally:
        if run is not None:
            run.release()
    stats.workers = pool.workers
    stats.groups = len(groups)
    stats.files_in_groups = sum(len(g.files) for g in groups)
    stats.bytes_reclaimable = sum(g.reclaimable for g in groups)
    stats.seconds = time.perf_counter() - started
    issues.sort(key=lambda i: (i.path, i.stage.value))
    return FindResult(canon, tuple(groups), tuple(issues), stats)


class _Run:
    """The state of one search; `search` is the pipeline."""

    def __init__(
        self,
        pool: Pool,
        roots: tuple[str, ...],
        opts: ScanOptions,
        stats: RunStats,
        issues: list[Issue],
        progress: ProgressCallback | None,
    ) -> None:
        self.pool = pool
        self.roots = roots
        self.opts = opts
        self.stats = stats
        self.issues = issues
        self.progress = progress
        self.limit = max(1, pool.workers) * IN_FLIGHT_PER_WORKER
        for stage in (Stage.SCAN, Stage.SIZE, Stage.HARDLINK, Stage.HEAD, Stage.TAIL, Stage.FULL):
            stats.stage(stage)  # rows in pipeline order
        self.current = Stage.SCAN
        self.table = FileColumns()
        self.steps = StepContext(
            pool,
            self.table,
            stats,
            issues,
            opts.follow_links,
            opts.chunk_size,
            self.limit,
            self._tick if progress else None,
        )
        # The head stage exists before the size groups it is fed by; it learns the weight rule
        # once they do.
        self.head = self._step(Window(Stage.HEAD, opts.head_window, opts.whole_threshold), len)
        feed = self.head.feed if "head" in opts.stages else _ignore
        # With links followed, one inode can be reached by two paths even with a link count of 1.
        self.sizes = SizeGroups(self.table, opts.hard_links, feed, every_inode=opts.follow_links)
        # Which groups still count: two inodes, or with hard_links two names.
        self.weight = self.sizes.copies if opts.hard_links else len
        self.head.weight = self.weight
        self._last_tick = 0.0
        self._dirs: deque[DirJob] = deque()  # directories still to list
        self._seen: set[tuple[int, int]] = set()  # (st_dev, st_ino) of every directory queued
        self._scans = 0  # scan tasks out
        # The groups fed to each window stage, for it to refine once its digests are in.
        self._fed: dict[WindowStep, list[Group]] = {}
        # Groups finished by a window (files read whole), to be re-checked by path.
        self._unchecked: deque[tuple[Stage, bytes, Group]] = deque()

    def release(self) -> None:
        """Drop the run's big structures now: the stages and the size index refer back to the
        run (progress ticks, candidate feeds), and a caller running without the cyclic garbage
        collector would otherwise keep them, and the table, alive."""
        del self.head, self.sizes, self.table, self.pool, self.steps

    def search(self) -> list[DuplicateGroup]:
        """scan → by size → hard links → head → tail → full → groups."""
        self._scan()  # files stream into the size groups, which collapse hard links and feed head
        candidates = self._size_groups()
        windows = self._windows()  # head and tail, where they are on
        full = FullStep(self.steps, self.weight, alone=self.opts.hard_links)
        finals = GroupBuilder(self.table, self.sizes.links)
        self._fed = {step: [] for step in windows}
        if self.head in self._fed:
            self._fed[self.head] = candidates  # their files were fed during the walk
        else:
            self._route(candidates, windows, full)
        for index, step in enumerate(windows):
            self._refine(step, windows[index + 1 :], full, finals)
        self._finish(full, finals)
        return finals.groups()

    def _step(self, window: Window, weight: Callable[[Group], int]) -> WindowStep:
        return WindowStep(self.steps, window, weight)

    def _windows(self) -> list[WindowStep]:
        """The partial-window stages that are on, in order."""
        opts = self.opts
        tail = self._step(
            Window(Stage.TAIL, opts.tail_window, min_size=opts.tail_min_size), self.weight
        )
        on = opts.stages
        return [step for step, name in ((self.head, "head"), (tail, "tail")) if name in on]

    def _size_groups(self) -> list[Group]:
        """The size groups that count, hard links collapsed: the candidates for hashing."""
        groups = self.sizes.groups()
        scan = self.stats.stage(Stage.SCAN)
        scan.files_out = self.stats.files_scanned
        size = self.stats.stage(Stage.SIZE)
        size.files_in = self.sizes.rows_in
        size.files_out = self.sizes.paths_in_candidates
        hardlink = self.stats.stage(Stage.HARDLINK)
        hardlink.files_in = size.files_out
        hardlink.files_out = sum(len(g) for g in groups)
        return groups

    def _refine(
        self, step: WindowStep, later: list[WindowStep], full: FullStep, finals: GroupBuilder
    ) -> None:
        """Wait for a window stage's digests, then split its groups a slice at a time: a group
        the window read whole is finished (once re-checked by path), the others go on to the
        next stage, whose workers start on them while the parent refines the rest."""
        self._drain(step, full, finals)
        todo = self._fed.pop(step)
        stage = step.window.stage
        for start in range(0, len(todo), REFINE_SLICE):
            done, rest = step.refine(todo[start : start + REFINE_SLICE])
            self._unchecked.extend((stage, d, g) for d, g in self.sizes.settle(done))
            self._route(rest, later, full)
        step.release()

    def _finish(self, full: FullStep, finals: GroupBuilder) -> None:
        """Wait for the full stage's groups, and re-check the rest of those read whole."""
        self._drain(full, full, finals)
        finals.add(self.sizes.settle(full.take_finished()))
        while self._unchecked:
            finals.add(self._recheck(RECHECK_SLICE))

    def _drain(self, step: HashStep, full: FullStep, finals: GroupBuilder) -> None:
        self.current = step.window.stage
        step.drain(idle=partial(self._build_some, full, finals))
        self._tick(finished=True)

    def _route(self, groups: list[Group], later: list[WindowStep], full: FullStep) -> None:
        """Feed each group to the first later window stage that applies to its size, or else to
        the full stage."""
        sizes = self.table.size
        batches: dict[HashStep, list[Group]] = {}
        for group in groups:
            size = sizes[group[0]]
            target: HashStep = full
            for step in later:
                if step.window.applies(size):
                    target = step
                    break
            batches.setdefault(target, []).append(group)
        for fed, batch in batches.items():
            if isinstance(fed, WindowStep):
                self._fed[fed].extend(batch)
                fed.feed([row for group in batch for row in group])
            else:
                full.feed(batch)
            fed.flush()

    def _build_some(self, full: FullStep, finals: GroupBuilder) -> None:
        """The parent's work while tasks are out: settle, re-check and build finished groups."""
        finals.add(self.sizes.settle(full.take_finished()))
        if self._unchecked:
            finals.add(self._recheck(RECHECK_SLICE))
        finals.build_some()

    def _recheck(self, count: int) -> Split:
        """Up to `count` groups of files read whole by a window, each file stat'ed again by path.

        The worker that read such a file checked only its size.  A file still as the scan saw it
        (same inode, size, mtime and ctime) now, after every read of its group, held the bytes
        read from its scan to now; so all the files of a group kept do, at once, even when one
        was read early in the walk and another scanned later.  A changed file drops out with an
        issue.  Files whose last read is the full stage's are checked on the open file instead.
        """
        out: Split = []
        unchecked = self._unchecked
        for _ in range(min(count, len(unchecked))):
            stage, digest, group = unchecked.popleft()
            kept = self._unchanged(stage, group)
            if len(kept) == len(group) or self.weight(kept) >= 2:
                out.append((digest, kept))
        return out

    def _unchanged(self, stage: Stage, group: Group) -> Group:
        """The rows of a group still as the scan saw them; each other one is an issue."""
        table = self.table
        stat_path = os.stat if self.opts.follow_links else os.lstat
        kept: Group = []
        for row in group:
            path = table.paths[row]
            try:
                st = stat_path(path)
            except OSError as exc:
                self.issues.append(Issue(path, stage, f"changed since the scan: {describe(exc)}"))
                continue
            if table.as_scanned(row, st):
                kept.append(row)
            else:
                message = what_changed(st, table.size[row], table.ino[row], table.dev[row])
                self.issues.append(Issue(path, stage, message))
        return kept

    def _scan(self) -> None:
        """Walk every root; rows stream into the size groups, which feed the head stage."""
        started = time.perf_counter()
        for index, root in enumerate(self.roots):
            self._add_root(index, root)
        pool = self.pool
        pending = self._dirs
        while pending or self._scans:
            while pending and pool.in_flight < self.limit:
                self._send_dirs()
            self.head.flush()
            pool.wait_one()
        self.stats.stage(Stage.SCAN).seconds = time.perf_counter() - started
        self._tick(finished=True)

    def _add_root(self, index: int, root: str) -> None:
        """Queue a directory root for listing, or take a file root as the walk would."""
        try:
            st = os.stat(root)
        except OSError as exc:  # vanished since canonical_roots looked
            self.issues.append(Issue(root, Stage.SCAN, f"cannot stat root: {describe_error(exc)}"))
            return
        if stat.S_ISDIR(st.st_mode):
            self._seen.add((st.st_dev, st.st_ino))
            self._dirs.append(DirJob(root, index, 0, st.st_dev))
        elif self.opts.accepts_size(st.st_size):
            start = len(self.table)
            self.table.add(root, index, st)
            self.stats.files_scanned += 1
            self.stats.bytes_scanned += st.st_size
            self.sizes.watch(st.st_dev, st.st_ino, root)
            self.sizes.add(start, start + 1)

    def _send_dirs(self) -> None:
        """One scan task: a few directories, fewer while there are few to share out."""
        pending = self._dirs
        workers = max(1, self.pool.workers)
        count = max(1, min(SCAN_BATCH_DIRS, len(pending) // (2 * workers)))
        jobs = tuple(pending.popleft() for _ in range(min(count, len(pending))))
        self._scans += 1
        self.pool.submit(ScanTask(jobs), self._scanned)

    def _scanned(self, result: ScanResult) -> None:
        self._scans -= 1
        stats = self.stats
        start = len(self.table)
        self.table.extend(result.files)
        stats.dirs_scanned += result.dirs_scanned
        stats.skipped_special += result.skipped_special
        stats.skipped_symlinks += result.skipped_symlinks
        stats.files_scanned += len(result.files)
        stats.bytes_scanned += sum(result.files.size)
        for path, message in result.issues:
            self.issues.append(Issue(path, Stage.SCAN, message))
        seen = self._seen
        subdirs = zip(result.subdirs, result.subdir_devs, result.subdir_inos, strict=True)
        for job, dev, ino in subdirs:
            key = (dev, ino)
            if key in seen:  # a loop through a followed link or a bind mount, or a nested root
                stats.dirs_revisited += 1
                continue
            seen.add(key)
            self._dirs.append(job)
        self.sizes.add(start, len(self.table))
        if self.progress is not None:
            self._tick()

    def _tick(self, finished: bool = False) -> None:
        """Report progress, at most ten times a second, and always when a stage ends."""
        now = time.perf_counter()
        if self.progress is None or (now - self._last_tick < 0.1 and not finished):
            return
        self._last_tick = now
        row = self.stats.stage(self.current)
        if self.current is Stage.SCAN:
            files = self.stats.files_scanned
            event = Progress(
                Stage.SCAN, files, self.stats.bytes_scanned, files if finished else None, finished
            )
        else:
            done = row.files_in if finished else row.files_opened
            event = Progress(self.current, done, row.bytes_read, row.files_in, finished)
        self.progress(event)


def _ignore(rows: list[int]) -> None:
    del rows
