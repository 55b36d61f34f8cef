"""A file is never its own duplicate (bind mounts, links made during the walk, many links), a
dead worker is an error, no descriptor leaks, and a FIFO never gets a digest."""

from __future__ import annotations

import gc
import os
import shutil
import signal
import subprocess
from array import array
from dataclasses import replace
from pathlib import Path

import pytest
from treebuilder import Tree, content, groups_of

from dedup_engine import ScanOptions, find_duplicates
from dedup_engine.find.groups import Named, SizeIndex, assemble
from dedup_engine.find.hashtasks import hash_batch
from dedup_engine.find.pool import ProcessPool, WorkerError
from dedup_engine.find.store import RowStore
from dedup_engine.find.tasks import DirJob, HashTask, ScanResult, ScanTask, Window
from dedup_engine.model import FileEntry, Stage

pytestmark = pytest.mark.usefixtures("deadline")


@pytest.mark.parametrize("workers", [0, 2])
def test_a_bind_mounted_file_is_not_its_own_duplicate(tree: Tree, workers: int) -> None:
    """The same (dev, ino) under two names, each with a link count of 1."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root and mount(8) to bind-mount a file")
    data = content(5000)
    tree.file("a", data)
    target = tree.file("b", b"placeholder that the mount hides")
    tree.file("c", content(5000, seed="other"))
    mounted = subprocess.run(
        ["mount", "--bind", tree.path("a"), target], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"bind mount refused here: {mounted.stderr.decode().strip()}")
    try:
        assert os.stat(tree.path("a")).st_nlink == 1
        result = find_duplicates(tree.root, ScanOptions(workers=workers))
        assert groups_of(result) == set()
    finally:
        subprocess.run(["umount", target], check=False)


def test_a_file_linked_during_the_walk_is_not_its_own_duplicate() -> None:
    """Two names of one inode, each seen with a link count of 1: settled into one file."""
    sizes = SizeIndex(hard_links=False)
    sizes.add(0, _keys([5000, 5000]))  # no inode keys: both looked like files of their own
    assert list(sizes.candidates()) == [(5000, [0, 1])]
    st = os.stat(__file__)
    names = [
        Named(FileEntry(f"/t/{name}", st.st_dev, st.st_ino, 5000, 1, 1, 0, 0, 0o644), 0, False, 1)
        for name in ("x", "y")
    ]
    assert assemble(5000, b"d" * 32, names, hard_links=False) is None


def test_an_inode_with_many_links_is_bookkept_per_link() -> None:
    """Counting work, not time: adding each link must not look at the links before it."""
    sizes = SizeIndex(hard_links=True)
    looked = 0
    real_copies = sizes._copies_of

    def counting(rep: int) -> int:
        nonlocal looked
        looked += 1
        return real_copies(rep)

    sizes._copies_of = counting  # type: ignore[method-assign]
    count = 2000
    one_inode = array("Q", [7]) * count
    keys = replace(_keys([4096] * count), linked=array("Q", range(count)), devs=one_inode)
    sizes.add(0, replace(keys, inos=one_inode))
    assert sizes.weight([0]) == count
    assert looked <= 2 * count + 1


def _keys(sizes: list[int]) -> ScanResult:
    """A scan result holding only these sizes, as a worker sends them."""
    empty = array("Q")
    return ScanResult(
        0, array("q", sizes), empty, empty, empty, empty, (), empty, empty, (), 1, 0, 0
    )


def test_sending_to_a_dead_worker_raises_worker_error(tmp_path: Path) -> None:
    pool = ProcessPool(1, ScanOptions(), {0: str(tmp_path)})
    try:
        os.kill(pool._procs[0].pid, signal.SIGKILL)
        pool._procs[0].join(timeout=10)
        with pytest.raises(WorkerError):
            for _ in range(50):  # the first sends may still fit in the pipe
                pool.submit(ScanTask((DirJob(str(tmp_path), 0, 0, 0, 0, 0),)), lambda result: None)
            pool.wait_one()
    finally:
        pool.close()


def test_no_descriptors_left_after_runs_without_the_garbage_collector(tree: Tree) -> None:
    tree.file("a/x", content(100))
    tree.file("b/x", content(100))
    tree.hardlink("c/x", "a/x")

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    gc.collect()
    gc.disable()
    try:
        find_duplicates(tree.root, ScanOptions(workers=2, hard_links=True))
        before = open_fds()
        for _ in range(5):
            find_duplicates(tree.root, ScanOptions(workers=2, hard_links=True))
        assert open_fds() == before
    finally:
        gc.enable()


def _head_task(path: Path, size: int) -> tuple[HashTask, RowStore]:
    """A head-stage task for one file the scan saw as a regular file of `size` bytes."""
    store = RowStore()
    store.start_dir(f"{path.parent}/", 0, 0)
    seen = os.stat_result((0o100644, 1, 0, 1, 0, 0, size, 0, 0, 0))
    store.add([path.name], [_with_ns(seen)])
    head = Window(Stage.HEAD, 4096, 16384)
    return HashTask(head, array("Q", [0]), array("q", [size]), False), store


def _with_ns(st: os.stat_result) -> os.stat_result:
    """`st` with the nanosecond times a stat from the kernel has."""

    class Stat:
        def __getattr__(self, name: str) -> object:
            return 0 if name.endswith("_ns") else getattr(st, name)

    return Stat()  # type: ignore[return-value]


def test_a_fifo_holding_exactly_the_expected_bytes_gets_no_digest(tmp_path: Path) -> None:
    fifo = tmp_path / "swapped"
    os.mkfifo(fifo)
    writer = os.open(fifo, os.O_RDWR)  # O_RDWR: opens without waiting for a reader
    try:
        os.write(writer, b"x" * 100)  # fits in the pipe's buffer: no reader needed
        result = hash_batch(*_head_task(fifo, 100))
    finally:
        os.close(writer)
    assert [position for position, _, _ in result.failed] == [0]


def test_empty_file_swapped_for_a_fifo_never_matches(tmp_path: Path) -> None:
    """With --empty, a FIFO with no writer reads like an empty file (read returns b"")."""
    fifo = tmp_path / "was-empty"
    os.mkfifo(fifo)
    result = hash_batch(*_head_task(fifo, 0))
    assert [position for position, _, _ in result.failed] == [0]
    assert "regular" in result.failed[0][2]
