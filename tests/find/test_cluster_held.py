"""`--root-on`: roots that only some of a cluster's workers hold (a disk of their host), walked
and read by those alone, with duplicates across hosts found by their digests.

Two "hosts" are two workers started with the `dask worker` command, each made unable to reach
the other's directory (`hostguard`, which logs any attempt): what one holds, the other cannot
read, as on two machines."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from array import array
from collections.abc import Iterator
from pathlib import Path

import pytest
from cachetrust import need_trusted
from daskcluster import Cluster, dask_commands
from treebuilder import Tree, content

from dedup_engine import ScanOptions, find_duplicates
from dedup_engine.find.cache import RACY_NS
from dedup_engine.find.cluster import ClusterPool
from dedup_engine.find.groups import Named, SizeIndex, assemble, file_key
from dedup_engine.find.hashstep import _by_site
from dedup_engine.find.pool import WorkerError
from dedup_engine.find.tasks import DirJob, ScanResult, ScanTask
from dedup_engine.model import FileEntry
from dedup_engine.options import OptionsError

pytestmark = pytest.mark.usefixtures("deadline")

DEDUP = [sys.executable, "-m", "dedup_engine"]
GUARD = str(Path(__file__).parents[1] / "support" / "hostguard.py")


def _disks(tree: Tree) -> tuple[str, str]:
    """Host a's disk and host b's: copies on both, copies within one, and files of their own."""
    for disk in ("a", "b"):
        tree.file(f"{disk}/same", content(100_000, seed="same"))
        tree.file(f"{disk}/small", content(300, seed="small"))
        tree.file(f"{disk}/own", content(100_000, seed=f"own-{disk}"))
        tree.file(f"{disk}/near", content(100_000, seed="same")[:-1] + disk.encode())
    tree.file("a/deep/same-again", content(100_000, seed="same"))
    tree.file("b/pair/1", content(40_000, seed="pair"))
    tree.file("b/pair/2", content(40_000, seed="pair"))
    tree.hardlink("b/pair/link-of-same", "b/same")
    # Twins on a, and a file of their size on b that differs in its middle: their candidate
    # group is on two sites, so each is hashed on its own, and the twins are found by digest.
    twin = content(60_000, seed="twin")
    tree.file("a/twin1", twin)
    tree.file("a/twin2", twin)
    tree.file("b/not-a-twin", twin[:30_000] + b"?" + twin[30_001:])
    return tree.path("a"), tree.path("b")


@pytest.fixture
def hosts(tree: Tree, tmp_path: Path) -> Iterator[tuple[Cluster, str, str, Path]]:
    """Workers "host-a" and "host-b", each blind to the other's disk; and the guard's log."""
    a, b = _disks(tree)
    log = tmp_path / "guard.log"
    log.touch()
    envs = [
        {"DEDUP_TEST_ELSEWHERE": b, "DEDUP_TEST_GUARD_LOG": str(log)},
        {"DEDUP_TEST_ELSEWHERE": a, "DEDUP_TEST_GUARD_LOG": str(log)},
    ]
    with dask_commands(tmp_path, envs, ["host-a", "host-b"], GUARD) as cluster:
        yield cluster, a, b, log


def _find(address: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*DEDUP, "find", "--cluster", address, *args],
        capture_output=True,
        check=False,
        timeout=120,
        env={**os.environ, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "5s"},
    )


def _groups(report: bytes) -> dict[frozenset[str], str]:
    return {
        frozenset(f["path"] for f in g["files"]): g["verified"]
        for g in json.loads(report)["groups"]
    }


def test_copies_on_two_hosts_are_found_by_digest_and_none_reads_the_others_disk(
    hosts: tuple[Cluster, str, str, Path],
) -> None:
    cluster, a, b, log = hosts
    done = _find(
        cluster.address, "-f", "json", "--root-on", f"host-a={a}", "--root-on", f"host-b={b}"
    )
    assert done.returncode == 0, done.stderr
    assert _groups(done.stdout) == {
        frozenset({f"{a}/same", f"{a}/deep/same-again", f"{b}/same", f"{b}/pair/link-of-same"}): (
            "digest"
        ),
        frozenset({f"{a}/small", f"{b}/small"}): "digest",
        frozenset({f"{b}/pair/1", f"{b}/pair/2"}): "bytes",  # one host's: byte by byte
        frozenset({f"{a}/twin1", f"{a}/twin2"}): "digest",
    }
    assert log.read_text() == ""


def test_a_cached_rerun_says_how_each_group_was_verified_as_the_first_run_did(
    hosts: tuple[Cluster, str, str, Path], tmp_path: Path
) -> None:
    """The twins' candidate group is on two sites: the first run hashes its files apart, and
    the rerun, which finds all their whole-file digests in the cache, says so too."""
    cluster, a, b, _ = hosts
    need_trusted(a)
    newest = max(os.stat(path).st_ctime_ns for path in Path(a).parent.rglob("*"))
    time.sleep(max(0.0, (newest + RACY_NS - time.time_ns()) / 1e9 + 0.1))  # cacheable
    held = ("--root-on", f"host-a={a}", "--root-on", f"host-b={b}")
    args = ("-f", "json", *held, "--cache-dir", str(tmp_path / "cache"))
    first = _find(cluster.address, *args)
    rerun = _find(cluster.address, *args)
    assert first.returncode == rerun.returncode == 0, rerun.stderr
    stages = {row["stage"]: row for row in json.loads(rerun.stdout)["stats"]["stages"]}
    assert stages["full"]["cache_hits"] > 0 and stages["full"]["files_opened"] == 0
    assert _groups(rerun.stdout) == _groups(first.stdout)
    assert _groups(rerun.stdout)[frozenset({f"{a}/twin1", f"{a}/twin2"})] == "digest"


def test_roots_some_workers_cannot_reach_are_refused_before_any_work(
    hosts: tuple[Cluster, str, str, Path],
) -> None:
    """Without --root-on every worker must reach every root: each one's is looked at as the
    run starts, and the guard saw that look (so the test above could fail)."""
    cluster, a, b, log = hosts
    done = _find(cluster.address, a, b)
    assert done.returncode == 2, done.stderr
    assert done.stderr.decode().count("\n") == 1
    assert b"cannot reach root" in done.stderr
    assert log.read_text() != ""


def test_a_worker_that_sees_a_root_on_another_device_is_refused() -> None:
    from dedup_engine.find.cluster import _agree

    roots = {0: "/srv/share"}
    _agree("tcp://w:1", roots, {0: (52, 7)}, {0: (52, 7)})
    with pytest.raises(OptionsError, match=r"st_dev 0:53, st_ino 7; here 0:52, 7"):
        _agree("tcp://w:1", roots, {0: (52, 7)}, {0: (53, 7)})


def test_text_and_csv_say_how_each_group_was_verified(
    hosts: tuple[Cluster, str, str, Path],
) -> None:
    cluster, a, b, _ = hosts
    held = ["--root-on", f"host-a={a}", "--root-on", f"host-b={b}"]
    text = _find(cluster.address, *held)
    assert text.returncode == 0, text.stderr
    assert text.stdout.count(b"(verified by digest, across workers' disks)") == 3
    rows = list(
        csv.DictReader(io.StringIO(_find(cluster.address, "-f", "csv", *held).stdout.decode()))
    )
    how = {row["path"]: row["verified"] for row in rows}
    assert how[f"{a}/small"] == how[f"{b}/same"] == "digest"
    assert how[f"{b}/pair/1"] == "bytes"


def test_a_host_lost_with_the_only_worker_holding_a_root_ends_the_run_naming_it(
    hosts: tuple[Cluster, str, str, Path],
) -> None:
    cluster, a, b, _ = hosts
    options = ScanOptions(cluster=cluster.address, root_on=(("host-a", a), ("host-b", b)))
    pool = ClusterPool(cluster.address, options)
    try:
        held = pool.held_roots()
        pool.start({0: held[0].path, 1: held[1].path})
        assert [pool._sharing(n) for n in range(2)] == [1, 1]  # each its own host's disk
        worker = pool.sites.index(1)
        pid = pool._client.run(os.getpid)[pool._addresses[worker]]
        os.kill(pid, signal.SIGKILL)
        job = DirJob(held[0].path, 0, 0, held[0].dev, held[0].dev, held[0].ino)
        with pytest.raises(WorkerError, match=rf"no worker is left that holds host-a: '{a}'"):
            pool.submit(ScanTask((job,)), lambda result: None, worker)
            pool.wait_one()
    finally:
        pool.abort()


@pytest.mark.parametrize(
    ("given", "says"),
    [
        (["--root-on", "nobody={a}"], "no worker of the cluster has that name"),
        (["--root-on", "host-a={a}/missing"], "No such file or directory"),
        (["--root-on", "host-a={a}/same"], "not a directory on that worker"),
        (["--root-on", "host-a={b}"], "No such file or directory"),  # not on that host
        (["--root-on", "host-a={a}", "--root-on", "127.0.0.1={b}"], "matched by 'host-a' and"),
        (["--root-on", "host-a={a}", "{b}"], "give every root with --root-on"),
        (["--root-on", "host\nx={a}"], "no worker of the cluster has that name"),
        (["--root-on", "host-a={a}/no\nsuch"], "No such file or directory"),
    ],
)
def test_a_root_on_that_cannot_be_is_one_line_and_exit_2(
    hosts: tuple[Cluster, str, str, Path], given: list[str], says: str
) -> None:
    cluster, a, b, _ = hosts
    done = _find(cluster.address, *[g.format(a=a, b=b) for g in given])
    assert done.returncode == 2, done.stderr
    assert done.stderr.decode().count("\n") == 1, done.stderr
    assert says in done.stderr.decode()


def test_two_hosts_roots_at_one_path_are_a_usage_error(tree: Tree, tmp_path: Path) -> None:
    """Each host's disk at the same path: a report would name two files by one path."""
    tree.file("disk/f", b"x")
    with dask_commands(tmp_path, [{}, {}], ["h1", "h2"]) as cluster:
        done = _find(
            cluster.address, "--root-on", f"h1={tree.path('disk')}", "--root-on", f"h2={tree.root}"
        )
    assert done.returncode == 2, done.stderr
    assert b"the roots of two sites must not share a path" in done.stderr


def test_workers_that_hold_no_root_have_no_part_in_the_run(tree: Tree, tmp_path: Path) -> None:
    a, b = _disks(tree)
    with dask_commands(tmp_path, [{}, {}, {}], ["host-a", "host-b", "idle"]) as cluster:
        done = _find(
            cluster.address, "-f", "json", "--root-on", f"host-a={a}", "--root-on", f"host-b={b}"
        )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["stats"]["workers"] == 2


def test_two_sites_on_one_machine_share_its_inodes(tree: Tree) -> None:
    """Two workers of one machine, each holding a directory: a file linked into both is one
    file, not a group of two."""
    tree.file("x/f", content(50_000, seed="f"))
    tree.hardlink("y/link", "x/f")
    tree.file("y/copy", content(50_000, seed="f"))
    options = ScanOptions(cluster="local:2", root_on=(("0", tree.path("x")), ("1", tree.path("y"))))
    found = find_duplicates([], options)
    assert [sorted(f.path for f in g.files) for g in found.groups] == [
        sorted([tree.path("x/f"), tree.path("y/copy"), tree.path("y/link")])
    ]
    assert found.groups[0].inodes == 2


def test_a_digest_cache_in_a_held_root_is_not_searched(tree: Tree) -> None:
    tree.file("x/f", content(5_000, seed="f"))
    tree.file("y/f", content(5_000, seed="f"))
    held = (("0", tree.path("x")), ("1", tree.path("y")))
    options = ScanOptions(cluster="local:2", root_on=held, cache_dir=tree.path("x/.cache"))
    found = find_duplicates([], options)
    assert os.listdir(tree.path("x/.cache"))  # the cache is there, and kept
    assert found.stats.files_scanned == 2


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"root_on": (("a", "/x"),)}, "give --cluster as well"),
        ({"cluster": "local:1", "root_on": (("a", "x"),)}, "must be an absolute path"),
        ({"cluster": "local:1", "root_on": (("", "/x"),)}, "name the workers"),
        ({"cluster": "local:1", "root_on": (("a", "/x"),), "dirs": True}, "--dirs"),
        ({"cluster": "local:1", "root_on": (("a", "/x"),), "reference": ("/y",)}, "--reference"),
    ],
)
def test_root_on_options_are_checked_before_any_work(options: dict[str, object], says: str) -> None:
    with pytest.raises(OptionsError, match=says):
        ScanOptions(**options)  # type: ignore[arg-type]


def test_the_command_refuses_a_root_on_without_its_equals_sign() -> None:
    done = subprocess.run(
        [*DEDUP, "find", "--cluster", "local:1", "--root-on", "/x"],
        capture_output=True,
        check=False,
    )
    assert done.returncode == 2
    assert b"give it as WORKERS=DIR" in done.stderr


def test_the_fdupes_format_is_refused_since_it_cannot_say_how_a_group_was_verified(
    tmp_path: Path,
) -> None:
    """A group across hosts is verified by digest, which every format must say, and fdupes'
    has no place for it: refused before any cluster is started."""
    done = subprocess.run(
        [*DEDUP, "find", "--cluster", "local:1", "--root-on", f"a={tmp_path}", "-f", "fdupes"],
        capture_output=True,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.decode().splitlines() == [
        "dedup: error: --root-on with --format fdupes: fdupes' format cannot say that a group"
        " across hosts was verified by digest, not byte by byte; use text, csv or json"
    ]


# The coordinator's side, on made-up keys: two machines' disks may number their inodes alike.


def _scan(first: int, dev: int, ino: int) -> ScanResult:
    one = array("q", [10])
    return ScanResult(
        first, one, array("I", [0]), array("Q", [dev]), array("Q", [ino]), array("I"),
        (), array("Q"), array("Q"), (), 1, 0, 0,
    )  # fmt: skip


def test_one_inode_number_on_two_machines_is_two_files() -> None:
    index = SizeIndex(False, spaces=(1, 2))
    index.add(0, _scan(0, 2049, 12))
    index.add(1, _scan(0, 2049, 12))
    assert [group for _, group in index.candidates()] == [[file_key(0, 0), file_key(1, 0)]]


def test_one_inode_number_on_one_machine_is_one_file() -> None:
    index = SizeIndex(False, spaces=(1, 1))
    index.add(0, _scan(0, 2049, 12))
    index.add(1, _scan(0, 2049, 12))
    assert list(index.candidates()) == []


def test_a_final_group_keeps_two_machines_files_of_one_inode_number() -> None:
    def named(path: str, root: int) -> Named:
        return Named(FileEntry(path, 2049, 12, 10, 0, 0, 0, 0, 0o644), root, False, 1)

    names = [named("/a/f", 0), named("/b/f", 1)]
    assert assemble(10, bytes(32), names, False, spaces={0: 1, 1: 2}) is not None
    assert assemble(10, bytes(32), names, False, spaces={0: 1, 1: 1}) is None


def test_a_group_on_two_sites_is_hashed_file_by_file_on_each() -> None:
    sites = (1, 2, 2)
    reps = [file_key(0, 0), file_key(1, 0), file_key(2, 5), file_key(1, 1), file_key(2, 6)]
    parts = _by_site(sites, reps, array("I", [3, 2]))  # the first on two sites, the second on one
    assert {site: (positions, list(sizes)) for site, (positions, sizes) in parts.items()} == {
        1: ([0], [1]),
        2: ([1, 2, 3, 4], [1, 1, 2]),
    }


def test_a_host_name_matches_the_workers_at_its_address() -> None:
    """Dask gives a worker's host as an address: `--root-on localhost=...` means the workers
    at 127.0.0.1, and a name that is no host matches no worker by address."""
    from dedup_engine.find.cluster import _matching

    workers = [
        {"name": "w1", "address": "tcp://127.0.0.1:4001", "host": "127.0.0.1"},
        {"name": "w2", "address": "tcp://10.9.9.9:4001", "host": "10.9.9.9"},
    ]
    assert _matching("localhost", workers) == [0]
    assert _matching("w2", workers) == [1]
    assert _matching("10.9.9.9", workers) == [1]
    assert _matching("no-such-host.invalid", workers) == []
