"""A worker's readers on a device read with many reads in flight: the files whose window is in
the page cache are read at once, the others are left to the readers (one thread reading ahead on
a local disk, threads on other devices); either way each file gets the digest of its window, is
counted opened once, and a file changed since the scan still gets an issue.

Files are put out of the page cache with `posix_fadvise(DONTNEED)` after a sync, which works
on a disk's filesystem (the tests' temporary directory here and in CI) and not on tmpfs: there
the tests that need it are skipped.  Such a file may be back in the page cache by the time it is
read (a read with RWF_NOWAIT starts reading it in, and a virtual disk may serve that at once), so
the tests that say which files are left to the readers make the reads with RWF_NOWAIT fail for
them instead, as the kernel does for a file on the disk (`_on_the_disk`).
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import resource
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
from dedup_engine.find.anchors import Anchors
from dedup_engine.find.device import DEFAULT_DEPTH, DeviceClass, DeviceInfo, DeviceProbe
from dedup_engine.find.hashtasks import GIVE_UP_AFTER, hash_batch, hash_rows
from dedup_engine.find.store import RowStore
from dedup_engine.find.tasks import (
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


def _on_the_disk(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, paths: list[str]) -> set[str]:
    """These files' reads with RWF_NOWAIT fail with EAGAIN, as for a file not in the page cache;
    skips where the filesystem cannot tell what is (tmpfs, overlayfs: EOPNOTSUPP)."""
    probe = tmp_path / "probe"
    probe.write_bytes(b"x")
    fd = os.open(probe, os.O_RDONLY)
    try:
        os.preadv(fd, [bytearray(1)], 0, os.RWF_NOWAIT)
    except OSError as exc:
        pytest.skip(f"this filesystem cannot tell what is in the page cache: {exc}")
    finally:
        os.close(fd)
        probe.unlink()
    out, real = set(paths), os.preadv

    def preadv(fd: int, buffers: list[Any], offset: int, flags: int = 0) -> int:
        if flags & os.RWF_NOWAIT and os.readlink(f"/proc/self/fd/{fd}") in out:
            raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))
        return real(fd, buffers, offset, flags)

    monkeypatch.setattr(os, "preadv", preadv)
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


class _Probe(DeviceProbe):
    """Says every device is of one class, on a filesystem of one type."""

    def __init__(self, cls: DeviceClass, fstype: str = "ext4") -> None:
        super().__init__()
        self.cls, self.fstype = cls, fstype

    def info(self, dev: int, path: str | None = None) -> DeviceInfo:
        return DeviceInfo(dev, self.cls, DEFAULT_DEPTH.get(self.cls, 4), self.fstype, "", "test")


#: How the readers read what is not in the page cache, by the class of the device they are told.
HOW = {"ahead": DeviceClass.VIRTUAL, "threads": DeviceClass.NETWORK}


def _threaded(task: HashTask, store: RowStore, workers: int = 1, how: str = "ahead") -> HashResult:
    """The task as a worker's readers take it, with 8 reads in flight over `workers`, on a
    device read `how`."""
    pool = readers.Readers(io_depth=8, workers=workers, probe=_Probe(HOW[how]))
    try:
        info = pool.device(store.one_dev or store.dev(0))
        assert pool.threads(info) > 1
        assert (pool.ahead(info) > 0) == (how == "ahead")
        return pool.hash_batch(task, store)
    finally:
        pool.close()


@pytest.mark.parametrize(("size", "window"), [(SMALL, HEAD), (BIG, HEAD), (BIG, TAIL)])
def test_files_on_the_disk_are_left_and_the_rest_read_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int, window: Window
) -> None:
    paths = _tree(tmp_path, 48, size)
    store, task = _scanned(tmp_path)
    task = HashTask(window, task.rows, task.sizes, False)
    evicted = _on_the_disk(monkeypatch, tmp_path, paths[::3])
    result, left = hash_rows(task, store, resident_only=True)
    names = store.paths(task.rows)
    unread = {names[p] for p in left}
    assert unread == evicted
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
    _on_the_disk(monkeypatch, tmp_path, paths)
    opens: list[str] = []
    real_open = os.open

    def counting_open(path: str, flags: int, *args: int, **kwargs: int) -> int:
        opens.append(path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", counting_open)
    result, left = hash_rows(task, store, resident_only=True)
    assert len(opens) == GIVE_UP_AFTER  # the rest untried
    assert left == list(range(200))
    assert result.digests == NO_DIGEST * 200
    assert (result.files_opened, result.failed) == (0, ())


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("blind", ["filesystem", "system"])
def test_where_the_page_cache_cannot_be_asked_every_file_goes_to_the_readers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, blind: str, how: str
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
    assert _threaded(task, store, how=how) == warm


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


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("workers", [1, 4])
def test_the_readers_read_what_was_left_and_each_file_counts_once(
    tmp_path: Path, workers: int, how: str
) -> None:
    paths = _tree(tmp_path, 96, SMALL)
    store, task = _scanned(tmp_path)
    warm = hash_batch(task, store)
    _evicted(paths)
    assert _threaded(task, store, workers, how) == warm


@pytest.mark.parametrize("how", HOW)
def test_only_the_files_on_the_disk_go_to_the_readers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """On a local disk one thread reads them all, 8 files ahead; elsewhere threads share them."""
    paths = _tree(tmp_path, 96, SMALL)
    store, task = _scanned(tmp_path)
    evicted = _on_the_disk(monkeypatch, tmp_path, paths[::3])
    threaded: list[str] = []
    aheads: list[int] = []
    real = readers.hash_batch  # type: ignore[attr-defined]

    def recording(part: HashTask, store: RowStore, anchors: Any, ahead: int = 0) -> HashResult:
        threaded.extend(store.paths(part.rows))
        aheads.append(ahead)
        return real(part, store, anchors, ahead)

    monkeypatch.setattr(readers, "hash_batch", recording)
    _threaded(task, store, how=how)
    assert sorted(threaded) == sorted(evicted)
    if how == "ahead":
        assert aheads == [8]
    else:
        assert set(aheads) == {0}


@pytest.mark.parametrize("how", HOW)
def test_a_file_changed_since_the_scan_is_left_and_becomes_an_issue(
    tmp_path: Path, how: str
) -> None:
    paths = _tree(tmp_path, 48, SMALL)
    store, task = _scanned(tmp_path)
    Path(paths[5]).write_bytes(content(SMALL + 1, seed="grown"))
    _warm(paths)
    result, left = hash_rows(task, store, resident_only=True)
    position = store.paths(task.rows).index(paths[5])
    assert left == [position]
    result = _threaded(task, store, how=how)
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


@pytest.mark.parametrize(
    ("cls", "fstype", "ahead"),
    [
        (DeviceClass.SOLID, "ext4", True),
        (DeviceClass.VIRTUAL, "xfs", True),
        (DeviceClass.SOLID, "fuseblk", False),  # FUSE may have no page cache (direct I/O)
        (DeviceClass.NETWORK, "nfs4", False),
        (DeviceClass.UNKNOWN, "zfs", False),
        (DeviceClass.ROTATIONAL, "ext4", False),
        (DeviceClass.MEMORY, "tmpfs", False),
    ],
)
def test_local_disks_are_read_ahead_and_other_devices_by_threads(
    cls: DeviceClass, fstype: str, ahead: bool
) -> None:
    pool = readers.Readers(io_depth=16, workers=2, probe=_Probe(cls, fstype))
    assert pool.ahead(pool.device(1)) == (8 if ahead else 0)


def _read_in_turn(tmp_path: Path) -> tuple[RowStore, HashTask, HashResult]:
    """A task of 20 files, and its result read one file after another."""
    _tree(tmp_path, 20, SMALL)
    store, task = _scanned(tmp_path)
    return store, task, hash_batch(task, store)


def test_without_posix_fadvise_nothing_is_read_ahead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, task, plain = _read_in_turn(tmp_path)
    monkeypatch.setattr(hashtasks, "WILLNEED", None)
    monkeypatch.setattr(readers, "WILLNEED", None)
    monkeypatch.delattr(os, "posix_fadvise")
    pool = readers.Readers(io_depth=16, workers=1, probe=_Probe(DeviceClass.SOLID))
    assert pool.ahead(pool.device(1)) == 0
    assert hash_batch(task, store, ahead=8) == plain


@pytest.mark.parametrize(
    ("limit", "in_use", "threads", "ahead"),
    [
        (None, 10, readers.DEFAULT_MAX_THREADS, 64),
        (200, 0, 2, 64),
        (100, 0, 1, 64),
        (60, 0, 1, 27),
        (20, 0, 1, 1),
        (1024, 900, 1, 64),  # an in-process caller holding most of the limit
        (1024, 980, 1, 11),
        (1024, 1010, 1, 1),
    ],
)
def test_reading_ahead_holds_no_more_files_than_the_open_file_limit_leaves(
    monkeypatch: pytest.MonkeyPatch, limit: int | None, in_use: int, threads: int, ahead: int
) -> None:
    """Past the reserve (32) and the descriptors open already, a thread reading ahead holds as
    many files as a comparing thread (64 and the one it reads), or what the limit leaves each
    thread."""
    monkeypatch.setattr(readers, "open_file_limit", lambda: limit)
    monkeypatch.setattr(readers, "descriptors_in_use", lambda: in_use)
    pool = readers.Readers(io_depth=1024, workers=1, probe=_Probe(DeviceClass.SOLID))
    assert (pool.max_threads, pool.max_ahead) == (threads, ahead)
    assert pool.ahead(pool.device(1)) == ahead


def _fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


@pytest.mark.parametrize(("size", "window"), [(SMALL, HEAD), (BIG, HEAD), (BIG, TAIL)])
def test_reading_ahead_asks_for_each_window_before_its_file_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int, window: Window
) -> None:
    """Each file's window is asked for once, as it is opened, 5 files before it is read: the
    whole file (and the byte past it, which shows a file grown since the scan), or its head or
    tail window alone."""
    _tree(tmp_path, 40, size)
    store, task = _scanned(tmp_path)
    task = HashTask(window, task.rows, task.sizes, False)
    plain = hash_batch(task, store)
    events: list[tuple[str, str, int, int]] = []
    real_advise, real_fstat = os.posix_fadvise, os.fstat

    def advise(fd: int, offset: int, length: int, advice: int) -> None:
        assert advice == os.POSIX_FADV_WILLNEED
        events.append(("asked", _fd_path(fd), offset, length))
        real_advise(fd, offset, length, advice)

    def fstat(fd: int) -> os.stat_result:
        events.append(("read", _fd_path(fd), 0, 0))
        return real_fstat(fd)

    monkeypatch.setattr(os, "posix_fadvise", advise)
    monkeypatch.setattr(os, "fstat", fstat)
    assert hash_batch(task, store, ahead=5) == plain
    monkeypatch.undo()
    names = store.paths(task.rows)
    if size <= window.whole_limit:
        span = (0, size + 1)
    else:
        span = (0 if window.stage is Stage.HEAD else size - window.length, window.length)
    assert [e[1:] for e in events if e[0] == "asked"] == [(name, *span) for name in names]
    assert [e[1] for e in events if e[0] == "read"] == names
    reads = [at for at, e in enumerate(events) if e[0] == "read"]
    asked_before = [sum(e[0] == "asked" for e in events[:at]) for at in reads]
    assert asked_before == [min(len(names), k + 6) for k in range(len(names))]


@pytest.mark.parametrize("anchored", [False, True])
def test_reading_ahead_finds_the_same_issues_as_reading_each_file_in_turn(
    tmp_path: Path, anchored: bool
) -> None:
    """A file removed since the scan (its open fails), another file under a name (the identity
    check) and a file grown (its read): the same digests, issues and counts either way."""
    paths = _tree(tmp_path, 30, SMALL)
    store, task = _scanned(tmp_path)
    os.unlink(paths[3])
    os.rename(paths[8], paths[7])
    Path(paths[12]).write_bytes(content(SMALL + 1, seed="grown"))
    anchors = Anchors(store, 8) if anchored else None
    plain = hash_batch(task, store, anchors)
    assert sorted(path for _, path, _ in plain.failed) == [paths[n] for n in (3, 7, 8, 12)]
    assert hash_batch(task, store, anchors, ahead=4) == plain


def test_advice_refused_is_only_a_read_not_started_early(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, task, plain = _read_in_turn(tmp_path)

    def refused(*args: int) -> None:
        raise OSError(errno.ESPIPE, "Illegal seek")

    monkeypatch.setattr(os, "posix_fadvise", refused)
    assert hash_batch(task, store, ahead=4) == plain


@pytest.mark.parametrize(
    ("where", "call"),
    [
        (None, 0),
        ("fstat", 5),  # reading a file taken
        ("posix_fadvise", 1),  # asking for the first window
        ("posix_fadvise", 8),  # asking for the last window of the first fill
        ("posix_fadvise", 20),  # asking for one while files are read
        ("open", 3),  # opening a file ahead
        ("open", 20),
    ],
)
def test_reading_ahead_leaves_no_file_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str | None, call: int
) -> None:
    """Done, or interrupted anywhere in it (here: the `call`th call to `where` raises
    KeyboardInterrupt, as a signal handler would there), it leaves no file open."""
    _tree(tmp_path, 40, SMALL)
    store, task = _scanned(tmp_path)
    before = sorted(os.listdir("/proc/self/fd"))
    if where is not None:
        real = getattr(os, where)
        calls: list[object] = []

        def stopping(*args: Any, **kwargs: Any) -> Any:
            calls.append(args)
            if len(calls) == call:
                raise KeyboardInterrupt
            return real(*args, **kwargs)

        monkeypatch.setattr(os, where, stopping)
        with pytest.raises(KeyboardInterrupt):
            hash_batch(task, store, ahead=8)
    else:
        hash_batch(task, store, ahead=8)
    monkeypatch.undo()
    assert sorted(os.listdir("/proc/self/fd")) == before


def test_reading_ahead_out_of_descriptors_opens_each_file_at_its_turn(tmp_path: Path) -> None:
    """With 6 descriptors left under the limit, reading 32 ahead meets EMFILE: it reads as far
    ahead as it can, and every file is read, none an issue."""
    _tree(tmp_path, 60, SMALL)
    store, task = _scanned(tmp_path)
    plain = hash_batch(task, store)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (_limit_leaving(6), hard))
        result = hash_batch(task, store, ahead=32)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert result == plain


def _limit_leaving(free: int) -> int:
    """The open-file limit under which `free` descriptors are left: a new one gets the lowest
    number free, and must be below the limit."""
    used = {int(fd) for fd in os.listdir("/proc/self/fd")}
    number = -1
    while free:
        number += 1
        free -= number not in used
    return number + 1
