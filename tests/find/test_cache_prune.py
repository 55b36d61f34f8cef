"""`prune`: the rows of files gone, changed or moved away go, those of files still as they were
stay (a rerun opens none of them), rows of a filesystem not mounted now are kept, and a size cap
drops the least recently used directories first."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from cachetrust import need_trusted
from treebuilder import Tree, content

import dedup_engine.find.cacheprune as prune_module
from dedup_engine import ScanOptions, find_duplicates
from dedup_engine.find.cache import FILE_NAME, DigestCache, Directory, kind_of
from dedup_engine.find.cached import WorkerCache
from dedup_engine.find.cacheprune import Listing, prune
from dedup_engine.find.fsidentity import filesystem_id
from dedup_engine.model import FindResult, Stage

pytestmark = pytest.mark.usefixtures("deadline", "at_once")

DIGEST = bytes(range(32))
WHOLE = kind_of(Stage.FULL)


def _find(root: str, cache: Path, follow_links: bool = False) -> FindResult:
    options = ScanOptions(workers=2, cache_dir=str(cache), follow_links=follow_links)
    return find_duplicates(root, options)


def _opened(result: FindResult) -> int:
    return sum(result.stats.stage(s).files_opened for s in (Stage.HEAD, Stage.TAIL, Stage.FULL))


def _cache(directory: Path) -> DigestCache:
    opened = DigestCache.open(str(directory))
    assert opened.cache is not None
    return opened.cache


def test_rows_of_files_gone_changed_or_moved_go_and_the_rest_stay(
    tree: Tree, tmp_path: Path
) -> None:
    need_trusted(tree.root)
    for name in ("keep1", "keep2", "gone", "changed", "moved"):
        tree.file(f"d/{name}", content(3000))  # all one group, each read whole: one row each
    cache_dir = tmp_path / "cache"
    _find(tree.root, cache_dir)
    cache = _cache(cache_dir)
    assert cache.count() == 5
    root = Path(tree.root)
    (root / "d" / "gone").unlink()
    with open(root / "d" / "changed", "ab") as file:
        file.write(b"more")
    (root / "e").mkdir()
    (root / "d" / "moved").rename(root / "e" / "moved")
    done = prune(cache)
    assert (done.rows_before, done.gone, done.rows_after, done.unmounted) == (5, 3, 2, 0)
    assert cache.summary().directories == 1
    cache.close()
    again = _find(tree.root, cache_dir)
    assert _opened(again) == 1  # "moved" ("changed" is alone in its size now)
    assert sum(again.stats.stage(s).cache_hits for s in (Stage.HEAD, Stage.FULL)) == 2


def test_rows_of_a_linked_file_stay_while_the_link_and_its_target_do(
    tree: Tree, tmp_path: Path
) -> None:
    need_trusted(tree.root)
    tree.file("t/a", content(3000))
    tree.file("t/b", content(3000))
    (Path(tree.root) / "links").mkdir()
    (Path(tree.root) / "links" / "c").symlink_to(Path(tree.root) / "t" / "a")
    cache_dir = tmp_path / "cache"
    _find(tree.root, cache_dir, follow_links=True)
    cache = _cache(cache_dir)
    rows = cache.count()
    assert prune(cache).gone == 0 and cache.count() == rows


def test_rows_of_a_filesystem_not_mounted_now_are_kept_unchecked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = _cache(tmp_path / "cache")
    cache.store(b"\x07" * 8, WHOLE, "/media/usb/photos", [(5, 10, 20, 30, DIGEST)])
    monkeypatch.setattr(prune_module, "mounted_filesystems", set)  # nothing mounted
    done = prune(cache)
    assert (done.gone, done.unmounted, cache.count()) == (0, 1, 1)
    monkeypatch.setattr(prune_module, "mounted_filesystems", lambda: {b"\x07" * 8})
    assert prune(cache).gone == 1  # mounted, and the directory is not there


def test_a_directory_now_on_another_filesystem_loses_its_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another disk mounted where the files were: its inodes say nothing of the rows'."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"x" * 10)
    st = (tmp_path / "d" / "f").stat()
    elsewhere = b"\x09" * 8
    assert filesystem_id(str(tmp_path), tmp_path.stat().st_dev) != elsewhere
    cache = _cache(tmp_path / "cache")
    seen = (st.st_ino, 10, st.st_mtime_ns, st.st_ctime_ns, DIGEST)
    cache.store(elsewhere, WHOLE, str(tmp_path / "d"), [seen])
    monkeypatch.setattr(prune_module, "mounted_filesystems", lambda: {elsewhere})
    assert prune(cache).gone == 1 and cache.count() == 0


def test_rows_of_a_directory_no_longer_recorded_go(tmp_path: Path) -> None:
    cache = _cache(tmp_path / "cache")
    cache.store(b"\x07" * 8, WHOLE, "/somewhere", [(5, 10, 20, 30, DIGEST)])
    cache.close()
    db = sqlite3.connect(tmp_path / "cache" / FILE_NAME)
    db.execute("DELETE FROM dirs")
    db.commit()
    db.close()
    cache = _cache(tmp_path / "cache")
    assert prune(cache).gone == 1 and cache.count() == 0


def _used(directory: Path) -> dict[str, int]:
    db = sqlite3.connect(directory / FILE_NAME)
    try:
        return {os.fsdecode(path): used for path, used in db.execute("SELECT path, used FROM dirs")}
    finally:
        db.close()


def _set_used(directory: Path, used: dict[str, int]) -> None:
    db = sqlite3.connect(directory / FILE_NAME)
    db.executemany(
        "UPDATE dirs SET used = ? WHERE path = ?",
        [(day, os.fsencode(path)) for path, day in used.items()],
    )
    db.commit()
    db.close()


def test_the_size_cap_drops_the_least_recently_used_directories_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache_dir = tmp_path / "cache"
    cache = _cache(cache_dir)
    fs = b"\x07" * 8
    for d in range(10):
        rows = [(d * 10_000 + i, 10, 20, 30, DIGEST) for i in range(2000)]
        cache.store(fs, WHOLE, f"/data/d{d}", rows)
    cache.close()
    _set_used(cache_dir, {f"/data/d{d}": 100 + (d * 7) % 10 for d in range(10)})
    monkeypatch.setattr(prune_module, "mounted_filesystems", set)  # rows kept unchecked
    cache = _cache(cache_dir)
    full = cache.bytes_on_disk()
    done = prune(cache, max_bytes=full // 2)
    assert done.bytes_after <= full // 2 and done.capped == done.rows_before - done.rows_after
    kept = _used(cache_dir)
    dropped = {f"/data/d{d}": 100 + (d * 7) % 10 for d in range(10)}.keys() - kept.keys()
    assert kept and dropped
    assert max(100 + (int(p[-1]) * 7) % 10 for p in dropped) < min(kept.values())


def test_a_run_that_finds_a_directory_s_digests_marks_it_used(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    cache = _cache(cache_dir)
    fs = b"\x07" * 8
    cache.store(fs, WHOLE, "/data/a", [(1, 10, 20, 30, DIGEST)])
    cache.store(fs, WHOLE, "/data/b", [(2, 10, 20, 30, DIGEST)])
    cache.close()
    _set_used(cache_dir, {"/data/a": 5, "/data/b": 5})
    worker = WorkerCache(str(cache_dir))
    assert worker.lookup((fs, WHOLE), [(1, 10, 20, 30)]) == [DIGEST]
    worker.close()
    used = _used(cache_dir)
    assert used["/data/b"] == 5 and used["/data/a"] > 5


def test_a_crafted_directory_path_is_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = _cache(tmp_path / "cache")
    cache.store(b"\x07" * 8, WHOLE, "/a\0b", [(5, 10, 20, 30, DIGEST)])
    monkeypatch.setattr(prune_module, "mounted_filesystems", lambda: {b"\x07" * 8})
    assert prune(cache).gone == 1


def test_prune_goes_on_while_a_run_commits(
    tree: Tree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rows are read under one snapshot while the directories are listed; another run's
    commit meanwhile must not make the drop fail, and the rows that run stored stay."""
    need_trusted(tree.root)
    for d in ("a", "b"):
        for i in range(3):
            tree.file(f"{d}/f{i}", content(2000, seed=f"{d}{i}"))
    cache_dir = tmp_path / "cache"
    _find(tree.root, cache_dir)
    (Path(tree.root) / "a" / "f0").unlink()
    cache = _cache(cache_dir)
    fs = filesystem_id(tree.root, os.stat(tree.root).st_dev)
    assert fs is not None
    listing = prune_module.list_directory
    stored: list[int] = []

    def while_a_run_commits(directory: Directory) -> Listing | None:
        stored.append(10**9 + len(stored))
        other = _cache(cache_dir)
        other.store(fs, WHOLE, os.path.join(tree.root, "a"), [(stored[-1], 1, 1, 1, DIGEST)])
        other.close()
        return listing(directory)

    monkeypatch.setattr(prune_module, "list_directory", while_a_run_commits)
    assert prune(cache).gone == 1  # f0's row; those stored meanwhile are not in the snapshot
    assert cache.lookup(fs, WHOLE, [(ino, 1, 1, 1) for ino in stored]) == [DIGEST] * 2


def test_the_filesystem_of_the_tests_is_mounted(tmp_path: Path) -> None:
    need_trusted(tmp_path)
    mounted = prune_module.mounted_filesystems()
    assert mounted is not None
    assert filesystem_id(str(tmp_path), tmp_path.stat().st_dev) in mounted
