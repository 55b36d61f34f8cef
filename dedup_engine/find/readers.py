"""Worker side of read concurrency: a task's files read with as many threads as their device
wants, and a spinning disk's by one reader at a time, in physical order.

A worker decides this for itself, from the devices of the files it is asked to read (`device`):
the coordinator never needs to know which disk a file is on, and a worker on another host would
decide the same way.  A task's files are split by device, and each device gets its share of the
reads in flight (`threads_per_worker`):
- a head or tail task's files whose window is in the page cache are read first, by the worker in
  its own thread;
- on a local solid or virtual disk, the rest are read by one thread that asks for the windows of
  the files ahead of the one it reads (`hashtasks`), which the kernel then reads while it hashes;
- on other devices (a network filesystem, FUSE, one not known), and for the full stage's
  comparisons, the files are shared out between threads (`os.pread`, `os.readv` and BLAKE3
  release the GIL, so the reads overlap);
- the files of a spinning disk are put in physical order (`readorder`) and read by this worker
  alone among the run's workers while it holds the disk's lock, so the disk serves one
  sequential reader.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import tempfile
from array import array
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from dedup_engine.find.anchors import Anchors, descriptors_in_use
from dedup_engine.find.device import (
    DeviceClass,
    DeviceInfo,
    DeviceProbe,
    read_depth,
    threads_per_worker,
)
from dedup_engine.find.fullcompare import MAX_COMPARED, compare_groups
from dedup_engine.find.hashtasks import WILLNEED, hash_batch, hash_rows
from dedup_engine.find.readorder import physical_order
from dedup_engine.find.store import RowStore
from dedup_engine.find.tasks import (
    DIGEST_SIZE,
    CompareResult,
    CompareTask,
    Failure,
    HashResult,
    HashTask,
)
from dedup_engine.openflags import OPEN_READ
from dedup_engine.options import MAX_IO_DEPTH, RESERVED_FDS, open_file_limit

#: Files below which a part is not worth a thread of its own.
MIN_PART_FILES = 16
#: Files of a part probed for being in the page cache before it is shared out between threads.
RESIDENCY_SAMPLE = 4
#: Threads a worker may run where the open-file limit does not say.
DEFAULT_MAX_THREADS = MAX_IO_DEPTH
#: Devices whose files a head or tail task reads ahead from one thread (`_Part.ahead`): local
#: disks, whose filesystems start the reads asked for in the page cache.  A network filesystem's
#: or FUSE's may not (FUSE with direct I/O has no page cache), and threads overlap their reads
#: whatever the filesystem does.
_READ_AHEAD = frozenset({DeviceClass.SOLID, DeviceClass.VIRTUAL})

_R = TypeVar("_R", HashResult, CompareResult)


@dataclass(frozen=True, slots=True)
class _Part:
    """Some of a task's files, for one thread: their positions in the task, in reading order;
    `ordered`: to be put in physical order first, once the disk's lock is held; `ahead`: how
    many files past the one read to have open, their windows asked for (head and tail only)."""

    positions: list[int]
    device: DeviceInfo
    ordered: bool = False
    ahead: int = 0


class Readers:
    """One worker's readers: its threads, and what it knows of each device."""

    def __init__(
        self,
        io_depth: int | None,
        workers: int,
        probe: DeviceProbe | None = None,
        anchors: Anchors | None = None,
    ) -> None:
        self.io_depth = io_depth
        self.workers = max(1, workers)
        self.probe = probe or DeviceProbe()
        #: Where the head and tail stages open the worker's files from (by path where None).
        self.anchors = anchors
        self._lock_dir: str | bool | None = False  # not looked for yet
        self._devices: dict[int, DeviceInfo] = {}
        self._threads: ThreadPoolExecutor | None = None
        # A comparing thread holds up to MAX_COMPARED files open: no more threads than this
        # process's open-file limit holds once the descriptors open now (a caller's, in
        # process) and the directory handles have their share.
        limit, handles = open_file_limit(), 0 if anchors is None else anchors.limit
        room = None if limit is None else limit - RESERVED_FDS - handles - descriptors_in_use()
        self.max_threads = (
            DEFAULT_MAX_THREADS if room is None else max(1, room // (MAX_COMPARED + 1))
        )
        #: Files a thread reading ahead may hold open besides the one it reads: as many as a
        #: comparing thread, or what the limit leaves each thread.
        self.max_ahead = (
            MAX_COMPARED
            if room is None
            else max(1, min(MAX_COMPARED, room // self.max_threads - 1))
        )

    def device(self, dev: int) -> DeviceInfo:
        info = self._devices.get(dev)
        if info is None:
            info = self._devices[dev] = self.probe.info(dev)
        return info

    def threads(self, info: DeviceInfo) -> int:
        return min(self.max_threads, self._per_worker(info))

    def ahead(self, info: DeviceInfo) -> int:
        """Files to read ahead on the device from one thread, in place of `threads` threads
        (`_Part.ahead`); 0 where its files are shared out between threads instead."""
        if WILLNEED is None or info.cls not in _READ_AHEAD or info.fstype.startswith("fuse"):
            return 0
        return min(self.max_ahead, self._per_worker(info))

    def _per_worker(self, info: DeviceInfo) -> int:
        """This worker's share of the device's reads in flight."""
        return threads_per_worker(read_depth(info, self.io_depth), self.workers)

    def hash_batch(self, task: HashTask, store: RowStore) -> HashResult:
        """`hashtasks.hash_batch`, with the task's files shared out by device.

        On a device read with threads, the files whose window is in the page cache are read
        first, here: threads would only contend for the GIL over them.  The rest are read
        ahead by one thread, or shared out between the threads (`_resident_first`)."""
        rows, follow, anchors = task.rows, task.follow_links, self.anchors
        if not rows:
            return hash_batch(task, store, anchors)
        read, parts = self._resident_first(task, store)
        if not read and len(parts) == 1 and not parts[0].ordered:
            return hash_batch(task, store, anchors, parts[0].ahead)
        if not parts:
            return read[0][1] if len(read) == 1 else _gather_hash(read, len(rows))
        results = self._run(
            parts,
            lambda part: hash_batch(_subtask(task, part.positions), store, anchors, part.ahead),
            lambda ps: _physical(
                store.paths([rows[p] for p in ps]), [store.ino[rows[p]] for p in ps], ps, follow
            ),
        )
        # Where files were read first, those left have no digest in those results: the
        # threads' results, gathered after them, put theirs in their places.
        return _gather_hash([*read, *((part.positions, r) for part, r in results)], len(rows))

    def _resident_first(
        self, task: HashTask, store: RowStore
    ) -> tuple[list[tuple[list[int], HashResult]], list[_Part]]:
        """The files of each device read with threads whose window is in the page cache, read
        now (`hashtasks.hash_rows`), with their positions in the task; and the parts left to
        read: each device's others read ahead by one thread, or shared out between its
        threads."""
        rows = task.rows
        dev = store.one_dev
        if dev is not None:
            devices = [self.device(dev)] * len(rows)
        else:
            devices = [self.device(store.dev(row)) for row in rows]
        read: list[tuple[list[int], HashResult]] = []
        parts: list[_Part] = []
        for positions, info, count in self._by_device(devices):
            if count == 1:
                parts.append(_Part(positions, info, ordered=self._ordered(info)))
                continue
            every = len(positions) == len(rows)
            result, left = hash_rows(
                task if every else _subtask(task, positions), store, True, self.anchors
            )
            read.append((positions, result))
            waiting = [positions[i] for i in left]
            ahead = self.ahead(info)
            if ahead:
                if waiting:
                    parts.append(_Part(waiting, info, ahead=ahead))
                continue
            count = max(1, min(count, len(waiting) // MIN_PART_FILES))
            parts.extend(_Part(waiting[i::count], info) for i in range(count) if waiting)
        return read, parts

    def _ordered(self, info: DeviceInfo) -> bool:
        """Whether the device's files are read in physical order, by one reader at a time."""
        return info.ordered and self.io_depth is None

    def _by_device(self, devices: Sequence[DeviceInfo]) -> list[tuple[list[int], DeviceInfo, int]]:
        """The task's positions by device, with the threads each device's share would have:
        one for a device read in physical order, or for too few files to share out."""
        by_device: dict[int, list[int]] = {}
        for position, info in enumerate(devices):
            by_device.setdefault(info.dev, []).append(position)
        out = []
        for positions in by_device.values():
            info = devices[positions[0]]
            count = 1 if self._ordered(info) else self.threads(info)
            out.append((positions, info, max(1, min(count, len(positions) // MIN_PART_FILES))))
        return out

    def compare(self, task: CompareTask) -> CompareResult:
        """`fullcompare.compare_groups`, with whole groups shared out by device."""
        starts = list(_starts(task.groups))
        if not starts:
            return compare_groups(task)
        devices = [self.device(task.devs[start]) for start in starts]

        def paths_of(groups: list[int]) -> list[str]:
            return [task.paths[starts[g]] for g in groups]

        by_group = self._parts(devices, paths_of, lambda g: task.sizes[starts[g]] // 2)
        if len(by_group) == 1 and not by_group[0].ordered:
            return compare_groups(task)
        results = self._run(
            by_group,
            lambda part: compare_groups(_sub_compare(task, starts, part)),
            lambda gs: _physical(
                paths_of(gs), [task.inos[starts[g]] for g in gs], gs, task.follow_links
            ),
        )
        parts = [(_members(task, starts, part), r) for part, r in results]
        return _gather_compare(parts, len(task.paths))

    def _parts(
        self,
        devices: Sequence[DeviceInfo],
        paths_of: Callable[[list[int]], list[str]],
        probe_at: Callable[[int], int],
    ) -> list[_Part]:
        """A comparison's groups split by device, each device's into as many parts as it has
        threads (one where a sample of its data is in the page cache already: threads would
        only contend for the GIL); a spinning disk's in one part, to be read in physical
        order."""
        parts: list[_Part] = []
        for positions, info, count in self._by_device(devices):
            if self._ordered(info):
                parts.append(_Part(positions, info, ordered=True))
                continue
            if count > 1:
                sample = positions[:: max(1, len(positions) // RESIDENCY_SAMPLE)]
                offsets = [probe_at(p) for p in sample]
                if _resident(paths_of(sample), offsets):
                    count = 1
            # Dealt out in turn, so each thread gets a share of the big files and the small.
            parts.extend(_Part(positions[i::count], info) for i in range(count))
        return parts

    def _run(
        self,
        parts: list[_Part],
        work: Callable[[_Part], _R],
        order: Callable[[list[int]], list[int]],
    ) -> list[tuple[_Part, _R]]:
        """Each part's work, in a thread of its own where there are several; a spinning disk's
        part put in physical order and read while its lock is held (the order is found under
        the lock too: finding it reads the disk's metadata)."""

        def locked(part: _Part) -> tuple[_Part, _R]:
            if not part.ordered:
                return part, work(part)
            with self._locked(part.device):
                part = _Part(order(part.positions), part.device)
                return part, work(part)

        if len(parts) == 1:
            return [locked(parts[0])]
        if self._threads is None:
            self._threads = ThreadPoolExecutor(self.max_threads, thread_name_prefix="dedup-read")
        return list(self._threads.map(locked, parts))

    @contextlib.contextmanager
    def _locked(self, info: DeviceInfo) -> Iterator[None]:
        """While reading a spinning disk, hold its lock: one reader on it at a time, among this
        run's workers and every other run of this user's."""
        if self._lock_dir is False:
            self._lock_dir = lock_dir()
        if not isinstance(self._lock_dir, str):  # no safe place for locks: read unlocked
            yield
            return
        path = os.path.join(self._lock_dir, str(info.dev))
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | os.O_CLOEXEC
        fd = os.open(path, flags, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def close(self) -> None:
        """No more reads: the parts not started are dropped, and those running waited for, so
        that none opens a file from a directory handle closed after this (its number may be
        another directory's by then)."""
        if self._threads is not None:
            self._threads.shutdown(wait=True, cancel_futures=True)


def lock_dir() -> str | None:
    """Where the spinning disks' locks live: a directory of this user's alone, the same for all
    their runs ($XDG_RUNTIME_DIR/dedup-engine, else dedup-engine-UID in the temporary directory);
    None where it cannot be made or is not safely this user's."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = runtime if runtime else tempfile.gettempdir()
    path = os.path.join(base, "dedup-engine" if runtime else f"dedup-engine-{os.geteuid()}")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return None
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        return None  # a symlink, or a directory someone else could write to
    return path


def _physical(
    paths: list[str], inodes: list[int], positions: list[int], follow_links: bool
) -> list[int]:
    """`positions` in the order one reader should take their files on a spinning disk."""
    return [positions[i] for i in physical_order(paths, inodes, follow_links)]


def _resident(paths: list[str], offsets: list[int]) -> bool:
    """Whether the byte at each offset of each file is in the page cache: a read with
    RWF_NOWAIT, which fails with EAGAIN rather than wait for the disk.  False where that cannot
    be told (no RWF_NOWAIT here, or a filesystem without it): reading with threads is then the
    safe side."""
    nowait = getattr(os, "RWF_NOWAIT", None)
    if nowait is None:
        return False
    byte = bytearray(1)
    probed = 0
    for path, offset in zip(paths, offsets, strict=True):
        try:
            fd = os.open(path, OPEN_READ)
        except OSError:
            continue  # gone, or reached through a symlink: the reader will see
        try:
            os.preadv(fd, [byte], offset, nowait)
        except OSError:  # EAGAIN: on the disk only; EOPNOTSUPP: cannot tell
            return False
        finally:
            os.close(fd)
        probed += 1
    return probed > 0


def _subtask(task: HashTask, positions: list[int]) -> HashTask:
    """The task for some of a task's files, by their positions in it."""
    rows, sizes = task.rows, task.sizes
    return HashTask(
        task.window,
        array("Q", [rows[p] for p in positions]),
        array("q", [sizes[p] for p in positions]),
        task.follow_links,
        task.writeback,
    )


def _starts(groups: array[int]) -> Iterator[int]:
    start = 0
    for members in groups:
        yield start
        start += members


def _members(task: CompareTask, starts: list[int], part: _Part) -> list[int]:
    """The positions in the task of the members of a part's groups, in the part's order."""
    return [m for g in part.positions for m in range(starts[g], starts[g] + task.groups[g])]


def _sub_compare(task: CompareTask, starts: list[int], part: _Part) -> CompareTask:
    return task.subset(
        _members(task, starts, part), [task.groups[g] for g in part.positions], task.writeback
    )


def _common(
    parts: Sequence[tuple[list[int], HashResult | CompareResult]], count: int
) -> tuple[bytes, tuple[Failure, ...], int, int]:
    """Digests and failures in the task's order, and the counts, from the parts' results."""
    digests = bytearray(count * DIGEST_SIZE)
    failed: list[Failure] = []
    opened = read = 0
    for positions, result in parts:
        blob = result.digests
        for index, position in enumerate(positions):
            digests[position * DIGEST_SIZE : (position + 1) * DIGEST_SIZE] = blob[
                index * DIGEST_SIZE : (index + 1) * DIGEST_SIZE
            ]
        failed.extend((positions[i], path, message) for i, path, message in result.failed)
        opened += result.files_opened
        read += result.bytes_read
    failed.sort()
    return bytes(digests), tuple(failed), opened, read


def _gather_hash(parts: list[tuple[list[int], HashResult]], count: int) -> HashResult:
    return HashResult(*_common(parts, count))


def _gather_compare(parts: list[tuple[list[int], CompareResult]], count: int) -> CompareResult:
    uids, gids = array("I", bytes(4 * count)), array("I", bytes(4 * count))
    modes = array("H", bytes(2 * count))
    for positions, result in parts:
        for index, position in enumerate(positions):
            uids[position] = result.uids[index]
            gids[position] = result.gids[index]
            modes[position] = result.modes[index]
    return CompareResult(*_common(parts, count), uids, gids, modes)
