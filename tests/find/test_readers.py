"""A worker's readers on a device read with threads: the files whose window is in the page cache
are read at once, the others are left to the threads; either way each file gets the digest of
its window, is counted opened once, and a file changed since the scan still gets an issue.

Files are put out of the page cache with `posix_fadvise(DONTNEED)` after a sync, which works
on a disk's filesystem (the tests' temporary directory here and in CI) and not on tmpfs: there
the tests that need it are skipped.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import tracemalloc
from array import array
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from blake3 import blake3
from treebuilder import content

from dedup_engine import ScanOptions, find_duplicates
from dedup_engine.find import hashtasks, readers
from dedup_engine.find.hashtasks import GIVE_UP_AFTER, hash_batch, hash_rows
from dedup_engine.find.store import RowStore
from dedup_engine.find.tasks import (
    DIGEST_SIZE,
    NO_DIGEST,
    DirJob,
    HashResult,
    HashTask,
    ScanTask,
    Window,
)
from dedup_engine.find.walk import Filter, scan_dirs
from dedup_engine.model import Stage

pytestmark = pytest.mark.usefixtures("deadline")

HEAD = Window(Stage.HEAD, 4096, 16384)
TAIL = Window(Stage.TAIL, 4096)
#: Sizes read whole by HEAD, and sizes read by their window.
SMALL, BIG = 5000, 70000


def _evict(paths: list[str]) -> None:
    os.sync()  # once for all: DONTNEED drops clean pages only
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


_LIBC = ctypes.CDLL(None, use_errno=True)


def _in_cache(path: str) -> bool:
    """Whether any page of the file is in the page cache (mincore: a read with RWF_NOWAIT
    would start reading the file in)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) as mapped:
        pages = -(-size // mmap.PAGESIZE)
        vector = (ctypes.c_ubyte * pages)()
        address = ctypes.addressof(ctypes.c_char.from_buffer(mapped))
        if _LIBC.mincore(ctypes.c_void_p(address), ctypes.c_size_t(size), vector) != 0:
            raise OSError(ctypes.get_errno(), "mincore failed")
        return any(v & 1 for v in vector)


def _tree(tmp_path: Path, count: int, size: int) -> list[str]:
    paths = []
    for n in range(count):
        path = tmp_path / f"f{n:03}"
        path.write_bytes(content(size, seed=n))
        paths.append(str(path))
    return paths


def _scanned(tmp_path: Path) -> tuple[RowStore, HashTask]:
    store, top = RowStore(), os.stat(tmp_path)
    job = DirJob(str(tmp_path), 0, 0, top.st_dev, top.st_dev, top.st_ino)
    scanned = scan_dirs(ScanTask((job,)), Filter(ScanOptions(), {0: str(tmp_path)}), store)
    task = HashTask(HEAD, array("Q", range(len(store))), scanned.sizes, False)
    return store, task


def _evicted(paths: list[str]) -> list[str]:
    """Every third of the paths put out of the page cache, the others read into it just now (a
    host may reclaim what has not been read for a while); skips where that cannot be done."""
    out = paths[::3]
    _evict(out)
    if any(_in_cache(p) for p in out):
        pytest.skip("the page cache keeps these files (tmpfs?): nothing can be put on the disk")
    _warm([p for p in paths if p not in out])
    return out


def _warm(paths: list[str]) -> None:
    for path in paths:
        Path(path).read_bytes()


def _window(path: str, window: Window) -> bytes:
    data = Path(path).read_bytes()
    if len(data) <= window.whole_limit:
        return data
    return data[: window.length] if window.stage is Stage.HEAD else data[-window.length :]


def _digests(result: bytes) -> list[bytes]:
    return [result[i : i + 32] for i in range(0, len(result), 32)]


def _threaded(task: HashTask, store: RowStore, workers: int = 1) -> HashResult:
    """The task as a worker's readers take it, with 8 reads in flight over `workers`."""
    pool = readers.Readers(io_depth=8, workers=workers)
    try:
        assert pool.threads(pool.device(store.one_dev or store.dev(0))) > 1
        return pool.hash_batch(task, store)
    finally:
        pool.close()


@pytest.mark.parametrize(("size", "window"), [(SMALL, HEAD), (BIG, HEAD), (BIG, TAIL)])
def test_files_on_the_disk_are_left_and_the_rest_read_at_once(
    tmp_path: Path, size: int, window: Window
) -> None:
    paths = _tree(tmp_path, 48, size)
    store, task = _scanned(tmp_path)
    task = HashTask(window, task.rows, task.sizes, False)
    evicted = set(_evicted(paths))
    result, left = hash_rows(task, store, resident_only=True)
    names = store.paths(task.rows)
    unread = {names[p] for p in left}
    # Most, not always all: the disk's own readahead may bring one back in meanwhile.
    assert unread <= evicted
    assert len(unread) >= len(evicted) // 2
    assert not result.failed
    for name, digest in zip(names, _digests(result.digests), strict=True):
        expected = NO_DIGEST if name in unread else blake3(_window(name, window)).digest()
        assert digest == expected, name
    assert result.files_opened == 48 - len(unread)
    assert result.bytes_read == sum(len(_window(n, window)) for n in names if n not in unread)


def test_a_task_on_the_disk_is_given_up_after_a_few_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = _tree(tmp_path, 200, SMALL)
    store, task = _scanned(tmp_path)
    _evict(paths)
    if any(_in_cache(p) for p in paths):
        pytest.skip("the page cache keeps these files (tmpfs?)")
    opens: list[str] = []
    real_open = os.open

    def counting_open(path: str, flags: int, *args: int, **kwargs: int) -> int:
        opens.append(path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", counting_open)
    result, left = hash_rows(task, store, resident_only=True)
    assert len(opens) == GIVE_UP_AFTER  # the rest untried
    # The page cache is the whole system's: a file may come back into it before it is tried
    # (another reader, a readahead finished), and is then read; three in four stay out.
    read = sorted(set(range(200)) - set(left))
    assert all(p < GIVE_UP_AFTER for p in read) and 4 * len(read) <= GIVE_UP_AFTER
    assert left == [p for p in range(200) if p not in read]
    digests = [result.digests[p * DIGEST_SIZE : (p + 1) * DIGEST_SIZE] for p in range(200)]
    assert [p for p in range(200) if digests[p] != NO_DIGEST] == read
    assert (result.files_opened, result.failed) == (len(read), ())


@pytest.mark.parametrize("blind", ["filesystem", "system"])
def test_where_the_page_cache_cannot_be_asked_every_file_goes_to_the_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, blind: str
) -> None:
    """A filesystem that cannot tell (EOPNOTSUPP: overlayfs, tmpfs) has its first file tried and
    the rest left untried; a system without RWF_NOWAIT has none tried."""
    _tree(tmp_path, 40, SMALL)
    store, task = _scanned(tmp_path)
    warm = hash_batch(task, store)
    tried: list[int] = []

    def unsupported(fd: int, *args: object) -> int:
        tried.append(fd)
        raise OSError(errno.EOPNOTSUPP, "not supported")

    monkeypatch.setattr(os, "preadv", unsupported)
    if blind == "system":
        monkeypatch.setattr(hashtasks, "RWF_NOWAIT", None)
    result, left = hash_rows(task, store, resident_only=True)
    assert left == list(range(40))
    assert (result.files_opened, result.bytes_read, result.failed) == (0, 0, ())
    assert len(tried) == (1 if blind == "filesystem" else 0)
    assert _threaded(task, store) == warm


def test_room_is_made_only_for_a_file_opened_at_the_size_the_scan_saw(tmp_path: Path) -> None:
    """With a whole-file window of a terabyte: a sparse 64 GiB file gone by the read, one cut
    short since the scan and one of 3 GiB (longer than one read returns) get no room of their
    size, and go on as a waiting read takes them: an issue, and two files left to it."""
    paths = _tree(tmp_path, 20, SMALL)
    for name, size in (("huge", 64 << 30), ("cut", 48 << 30), ("long", 3 << 30)):
        (tmp_path / name).touch()
        os.truncate(tmp_path / name, size)
    store, task = _scanned(tmp_path)
    os.unlink(tmp_path / "huge")
    os.truncate(tmp_path / "cut", 10)
    whole = Window(Stage.HEAD, 4096, 1 << 40)
    tracemalloc.start()
    try:
        result, left = hash_rows(HashTask(whole, task.rows, task.sizes, False), store, True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    names = store.paths(task.rows)
    assert sorted(names[p] for p in left) == [str(tmp_path / "cut"), str(tmp_path / "long")]
    assert [names[p] for p, _, _ in result.failed] == [str(tmp_path / "huge")]
    assert result.files_opened == len(paths)


@pytest.mark.parametrize("workers", [1, 4])
def test_threads_read_what_was_left_and_each_file_counts_once(tmp_path: Path, workers: int) -> None:
    paths = _tree(tmp_path, 96, SMALL)
    store, task = _scanned(tmp_path)
    warm = hash_batch(task, store)
    _evicted(paths)
    assert _threaded(task, store, workers) == warm


def test_only_the_files_on_the_disk_go_to_the_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = _tree(tmp_path, 96, SMALL)
    store, task = _scanned(tmp_path)
    evicted = set(_evicted(paths))
    threaded: list[str] = []
    real = readers.hash_batch  # type: ignore[attr-defined]

    def recording(part: HashTask, store: RowStore, *rest: Any) -> HashResult:
        threaded.extend(store.paths(part.rows))
        return real(part, store, *rest)

    monkeypatch.setattr(readers, "hash_batch", recording)
    _threaded(task, store)
    assert threaded
    assert set(threaded) <= evicted
    assert len(threaded) == len(set(threaded))


def test_a_file_changed_since_the_scan_is_left_and_becomes_an_issue(tmp_path: Path) -> None:
    paths = _tree(tmp_path, 48, SMALL)
    store, task = _scanned(tmp_path)
    Path(paths[5]).write_bytes(content(SMALL + 1, seed="grown"))
    _warm(paths)
    result, left = hash_rows(task, store, resident_only=True)
    position = store.paths(task.rows).index(paths[5])
    assert left == [position]
    result = _threaded(task, store)
    assert [(p, path) for p, path, _ in result.failed] == [(position, paths[5])]
    assert "size changed" in result.failed[0][2]
    assert _digests(result.digests)[position] == NO_DIGEST
    assert result.files_opened == 48


def test_a_search_with_files_on_the_disk_finds_and_counts_as_a_warm_one(tmp_path: Path) -> None:
    for n in range(60):
        (tmp_path / f"a{n:02}").write_bytes(content(SMALL + n % 20, seed=n % 40))
        (tmp_path / f"b{n:02}").write_bytes(content(BIG + n % 20, seed=n % 40))
    options = ScanOptions(workers=2, io_depth=8)
    warm = find_duplicates(str(tmp_path), options)
    _evicted(sorted(str(p) for p in tmp_path.iterdir()))
    cold = find_duplicates(str(tmp_path), options)
    assert cold.groups == warm.groups
    assert not cold.issues
    for stage in (Stage.HEAD, Stage.TAIL, Stage.FULL):
        counts = [replace(r.stats.stage(stage), seconds=0.0) for r in (cold, warm)]
        assert counts[0] == counts[1], stage
