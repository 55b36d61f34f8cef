"""pytest-benchmark suite: each stage on its own, and `find` end to end, on every profile.

    python -m pytest benchmarks/ --benchmark-only                # quick scale
    DEDUP_BENCH_FULL=1 python -m pytest benchmarks/ --benchmark-only

Every benchmark stores the engine's work counters in `extra_info`, so a saved run
(`--benchmark-save NAME`) carries both time and work.  Stage benchmarks run in one process
(`workers=0`) on inputs captured from a first pass, so each times one stage alone.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dedup_engine import ScanOptions, find_duplicates
from dedup_engine.bench import workgate
from dedup_engine.find.fullcompare import compare_groups
from dedup_engine.find.groups import Group, GroupBuilder
from dedup_engine.find.hashtasks import hash_batch
from dedup_engine.find.pipeline import _Run, canonical_roots
from dedup_engine.find.pool import InlinePool
from dedup_engine.find.tasks import DirJob, HashResult, HashTask, ScanTask, Window
from dedup_engine.find.walk import Filter, scan_dirs
from dedup_engine.model import RunStats, Stage

Bench = Any  # pytest-benchmark's fixture has no public type


@dataclass
class Captured:
    """The state between stages, from one in-process pass over the tree."""

    run: _Run
    dirs: list[DirJob]
    candidates: list[Group]
    after_head: list[Group]
    after_tail: list[Group]


def _capture(root: Path) -> Captured:
    opts = ScanOptions(workers=0)
    roots = canonical_roots([root])
    pool = InlinePool(opts, roots)
    run = _Run(pool, roots, opts, RunStats(), [], None)
    seen_dirs: list[DirJob] = []
    original = run._scanned

    def keep_dirs(result: Any) -> None:
        seen_dirs.extend(result.subdirs)
        original(result)

    run._scanned = keep_dirs  # type: ignore[method-assign]
    run._scan()
    candidates = run.sizes.groups()
    run.head.drain()
    _done, after_head = run.head.refine(candidates)
    tail = run._step(Window(Stage.TAIL, opts.tail_window, min_size=opts.tail_min_size), len)
    tail.feed([r for g in after_head if tail.window.applies(run.table.size[g[0]]) for r in g])
    tail.drain()
    _done, after_tail = tail.refine(after_head)
    first = DirJob(roots[0], 0, 0, 0)
    return Captured(run, [first, *seen_dirs], candidates, after_head, after_tail)


@pytest.fixture(scope="session")
def captured(tree: tuple[str, Path]) -> Captured:
    return _capture(tree[1])


def _task(run: _Run, window: Window, rows: list[int], groups: list[int] | None = None) -> HashTask:
    table = run.table
    return HashTask(
        window,
        array("Q", rows),
        tuple(table.paths[r] for r in rows),
        array("q", (table.size[r] for r in rows)),
        False,
        run.opts.chunk_size,
        array("I", groups or []),
        array("Q", (table.ino[r] for r in rows)),
        array("q", (table.mtime[r] for r in rows)),
        array("q", (table.ctime[r] for r in rows)),
    )


def _record(benchmark: Bench, results: list[HashResult]) -> None:
    benchmark.extra_info["files_opened"] = sum(r.files_opened for r in results)
    benchmark.extra_info["bytes_read"] = sum(r.bytes_read for r in results)


def _hash_all(tasks: list[HashTask]) -> Callable[[], list[HashResult]]:
    # As the pool does: the full stage's tasks carry groups, the partial windows' do not.
    return lambda: [compare_groups(t) if t.groups else hash_batch(t) for t in tasks]


def test_stage_scan(benchmark: Bench, tree: tuple[str, Path], captured: Captured) -> None:
    flt = Filter(ScanOptions(), canonical_roots([tree[1]]))
    task = ScanTask(tuple(captured.dirs))
    result = benchmark(scan_dirs, task, flt)
    benchmark.extra_info.update(files=len(result.files), dirs=result.dirs_scanned)


def test_stage_size_grouping(benchmark: Bench, captured: Captured) -> None:
    from dedup_engine.find.groups import SizeGroups

    table = captured.run.table

    def group() -> list[Group]:
        sizes = SizeGroups(table, False, lambda rows: None)
        sizes.add(0, len(table))
        return sizes.groups()

    groups = benchmark(group)
    benchmark.extra_info.update(rows=len(table), candidates=sum(map(len, groups)))


def test_stage_head(benchmark: Bench, captured: Captured) -> None:
    opts = captured.run.opts
    window = Window(Stage.HEAD, opts.head_window, opts.whole_threshold)
    rows = [r for g in captured.candidates for r in g]
    tasks = [_task(captured.run, window, rows[i : i + 512]) for i in range(0, len(rows), 512)]
    _record(benchmark, benchmark(_hash_all(tasks)))


def test_stage_tail(benchmark: Bench, captured: Captured) -> None:
    opts = captured.run.opts
    window = Window(Stage.TAIL, opts.tail_window, min_size=opts.tail_min_size)
    sizes = captured.run.table.size
    rows = [r for g in captured.after_head if window.applies(sizes[g[0]]) for r in g]
    tasks = [_task(captured.run, window, rows[i : i + 512]) for i in range(0, len(rows), 512)]
    _record(benchmark, benchmark(_hash_all(tasks)))


def test_stage_full(benchmark: Bench, captured: Captured) -> None:
    groups = captured.after_tail
    tasks = [_task(captured.run, Window(Stage.FULL), g, [len(g)]) for g in groups]
    _record(benchmark, benchmark(_hash_all(tasks)))


def test_stage_reducer(benchmark: Bench, captured: Captured) -> None:
    finals = [(bytes(32), g) for g in captured.after_tail]
    run = captured.run

    def reduce() -> int:
        builder = GroupBuilder(run.table, run.sizes.links)
        builder.add(finals)
        return len(builder.groups())

    benchmark.extra_info["groups"] = benchmark(reduce)


@pytest.mark.parametrize("workers", [0, None], ids=["in-process", "pool"])
def test_find_end_to_end(benchmark: Bench, tree: tuple[str, Path], workers: int | None) -> None:
    name, root = tree
    result = benchmark.pedantic(
        find_duplicates, args=(root, ScanOptions(workers=workers)), rounds=3, iterations=1
    )
    work = workgate.counters(result, root)
    benchmark.extra_info.update(tree=name, groups=work["groups"], stages=work["stages"])
