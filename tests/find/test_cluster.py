"""`dedup find --cluster`: the search's tasks on a Dask cluster, a `LocalCluster` of worker
processes or one started with the real `dask scheduler` and `dask worker` commands, give the
groups, issues and report a local run gives."""

from __future__ import annotations

import gc
import json
import os
import signal
import socket
import subprocess
import sys
import time
from array import array
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from daskcluster import dask_commands, deadline_past_except, free_port
from incli import invoke
from treebuilder import Tree, brute_groups, content, groups_of

from dedup_engine import ScanOptions, find_duplicates
from dedup_engine.find.cluster import ClusterPool
from dedup_engine.find.groups import SizeIndex
from dedup_engine.find.pool import WorkerError
from dedup_engine.find.tasks import DirJob, ScanResult, ScanTask

pytestmark = pytest.mark.usefixtures("deadline")

DEDUP = [sys.executable, "-m", "dedup_engine"]


def _tree(tree: Tree) -> None:
    """Copies in several directories and sizes, hard links, a near-copy, a symlink, a FIFO."""
    for d in range(6):
        for n in range(5):
            tree.file(f"d{d}/f{n}", content(500 + 3000 * n, seed=f"c{n}"))
        tree.file(f"d{d}/own", content(2000, seed=f"own{d}"))
    tree.file("near/f1", content(3500, seed="c1")[:-1] + b"?")
    tree.hardlink("links/l1", "d0/f1")
    tree.symlink("links/s", "d1/f2")
    tree.fifo("links/fifo")


def test_a_local_cluster_finds_what_a_local_run_finds(tree: Tree) -> None:
    _tree(tree)
    local = find_duplicates(tree.root, ScanOptions(workers=2))
    on_cluster = find_duplicates(tree.root, ScanOptions(cluster="local:2"))
    assert groups_of(on_cluster) == groups_of(local) == brute_groups(tree.root)
    assert on_cluster.groups == local.groups  # the same files, in the same order
    assert on_cluster.issues == local.issues
    assert on_cluster.stats.workers == 2


def test_the_command_runs_on_a_local_cluster(tree: Tree, tmp_path: Path) -> None:
    _tree(tree)
    listed = tmp_path / "list"
    listed.write_text(f"{tree.path('d0/f1')}\n{tree.path('d5')}\n")
    for extra in ([], ["--files-from", str(listed), "--dirs"]):
        here = subprocess.run(
            [*DEDUP, "find", tree.path("d1"), *extra, "-f", "json"],
            capture_output=True,
            check=True,
            timeout=120,
        )
        there = subprocess.run(
            [*DEDUP, "find", tree.path("d1"), *extra, "-f", "json", "--cluster", "local:2"],
            capture_output=True,
            check=True,
            timeout=120,
        )
        mine, theirs = json.loads(here.stdout), json.loads(there.stdout)
        assert theirs["groups"] == mine["groups"] and theirs["roots"] == mine["roots"]
        assert theirs["directory_groups"] == mine["directory_groups"]
        assert theirs["options"]["cluster"] == "local:2"


@pytest.mark.parametrize(
    "address",
    [
        "local:0",
        "local:x",
        "local:",
        "local:\u00b2",
        "local:9999",
        "garbage",
        "",
        "tcp://127.0.0.1",
        "tcp://127.0.0.1:notaport",
        "tls://127.0.0.1:1",
        "tcp://[::1",
    ],
)
def test_a_bad_cluster_address_is_one_line_and_exit_2(tree: Tree, address: str) -> None:
    tree.file("f", b"x")
    code, out, err = invoke("find", tree.root, "--cluster", address)
    assert (code, out) == (2, b"")
    assert err.decode().count("\n") == 1
    assert err.decode().startswith(f"dedup: error: --cluster {address}: ")


def test_workers_and_a_cluster_are_a_usage_error(tree: Tree) -> None:
    tree.file("f", b"x")
    code, _, err = invoke("find", tree.root, "-j", "3", "--cluster", "local:2")
    assert code == 2
    assert err.decode().startswith("dedup: error: --workers is for local worker processes")


def test_a_server_that_is_no_scheduler_is_a_usage_error(tree: Tree) -> None:
    """It takes the connection and never answers: waited for as long as a connection, no more."""
    tree.file("f", b"x")
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        done = _find_on(tree, f"tcp://127.0.0.1:{silent.getsockname()[1]}")
    assert done.returncode == 2, done.stderr
    assert done.stderr.decode().count("\n") == 1


def test_without_dask_the_cluster_option_says_how_to_install_it(
    tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree.file("f", b"x")
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed: ImportError
    code, out, err = invoke("find", tree.root, "--cluster", "local:2")
    assert (code, out) == (2, b"")
    assert err.decode() == (
        "dedup: error: --cluster needs Dask distributed: pip install 'dedup-engine[dask]'\n"
    )


def test_an_unreachable_scheduler_is_a_usage_error(tree: Tree) -> None:
    tree.file("f", b"x")
    port = free_port()
    done = _find_on(tree, f"tcp://127.0.0.1:{port}")
    assert done.returncode == 2, done.stderr
    assert done.stderr.decode().count("\n") == 1
    assert done.stderr.startswith(f"dedup: error: --cluster tcp://127.0.0.1:{port}: ".encode())


@pytest.fixture
def dask_cluster(tmp_path: Path) -> Iterator[tuple[str, list[subprocess.Popen[bytes]]]]:
    """A scheduler and two workers started with the `dask` commands, on 127.0.0.1."""
    with dask_commands(tmp_path) as cluster:
        yield cluster.address, cluster.workers


def test_a_cluster_started_with_the_dask_commands_finds_the_groups(
    tree: Tree, dask_cluster: tuple[str, list[subprocess.Popen[bytes]]]
) -> None:
    _tree(tree)
    address, _ = dask_cluster
    done = subprocess.run(
        [*DEDUP, "find", tree.root, "-f", "json", "--cluster", address],
        capture_output=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    found = {frozenset(f["path"] for f in g["files"]) for g in report["groups"]}
    assert found == brute_groups(tree.root)
    assert report["stats"]["workers"] == 2


def test_a_worker_lost_during_a_run_ends_it_with_a_worker_error(
    tree: Tree, dask_cluster: tuple[str, list[subprocess.Popen[bytes]]]
) -> None:
    """The rows a worker scanned are lost with it: the run ends, it does not hang."""
    address, workers = dask_cluster
    job, pool = _root_job_and_pool(tree, address)
    try:
        workers[0].kill()
        workers[0].wait(timeout=10)
        with pytest.raises(WorkerError, match=r"was lost|failed"):
            for number in range(pool.workers):
                pool.submit(ScanTask((job,)), lambda result: None, number)
            for _ in range(pool.workers):
                pool.wait_one()
    finally:
        pool.abort()


def test_a_worker_lost_after_its_task_finished_ends_the_run(
    tree: Tree,
    dask_cluster: tuple[str, list[subprocess.Popen[bytes]]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The task finished, its result fetched or not (Dask would wait for that worker to come
    back, for ever, to fetch it); the rows it scanned are gone with it: the run ends, and the
    fetches given up on leave nothing to print once the client is gone."""
    job, pool = _root_job_and_pool(tree, dask_cluster[0])
    try:
        pool.submit(ScanTask((job,)), lambda result: None, 0)
        (future,) = list(pool._done.futures)
        deadline = time.monotonic() + 60
        while future.status != "finished" and time.monotonic() < deadline:
            time.sleep(0.05)
        pids = pool._client.run(os.getpid)
        os.kill(pids[pool._addresses[0]], signal.SIGKILL)
        with pytest.raises(WorkerError, match="was lost"):
            pool.wait_one()  # its result, if it was fetched before the worker went
            pool.submit(ScanTask((job,)), lambda result: None, 0)
            pool.wait_one()
    finally:
        pool.abort()
    del future
    gc.collect()
    assert not [r for r in caplog.records if r.name in ("asyncio", "tornado.application")], (
        caplog.text
    )


def test_results_of_a_worker_taken_out_of_the_order_of_its_rows_keep_their_places() -> None:
    """A cluster's worker runs tasks in the order they reach it: its rows are numbered so, and
    its results are taken in the order they were sent."""
    first = _result(0, [100, 200, 300])
    second = _result(3, [300, 100, 400])
    in_order, reversed_order = SizeIndex(False), SizeIndex(False)
    for result in (first, second):
        in_order.add(0, result)
    for result in (second, first):
        reversed_order.add(0, result)
    expected = {(100, frozenset({0, 4})), (300, frozenset({2, 3}))}
    assert {(s, frozenset(g)) for s, g in in_order.candidates()} == expected
    assert {(s, frozenset(g)) for s, g in reversed_order.candidates()} == expected


def test_results_that_leave_a_gap_are_refused() -> None:
    sizes = SizeIndex(False)
    sizes.add(0, _result(3, [100, 100]))
    with pytest.raises(RuntimeError, match="overlap or leave a gap"):
        list(sizes.candidates())


def _result(first: int, sizes: list[int]) -> ScanResult:
    empty = array("Q")
    keys = ScanResult(0, array("q"), empty, empty, empty, empty, (), empty, empty, (), 1, 0, 0)
    return replace(keys, first=first, sizes=array("q", sizes))


def _root_job_and_pool(tree: Tree, address: str) -> tuple[DirJob, ClusterPool]:
    """The job that lists the tree's root (the tree built), and a pool on the cluster."""
    _tree(tree)
    top = os.stat(tree.root)
    job = DirJob(tree.root, 0, 0, top.st_dev, top.st_dev, top.st_ino)
    return job, ClusterPool(address, ScanOptions(), {0: tree.root})


def _find_on(tree: Tree, address: str) -> subprocess.CompletedProcess[bytes]:
    """`dedup find` of the tree on the cluster at `address`, given 2 s to connect (the
    subprocess timeout is what catches a hang)."""
    return subprocess.run(
        [*DEDUP, "find", tree.root, "--cluster", address],
        capture_output=True,
        check=False,
        timeout=120,
        env={**os.environ, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s"},
    )


def test_a_worker_of_another_version_is_refused() -> None:
    from dedup_engine.find import cluster

    with pytest.raises(RuntimeError, match="install one version on every host"):
        cluster._setup("run", "0.0.0-other", ScanOptions(), {}, 1, True)
    assert "run" not in cluster._RUNS


def test_dask_loggers_with_their_own_level_are_quietened_too() -> None:
    """`distributed.client` has its own level and handler ("Couldn't gather 1 keys,
    rescheduling" as a worker is lost): the command's stderr is its own."""
    import logging

    from dedup_engine.cli.find import _quiet_dask

    pytest.importorskip("distributed")  # its loggers set up first, as in a run
    _quiet_dask()
    for name in ("distributed", "distributed.client", "distributed.gc", "tornado.application"):
        assert logging.getLogger(name).getEffectiveLevel() == logging.CRITICAL


def test_the_end_of_a_run_does_not_wait_for_a_worker_lost_meanwhile(
    tree: Tree,
    dask_cluster: tuple[str, list[subprocess.Popen[bytes]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its closing task could never run: the run ends once the workers still there are done
    (the wait's limit made far longer than the test's deadline, so a wait for it fails)."""
    from dedup_engine.find import cluster

    address, workers = dask_cluster
    _, pool = _root_job_and_pool(tree, address)
    monkeypatch.setattr(cluster, "CLOSE_S", 3600)
    workers[0].kill()
    workers[0].wait(timeout=10)
    while len(pool._client.scheduler_info()["workers"]) > 1:
        time.sleep(0.1)  # the scheduler has seen it go

    with deadline_past_except():
        pool.close()


def test_a_result_is_passed_on_whatever_its_future_says_since_and_a_failure_is_short() -> None:
    """A result fetched before its worker was lost is a result (its future's status may have
    changed since); a task that raised is said in a line, never with a whole result in it."""
    from array import array as arr

    from dedup_engine.find.cluster import _failure
    from dedup_engine.find.tasks import HashResult

    assert _failure(HashResult(b"x" * 32, (), 1, 1)) is None
    assert _failure(arr("q", [1])) is None
    big = RuntimeError("x" * 100_000)
    said = _failure((RuntimeError, big, None))
    assert said is not None and said.startswith("RuntimeError('xxx") and len(said) <= 200
    assert _failure(TimeoutError()) == "TimeoutError()"
