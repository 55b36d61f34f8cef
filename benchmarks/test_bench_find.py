"""pytest-benchmark suite: each stage on its own, and `find` end to end, on every profile.

    python -m pytest benchmarks/ --benchmark-only                # quick scale
    DEDUP_BENCH_FULL=1 python -m pytest benchmarks/ --benchmark-only

Every benchmark stores the engine's work counters in `extra_info`, so a saved run
(`--benchmark-save NAME`) carries both time and work.  Stage benchmarks run in one process
(`workers=0`) on inputs captured from a first pass, so each times one stage alone.
"""

from __future__ import annotations

import contextlib
import os
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dedup_engine import ScanOptions, find_duplicates
from dedup_engine.bench import workgate
from dedup_engine.find.anchors import MAX_HANDLES, Anchors
from dedup_engine.find.entries import describe
from dedup_engine.find.fullcompare import compare_groups
from dedup_engine.find.groups import Group, Named, SizeIndex, assemble
from dedup_engine.find.hashstep import split
from dedup_engine.find.hashtasks import hash_batch
from dedup_engine.find.roots import canonical_roots
from dedup_engine.find.store import RowStore
from dedup_engine.find.tasks import (
    DIGEST_SIZE,
    CompareResult,
    CompareTask,
    DescribeTask,
    DirJob,
    HashResult,
    HashTask,
    ScanResult,
    ScanTask,
    Window,
)
from dedup_engine.find.walk import Filter, scan_dirs
from dedup_engine.model import FileEntry, Stage

Bench = Any  # pytest-benchmark's fixture has no public type
#: Sized groups: (size, representative rows).
Sized = list[tuple[int, Group]]


@dataclass
class Captured:
    """The state between stages, from one in-process pass over the tree: one worker's store, so
    its rows are the run's rows."""

    opts: ScanOptions
    flt: Filter
    store: RowStore
    dirs: list[DirJob]
    scans: list[ScanResult]
    candidates: Sized
    after_head: Sized
    after_tail: Sized


def _capture(root: Path) -> Captured:
    opts = ScanOptions(workers=0)
    roots = canonical_roots([root])
    flt = Filter(opts, roots.directories)
    store = RowStore()
    top = os.stat(roots[0])
    pending = [DirJob(roots[0], 0, 0, top.st_dev, top.st_dev, top.st_ino)]
    dirs: list[DirJob] = []
    scans: list[ScanResult] = []
    while pending:
        jobs, pending = pending[:16], pending[16:]
        dirs.extend(jobs)
        scans.append(scan_dirs(ScanTask(tuple(jobs)), flt, store))
        pending.extend(scans[-1].subdirs)
    candidates = _group_sizes(opts, scans)
    head = Window(Stage.HEAD, opts.head_window, opts.whole_threshold)
    after_head = _refine(store, head, candidates)
    tail = Window(Stage.TAIL, opts.tail_window, min_size=opts.tail_min_size)
    after_tail = _refine(store, tail, [(s, g) for s, g in after_head if tail.applies(s)])
    return Captured(opts, flt, store, dirs, scans, candidates, after_head, after_tail)


def _group_sizes(opts: ScanOptions, scans: list[ScanResult]) -> Sized:
    sizes = SizeIndex(opts.hard_links)
    for result in scans:
        sizes.add(0, result)  # one worker: in process
    return list(sizes.candidates())


def _refine(store: RowStore, window: Window, groups: Sized) -> Sized:
    """The groups still alike after `window`, but for those it read whole."""
    rows = array("Q", [r for _, g in groups for r in g])
    sizes = array("q", [s for s, g in groups for _ in g])
    column = hash_batch(HashTask(window, rows, sizes, False), store).digests
    out: Sized = []
    start = 0
    for size, group in groups:
        end = start + len(group)
        digests = [column[p * DIGEST_SIZE : (p + 1) * DIGEST_SIZE] for p in range(start, end)]
        start = end
        if not window.reads_whole(size):
            out.extend((size, members) for _, members in split(group, digests, len))
    return out


@pytest.fixture(scope="session")
def captured(tree: tuple[str, Path]) -> Captured:
    return _capture(tree[1])


def _hash_tasks(window: Window, groups: Sized) -> list[HashTask]:
    rows = array("Q", [r for _, g in groups for r in g])
    sizes = array("q", [s for s, g in groups for _ in g])
    return [
        HashTask(window, rows[i : i + 512], sizes[i : i + 512], False)
        for i in range(0, len(rows), 512)
    ]


def _compare_task(captured: Captured, size: int, group: Group) -> CompareTask:
    store = captured.store
    return CompareTask(
        tuple(store.paths(group)),
        array("q", [size]) * len(group),
        array("I", [len(group)]),
        array("Q", [store.dev(r) for r in group]),
        array("Q", [store.ino[r] for r in group]),
        array("q", [store.mtime[r] for r in group]),
        array("q", [store.ctime[r] for r in group]),
        False,
        captured.opts.chunk_size,
    )


def _record(benchmark: Bench, results: list[HashResult] | list[CompareResult]) -> None:
    benchmark.extra_info["files_opened"] = sum(r.files_opened for r in results)
    benchmark.extra_info["bytes_read"] = sum(r.bytes_read for r in results)


def test_stage_scan(benchmark: Bench, captured: Captured) -> None:
    task = ScanTask(tuple(captured.dirs))
    result = benchmark(lambda: scan_dirs(task, captured.flt, RowStore()))
    benchmark.extra_info.update(files=len(result.sizes), dirs=result.dirs_scanned)


def test_stage_size_grouping(benchmark: Bench, captured: Captured) -> None:
    groups = benchmark(_group_sizes, captured.opts, captured.scans)
    rows = sum(len(r.sizes) for r in captured.scans)
    benchmark.extra_info.update(rows=rows, candidates=sum(len(g) for _, g in groups))


@contextlib.contextmanager
def _anchors(store: RowStore, opened: str) -> Iterator[Anchors | None]:
    """A worker's directory handles (`find.anchors`), held across rounds as a worker holds them
    across tasks; None to open every file by its path."""
    anchors = Anchors(store, MAX_HANDLES) if opened == "under-handles" else None
    try:
        yield anchors
    finally:
        if anchors is not None:
            anchors.close()


@pytest.mark.parametrize("opened", ["under-handles", "by-path"])
def test_stage_head(benchmark: Bench, captured: Captured, opened: str) -> None:
    """The head stage as a worker runs it, and with every file opened by its path instead."""
    opts, store = captured.opts, captured.store
    window = Window(Stage.HEAD, opts.head_window, opts.whole_threshold)
    tasks = _hash_tasks(window, captured.candidates)
    with _anchors(store, opened) as anchors:
        _record(benchmark, benchmark(lambda: [hash_batch(t, store, anchors) for t in tasks]))


def test_stage_tail(benchmark: Bench, captured: Captured) -> None:
    opts, store = captured.opts, captured.store
    window = Window(Stage.TAIL, opts.tail_window, min_size=opts.tail_min_size)
    groups = [(s, g) for s, g in captured.after_head if window.applies(s)]
    tasks = _hash_tasks(window, groups)
    with _anchors(store, "under-handles") as anchors:
        _record(benchmark, benchmark(lambda: [hash_batch(t, store, anchors) for t in tasks]))


def test_stage_full(benchmark: Bench, captured: Captured) -> None:
    tasks = [_compare_task(captured, s, g) for s, g in captured.after_tail]
    _record(benchmark, benchmark(lambda: [compare_groups(t) for t in tasks]))


def test_stage_reducer(benchmark: Bench, captured: Captured) -> None:
    """The final step: the owner names each group's files, and the group is built."""
    store = captured.store

    def reduce() -> int:
        built = 0
        for size, group in captured.after_tail:
            sizes = array("q", [size]) * len(group)
            unchecked = bytes(len(group))
            d = describe(DescribeTask(array("Q", group), sizes, unchecked, False), store)
            names = [
                Named(
                    FileEntry(d.paths[i], d.devs[i], d.inos[i], size, d.mtimes[i], d.ctimes[i],
                              0, 0, 0o644),
                    d.roots[i],
                    False,
                    1,
                )
                for i in range(len(group))
            ]  # fmt: skip
            built += assemble(size, bytes(32), names, False) is not None
        return built

    benchmark.extra_info["groups"] = benchmark(reduce)


@pytest.mark.parametrize("workers", [0, None], ids=["in-process", "pool"])
def test_find_end_to_end(benchmark: Bench, tree: tuple[str, Path], workers: int | None) -> None:
    name, root = tree
    result = benchmark.pedantic(
        find_duplicates, args=(root, ScanOptions(workers=workers)), rounds=3, iterations=1
    )
    work = workgate.counters(result, root)
    benchmark.extra_info.update(tree=name, groups=work["groups"], stages=work["stages"])
