"""The search with its digest cache (`--cache`): a rerun of an unchanged tree opens no file and
finds the same groups, and no change to a file (bytes rewritten with size and mtime put back, a
name swap, a copy with other bytes, a file changed just before its read) is ever answered from
the cache."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cachetrust import need_trusted
from incli import invoke
from treebuilder import Tree, content, flip, groups_of, issues_of, rewrite

import dedup_engine.find.cache as cache_module
import dedup_engine.find.cached as cached_module
from dedup_engine import ScanOptions, find_duplicates
from dedup_engine.find.hashstep import WindowStep
from dedup_engine.model import FindResult, Stage

pytestmark = pytest.mark.usefixtures("deadline")

READ_STAGES = (Stage.HEAD, Stage.TAIL, Stage.FULL)


def _find(root: str | Path, cache: Path, workers: int) -> FindResult:
    return find_duplicates(root, ScanOptions(workers=workers, cache_dir=str(cache)))


def _opened(result: FindResult) -> int:
    return sum(result.stats.stage(stage).files_opened for stage in READ_STAGES)


def _hits(result: FindResult) -> int:
    return sum(result.stats.stage(stage).cache_hits for stage in READ_STAGES)


def _build(tree: Tree) -> None:
    """Copies and near-copies through every stage: small files read whole by the head, large
    ones that share a head, a tail, or both and differ in the middle."""
    tree.file("small/a", content(3000))
    tree.file("small/b", content(3000))
    tree.file("small/c", content(3000, seed="other"))
    big = content(300_000)
    tree.file("big/a", big)
    tree.file("big/b", big)
    tree.file("big/middle", big[:150_000] + b"X" + big[150_001:])
    tree.file("big/head", big[:200_000] + content(100_000, seed=1))


@pytest.mark.usefixtures("at_once")
@pytest.mark.parametrize("workers", [0, 2])
def test_a_rerun_of_an_unchanged_tree_opens_no_file(
    tree: Tree, tmp_path: Path, workers: int
) -> None:
    need_trusted(tree.root)
    _build(tree)
    first = _find(tree.root, tmp_path / "cache", workers)
    second = _find(tree.root, tmp_path / "cache", workers)
    assert _opened(first) > 0
    assert _opened(second) == 0
    assert _hits(second) == sum(first.stats.stage(s).files_in for s in READ_STAGES)
    assert (
        groups_of(second)
        == groups_of(first)
        == groups_of(find_duplicates(tree.root, ScanOptions(workers=workers)))
    )
    assert [g.digest for g in second.groups] == [g.digest for g in first.groups]


@pytest.mark.usefixtures("at_once")
def test_workers_whose_last_cache_write_waits_are_not_killed_before_it_is_done(
    tree: Tree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A worker's last write may wait `CLOSING_BUSY_MS` for the lock (the other workers' last
    # writes): the pool gives its workers that long to finish, all together, before it kills
    # them, or the wait kept nothing.  Each worker here takes longer to close than the pool
    # once gave each one, and a rerun must still find every digest.
    need_trusted(tree.root)
    _build(tree)
    slow = cache_module.CLOSING_BUSY_MS / 1000 + 0.5
    close = cached_module.WorkerCache.close

    def slow_close(self: cached_module.WorkerCache) -> None:
        time.sleep(slow)
        close(self)

    monkeypatch.setattr(cached_module.WorkerCache, "close", slow_close)
    first = _find(tree.root, tmp_path / "cache", 2)
    monkeypatch.undo()
    second = _find(tree.root, tmp_path / "cache", 2)
    assert _opened(second) == 0
    assert _hits(second) == sum(first.stats.stage(s).files_in for s in READ_STAGES)


@pytest.mark.usefixtures("at_once")
@pytest.mark.parametrize("workers", [0, 2])
def test_bytes_rewritten_with_size_and_mtime_put_back_are_read_again(
    tree: Tree, tmp_path: Path, workers: int
) -> None:
    need_trusted(tree.root)
    _build(tree)
    _find(tree.root, tmp_path / "cache", workers)
    time.sleep(0.05)  # past the clock's tick: the rewrite gets a ctime of its own
    for name, size in (("small/c", 3000), ("big/middle", 300_000)):
        path = tree.path(name)
        before = os.stat(path)
        Path(path).write_bytes(tree.p("small/a" if size == 3000 else "big/a").read_bytes())
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        after = os.stat(path)
        assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    result = _find(tree.root, tmp_path / "cache", workers)
    assert groups_of(result) == {
        tree.paths("small/a", "small/b", "small/c"),
        tree.paths("big/a", "big/b", "big/middle"),
    }


@pytest.mark.usefixtures("at_once")
def test_swapped_names_and_a_copy_with_other_bytes_are_not_taken_from_the_cache(
    tree: Tree, tmp_path: Path
) -> None:
    need_trusted(tree.root)
    tree.file("a", content(5000))
    tree.file("b", content(5000))
    tree.file("c", content(5000, seed="c"))
    tree.file("d", content(5000, seed="d"))
    _find(tree.root, tmp_path / "cache", 2)
    os.rename(tree.path("b"), tree.path("tmp"))  # b and c swap names
    os.rename(tree.path("c"), tree.path("b"))
    os.rename(tree.path("tmp"), tree.path("c"))
    stat_d = os.stat(tree.path("d"))
    os.unlink(tree.path("d"))  # d becomes a copy of a, on another inode, with d's times
    tree.file("d", content(5000))
    os.utime(tree.path("d"), ns=(stat_d.st_atime_ns, stat_d.st_mtime_ns))
    result = _find(tree.root, tmp_path / "cache", 2)
    assert groups_of(result) == {tree.paths("a", "c", "d")}


@pytest.mark.usefixtures("at_once")
def test_a_renamed_tree_is_found_in_the_cache(tree: Tree, tmp_path: Path) -> None:
    need_trusted(tree.root)
    _build(tree)
    first = _find(tree.root, tmp_path / "cache", 2)
    moved = tmp_path / "moved"
    os.rename(tree.root, moved)
    second = _find(moved, tmp_path / "cache", 2)
    assert _opened(second) == 0
    assert len(second.groups) == len(first.groups)


def _build_big(tree: Tree) -> list[str]:
    """a and b equal and above the head's whole-file limit; c the same size, differing in the
    middle (so the same head and tail): all three are read to their end in the full stage."""
    big = content(300_000)
    return [
        tree.file("big/a", big),
        tree.file("big/b", big),
        tree.file("big/c", flip(big, 150_000)),
    ]


@pytest.mark.usefixtures("at_once")
@pytest.mark.parametrize("workers", [0, 2])
def test_a_group_whose_whole_file_digests_are_cached_skips_the_later_stages(
    tree: Tree, tmp_path: Path, workers: int
) -> None:
    """Every member's whole-file digest is in the cache: the head stage splits the group by
    them and finishes it; the tail and full stages see none of it, and count its files as the
    full stage's cache hits."""
    need_trusted(tree.root)
    a, b, _ = _build_big(tree)
    first = _find(tree.root, tmp_path / "cache", workers)
    assert first.stats.stage(Stage.FULL).files_in == 3
    second = _find(tree.root, tmp_path / "cache", workers)
    assert _opened(second) == 0
    assert second.stats.stage(Stage.TAIL).files_in == 0
    full = second.stats.stage(Stage.FULL)
    assert (full.files_in, full.files_out, full.cache_hits, full.cache_misses) == (3, 2, 3, 0)
    assert groups_of(second) == groups_of(first) == {frozenset({a, b})}
    assert [g.digest for g in second.groups] == [g.digest for g in first.groups]


@pytest.mark.usefixtures("at_once")
def test_a_new_copy_in_a_cached_group_sends_the_group_through_every_stage(
    tree: Tree, tmp_path: Path
) -> None:
    need_trusted(tree.root)
    a, b, _ = _build_big(tree)
    _find(tree.root, tmp_path / "cache", 2)
    copy = tree.file("big/d", Path(a).read_bytes())
    second = _find(tree.root, tmp_path / "cache", 2)
    assert groups_of(second) == {frozenset({a, b, copy})}
    # The group of four compared, and c, which differs, read on to its end for the cache.
    assert second.stats.stage(Stage.FULL).files_opened == 5
    assert second.stats.stage(Stage.FULL).cache_misses == 1


@pytest.mark.usefixtures("at_once")
@pytest.mark.parametrize("workers", [0, 2])
def test_a_file_changed_after_the_scan_leaves_a_group_the_cache_finished(
    tree: Tree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    """The members of a group finished from the cache are stat'ed again before it is final, as
    those of a group a window read whole."""
    need_trusted(tree.root)
    _, b, _ = _build_big(tree)
    _find(tree.root, tmp_path / "cache", workers)
    finish = WindowStep._finish_known

    def rewrite_b_first(step: WindowStep, *args: Any) -> bool:
        rewrite(b, Path(b).read_bytes())  # the same bytes, but not the file scanned
        return finish(step, *args)

    monkeypatch.setattr(WindowStep, "_finish_known", rewrite_b_first)
    second = _find(tree.root, tmp_path / "cache", workers)
    assert groups_of(second) == set()
    assert issues_of(second) == {b: {"head"}}
    assert "changed since the scan" in second.issues[0].message


def test_a_file_changed_just_before_its_read_is_not_cached(tree: Tree, tmp_path: Path) -> None:
    """The rule for coarse timestamps: a digest is stored only for a file unchanged for the
    last two seconds, so files the test has just made are all read again."""
    need_trusted(tree.root)
    _build(tree)
    first = _find(tree.root, tmp_path / "cache", 2)
    second = _find(tree.root, tmp_path / "cache", 2)
    assert _opened(second) == _opened(first)
    assert _hits(second) == 0


@pytest.mark.usefixtures("at_once")
def test_a_corrupted_cache_gives_one_warning_and_the_right_groups(
    tree: Tree, tmp_path: Path
) -> None:
    _build(tree)
    cache = tmp_path / "cache"
    expected = groups_of(_find(tree.root, cache, 2))
    data = (cache / cache_module.FILE_NAME).read_bytes()
    (cache / cache_module.FILE_NAME).write_bytes(data[:100] + os.urandom(len(data) - 100))
    result = _find(tree.root, cache, 2)
    assert groups_of(result) == expected
    assert len(result.stats.warnings) == 1 and "rebuilt" in result.stats.warnings[0]
    assert _find(tree.root, cache, 2).stats.warnings == []


def test_two_runs_share_a_cache_at_once(tree: Tree, tmp_path: Path) -> None:
    need_trusted(tree.root)
    for n in range(300):
        tree.file(f"d{n % 7}/f{n}", content(2000 + n % 50))
    cache = tmp_path / "cache"
    command = [sys.executable, "-m", "dedup_engine", "find", tree.root, "-f", "fdupes", "-q"]
    command += ["--cache-dir", str(cache)]
    time.sleep(cache_module.RACY_NS / 1e9 + 0.1)  # old enough to be cached
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE) for _ in range(2)]
    outputs = [run.communicate(timeout=60)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0]
    again = find_duplicates(tree.root, ScanOptions(workers=2, cache_dir=str(cache)))
    assert _opened(again) == 0
    plain = subprocess.run(command[:-2], capture_output=True, check=False).stdout
    assert outputs == [plain, plain]


def test_the_cli_refuses_a_cache_directory_others_may_write(tmp_path: Path, tree: Tree) -> None:
    tree.file("a", b"x")
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    code, _out, err = invoke("find", tree.root, "--cache-dir", shared)
    assert code == 2
    assert err.decode().count("\n") == 1 and "may be written by others" in err.decode()


def test_the_environment_turns_the_cache_on_and_no_cache_off(
    tmp_path: Path, tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree.file("a", content(100))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv(cache_module.ENVIRONMENT, "1")
    assert invoke("find", tree.root, "--no-cache")[0] == 0
    assert not (tmp_path / "xdg").exists()
    assert invoke("find", tree.root)[0] == 0
    assert (tmp_path / "xdg" / "dedup-engine" / cache_module.FILE_NAME).is_file()
    assert cache_module.ENVIRONMENT not in cache_module.environment_without()  # for benchmarks


@pytest.mark.usefixtures("at_once")
def test_a_cache_under_a_root_is_not_searched(tree: Tree) -> None:
    _build(tree)
    files = 7
    for _ in range(2):
        result = _find(tree.root, Path(tree.root) / ".cache" / "dedup-engine", 2)
        assert result.stats.files_scanned == files
        assert not [f for g in result.groups for f in g.files if "/.cache/" in f.path]


def test_a_root_in_the_cache_directory_is_refused(tree: Tree, tmp_path: Path) -> None:
    tree.file("a", b"x")
    cache = tmp_path / "cache"
    _find(tree.root, cache, 0)
    for root in (cache, cache / cache_module.FILE_NAME):
        code, _out, err = invoke("find", root, "--cache-dir", cache)
        assert code == 2
        assert err.decode().count("\n") == 1 and "in the digest cache's directory" in err.decode()
    assert invoke("find", cache, "--no-cache")[0] in (0, 1)


def test_a_task_shared_out_among_threads_still_writes_back_before_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A digest to be kept is read only after the file's dirty pages were written back, in
    whichever part of the task a thread reads it (a task is split when its files are not in
    the page cache)."""
    from array import array

    from dedup_engine.find import fullcompare, hashtasks, readers
    from dedup_engine.find.store import RowStore
    from dedup_engine.find.tasks import CompareTask, DirJob, HashTask, ScanTask, Window
    from dedup_engine.find.walk import Filter, scan_dirs
    from dedup_engine.model import Stage

    for n in range(64):
        (tmp_path / f"f{n:02}").write_bytes(content(5000, seed=str(n // 2)))
    written: list[int] = []
    monkeypatch.setattr(hashtasks, "expose_mapped_writes", written.append)
    monkeypatch.setattr(fullcompare, "expose_mapped_writes", written.append)
    monkeypatch.setattr(readers, "_resident", lambda paths, offsets: False)
    store, top = RowStore(), os.stat(tmp_path)
    job = DirJob(str(tmp_path), 0, 0, top.st_dev, top.st_dev, top.st_ino)
    scanned = scan_dirs(ScanTask((job,)), Filter(ScanOptions(), {0: str(tmp_path)}), store)
    pool = readers.Readers(io_depth=8, workers=1)
    try:
        window = Window(Stage.HEAD, 4096, 4096)
        rows = array("Q", range(len(store)))
        task = HashTask(window, rows, scanned.sizes, False, writeback=True)
        assert len(pool._parts([pool.device(top.st_dev)] * 64, store.paths, lambda p: 0)) > 1
        pool.hash_batch(task, store)
        assert len(written) == 64
        written.clear()
        paths = sorted(store.paths(rows))
        compare = CompareTask(
            tuple(paths),
            array("q", [5000] * 64),
            array("I", [2] * 32),
            array("Q", [top.st_dev] * 64),
            array("Q", [os.stat(p).st_ino for p in paths]),
            array("q", [os.stat(p).st_mtime_ns for p in paths]),
            array("q", [os.stat(p).st_ctime_ns for p in paths]),
            False,
            1 << 20,
            True,
        )
        pool.compare(compare)
        assert len(written) == 64
    finally:
        pool.close()
