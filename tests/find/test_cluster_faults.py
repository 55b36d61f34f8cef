"""A cluster's worker lost mid-run, on roots every worker can read: its directories are listed
again by the others, the stages begin again where they had begun, and the groups are exactly a
local run's, each file once.  Workers are killed (SIGKILL) or frozen (SIGSTOP) from inside the
run, at a chosen step, on a cluster started with the `dask` commands."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from daskcluster import dask_commands, deadline_past_except
from treebuilder import Tree, brute_groups, check_invariants, content, groups_of

from dedup_engine import ScanOptions, find_duplicates
from dedup_engine.find import cluster, hashstep, pipeline
from dedup_engine.find.groups import RootRule, SizeIndex, file_key
from dedup_engine.find.pool import WorkerError, WorkerLost
from dedup_engine.find.tasks import ScanResult, ScanTask
from dedup_engine.model import DuplicateGroup, FileEntry, RunStats

pytestmark = pytest.mark.usefixtures("deadline")


def _tree(tree: Tree) -> None:
    """Forty directories (several scan tasks for each worker), copies within and across them,
    forty pairs, hard links across them, a near-copy, and files of sizes no other file has."""
    for d in range(40):
        for n in range(4):
            tree.file(f"top{d % 4}/d{d}/f{n}", content(700 + 1500 * n, seed=f"c{n}"))
        tree.file(f"top{d % 4}/d{d}/own", content(900 + d, seed=f"own{d}"))
        pair = content(20_000 + d, seed=f"pair{d}")
        tree.file(f"top{d % 4}/d{d}/pair", pair)
        tree.file(f"top{(d + 1) % 4}/d{(d + 1) % 40}/pair-of-{d}", pair)
    tree.file("near/f1", content(2200, seed="c1")[:-1] + b"?")
    for d in range(0, 40, 7):
        tree.hardlink(f"links/l{d}", f"top{d % 4}/d{d}/f3")


def _wide_tree(tree: Tree) -> None:
    """Six hundred directories: results of many scan tasks in flight at any moment."""
    _tree(tree)
    for d in range(600):
        for n in range(3):
            tree.file(f"wide/a{d % 7}/b{d % 31}/d{d}/f{n}", content(300 + n, seed=f"w{d % 50}"))


@pytest.fixture
def cluster_of_three(tmp_path: Path) -> Iterator[tuple[str, list[subprocess.Popen[bytes]]]]:
    with dask_commands(tmp_path, ({}, {}, {})) as started:
        yield started.address, started.workers
        for worker in started.workers:  # a frozen one is let go, to be killed
            if worker.poll() is None:
                os.kill(worker.pid, signal.SIGCONT)


def _owners(sizes: SizeIndex) -> list[int]:
    """The workers that own rows."""
    return sorted(w for w, rows in sizes._received.items() if rows)


def _signal_worker(pool: Any, worker: int, how: int) -> None:
    """Send `how` to the process of a cluster pool's worker, by its number."""
    pids = pool._client.run(os.getpid)
    os.kill(pids[pool._addresses[worker]], how)


def _losing_at(
    monkeypatch: pytest.MonkeyPatch,
    owner: type,
    method: str,
    when: Callable[[int], bool],
    how: int,
    pool_of: Callable[[Any], tuple[Any, SizeIndex]],
) -> list[int]:
    """Patch `owner.method` to send `how` to a worker that owns rows, on the call `when` says
    of those made once some worker does; the workers hit, by number."""
    hit: list[int] = []
    calls = [0]
    real = getattr(owner, method)

    def patched(self: Any, *args: Any, **kwargs: Any) -> Any:
        pool, sizes = pool_of(self)
        owners = _owners(sizes)
        if owners and not hit:
            calls[0] += 1
            if when(calls[0]):
                _signal_worker(pool, owners[0], how)
                hit.append(owners[0])
        return real(self, *args, **kwargs)

    monkeypatch.setattr(owner, method, patched)
    return hit


def _losing_while(
    monkeypatch: pytest.MonkeyPatch, when: str, how: int, scan_result: int
) -> list[int]:
    """Send `how` to a worker that owns rows while the tree is "listing" (at that scan result,
    counted from the first a worker owns rows by), or while its files are "hashing" (as the
    head stage sends its second batch, of 8 files: many batches, some out when it happens)."""
    monkeypatch.setattr(hashstep, "BATCH_FILES", 8)
    if when == "listing":
        return _losing_at(
            monkeypatch, pipeline._Run, "_scanned", lambda n: n == scan_result, how, _run_pool
        )
    return _losing_at(
        monkeypatch, hashstep.WindowStep, "_send_batch", lambda n: n == 2, how, _step_pool
    )


def _run_pool(run: Any) -> tuple[Any, SizeIndex]:
    return run.pool, run.sizes


def _step_pool(step: Any) -> tuple[Any, SizeIndex]:
    return step.context.pool, step.context.sizes


def _expect_local(tree: Tree, result: Any) -> None:
    """The run found what a local run finds, each file once, and counted it so."""
    local = find_duplicates(tree.root, ScanOptions(workers=2))
    check_invariants(result)
    assert groups_of(result) == groups_of(local) == brute_groups(tree.root)
    assert result.issues == local.issues
    stats, expected = result.stats, local.stats
    assert (stats.files_scanned, stats.bytes_scanned, stats.dirs_scanned) == (
        expected.files_scanned,
        expected.bytes_scanned,
        expected.dirs_scanned,
    )
    assert stats.dirs_revisited == expected.dirs_revisited
    assert (stats.groups, stats.files_in_groups) == (expected.groups, expected.files_in_groups)


def _expect_handed_once(tree: Tree, handed: list[DuplicateGroup], result: Any) -> None:
    """The groups handed on as they were final are the tree's, no file in two, and counted."""
    paths = [f.path for group in handed for f in group.files]
    assert len(paths) == len(set(paths))  # no file handed on twice
    assert {frozenset(f.path for f in g.files) for g in handed} == brute_groups(tree.root)
    assert result.stats.groups == len(handed)


def test_a_worker_killed_while_the_tree_is_listed_is_listed_for_by_the_others(
    tree: Tree,
    cluster_of_three: tuple[str, list[subprocess.Popen[bytes]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _tree(tree)
    address, _ = cluster_of_three
    hit = _losing_at(
        monkeypatch, pipeline._Run, "_scanned", lambda n: n == 3, signal.SIGKILL, _run_pool
    )
    result = find_duplicates(tree.root, ScanOptions(cluster=address))
    assert hit
    _expect_local(tree, result)
    (warning,) = result.stats.warnings
    assert "was lost" in warning and "listed again by the other workers" in warning
    assert "stages began again" not in warning


def test_a_worker_killed_while_files_are_hashed_leaves_the_groups_exact(
    tree: Tree,
    cluster_of_three: tuple[str, list[subprocess.Popen[bytes]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Killed as the head stage sends its first batch: its files are listed again, and the
    stages begin again without handing on a group twice."""
    _tree(tree)
    address, _ = cluster_of_three
    monkeypatch.setattr(hashstep, "BATCH_FILES", 8)  # many batches, some out when it dies
    hit = _losing_at(
        monkeypatch,
        hashstep.WindowStep,
        "_send_batch",
        lambda n: n == 2,
        signal.SIGKILL,
        _step_pool,
    )
    handed: list[DuplicateGroup] = []
    result = find_duplicates(tree.root, ScanOptions(cluster=address), on_group=handed.append)
    assert hit
    _expect_handed_once(tree, handed, result)
    (warning,) = result.stats.warnings
    assert "listed again by the other workers and the stages began again" in warning


def test_a_worker_killed_after_groups_were_handed_on_does_not_hand_them_on_again(
    tree: Tree,
    cluster_of_three: tuple[str, list[subprocess.Popen[bytes]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _tree(tree)
    address, _ = cluster_of_three
    monkeypatch.setattr(hashstep, "BATCH_FILES", 8)
    handed: list[DuplicateGroup] = []
    hit: list[int] = []
    real = pipeline._Tally.__call__

    def tally(self: Any, group: DuplicateGroup) -> None:
        real(self, group)
        if len(handed) == 3 and not hit:  # some out, more to come
            pool = cluster_pools[-1]
            alive = [n for n in range(pool.workers) if n not in pool._gone]
            _signal_worker(pool, alive[0], signal.SIGKILL)
            hit.append(alive[0])

    cluster_pools: list[Any] = []
    real_init = cluster.ClusterPool.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        cluster_pools.append(self)

    monkeypatch.setattr(cluster.ClusterPool, "__init__", init)
    monkeypatch.setattr(pipeline._Tally, "__call__", tally)
    result = find_duplicates(tree.root, ScanOptions(cluster=address), on_group=handed.append)
    assert hit
    _expect_handed_once(tree, handed, result)


@pytest.mark.parametrize("when", ["listing", "hashing"])
def test_a_frozen_worker_is_taken_for_lost_and_the_run_ends_exact(
    tree: Tree,
    cluster_of_three: tuple[str, list[subprocess.Popen[bytes]]],
    monkeypatch: pytest.MonkeyPatch,
    when: str,
) -> None:
    """SIGSTOP: still in the cluster, its connections open, but no heartbeat: after `SILENT_S`
    the run goes on without it (Dask would wait 5 minutes).  Results of the other workers that
    Dask was fetching together with one of its own are fetched again, or the run would wait for
    them for ever."""
    (_wide_tree if when == "listing" else _tree)(tree)
    address, _ = cluster_of_three
    monkeypatch.setattr(cluster, "SILENT_S", 3.0)
    hit = _losing_while(monkeypatch, when, signal.SIGSTOP, scan_result=3)
    result = find_duplicates(tree.root, ScanOptions(cluster=address))
    assert hit
    _expect_local(tree, result)
    (warning,) = result.stats.warnings
    assert "was silent for" in warning


def test_the_command_says_a_worker_was_lost_and_exits_as_a_clean_run(
    tree: Tree,
    cluster_of_three: tuple[str, list[subprocess.Popen[bytes]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from incli import invoke

    _tree(tree)
    address, _ = cluster_of_three
    hit = _losing_at(
        monkeypatch, pipeline._Run, "_scanned", lambda n: n == 2, signal.SIGKILL, _run_pool
    )
    code, out, err = invoke("find", tree.root, "--cluster", address, "-f", "fdupes")
    assert hit
    assert code == 0, err
    said = err.decode()
    assert "dedup: warning: cluster worker" in said and "listed again" in said
    blocks = out.decode().strip().split("\n\n")
    assert {frozenset(block.split("\n")) for block in blocks} == brute_groups(tree.root)


@pytest.mark.parametrize("when", ["listing", "hashing"])
def test_with_dirs_the_directory_groups_are_a_local_run_s(
    tree: Tree,
    cluster_of_three: tuple[str, list[subprocess.Popen[bytes]]],
    monkeypatch: pytest.MonkeyPatch,
    when: str,
) -> None:
    """The lost worker's listings went with it; its directories, listed again by the others,
    are theirs to describe."""
    _tree(tree)
    for copy in ("a", "b", "c"):
        for n in range(5):
            tree.file(f"copies/{copy}/sub/g{n}", content(1000 + 10 * n, seed=f"g{n}"))
        tree.file(f"copies/{copy}/top", content(50, seed="top"))
    address, _ = cluster_of_three
    hit = _losing_while(monkeypatch, when, signal.SIGKILL, scan_result=2)
    result = find_duplicates(tree.root, ScanOptions(cluster=address, dirs=True))
    assert hit
    local = find_duplicates(tree.root, ScanOptions(workers=2, dirs=True))
    assert result.directory_groups == local.directory_groups
    assert {d.paths for d in result.directory_groups} >= {
        tuple(tree.path(f"copies/{c}") for c in "abc")
    }
    assert groups_of(result) == groups_of(local)


def test_a_worker_lost_while_directory_groups_are_made_ends_the_run(
    tree: Tree,
    cluster_of_three: tuple[str, list[subprocess.Popen[bytes]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its listings are gone and the others' are being read: not recovered yet, never wrong."""
    from dedup_engine.find import dirgroups

    _tree(tree)
    address, _ = cluster_of_three
    real = dirgroups._listings
    hit: list[int] = []

    def listings(pool: Any) -> Any:
        _signal_worker(pool, 0, signal.SIGKILL)
        hit.append(0)
        return real(pool)

    monkeypatch.setattr(dirgroups, "_listings", listings)
    with pytest.raises(WorkerError, match="was lost"):
        find_duplicates(tree.root, ScanOptions(cluster=address, dirs=True))
    assert hit


# The size index without a lost worker's rows.


def _result(first: int, sizes: list[int], linked: dict[int, tuple[int, int]]) -> ScanResult:
    from array import array

    offsets = sorted(linked)
    return ScanResult(
        first,
        array("q", sizes),
        array("Q", offsets),
        array("Q", [linked[o][0] for o in offsets]),
        array("Q", [linked[o][1] for o in offsets]),
        array("Q"),
        (),
        array("Q"),
        array("Q"),
        (),
        1,
        0,
        0,
    )


def _candidates(sizes: SizeIndex) -> set[tuple[int, frozenset[int]]]:
    return {(size, frozenset(group)) for size, group in sizes.candidates()}


def test_a_dropped_workers_rows_are_no_candidates_and_its_files_scanned_again_are() -> None:
    sizes = SizeIndex(False, restartable=True)
    sizes.add(0, _result(0, [100, 200, 300], {}))
    sizes.add(1, _result(0, [100, 200, 400], {}))
    sizes.add(2, _result(0, [100, 400], {}))
    assert _candidates(sizes) == {
        (100, frozenset({file_key(0, 0), file_key(1, 0), file_key(2, 0)})),
        (200, frozenset({file_key(0, 1), file_key(1, 1)})),
        (400, frozenset({file_key(1, 2), file_key(2, 1)})),
    }
    sizes.drop(1)
    sizes.add(1, _result(3, [999], {}))  # late: its rows are gone with it
    sizes.add(0, _result(3, [100, 200, 400], {}))  # its files, listed again by worker 0
    assert _candidates(sizes) == {
        (100, frozenset({file_key(0, 0), file_key(2, 0), file_key(0, 3)})),
        (200, frozenset({file_key(0, 1), file_key(0, 4)})),
        (400, frozenset({file_key(2, 1), file_key(0, 5)})),
    }
    assert sizes.rows_in == 3 + 2 + 3


def test_an_inode_first_named_by_a_dropped_worker_keeps_its_other_names() -> None:
    """Its next name still here represents it; its own name, listed again, is a link."""
    sizes = SizeIndex(False, restartable=True)
    sizes.add(1, _result(0, [500, 500], {0: (9, 7)}))  # the inode first, and a copy
    sizes.add(0, _result(0, [500, 500], {0: (9, 7), 1: (9, 7)}))  # two more names of it
    assert _candidates(sizes) == {(500, frozenset({file_key(1, 0), file_key(1, 1)}))}
    assert sizes.links[file_key(1, 0)] == [file_key(0, 0), file_key(0, 1)]
    sizes.drop(1)
    assert _candidates(sizes) == set()  # one inode left of that size: no group
    sizes.add(2, _result(0, [500, 500], {0: (9, 7)}))  # worker 1's files, listed again
    assert _candidates(sizes) == {(500, frozenset({file_key(0, 0), file_key(2, 1)}))}
    assert sorted(sizes.links[file_key(0, 0)]) == [file_key(0, 1), file_key(2, 0)]


def test_only_a_restartable_index_drops_a_worker() -> None:
    with pytest.raises(RuntimeError):
        SizeIndex(False).drop(0)


# What is handed on once the stages start over.


def _group(*names: tuple[str, int]) -> DuplicateGroup:
    return DuplicateGroup(
        10, "00", tuple(FileEntry(path, 1, ino, 10, 0, 0, 0, 0, 0o644) for path, ino in names)
    )


def test_a_group_found_again_is_not_handed_on_twice_and_a_changed_one_keeps_the_rest() -> None:
    handed: list[DuplicateGroup] = []
    tally = pipeline._Tally(RunStats(), handed.append)
    tally.track(RootRule())
    tally(_group(("/r/a", 1), ("/r/b", 2)))
    tally.started_over()
    tally(_group(("/r/a", 1), ("/r/b", 2)))  # the same group, found again
    tally(_group(("/r/b", 2), ("/r/c", 3), ("/r/d", 4)))  # b changed since? c and d remain
    tally(_group(("/r/a", 1), ("/r/e", 5)))  # one file left: no group
    tally(_group(("/r/f", 6), ("/r/g", 7)))
    assert [[f.path for f in g.files] for g in handed] == [
        ["/r/a", "/r/b"],
        ["/r/c", "/r/d"],
        ["/r/f", "/r/g"],
    ]


def test_with_isolate_a_group_that_lost_files_to_earlier_ones_is_not_handed_on() -> None:
    """Which roots the files were under is not in an entry: the rest cannot be checked."""
    handed: list[DuplicateGroup] = []
    tally = pipeline._Tally(RunStats(), handed.append)
    tally.track(RootRule(isolate=True))
    tally(_group(("/r/a", 1), ("/s/b", 2)))
    tally.started_over()
    tally(_group(("/r/a", 1), ("/s/c", 3), ("/r/d", 4)))
    assert len(handed) == 1


def test_the_pool_forgets_tasks_of_a_lost_worker_and_a_stranded_one_ends_the_run() -> None:
    """A worker whose files no other can read (the last of its site) is never forgotten."""
    pool = cluster.ClusterPool.__new__(cluster.ClusterPool)
    pool._addresses = ["tcp://a:1", "tcp://b:1"]
    pool.workers = 2
    pool.sites = (1, 2)
    pool._held = []
    pool._gone = set()
    pool._busy = [0, 0]
    pool._started = True
    with pytest.raises(WorkerError) as raised:
        pool._lose({0: "was lost"})
    assert not isinstance(raised.value, WorkerLost)
    assert "no other worker can read them" in str(raised.value)
    pool.sites = (0, 0)
    with pytest.raises(WorkerLost) as lost:
        pool._lose({0: "was lost"})
    assert lost.value.workers == (0,) and pool._gone == {0}
    assert pool._busy[0] > 1 << 60


def test_a_task_that_finds_its_worker_restarted_loses_that_worker() -> None:
    """Started again at the same address, the worker may never have looked gone to the
    scheduler; its tasks fail for want of the run's state, which is a loss, not a bug."""
    from dedup_engine.find.cluster import NoRunState, _restarted, _run

    with pytest.raises(NoRunState) as raised:
        _run("no such run", ScanTask(()))
    assert _restarted((NoRunState, raised.value, None))
    assert not _restarted((RuntimeError, RuntimeError("other"), None))
    assert not _restarted(ScanTask(()))


def test_the_scheduler_killed_mid_run_ends_it_at_once_in_one_line(
    tree: Tree,
    cluster_of_three: tuple[str, list[subprocess.Popen[bytes]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The client would try to reconnect for Dask's connect timeout (made longer than the
    test's deadline here), at every question asked of it: the run ends as soon as it looks."""
    import dask
    from incli import invoke

    _tree(tree)
    address, _ = cluster_of_three
    port = address.rsplit(":", 1)[1]
    real = pipeline._Run._scanned
    killed: list[int] = []

    def scanned(self: Any, *args: Any, **kwargs: Any) -> None:
        if not killed:
            found = subprocess.run(
                ["pgrep", "-f", f"dask scheduler .*--port {port}"],
                capture_output=True,
                text=True,
                check=True,
            )
            killed.append(int(found.stdout.split()[0]))
            os.kill(killed[0], signal.SIGKILL)
        real(self, *args, **kwargs)

    monkeypatch.setattr(pipeline._Run, "_scanned", scanned)
    with deadline_past_except(), dask.config.set({"distributed.comm.timeouts.connect": "3600s"}):
        code, _, err = invoke("find", tree.root, "--cluster", address)
    assert killed
    assert code == 4
    assert err.decode().splitlines() == ["dedup: error: lost the cluster's scheduler"]


def test_a_worker_started_again_at_its_address_is_taken_for_lost(
    tree: Tree,
    cluster_of_three: tuple[str, list[subprocess.Popen[bytes]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Same address, a new process without the run's rows: a loss, whether the scheduler was
    seen without it or not."""
    import shutil
    import sys
    import time

    _tree(tree)
    address, _ = cluster_of_three
    dask = shutil.which("dask", path=os.path.dirname(sys.executable))
    assert dask is not None
    real = pipeline._Run._scanned
    started: list[subprocess.Popen[bytes]] = []

    def scanned(self: Any, *args: Any, **kwargs: Any) -> None:
        owners = _owners(self.sizes)
        if owners and not started:
            pool = self.pool
            worker = pool._addresses[owners[0]]
            _signal_worker(pool, owners[0], signal.SIGKILL)
            port = worker.rsplit(":", 1)[1]
            command = [dask, "worker", address, "--worker-port", port, "--nthreads", "1"]
            started.append(
                subprocess.Popen(
                    [*command, "--no-nanny", "--no-dashboard"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            while True:  # back, as another process, before the run looks again
                info = pool._client.scheduler_info()["workers"].get(worker)
                if info is not None and cluster._process(info) != pool._processes[owners[0]]:
                    break
                time.sleep(0.1)
        real(self, *args, **kwargs)

    monkeypatch.setattr(pipeline._Run, "_scanned", scanned)
    try:
        result = find_duplicates(tree.root, ScanOptions(cluster=address))
    finally:
        for process in started:
            process.kill()
            process.wait(timeout=10)
    assert started
    _expect_local(tree, result)
    (warning,) = result.stats.warnings
    assert "was started again" in warning


def test_every_worker_lost_is_said_so_not_taken_for_the_scheduler() -> None:
    """The scheduler answers, with no worker: the run ends naming the workers."""

    class Client:
        status = "running"

        def scheduler_info(self) -> dict[str, object]:
            return {"workers": {}}

    pool = cluster.ClusterPool.__new__(cluster.ClusterPool)
    pool._client = Client()
    pool._addresses = ["tcp://a:1", "tcp://b:1"]
    pool.workers = 2
    pool.sites = (0, 0)
    pool._held = []
    pool._gone = set()
    pool._heard = {}
    pool._busy = [0, 0]
    pool._started = True
    with pytest.raises(WorkerError) as raised:
        pool._check_workers()
    assert "scheduler" not in str(raised.value)
    assert "cluster worker tcp://a:1 was lost; cluster worker tcp://b:1 was lost" in str(
        raised.value
    )
