"""Worker side of read concurrency: a task's files read with as many threads as their device
wants, and a spinning disk's by one reader at a time, in physical order.

A worker decides this for itself, from the devices of the files it is asked to read (`device`):
the coordinator never needs to know which disk a file is on, and a worker on another host would
decide the same way.  A task's files are split by device; the files of a solid, virtual or
network device are shared out between `threads_per_worker` threads (`os.pread`, `os.readv` and
BLAKE3 release the GIL, so the reads overlap); the files of a spinning disk are put in physical
order (`readorder`) and read by this worker alone among the run's workers while it holds the
disk's lock, so the disk serves one sequential reader.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from array import array
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from dedup_engine.find.device import DeviceInfo, DeviceProbe, read_depth, threads_per_worker
from dedup_engine.find.fullcompare import MAX_COMPARED, compare_groups
from dedup_engine.find.hashtasks import hash_batch
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
from dedup_engine.model import Stage
from dedup_engine.openflags import OPEN_READ
from dedup_engine.options import MAX_IO_DEPTH, RESERVED_FDS, open_file_limit

#: Files below which a part is not worth a thread of its own.
MIN_PART_FILES = 16
#: Files of a part probed for being in the page cache before it is shared out between threads.
RESIDENCY_SAMPLE = 4
#: Threads a worker may run where the open-file limit does not say.
DEFAULT_MAX_THREADS = MAX_IO_DEPTH

_R = TypeVar("_R", HashResult, CompareResult)


@dataclass(frozen=True, slots=True)
class _Part:
    """Some of a task's files, for one thread: their positions in the task, in reading order."""

    positions: list[int]
    device: DeviceInfo


class Readers:
    """One worker's readers: its threads, and what it knows of each device."""

    def __init__(
        self,
        io_depth: int | None,
        workers: int,
        lock_dir: str | None,
        probe: DeviceProbe | None = None,
    ) -> None:
        self.io_depth = io_depth
        self.workers = max(1, workers)
        self.lock_dir = lock_dir
        self.probe = probe or DeviceProbe()
        self._devices: dict[int, DeviceInfo] = {}
        self._threads: ThreadPoolExecutor | None = None
        # A comparing thread holds up to MAX_COMPARED files open: no more threads than this
        # process's open-file limit holds.
        limit = open_file_limit()
        self.max_threads = (
            DEFAULT_MAX_THREADS
            if limit is None
            else max(1, (limit - RESERVED_FDS) // (MAX_COMPARED + 1))
        )

    def device(self, dev: int) -> DeviceInfo:
        info = self._devices.get(dev)
        if info is None:
            info = self._devices[dev] = self.probe.info(dev)
        return info

    def threads(self, info: DeviceInfo) -> int:
        return min(
            self.max_threads, threads_per_worker(read_depth(info, self.io_depth), self.workers)
        )

    def hash_batch(self, task: HashTask, store: RowStore) -> HashResult:
        """`hashtasks.hash_batch`, with the task's files shared out by device."""
        rows, sizes, window = task.rows, task.sizes, task.window
        dev = store.one_dev
        if dev is not None:
            devices = [self.device(dev)] * len(rows)
        else:
            devices = [self.device(store.dev(row)) for row in rows]
        head = window.stage is Stage.HEAD
        parts = self._parts(
            devices,
            lambda ps: store.paths([rows[p] for p in ps]),
            lambda ps: [store.ino[rows[p]] for p in ps],
            lambda p: 0 if head else max(0, sizes[p] - 1),
        )
        if len(parts) == 1 and parts[0].positions == list(range(len(rows))):
            with self._locked(parts[0].device):
                return hash_batch(task, store)
        window, follow = task.window, task.follow_links
        results = self._run(
            parts,
            lambda part: hash_batch(
                HashTask(
                    window,
                    array("Q", [rows[p] for p in part.positions]),
                    array("q", [task.sizes[p] for p in part.positions]),
                    follow,
                ),
                store,
            ),
        )
        return _gather_hash([(part.positions, r) for part, r in results], len(rows))

    def compare(self, task: CompareTask) -> CompareResult:
        """`fullcompare.compare_groups`, with whole groups shared out by device."""
        starts = list(_starts(task.groups))
        devices = [self.device(task.devs[start]) for start in starts]
        by_group = self._parts(
            devices,
            lambda ps: [task.paths[starts[p]] for p in ps],
            lambda ps: [task.inos[starts[p]] for p in ps],
            lambda g: task.sizes[starts[g]] // 2,
        )
        if len(by_group) == 1:
            with self._locked(by_group[0].device):
                return compare_groups(task)
        results = self._run(by_group, lambda part: compare_groups(_sub_compare(task, starts, part)))
        parts = [(_members(task, starts, part), r) for part, r in results]
        return _gather_compare(parts, len(task.paths))

    def _parts(
        self,
        devices: Sequence[DeviceInfo],
        paths_of: Callable[[list[int]], list[str]],
        inodes_of: Callable[[list[int]], list[int]],
        probe_at: Callable[[int], int],
    ) -> list[_Part]:
        """The task's items split by device, each device's into as many parts as it has threads
        (one where its data is in the page cache already: threads would only contend for the
        GIL); a spinning disk's in one part, in physical order."""
        by_device: dict[int, list[int]] = {}
        for position, info in enumerate(devices):
            by_device.setdefault(info.dev, []).append(position)
        parts: list[_Part] = []
        for positions in by_device.values():
            info = devices[positions[0]]
            if info.ordered and self.io_depth is None:
                order = physical_order(paths_of(positions), inodes_of(positions))
                parts.append(_Part([positions[i] for i in order], info))
                continue
            count = max(1, min(self.threads(info), len(positions) // MIN_PART_FILES))
            if count > 1:
                sample = positions[:: max(1, len(positions) // RESIDENCY_SAMPLE)]
                offsets = [probe_at(p) for p in sample]
                if _resident(paths_of(sample), offsets):
                    count = 1
            # Dealt out in turn, so each thread gets a share of the big files and the small.
            parts.extend(_Part(positions[i::count], info) for i in range(count))
        return parts

    def _run(self, parts: list[_Part], work: Callable[[_Part], _R]) -> list[tuple[_Part, _R]]:
        if len(parts) == 1:
            with self._locked(parts[0].device):
                return [(parts[0], work(parts[0]))]
        if self._threads is None:
            self._threads = ThreadPoolExecutor(thread_name_prefix="dedup-read")

        def locked(part: _Part) -> _R:
            with self._locked(part.device):
                return work(part)

        return list(zip(parts, self._threads.map(locked, parts), strict=True))

    @contextlib.contextmanager
    def _locked(self, info: DeviceInfo) -> Iterator[None]:
        """While reading a spinning disk, hold its lock: one reader on it in the whole run
        (unless `--io-depth` asks for more: a RAID of disks, or one that orders a deep queue)."""
        if not info.ordered or self.lock_dir is None or self.io_depth is not None:
            yield
            return
        fd = os.open(os.path.join(self.lock_dir, str(info.dev)), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def close(self) -> None:
        if self._threads is not None:
            self._threads.shutdown(wait=False)


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


def _starts(groups: array[int]) -> Iterator[int]:
    start = 0
    for members in groups:
        yield start
        start += members


def _members(task: CompareTask, starts: list[int], part: _Part) -> list[int]:
    """The positions in the task of the members of a part's groups, in the part's order."""
    return [m for g in part.positions for m in range(starts[g], starts[g] + task.groups[g])]


def _sub_compare(task: CompareTask, starts: list[int], part: _Part) -> CompareTask:
    members = _members(task, starts, part)
    return CompareTask(
        tuple(task.paths[m] for m in members),
        array("q", [task.sizes[m] for m in members]),
        array("I", [task.groups[g] for g in part.positions]),
        array("Q", [task.devs[m] for m in members]),
        array("Q", [task.inos[m] for m in members]),
        array("q", [task.mtimes[m] for m in members]),
        array("q", [task.ctimes[m] for m in members]),
        task.follow_links,
        task.chunk_size,
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
