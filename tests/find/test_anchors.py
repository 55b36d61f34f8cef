"""A worker opens its files for the head and tail stages from a handle on each directory: one
name looked up, not the whole path.  The handles are bounded and closed at the end, a directory
past the bound or without a handle is read by path, and a file reached from a handle must still
be the one the scan saw; a directory renamed or swapped since the scan never puts a file in a
group under a path that no longer leads to it.
"""

from __future__ import annotations

import contextlib
import os
import resource
import threading
from array import array
from collections.abc import Iterator
from typing import Any

import pytest
from treebuilder import Tree, content

from dedup_engine import ScanOptions, find_duplicates
from dedup_engine.find import anchors as anchors_module
from dedup_engine.find import readers
from dedup_engine.find.anchors import MAX_HANDLES, Anchors, handle_limit
from dedup_engine.find.hashtasks import hash_batch
from dedup_engine.find.store import RowStore
from dedup_engine.find.tasks import DirJob, HashResult, HashTask, ScanTask, Window
from dedup_engine.find.walk import Filter, scan_dirs
from dedup_engine.model import Stage
from dedup_engine.options import RESERVED_FDS

pytestmark = pytest.mark.usefixtures("deadline")

HEAD = Window(Stage.HEAD, 4096, 16384)
DIRS = ("a", "b", "c/d", "c/e")


def _scanned(root: str) -> tuple[RowStore, HashTask]:
    """Every directory under `root` listed into one store, and a head task of all its rows."""
    store, flt, sizes = RowStore(), Filter(ScanOptions(), {0: root}), array("q")
    top = os.stat(root)
    jobs = [DirJob(root, 0, 0, top.st_dev, top.st_dev, top.st_ino)]
    while jobs:
        scanned = scan_dirs(ScanTask((jobs.pop(),)), flt, store)
        jobs.extend(scanned.subdirs)
        sizes.extend(scanned.sizes)
    return store, HashTask(HEAD, array("Q", range(len(store))), sizes, False)


def _tree(tree: Tree) -> None:
    for n, directory in enumerate(DIRS):
        tree.file(f"{directory}/small", content(3000, seed="s"))
        tree.file(f"{directory}/big", content(40000, seed=n))


class _Opens:
    """Each file open's (name, dir_fd), as hash_rows makes it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, int | None]] = []
        real = os.open

        def record(path: str, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
            if not flags & os.O_PATH:  # a file's open, not a handle's
                self.calls.append((path, dir_fd))
            return real(path, flags, mode, dir_fd=dir_fd)

        monkeypatch.setattr(os, "open", record)


@pytest.fixture
def anchored(tree: Tree) -> Iterator[tuple[RowStore, HashTask, Anchors]]:
    _tree(tree)
    store, task = _scanned(tree.root)
    anchors = Anchors(store, MAX_HANDLES)
    yield store, task, anchors
    anchors.close()


def _by_path(store: RowStore, task: HashTask) -> HashResult:
    return hash_batch(task, store)


def test_files_are_opened_by_name_from_their_directory_handle(
    anchored: tuple[RowStore, HashTask, Anchors], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, task, anchors = anchored
    expected = _by_path(store, task)
    opens = _Opens(monkeypatch)
    result = hash_batch(task, store, anchors)
    assert result == expected and not result.failed and result.files_opened == len(store)
    assert len(opens.calls) == len(store)
    assert all(name in ("small", "big") and at is not None for name, at in opens.calls)
    # One handle a directory, each on the directory its files were listed from.
    handles = {at for _, at in opens.calls}
    assert len(anchors) == len(handles) == len(DIRS)
    listed = {store.dir_path(d).rstrip("/") for d in set(store.directories(task.rows))}
    assert {os.readlink(f"/proc/self/fd/{at}") for at in handles if at is not None} == listed


def test_handles_stop_at_the_limit_and_the_other_directories_are_read_by_path(
    tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    _tree(tree)
    store, task = _scanned(tree.root)
    expected = _by_path(store, task)
    anchors = Anchors(store, 2)
    try:
        opens = _Opens(monkeypatch)
        result = hash_batch(task, store, anchors)
        assert len(anchors) == 2
    finally:
        anchors.close()
    assert result == expected
    anchored = [name for name, at in opens.calls if at is not None]
    by_path = [name for name, at in opens.calls if at is None]
    assert len(anchored) == 2 * 2 and len(by_path) == 2 * (len(DIRS) - 2)
    assert all(name.startswith(tree.root + "/") for name in by_path)


def test_closing_releases_every_handle_and_opens_none_after(
    anchored: tuple[RowStore, HashTask, Anchors],
) -> None:
    store, task, anchors = anchored
    before = set(os.listdir("/proc/self/fd"))
    hash_batch(task, store, anchors)
    assert len(set(os.listdir("/proc/self/fd")) - before) == len(DIRS)
    anchors.close()
    assert set(os.listdir("/proc/self/fd")) - before == set()
    assert hash_batch(task, store, anchors) == _by_path(store, task)
    assert len(anchors) == 0 and set(os.listdir("/proc/self/fd")) - before == set()


def test_a_directory_swapped_for_a_symlink_gets_no_handle_and_its_files_are_refused(
    anchored: tuple[RowStore, HashTask, Anchors], tree: Tree
) -> None:
    store, task, anchors = anchored
    os.rename(tree.path("a"), tree.path("a.old"))
    tree.file("elsewhere/small", content(3000, seed="s"))
    tree.file("elsewhere/big", content(40000, seed=0))
    os.symlink(tree.path("elsewhere"), tree.path("a"))
    result = hash_batch(task, store, anchors)
    failed = {path: why for _, path, why in result.failed}
    assert failed == {
        tree.path("a/small"): "replaced since the scan (another file at this path)",
        tree.path("a/big"): "replaced since the scan (another file at this path)",
    }
    assert len(anchors) == len(DIRS) - 1


def test_a_file_removed_after_its_directory_handle_was_opened_is_an_issue_at_its_path(
    anchored: tuple[RowStore, HashTask, Anchors], tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The handle is held; the name under it is looked up at the open: a file removed since is
    an issue at its path, not a digest."""
    store, task, anchors = anchored
    real = Anchors.located

    def located_then_remove(self: Anchors, rows: Any) -> Any:
        out = real(self, rows)
        os.unlink(tree.path("b/big"))
        return out

    monkeypatch.setattr(Anchors, "located", located_then_remove)
    result = hash_batch(task, store, anchors)
    assert [(path, why) for _, path, why in result.failed] == [
        (tree.path("b/big"), "No such file or directory (ENOENT)")
    ]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_directory_renamed_during_the_search_leaves_its_files_out_with_an_issue(
    tree: Tree, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    """b is renamed once its handle is open: its files still read as the scan saw them through
    the handle, but b/x is not there any more, so no group lists it."""
    for directory in ("a", "b"):
        tree.file(f"{directory}/x", content(3000, seed="x"))
        tree.file(f"{directory}/y", content(40000, seed="y"))
    real = Anchors.located

    def located_then_rename(self: Anchors, rows: Any) -> Any:
        out = real(self, rows)
        with contextlib.suppress(FileNotFoundError):  # the other worker's call came first
            os.rename(tree.path("b"), tree.path("b.moved"))
        return out

    monkeypatch.setattr(anchors_module.Anchors, "located", located_then_rename)
    result = find_duplicates([tree.root], ScanOptions(workers=workers))
    assert result.groups == ()
    assert {issue.path for issue in result.issues} == {tree.path("b/x"), tree.path("b/y")}


def test_the_handles_take_a_quarter_of_what_the_open_file_limit_leaves() -> None:
    assert handle_limit(1024) == (1024 - RESERVED_FDS) // 4 == 248
    assert handle_limit(RESERVED_FDS) == handle_limit(RESERVED_FDS - 10) == 0
    assert handle_limit(1 << 20) == handle_limit(None) == MAX_HANDLES


def test_a_worker_opens_no_handle_where_its_limit_is_none(
    tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    _tree(tree)
    store, task = _scanned(tree.root)
    expected, anchors = _by_path(store, task), Anchors(store, 0)
    opens = _Opens(monkeypatch)
    assert hash_batch(task, store, anchors) == expected
    assert len(anchors) == 0 and all(at is None for _, at in opens.calls)


@pytest.fixture
def few_descriptors() -> Iterator[int]:
    """This process's soft open-file limit lowered to 256 for the test."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        yield 256
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _free(limit: int) -> int:
    """Descriptors left under `limit` (the listing's own, open while it lists, not counted)."""
    return limit - (len(os.listdir("/proc/self/fd")) - 1)


def _hold(count: int) -> list[int]:
    """Descriptors held open until closed, as a library caller's own would be."""
    return [os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC) for _ in range(count)]


def test_an_in_process_run_leaves_the_callers_descriptors_to_it_and_the_files_their_opens(
    tree: Tree, few_descriptors: int
) -> None:
    """Most of the limit is the caller's: the handles take a share of what is left, so every
    file is still opened and grouped."""
    for n in range(60):
        tree.file(f"d{n:02}/x", content(3000, seed=n))
        tree.file(f"d{n:02}/y", content(3000, seed=n))
    held = _hold(_free(few_descriptors) - RESERVED_FDS - 20)
    try:
        result = find_duplicates([tree.root], ScanOptions(workers=0))
    finally:
        for fd in held:
            os.close(fd)
    assert result.issues == ()
    assert len(result.groups) == 60


def test_no_handle_is_opened_once_the_descriptors_ran_out(
    anchored: tuple[RowStore, HashTask, Anchors], few_descriptors: int
) -> None:
    store, task, anchors = anchored
    directories = store.directories(task.rows)
    first = [row for row, d in zip(task.rows, directories, strict=True) if d in (0, 1)]
    held = _hold(_free(few_descriptors) - 1)
    try:
        handles, _ = anchors.located(first)  # two directories: one handle, then none left
    finally:
        for fd in held:
            os.close(fd)
    assert len(anchors) == 1 and sum(at is None for at in handles) == 2
    anchors.located(task.rows)  # descriptors are free again: still no more handles
    assert len(anchors) == 1


@pytest.mark.parametrize("follow_links", [False, True])
def test_a_directory_listed_through_a_symlink_gets_a_handle_only_with_links_followed(
    tree: Tree, follow_links: bool
) -> None:
    tree.file("real/f", content(3000, seed="f"))
    tree.symlink("link", "real")
    store = RowStore()
    store.start_dir(tree.path("link") + "/", 0, os.stat(tree.root).st_dev)
    store.add(["f"], [os.stat(tree.path("real/f"))])
    anchors = Anchors(store, MAX_HANDLES, follow_links)
    try:
        _, names = anchors.located([0])
        assert len(anchors) == int(follow_links)
        assert names == (["f"] if follow_links else [tree.path("link/f")])
    finally:
        anchors.close()


def test_closing_the_readers_waits_for_the_parts_still_reading(tree: Tree) -> None:
    """A part still reading when the run ends (an interrupted run) finishes before closing
    returns: the directory handles are closed after it, never under it."""
    started, release, finished = threading.Event(), threading.Event(), threading.Event()

    def work(part: Any) -> None:
        started.set()
        release.wait(5)
        finished.set()

    pool = readers.Readers(io_depth=8, workers=1)
    device = pool.device(os.stat(tree.root).st_dev)
    parts = [readers._Part([n], device) for n in range(2)]
    runner = threading.Thread(target=pool._run, args=(parts, work, lambda ps: ps))
    runner.start()
    assert started.wait(5)
    threading.Timer(0.2, release.set).start()
    pool.close()
    assert finished.is_set()
    runner.join(5)
