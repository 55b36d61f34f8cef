"""The digest cache's own rules: a changed file never hits, an unusable file is rebuilt with one
warning, a directory others could write is refused, and two writers at once are safe."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

import dedup_engine.find.cache as cache_module
import dedup_engine.find.cached as cached_module
from dedup_engine.find.cache import (
    FILE_NAME,
    RACY_NS,
    CacheError,
    DigestCache,
    cacheable,
    kind_of,
)
from dedup_engine.find.cached import WorkerCache
from dedup_engine.find.fsidentity import filesystem_id
from dedup_engine.model import Stage

FS = b"\x01" * 8
DIGEST = bytes(range(32))
HEAD = kind_of(Stage.HEAD, 4096)
DIR = "/data"


def _opened(directory: Path) -> DigestCache:
    opened = DigestCache.open(str(directory))
    assert opened.warning is None and opened.cache is not None
    return opened.cache


def test_a_stored_digest_is_found_for_the_same_file_only(tmp_path: Path) -> None:
    cache = _opened(tmp_path / "c")
    cache.store(FS, HEAD, DIR, [(10, 5000, 111, 222, DIGEST)])
    seen = [
        (10, 5000, 111, 222),  # unchanged
        (10, 5000, 111, 223),  # bytes rewritten and mtime put back: ctime moved
        (10, 5000, 112, 222),  # mtime
        (10, 5001, 111, 222),  # size
        (11, 5000, 111, 222),  # another inode
    ]
    assert cache.lookup(FS, HEAD, seen) == [DIGEST, None, None, None, None]
    assert cache.lookup(b"\x02" * 8, HEAD, seen[:1]) == [None]  # another filesystem
    assert cache.lookup(FS, kind_of(Stage.HEAD, 8192), seen[:1]) == [None]  # another window
    assert cache.lookup(FS, kind_of(Stage.FULL), seen[:1]) == [None]


def test_a_new_digest_replaces_the_old_and_survives_reopening(tmp_path: Path) -> None:
    cache = _opened(tmp_path)
    cache.store(FS, HEAD, DIR, [(10, 5000, 111, 222, DIGEST)])
    cache.store(FS, HEAD, DIR, [(10, 5000, 111, 333, DIGEST[::-1])])
    cache.close()
    again = _opened(tmp_path)
    assert again.lookup(FS, HEAD, [(10, 5000, 111, 333), (10, 5000, 111, 222)]) == [
        DIGEST[::-1],
        None,
    ]
    assert again.count() == 1


def test_lookups_of_many_files_come_back_in_order(tmp_path: Path) -> None:
    cache = _opened(tmp_path)
    digest = {ino: (ino + 1).to_bytes(32, "big") for ino in range(5000)}
    cache.store(FS, HEAD, DIR, [(ino, 1, 2, 3, digest[ino]) for ino in range(0, 5000, 2)])
    seen = [(ino, 1, 2, 3) for ino in range(5000)]
    assert cache.lookup(FS, HEAD, seen) == [
        digest[ino] if ino % 2 == 0 else None for ino in range(5000)
    ]


@pytest.mark.parametrize(
    "damage",
    ["garbage", "foreign", "newer", "trigger", "short digest", "no digest", "text digest"],
)
def test_an_unusable_cache_is_set_aside_with_one_warning(tmp_path: Path, damage: str) -> None:
    path = tmp_path / FILE_NAME
    if damage == "garbage":
        path.write_bytes(b"SQLite format 3\0" + os.urandom(4096))
    elif damage == "foreign":  # another program's database
        db = sqlite3.connect(path)
        db.execute("CREATE TABLE t (x)")
        db.commit()
        db.close()
    elif damage == "trigger":  # ours, with a trigger that would run on every store
        _opened(tmp_path).close()
        db = sqlite3.connect(path)
        db.execute(
            "CREATE TRIGGER t AFTER INSERT ON digests BEGIN"
            " UPDATE digests SET digest = zeroblob(32); END"
        )
        db.commit()
        db.close()
    elif damage == "newer":  # ours, then claimed by a later version
        _opened(tmp_path).close()
        db = sqlite3.connect(path)
        db.execute("PRAGMA user_version = 99")
        db.commit()
        db.close()
    else:  # a row no run of ours writes: never used
        cache = _opened(tmp_path)
        bad = {"short digest": b"short", "no digest": bytes(32), "text digest": "x" * 32}[damage]
        cache.store(FS, HEAD, DIR, [(10, 5000, 111, 222, bad)])  # type: ignore[list-item]
        assert cache.lookup(FS, HEAD, [(10, 5000, 111, 222)]) == [None]
        return
    opened = DigestCache.open(str(tmp_path))
    assert opened.warning is not None and "rebuilt" in opened.warning
    assert opened.cache is not None
    assert (tmp_path / (FILE_NAME + ".unusable")).exists()
    opened.cache.store(FS, HEAD, DIR, [(10, 5000, 111, 222, DIGEST)])
    assert opened.cache.lookup(FS, HEAD, [(10, 5000, 111, 222)]) == [DIGEST]
    assert DigestCache.open(str(tmp_path)).warning is None  # once


def test_a_directory_others_could_write_to_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    with pytest.raises(CacheError, match="written by others"):
        DigestCache.open(str(shared))
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "c")
    (tmp_path / "c").mkdir(mode=0o700)
    with pytest.raises(CacheError, match="symlink"):
        DigestCache.open(str(link))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the directory away")
def test_another_users_directory_is_refused(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 65534, 65534)
    with pytest.raises(CacheError, match="belongs to uid 65534"):
        DigestCache.open(str(theirs))


def test_a_new_cache_is_private(tmp_path: Path) -> None:
    _opened(tmp_path / "new").close()
    assert (tmp_path / "new").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "new" / FILE_NAME).stat().st_mode & 0o777 == 0o600


def _write_many(directory: str, first: int) -> None:
    cache = DigestCache(directory)
    for batch in range(20):
        start = first + batch * 100
        cache.store(FS, HEAD, DIR, [(ino, 1, 2, 3, DIGEST) for ino in range(start, start + 100)])
    cache.close()


def test_two_runs_write_one_cache_at_once(tmp_path: Path) -> None:
    _opened(tmp_path).close()
    context = multiprocessing.get_context("fork")
    writers = [
        context.Process(target=_write_many, args=(str(tmp_path), n * 10_000)) for n in (0, 1)
    ]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=60)
        assert writer.exitcode == 0
    assert _opened(tmp_path).count() == 4000


def test_a_digest_of_a_file_changed_just_before_its_read_is_not_stored() -> None:
    now = 10**18
    assert not cacheable(now - RACY_NS + 1, now)
    assert cacheable(now - RACY_NS, now)


def test_a_local_filesystem_has_an_identity(tmp_path: Path) -> None:
    dev = tmp_path.stat().st_dev
    identity = filesystem_id(str(tmp_path), dev)
    if identity is None:
        pytest.skip("this filesystem reports no f_fsid")
    assert len(identity) == 8
    with pytest.raises(FileNotFoundError):
        filesystem_id(str(tmp_path / "missing"), dev)


def test_a_path_now_on_another_filesystem_lends_no_identity(tmp_path: Path) -> None:
    """The identity is asked of the open file, which must be on the device the scan saw: a path
    that now leads elsewhere (a mount over it, a name swapped for another filesystem's) would
    file its digests under another filesystem's inodes."""
    (tmp_path / "f").write_bytes(b"x")
    other = os.stat("/proc").st_dev
    with pytest.raises(OSError, match="no longer on the device"):
        filesystem_id(str(tmp_path / "f"), other)
    cache = WorkerCache(str(tmp_path / "cache"))
    assert cache.fs(other, str(tmp_path / "f"), False) is None
    dev = (tmp_path / "f").stat().st_dev
    assert cache.fs(dev, str(tmp_path / "f"), False) == filesystem_id(str(tmp_path), dev)


def test_a_locked_cache_is_left_alone_and_the_run_goes_without_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _opened(tmp_path).close()
    monkeypatch.setattr(cache_module, "BUSY_MS", 100)
    holder = sqlite3.connect(tmp_path / FILE_NAME)
    holder.execute("PRAGMA locking_mode = EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        opened = DigestCache.open(str(tmp_path))
    finally:
        holder.rollback()
        holder.close()
    assert opened.cache is None
    assert opened.warning is not None and "cannot be used now" in opened.warning
    assert not (tmp_path / (FILE_NAME + ".unusable")).exists()
    assert DigestCache.open(str(tmp_path)).warning is None


@pytest.mark.parametrize("problem", ["second name", "others may write"])
def test_a_database_file_another_could_change_is_refused(tmp_path: Path, problem: str) -> None:
    _opened(tmp_path).close()
    if problem == "second name":
        os.link(tmp_path / FILE_NAME, tmp_path / "elsewhere")
    else:
        (tmp_path / FILE_NAME).chmod(0o666)
    with pytest.raises(CacheError):
        DigestCache.open(str(tmp_path))


def test_two_devices_that_give_one_identity_are_both_read_without_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An overlay over two filesystems shows one f_fsid for files of different devices, whose
    inode numbers may repeat: neither device's files can be keyed on it."""
    monkeypatch.setattr(cached_module, "filesystem_id", lambda *args: FS)
    cache = WorkerCache(str(tmp_path / "cache"))
    assert cache.fs(1, "/a", False) == FS
    assert cache.fs(2, "/b", False) is None
    assert cache.fs(1, "/a", False) is None


def _store_then_die(directory: str) -> None:
    """A worker that commits one batch (its second has waited a second), holds another, and
    is killed."""
    worker = WorkerCache(directory)
    worker.store((FS, HEAD, DIR), [(ino, 1, 2, 3, DIGEST) for ino in range(1, 101)])
    worker.flush()  # as after a second of hashing
    worker.store((FS, HEAD, DIR), [(ino, 1, 2, 3, DIGEST) for ino in range(101, 201)])
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_killed_worker_keeps_what_it_committed_and_the_cache_stays_whole(
    tmp_path: Path,
) -> None:
    _opened(tmp_path).close()
    child = multiprocessing.get_context("fork").Process(
        target=_store_then_die, args=(str(tmp_path),)
    )
    child.start()
    child.join(timeout=60)
    assert child.exitcode == -signal.SIGKILL
    opened = DigestCache.open(str(tmp_path))
    assert opened.warning is None and opened.cache is not None
    found = opened.cache.lookup(FS, HEAD, [(ino, 1, 2, 3) for ino in range(1, 201)])
    assert found == [DIGEST] * 100 + [None] * 100


# --- a path no one else can redirect ----------------------------------------------------------


def test_a_directory_above_the_cache_others_may_write_is_refused(tmp_path: Path) -> None:
    """SQLite opens the database by its path: another user who may rename a directory above
    the cache could swap in a planted one after the check."""
    shared = tmp_path / "shared"
    (shared / "mine").mkdir(parents=True, mode=0o700)
    shared.chmod(0o777)
    with pytest.raises(CacheError, match="above the cache directory, may be written by others"):
        DigestCache.open(str(shared / "mine" / "cache"))
    shared.chmod(0o1777)  # sticky, as /tmp: only a name's owner may move it
    _opened(shared / "mine" / "cache").close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory away")
def test_a_directory_above_the_cache_of_another_user_is_refused(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    (theirs / "mine").mkdir(parents=True, mode=0o700)
    theirs.chmod(0o755)
    os.chown(theirs, 65534, 65534)
    with pytest.raises(CacheError, match="above the cache directory, belongs to uid 65534"):
        DigestCache.open(str(theirs / "mine"))


def test_a_symlink_above_the_cache_is_resolved_and_the_target_checked(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    _opened(tmp_path / "link" / "cache").close()
    assert (tmp_path / "real" / "cache" / FILE_NAME).is_file()
    (tmp_path / "real").chmod(0o777)
    with pytest.raises(CacheError, match=f"{tmp_path / 'real'}.*may be written by others"):
        DigestCache.open(str(tmp_path / "link" / "cache"))


def test_a_database_swapped_before_sqlite_opens_it_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _opened(tmp_path).close()
    connect = cache_module._connect

    def swapped(path: str, busy_ms: int) -> sqlite3.Connection:
        os.rename(tmp_path / FILE_NAME, tmp_path / "checked")
        planted = sqlite3.connect(tmp_path / FILE_NAME)
        planted.execute("CREATE TABLE planted (x)")
        planted.commit()
        planted.close()
        return connect(path, busy_ms)

    monkeypatch.setattr(cache_module, "_connect", swapped)
    with pytest.raises(sqlite3.OperationalError, match="replaced while it was opened"):
        DigestCache(str(tmp_path))
    opened = DigestCache.open(str(tmp_path))  # tried twice, swapped twice: not used, a warning
    assert opened.cache is None
    assert opened.warning is not None and "cannot be used now" in opened.warning


def test_a_database_removed_while_it_is_opened_is_opened_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As when `dedup cache clear`, or another run setting it aside, removes it meanwhile."""
    _opened(tmp_path).close()
    connect = cache_module._connect
    removals: list[str] = []

    def removed_once(path: str, busy_ms: int) -> sqlite3.Connection:
        db = connect(path, busy_ms)
        if not removals:
            removals.append(path)
            os.unlink(path)
        return db

    monkeypatch.setattr(cache_module, "_connect", removed_once)
    opened = DigestCache.open(str(tmp_path))
    assert opened.warning is None and opened.cache is not None and removals


# --- runs at once on a damaged cache, and a cache locked by another program -------------------


def _open_and_store(directory: str, ino: int) -> None:
    opened = DigestCache.open(directory)
    if opened.cache is None:
        os._exit(3)
    opened.cache.store(FS, HEAD, DIR, [(ino, 1, 2, 3, DIGEST)])
    opened.cache.close()
    os._exit(0)


def test_runs_that_find_one_damaged_cache_at_once_rebuild_it_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight runs all find the cache damaged before any of them rebuilds it.  Each stores a
    row in the cache it opened: a run that set aside a cache another had just rebuilt would
    lose that run's row, and keep a good cache as the damaged one."""
    garbage = b"SQLite format 3\0" + os.urandom(8192)
    (tmp_path / FILE_NAME).write_bytes(garbage)
    context = multiprocessing.get_context("fork")
    all_found = context.Barrier(8)
    lock = cache_module._lock

    def after_all_found(dir_fd: int) -> None:
        all_found.wait(timeout=30)
        lock(dir_fd)

    monkeypatch.setattr(cache_module, "_lock", after_all_found)
    runs = [context.Process(target=_open_and_store, args=(str(tmp_path), ino)) for ino in range(8)]
    for run in runs:
        run.start()
    for run in runs:
        run.join(timeout=60)
    assert [run.exitcode for run in runs] == [0] * 8
    monkeypatch.undo()
    cache = _opened(tmp_path)
    assert cache.lookup(FS, HEAD, [(ino, 1, 2, 3) for ino in range(8)]) == [DIGEST] * 8
    assert (tmp_path / (FILE_NAME + ".unusable")).read_bytes() == garbage


def test_a_worker_holds_its_digests_while_another_program_locks_the_cache(
    tmp_path: Path,
) -> None:
    _opened(tmp_path).close()
    worker = WorkerCache(str(tmp_path))
    holder = sqlite3.connect(tmp_path / FILE_NAME)
    holder.execute("BEGIN IMMEDIATE")
    try:
        worker.store((FS, HEAD, DIR), [(ino, 1, 2, 3, DIGEST) for ino in range(100)])
        worker.flush()
        assert worker.lookup((FS, HEAD), [(0, 1, 2, 3)]) == [None]
    finally:
        holder.rollback()
        holder.close()
    worker.flush()
    worker.close()
    assert _opened(tmp_path).count() == 100


def test_a_worker_closing_waits_for_a_lock_held_past_its_usual_wait(tmp_path: Path) -> None:
    """At the end of a run the workers write their last digests at once, and on a busy disk one
    write can hold the lock past `WORKER_BUSY_MS`.  No later flush would keep the digests of the
    worker that waits: it waits `CLOSING_BUSY_MS`, and stores them."""
    _opened(tmp_path).close()
    worker = WorkerCache(str(tmp_path))
    worker.store((FS, HEAD, DIR), [(ino, 1, 2, 3, DIGEST) for ino in range(100)])
    holder = sqlite3.connect(tmp_path / FILE_NAME, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    hold_s = (cache_module.WORKER_BUSY_MS + cache_module.CLOSING_BUSY_MS) / 2000
    release = threading.Timer(hold_s, holder.rollback)
    release.start()
    try:
        worker.close()
    finally:
        release.join()
        holder.close()
    assert _opened(tmp_path).count() == 100


def test_a_worker_closing_on_a_cache_that_refuses_the_longer_wait_still_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _opened(tmp_path).close()
    worker = WorkerCache(str(tmp_path))
    worker.store((FS, HEAD, DIR), [(ino, 1, 2, 3, DIGEST) for ino in range(10)])

    def refused(self: DigestCache, busy_ms: int) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(DigestCache, "wait_for_locks", refused)
    worker.close()  # the end of a worker's run never fails for its cache
    assert _opened(tmp_path).count() == 10


def test_a_worker_gives_up_a_cache_locked_against_readers_after_a_few_tries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each try waits for the lock (`WORKER_BUSY_MS`): a cache locked for the whole run must not
    cost a wait per task.  (In WAL mode a reader meets a lock only in rare moments, as while
    another connection recovers the WAL; the lock is simulated.)"""
    _opened(tmp_path).close()
    worker = WorkerCache(str(tmp_path))
    tries = 0

    def locked(self: DigestCache, *args: Any) -> list[bytes | None]:
        nonlocal tries
        tries += 1
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(DigestCache, "lookup_kinds", locked)
    for _ in range(20):
        assert worker.lookup((FS, HEAD), [(1, 1, 2, 3)]) == [None]
    assert tries == cached_module.BUSY_LIMIT
    worker.close()


@pytest.mark.parametrize("companion", ["-wal", "-shm", "-journal"])
@pytest.mark.parametrize("problem", ["others may write", "a symlink", "second name"])
def test_a_planted_companion_file_is_refused(tmp_path: Path, companion: str, problem: str) -> None:
    """SQLite reads a database's WAL and journal as part of it: a WAL that says b's digest is
    a's would make a wrong group."""
    _opened(tmp_path).close()
    planted = tmp_path / (FILE_NAME + companion)
    planted.unlink(missing_ok=True)
    if problem == "a symlink":
        planted.symlink_to(tmp_path / "elsewhere")
    else:
        planted.write_bytes(b"x")
        if problem == "second name":
            os.link(planted, tmp_path / "other name")
        else:
            planted.chmod(0o666)
    with pytest.raises(CacheError, match=companion):
        DigestCache.open(str(tmp_path))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a symlink away")
def test_a_symlink_of_another_user_on_the_way_is_refused_before_anything_is_made(
    tmp_path: Path,
) -> None:
    (tmp_path / "mine").mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "mine")
    os.lchown(link, 65534, 65534)
    with pytest.raises(CacheError, match="symlink of uid 65534"):
        DigestCache.open(str(link / "cache"))
    assert list((tmp_path / "mine").iterdir()) == []


def test_directories_are_made_only_in_directories_that_passed(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(CacheError, match="may be written by others"):
        DigestCache.open(str(shared / "a" / "b"))
    assert list(shared.iterdir()) == []


def test_inode_numbers_past_two_to_the_63_are_kept(tmp_path: Path) -> None:
    cache = _opened(tmp_path)
    big = (1 << 64) - 5
    cache.store(FS, HEAD, DIR, [(big, 1, 2, 3, DIGEST)])
    assert cache.lookup(FS, HEAD, [(big, 1, 2, 3), (big - 1, 1, 2, 3)]) == [DIGEST, None]


def test_crafted_values_do_not_break_stats(tmp_path: Path) -> None:
    cache = _opened(tmp_path)
    cache.store(FS, HEAD, DIR, [(1, 1, 2, 3, DIGEST)])
    cache.close()
    db = sqlite3.connect(tmp_path / FILE_NAME)
    db.execute("UPDATE digests SET kind = 'text'")
    db.commit()
    db.close()
    summary = _opened(tmp_path).summary()
    assert summary.rows == 1 and summary.by_kind == {}
