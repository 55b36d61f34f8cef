"""Parent side of the whole duplicate search, start to end: `find_duplicates`.

scan → by size → hard links → head → tail → full → groups (`_Run.search`).  The parent is the
coordinator: the workers own the files they scanned (`store`), and it sees only their keys (size,
and the inode of a linked file), groups them, and sends each stage's batches to the owners of the
files, naming each by its owner and its row there (`groups.file_key`).  After the scan the stages
overlap: size groups flow into the head stage a batch at a time, each later stage starts on the
groups the one before has split so far, and every final group is handed on as soon as it is
final.  The workers' side of each stage is `walk`, `hashtasks`, `entries` and `fullcompare`,
reached through `pool`.

A cluster's worker lost mid-run (`pool.WorkerLost`) takes the rows it owns with it: the
directories it listed are listed again by the others (`_Run._lose`), and if the stages had
begun they begin again over the size index without its rows, the groups already handed on not
handed on twice (`_Tally.started_over`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import operator
import os
import sqlite3
import stat
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dedup_engine.find import reach
from dedup_engine.find.cache import CacheError, DigestCache
from dedup_engine.find.dirgroups import Contents, find_directory_groups
from dedup_engine.find.groups import Group, RootRule, SizeIndex
from dedup_engine.find.hashstep import (
    FullStep,
    RecheckStep,
    Sink,
    Step,
    StepContext,
    WindowStep,
)
from dedup_engine.find.pool import Pool, Recovering, WorkerLost, open_pool
from dedup_engine.find.roots import Roots, canonical_roots, known_roots
from dedup_engine.find.tasks import DirJob, ScanResult, ScanTask, Window
from dedup_engine.model import (
    DirectoryGroup,
    DuplicateGroup,
    FindResult,
    Issue,
    RunStats,
    Stage,
    StageStats,
    report_order,
)
from dedup_engine.options import OptionsError, ScanOptions
from dedup_engine.oserror import describe_error
from dedup_engine.paths import is_under

if TYPE_CHECKING:  # Dask is imported only by a run on a cluster
    from dedup_engine.find.cluster import ClusterPool, HeldRoot

#: Directories per scan task, at most (times the pool's `batch_scale`); fewer while there are
#: few to share out.
SCAN_BATCH_DIRS = 16
#: Roots that are files, at most, in one scan task.
FILE_ROOTS_PER_TASK = 4096
#: Batches of size groups queued ahead of the head stage: enough to keep it fed.
AHEAD_BATCHES = 2
#: What each scan result adds to the run's counts (`RunStats`), in `_Run._count`'s order.
_SCAN_COUNTS = (
    "files_scanned",
    "bytes_scanned",
    "dirs_scanned",
    "skipped_special",
    "skipped_symlinks",
)


@dataclass(frozen=True, slots=True)
class Progress:
    """A snapshot for progress displays: the stage running and what it has done so far."""

    stage: Stage
    files: int
    bytes: int
    total: int | None
    finished: bool = False


ProgressCallback = Callable[[Progress], None]


def find_duplicates(
    roots: Iterable[str | os.PathLike[str]] | str | os.PathLike[str],
    options: ScanOptions | None = None,
    *,
    progress: ProgressCallback | None = None,
    on_group: Callable[[DuplicateGroup], None] | None = None,
) -> FindResult:
    """Find every group of files with identical content under the roots.

    Reads files but never changes them.  Per-file failures are returned as issues; bad options and
    missing roots raise `OptionsError` before any work starts.  The result's groups are sorted
    (largest files first, then by first path); with `on_group`, each group goes there instead as
    soon as it is final, in no set order, and the result holds none (its stats count them).
    `roots` may be any iterable, read once (`find.filelist.read_paths`, say).
    """
    opts = options or ScanOptions()
    if isinstance(roots, str | os.PathLike):
        roots = [roots]
    held = _Held.connect(opts, roots)
    canon = held.roots() if held is not None else canonical_roots(roots, opts.reference)
    started = time.perf_counter()
    stats = RunStats()
    issues: list[Issue] = []
    kept: list[DuplicateGroup] = []
    contents = Contents() if opts.dirs else None
    tally = _Tally(stats, on_group or kept.append, contents, opts.hard_links)
    try:
        opts = _check_cache(opts, canon, stats)
    except BaseException:
        if held is not None:
            held.pool.abort()
        raise
    pool = held.start(canon) if held is not None else open_pool(opts, canon.directories)
    directories: tuple[DirectoryGroup, ...] = ()
    try:
        rule = RootRule(opts.isolate, canon.under_reference)
        run = _Run(pool, canon, opts, stats, issues, progress, tally, rule)
        if held is not None:
            run.hold(held.by_number(canon), held.pool.spaces, held.pool.cache_dirs)
        run.search()
        if contents is not None:
            directories = find_directory_groups(
                pool, contents, canon.directory_index, rule, (i.path for i in issues)
            )
    except BaseException:  # KeyboardInterrupt, a dead worker: stop the workers at once
        pool.abort()
        raise
    pool.close()
    stats.workers = pool.workers
    stats.task_cpu = dict(pool.task_cpu)
    stats.seconds = time.perf_counter() - started
    if run.lost:  # what the lost workers' files and the stages said, said again since
        issues[:] = set(issues)
    issues.sort(key=lambda i: (i.path, i.stage.value))
    kept.sort(key=report_order)
    return FindResult(canon, tuple(kept), tuple(issues), stats, canon.reference, directories)


class _Held:
    """`--root-on`: the cluster connected first, since only its workers can say what each
    root is on their host (`find.cluster`); the run's state is set up once the roots are
    numbered."""

    def __init__(self, pool: ClusterPool, held: list[HeldRoot]) -> None:
        self.pool = pool
        self.held = held

    @classmethod
    def connect(cls, opts: ScanOptions, given: Iterable[str | os.PathLike[str]]) -> _Held | None:
        if not opts.root_on:
            return None
        if next(iter(given), None) is not None:
            raise OptionsError(
                "--root-on: give every root with --root-on; roots that any worker may read are"
                " not searched with roots that only some hold yet"
            )
        from dedup_engine.find.cluster import ClusterPool  # Dask: only for a run that asks

        assert opts.cluster is not None  # ScanOptions says so
        pool = ClusterPool(opts.cluster, opts)
        try:
            held = pool.held_roots()
            _check_apart(held)
        except BaseException:
            pool.abort()
            raise
        return cls(pool, held)

    def roots(self) -> Roots:
        try:
            return known_roots(h.path for h in self.held)
        except BaseException:
            self.pool.abort()
            raise

    def start(self, roots: Roots) -> Pool:
        return self.pool.start(roots.directories)

    def by_number(self, roots: Roots) -> dict[int, HeldRoot]:
        """Each root's number: the roots are the held ones, each once, in the order given."""
        number = {path: n for n, path in roots.directories.items()}
        return {number[h.path]: h for h in self.held}


def _check_apart(held: list[HeldRoot]) -> None:
    """Two sites' roots share no path, and neither lies in the other: a report names files by
    path, and one path must name one file."""
    for n, one in enumerate(held):
        for other in held[n + 1 :]:
            if one.site == other.site:
                continue
            if is_under(one.path, other.path) or is_under(other.path, one.path):
                raise OptionsError(
                    f"--root-on {one.name!r}={one.path!r} and {other.name!r}={other.path!r}:"
                    " the roots of two sites must not share a path (a report names files by"
                    " path): mount each host's disk at a path of its own"
                )


def _check_cache(opts: ScanOptions, roots: Roots, stats: RunStats) -> ScanOptions:
    """Make or check the digest cache before any work (a directory that cannot be trusted, or a
    root in it, is fatal); a cache rebuilt, or one that cannot be used now, is a warning, and the
    run goes on without the latter.  Closed again before the workers fork: each opens its own
    connection."""
    if opts.cache_dir is None:
        return opts
    cache_dir = os.path.realpath(opts.cache_dir)
    root = roots.first_under(cache_dir)
    if root is not None:
        raise OptionsError(
            f"root {root!r} is in the digest cache's directory {opts.cache_dir!r}: "
            "search it with --no-cache, or keep the cache elsewhere (--cache-dir)"
        )
    try:
        opened = DigestCache.open(opts.cache_dir)
    except CacheError as exc:
        raise OptionsError(str(exc.strerror)) from None
    except (OSError, sqlite3.Error) as exc:
        raise OptionsError(f"cache directory {opts.cache_dir!r}: {exc}") from None
    if opened.warning is not None:
        stats.warnings.append(opened.warning)
    if opened.cache is None:
        return dataclasses.replace(opts, cache_dir=None)
    opened.cache.close()
    # The path checked, every symlink on the way resolved: the one the workers open.
    return dataclasses.replace(opts, cache_dir=opened.cache.directory)


class _Tally:
    """Counts each final group into the run's totals and hands it on; once the stages have
    started over (`started_over`), none of the files handed on before is handed on again."""

    def __init__(
        self,
        stats: RunStats,
        sink: Callable[[DuplicateGroup], None],
        contents: Contents | None = None,
        hard_links: bool = False,
    ) -> None:
        self.stats = stats
        self.sink = sink
        self.contents = contents  # with --dirs: each file's group, for the directories
        self.hard_links = hard_links
        #: Where the stages may start over (`track`): a hash of each path handed on, 8 bytes.
        self._handed: array[int] | None = None
        self._before: set[int] | None = None
        self._rule = RootRule()

    def track(self, rule: RootRule) -> None:
        """Remember what is handed on: the stages may start over (a cluster's run), and `rule`
        is which groups count by their roots."""
        self._handed = array("q")
        self._rule = rule

    def started_over(self) -> None:
        """From now on, a file handed on before is not handed on again: a group found again is
        dropped, and one that lost files to earlier groups (a file changed between the two
        passes) keeps the rest where they still make a group."""
        assert self._handed is not None, "the stages may start over only where tracked"
        self._before = set(self._handed)

    def __call__(self, group: DuplicateGroup) -> None:
        if self._before is not None:
            unseen = self._unseen(group, self._before)
            if unseen is None:
                return
            group = unseen
        if self._handed is not None:
            self._handed.extend(hash(f.path) for f in group.files)
        stats = self.stats
        stats.groups += 1
        stats.files_in_groups += len(group.files)
        stats.bytes_reclaimable += group.reclaimable
        if self.contents is not None:
            self.contents.add(group)
        self.sink(group)

    def _unseen(self, group: DuplicateGroup, before: set[int]) -> DuplicateGroup | None:
        files = tuple(f for f in group.files if hash(f.path) not in before)
        if len(files) == len(group.files):
            return group
        # Which roots the files were found under is not in an entry: where that decides
        # (--isolate, --reference), the rest is not reported.
        if self._rule.isolate or self._rule.reference:
            return None
        count = len(files) if self.hard_links else len({(f.dev, f.ino) for f in files})
        return dataclasses.replace(group, files=files) if count >= 2 else None


class _Run:
    """The state of one search; `search` is the pipeline."""

    def __init__(
        self,
        pool: Pool,
        roots: Roots,
        opts: ScanOptions,
        stats: RunStats,
        issues: list[Issue],
        progress: ProgressCallback | None,
        tally: _Tally,
        rule: RootRule,
    ) -> None:
        self.pool = pool
        self.tally = tally
        #: Whether a lost worker's directories may be listed again elsewhere and the run go on
        #: (with --dirs, their listings are then the others': `dirgroups` asks those left).
        self.recovers = isinstance(pool, Recovering)
        if self.recovers:
            tally.track(rule)
        self.lost: set[int] = set()  # workers lost, whose rows are gone
        self.roots = roots
        self.opts = opts
        self.stats = stats
        self.issues = issues
        self.progress = progress
        self.limit = max(1, pool.workers) * pool.depth
        for stage in (Stage.SCAN, Stage.SIZE, Stage.HARDLINK, Stage.HEAD, Stage.TAIL, Stage.FULL):
            stats.stage(stage)  # rows in pipeline order
        self.current = Stage.SCAN
        # By machine where roots are held (`hold`).
        self.sizes = SizeIndex(opts.hard_links, restartable=self.recovers)
        self.steps = StepContext(
            pool,
            self.sizes,
            stats,
            issues,
            opts.follow_links,
            opts.chunk_size,
            self.limit,
            tally,
            self._tick if progress else None,
            rule,
            opts.sample,
            opts.sample_above,
        )
        self._last_tick = 0.0
        # Directories still to list, by the site whose workers may list them (`hold`).
        self._dirs: dict[int, deque[DirJob]] = {0: deque()}
        self._held: dict[int, HeldRoot] = {}  # `--root-on` roots by number
        self._spaces: tuple[int, ...] = ()
        self._holding_file_roots: set[str] = set()  # directories whose listing passes some over
        # (machine, st_dev, st_ino) of every directory queued (`hold`): two machines' disks
        # may number alike.
        self._seen: set[tuple[int, int, int]] = set()
        self._scans = 0  # scan tasks whose results are not taken yet
        # Scan results are taken in the order their tasks were sent, whatever the order they
        # come back in: the walk is then breadth first and the same for every worker count, and
        # a directory reached by two routes (links followed) is listed under the same one.
        self._sent = 0
        self._taken = 0
        self._arrived: dict[int, tuple[int, ScanResult]] = {}
        self._rechecks: dict[Step, RecheckStep] = {}  # each window's, which completes its work
        # Where the run recovers from a lost worker: scan tasks in flight by number, those whose
        # results are in by worker, what those counted, and the numbers of scans done again.
        self._scan_out: dict[int, tuple[int, ScanTask]] = {}
        self._scan_done: dict[int, list[ScanTask]] = {}
        self._counted: dict[int, tuple[int, ...]] = {}
        self._again: set[int] = set()

    def hold(
        self, held: dict[int, HeldRoot], spaces: tuple[int, ...], caches: set[tuple[int, int, int]]
    ) -> None:
        """`--root-on`: these roots (by number) are listed and read only by their site's
        workers, and files of two sites are compared by digest.  `spaces`: each worker's
        machine, within which alone a (dev, ino) is one file; `caches`: (machine, dev, ino) of
        the digest cache's directory on each, which no walk lists."""
        self._held = held
        self._spaces = spaces
        self.sizes = SizeIndex(self.opts.hard_links, spaces, restartable=self.recovers)
        root_spaces = {number: root.space for number, root in held.items()}
        self.steps = dataclasses.replace(
            self.steps, sizes=self.sizes, root_spaces=root_spaces, sited=True
        )
        self._dirs = {site: deque() for site in sorted({root.site for root in held.values()})}
        self._seen.update(caches)

    def search(self) -> None:
        """scan → by size → hard links → head → tail → full → groups; begun again from the
        size groups when a worker is lost on the way (`_lose`)."""
        self._scan()
        while True:
            try:
                self._stages()
                return
            except WorkerLost as lost:
                self._lose(lost, " and the stages began again", everything=True)
                self._walk([], iter(()))
                self._start_over()

    def _stages(self) -> None:
        full = FullStep(self.steps, alone=self.opts.hard_links)
        windows = self._windows(full)
        self._rechecks = dict(windows)
        rechecks = list(self._rechecks.values())
        # Later stages first: they finish groups, and free what the earlier ones hold.
        stages: list[Step] = [*rechecks, full, *reversed([w[0] for w in windows])]
        self._flow(self.sizes.candidates(), [w[0] for w in windows], full, stages)
        self._count_candidates()

    def _windows(self, full: FullStep) -> list[tuple[WindowStep, RecheckStep]]:
        """The partial-window stages that are on, in order, each with the step that re-checks
        the groups it finishes; each hands the rest on to the next one that applies, or to the
        full stage."""
        opts = self.opts
        on = opts.stages
        windows = [
            w
            for w, name in (
                (Window(Stage.HEAD, opts.head_window, opts.whole_threshold), "head"),
                (Window(Stage.TAIL, opts.tail_window, min_size=opts.tail_min_size), "tail"),
            )
            if name in on
        ]
        steps: list[tuple[WindowStep, RecheckStep]] = []
        for index, window in enumerate(reversed(windows)):
            later = [w for w, _ in steps[::-1]] if index else []
            recheck = RecheckStep(self.steps, window.stage)
            # The first window finishes the groups whose whole-file digests the cache holds.
            first = index == len(windows) - 1
            step = WindowStep(
                self.steps,
                window,
                recheck.feed,
                self._router(later, full),
                whole_known=first and opts.cache_dir is not None,
            )
            steps.insert(0, (step, recheck))
        return steps

    def _router(self, later: list[WindowStep], full: FullStep) -> Sink:
        """Where a group goes next: the first later window stage that applies to its size, or
        else the full stage."""

        def route(size: int, digest: bytes, group: Group) -> None:
            for step in later:
                if step.window.applies(size):
                    step.feed(size, group)
                    return
            full.feed(size, digest, group)

        return route

    def _flow(
        self,
        candidates: Iterator[tuple[int, Group]],
        windows: list[WindowStep],
        full: FullStep,
        stages: list[Step],
    ) -> None:
        """Run the stages until every size group has gone through: the pool kept full from the
        latest stage back, the first stage fed from the size groups as it runs low."""
        route = self._router(windows, full)
        self.current = (windows[0] if windows else full).stage
        fed: list[Step] = [*windows, full]  # where size groups may go first
        pending = True
        order = [step for step in reversed(stages) if not isinstance(step, RecheckStep)]
        done: set[int] = set()
        while True:
            if pending and not self._fed_enough(fed):
                pending = self._pull(candidates, route, fed)
            final = not pending
            for step in stages:
                # A stage sends a part batch only once nothing more can come to it.
                upstream = order[: order.index(step)] if step in order else []
                step.flush(final and all(s.idle for s in upstream))
            self._mark_finished(order, pending, done)
            if not self.pool.in_flight:
                if not pending and all(step.idle for step in stages):
                    break
                continue
            self.pool.wait_one()

    def _pull(self, candidates: Iterator[tuple[int, Group]], route: Sink, fed: list[Step]) -> bool:
        """Feed size groups to the stages they go to first until they hold enough; False once
        none are left."""
        # A group routed adds its files to one stage's queue, and nothing is sent meanwhile:
        # the files queued are counted here, and the stages asked only once there are enough.
        enough = AHEAD_BATCHES * self.steps.batch_files
        ahead = sum(step.queued for step in fed)
        for size, group in candidates:
            route(size, b"", group)
            ahead += len(group)
            if ahead >= enough and self._fed_enough(fed):
                return True
        return False

    def _fed_enough(self, fed: list[Step]) -> bool:
        """Whether the stages fed from the size groups hold enough: two batches in all, one of
        them whole (else none could be sent, and with nothing out, nothing would move)."""
        ahead = sum(step.queued for step in fed)
        return ahead >= AHEAD_BATCHES * self.steps.batch_files and any(s.ready for s in fed)

    def _mark_finished(self, order: list[Step], pending: bool, done: set[int]) -> None:
        """Close each stage, in order, once nothing more can come to it and it is idle."""
        for index, step in enumerate(order):
            if index in done:
                continue
            recheck = self._rechecks.get(step)
            idle = step.idle and (recheck is None or recheck.idle)
            if pending or not idle or not all(i in done for i in range(index)):
                return
            done.add(index)
            step.finish()
            self.current = step.stage
            self._tick(finished=True)
            if index + 1 < len(order):
                self.current = order[index + 1].stage  # the stage at work from now on

    def _count_candidates(self) -> None:
        sizes, stats = self.sizes, self.stats
        size = stats.stage(Stage.SIZE)
        size.files_in = sizes.rows_in
        size.files_out = sizes.paths_in_candidates
        hardlink = stats.stage(Stage.HARDLINK)
        hardlink.files_in = size.files_out
        hardlink.files_out = sizes.reps_in_candidates

    def _scan(self) -> None:
        """Walk every root; each scan result's keys go into the size index.

        Every root is stat'ed (and its directory marked seen) first; then the roots under a
        reference root are walked to their end before the others, so that a directory reached
        from both (a bind mount) is listed under its reference name, whose files are never acted
        on.  The cost: workers may wait at the end of the first wave for its last listings."""
        started = time.perf_counter()
        self._skip_cache()
        waves: tuple[list[DirJob], list[DirJob]] = ([], [])
        roots = self.roots
        self._holding_file_roots = roots.holding_file_roots()
        with reach.Reached() as reached:
            for index, root in roots.directories.items():
                wave = 0 if roots.is_reference_root(index) else 1
                self._add_root(index, root, waves[wave], reached)
        for wave, jobs in enumerate(waves):
            self._walk(jobs, roots.files(reference=wave == 0))
        scan = self.stats.stage(Stage.SCAN)
        scan.seconds = time.perf_counter() - started
        scan.files_out = self.stats.files_scanned
        self._tick(finished=True)

    def _walk(self, jobs: list[DirJob], files: Iterator[tuple[str, int]]) -> None:
        """Take these file roots, then list these root directories and every directory below
        them, to the end."""
        pool = self.pool
        # Roots that are files (a list from --files-from may hold millions): scanned, and owned,
        # by the workers like any other file, a task's worth at a time as the pool has room.
        while task := tuple(itertools.islice(files, FILE_ROOTS_PER_TASK)):
            while pool.in_flight >= self.limit or len(self._arrived) >= self.limit:
                self._wait()
            self._submit_scan(ScanTask((), task))
        for job in jobs:
            self._dirs[self._site_of(job.root)].append(job)
        sites = itertools.cycle(list(self._dirs.items()))
        while self._pending() or self._scans:
            # Results wait (`_arrived`) behind a slow task: no more sent while many do.
            while self._pending() and not self._scans_full():
                site, pending = next(sites)  # each site in turn: they list in parallel
                if pending:
                    self._send_dirs(site, pending)
            self._wait()

    def _wait(self) -> None:
        """Let a scan result come back; a worker lost meanwhile has its directories listed
        again by the others."""
        try:
            self.pool.wait_one()
        except WorkerLost as lost:
            self._lose(lost)

    def _lose(self, lost: WorkerLost, then: str = "", everything: bool = False) -> None:
        """The lost workers' rows are gone: every scan task they took goes to another worker
        (of their site), those in flight under their own numbers, so the walk's order holds.
        `everything`: every task in flight is dropped, not only theirs (the stages start
        over)."""
        if not self.recovers:
            raise lost
        assert isinstance(self.pool, Recovering)
        self.pool.forget(None if everything else lost.workers)
        listed = 0
        for worker in lost.workers:
            self.lost.add(worker)
            self.sizes.drop(worker)
            self._uncount(worker)
            done = self._scan_done.pop(worker, [])
            listed += sum(len(task.dirs) for task in done)
            for task in done:
                self._submit_scan(task, self._workers_of(self.pool.sites[worker]), again=True)
        for number, (worker, task) in list(self._scan_out.items()):
            if worker in lost.workers:
                among = self._workers_of(self.pool.sites[worker])
                self._submit_scan(task, among, number=number)
                listed += len(task.dirs)
        they = "it" if len(lost.workers) == 1 else "they"
        self.stats.warnings.append(
            f"{lost}: the {listed} directories {they} had listed were listed again by the other"
            f" workers{then}"
        )

    def _uncount(self, worker: int) -> None:
        """Take a lost worker's scan results out of the run's counts: its files are counted
        again as others list them."""
        self._add(tuple(-n for n in self._counted.pop(worker, ())))

    def _add(self, counts: tuple[int, ...]) -> None:
        stats = self.stats
        for name, value in zip(_SCAN_COUNTS, counts, strict=False):
            setattr(stats, name, getattr(stats, name) + value)

    def _start_over(self) -> None:
        """The stages' counts begin again with the stages (the scan's keep what it did)."""
        stats = self.stats
        for index, row in enumerate(stats.stages):
            if row.stage is Stage.SCAN:
                row.files_out = stats.files_scanned
            else:
                stats.stages[index] = StageStats(row.stage)
        self.tally.started_over()

    def _scans_full(self) -> bool:
        return self.pool.in_flight >= self.limit or len(self._arrived) >= self.limit

    def _pending(self) -> bool:
        return any(self._dirs.values())

    def _site_of(self, root: int) -> int:
        held = self._held.get(root)
        return 0 if held is None else held.site

    def _skip_cache(self) -> None:
        """The digest cache's directory is never walked, should it lie under a root (the
        default one does under a home directory): a run's own writes are not files to search."""
        if self.opts.cache_dir is None:
            return
        with contextlib.suppress(OSError):
            st = os.stat(self.opts.cache_dir)
            self._seen.add((0, st.st_dev, st.st_ino))  # where roots are held: by each (`hold`)

    def _add_root(self, index: int, root: str, jobs: list[DirJob], reached: reach.Reached) -> None:
        """A directory root's job."""
        held = self._held.get(index)
        if held is not None:  # on its site's host: as its workers saw it
            self._seen.add((held.space, held.dev, held.ino))
            jobs.append(DirJob(root, index, 0, held.dev, held.dev, held.ino))
            return
        try:
            st = reached.stat(root)
        except OSError as exc:  # vanished since canonical_roots looked, or a symlink put above
            self.issues.append(Issue(root, Stage.SCAN, f"cannot stat root: {describe_error(exc)}"))
            return
        if not stat.S_ISDIR(st.st_mode):
            message = "cannot list root: it is no longer a directory"
            self.issues.append(Issue(root, Stage.SCAN, message))
            return
        self._seen.add((0, st.st_dev, st.st_ino))
        jobs.append(DirJob(root, index, 0, st.st_dev, st.st_dev, st.st_ino))

    def _send_dirs(self, site: int, pending: deque[DirJob]) -> None:
        """One scan task for a worker of the site: a few directories, fewer while there are
        few to share out."""
        among = self._workers_of(site)
        workers = max(1, len(among) if among is not None else self.pool.workers)
        most = SCAN_BATCH_DIRS * self.pool.batch_scale
        count = max(1, min(most, len(pending) // (2 * workers)))
        jobs = tuple(pending.popleft() for _ in range(min(count, len(pending))))
        holding = self._holding_file_roots
        inside = [
            p for job in jobs if job.path in holding for p in self.roots.file_roots_in(job.path)
        ]
        self._submit_scan(ScanTask(jobs, file_roots=frozenset(inside)), among)

    def _workers_of(self, site: int) -> list[int] | None:
        """The workers of a site; None: any worker (no root is held)."""
        if not self._held:
            return None
        return [n for n, s in enumerate(self.pool.sites) if s == site]

    def _submit_scan(
        self,
        task: ScanTask,
        among: list[int] | None = None,
        number: int | None = None,
        again: bool = False,
    ) -> None:
        """Send a scan task to the least busy worker (of `among`), which will own the files it
        finds.  `number`: a task sent before whose worker was lost, in its place in the walk's
        order; `again`: its result came, from a worker lost since, and its directories' subdirs
        are known."""
        if number is None:
            self._scans += 1
            number = self._sent
            self._sent += 1
        if again:
            self._again.add(number)
        # The pool says which worker it chose when `submit` returns, before any result is read.
        owner: list[int] = []
        owner.append(
            self.pool.submit(
                task, lambda result: self._arrive(number, owner[0], result), None, among
            )
        )
        if self.recovers:
            self._scan_out[number] = (owner[0], task)

    def _arrive(self, number: int, worker: int, result: ScanResult) -> None:
        if self.recovers:
            _, task = self._scan_out.pop(number)
            self._scan_done.setdefault(worker, []).append(task)
        arrived = self._arrived
        arrived[number] = (worker, result)
        while self._taken in arrived:
            self._scanned(*arrived.pop(self._taken), self._taken in self._again)
            self._taken += 1

    def _scanned(self, worker: int, result: ScanResult, again: bool = False) -> None:
        self._scans -= 1
        stats = self.stats
        if worker not in self.lost:  # else its rows are gone, but its subdirs were listed
            self.sizes.add(worker, result)
            self._count(worker, result)
        for path, message in result.issues:
            self.issues.append(Issue(path, Stage.SCAN, message))
        seen = self._seen
        site, space = (self.pool.sites[worker], self._spaces[worker]) if self._held else (0, 0)
        pending = self._dirs[site]
        subdirs = zip(result.subdirs, result.subdir_devs, result.subdir_inos, strict=True)
        for job, dev, ino in subdirs:
            key = (space, dev, ino)
            if key in seen:  # a loop through a followed link or a bind mount, or a nested root
                stats.dirs_revisited += not again
                continue
            seen.add(key)
            pending.append(job)
        if self.progress is not None:
            self._tick()

    def _count(self, worker: int, result: ScanResult) -> None:
        counts = (
            len(result.sizes),
            sum(result.sizes),
            result.dirs_scanned,
            result.skipped_special,
            result.skipped_symlinks,
        )
        self._add(counts)
        if self.recovers:  # what the worker's files would take out of the counts if it is lost
            before = self._counted.get(worker, (0,) * len(counts))
            self._counted[worker] = tuple(map(operator.add, before, counts))

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
