"""Worker side of the head and tail stages: reading each file's window and hashing it (BLAKE3).

`hash_batch` runs in the worker processes (or in process with `--workers 0`) and returns digests
for the files it could read; a file it could not read, or whose size differs from what the scan
saw, gets no digest and an issue instead, so it never matches.  `hash_rows` may also read only
what is in the page cache, and leave the other files to the reader threads (`readers`), or keep
several reads in flight from one thread by asking for the windows of the files ahead of the one it
reads (`_Ahead`).  The full stage's reader is `fullcompare`; the parent side of every hashing
stage is `hashstep`.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections import deque
from collections.abc import Sequence

from blake3 import blake3

from dedup_engine.find.anchors import OUT_OF_DESCRIPTORS, Anchors
from dedup_engine.find.changes import ChangedError, describe, what_changed
from dedup_engine.find.fsidentity import expose_mapped_writes
from dedup_engine.find.store import RowStore
from dedup_engine.find.tasks import NO_DIGEST, Failure, HashResult, HashTask, Window
from dedup_engine.model import Stage
from dedup_engine.openflags import read_flags

#: preadv2's flag that fails with EAGAIN where a read would wait for the disk (Linux); None
#: where there is none.
RWF_NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None)
_NOWAIT = RWF_NOWAIT or 0  # the flag `_Reader.resident` passes, used only where there is one
#: The most one read returns on Linux (MAX_RW_COUNT): a window as long is left to waiting reads.
_ONE_READ = 0x7FFFF000
#: posix_fadvise's advice that starts reading a range into the page cache and returns at once;
#: None where there is no posix_fadvise (macOS): files are then not read ahead.
WILLNEED: int | None = getattr(os, "POSIX_FADV_WILLNEED", None)
#: Files a reader tries for the page cache before it may take the task for one on the disk.
GIVE_UP_AFTER = 16


def hash_batch(
    task: HashTask, store: RowStore, anchors: Anchors | None = None, ahead: int = 0
) -> HashResult:
    """Hash the head or tail window of each of the task's rows of `store`; never raises for one
    file.  Files are opened from their directories' `anchors` where given, else by path; with
    `ahead`, that many files past the one read are open already, their windows asked for."""
    return hash_rows(task, store, anchors=anchors, ahead=ahead)[0]


def hash_rows(
    task: HashTask,
    store: RowStore,
    resident_only: bool = False,
    anchors: Anchors | None = None,
    ahead: int = 0,
) -> tuple[HashResult, list[int]]:
    """`hash_batch`, and with `resident_only` the positions of the files left unread because
    their window is not all in the page cache (`RWF_NOWAIT`): they have no digest and no
    failure, for the caller to read with threads that may wait for the disk.  A file left was
    not opened, as far as the counts go.  Once three in four of the files tried have been left
    (`GIVE_UP_AFTER` tried at least), the rest are left untried: the task is on the disk.  Where
    the filesystem cannot tell (overlayfs, tmpfs), the file tried and the rest are left; where
    the system cannot (no `RWF_NOWAIT`), every file is.

    With `ahead` (and not `resident_only`), each file is opened that many files before it is
    read, and its window asked of the disk then (`_Ahead`): one thread keeps as many reads in
    flight, where `ahead` threads would contend for the GIL.

    The loop runs once per candidate file (some 200k in a small tree), so it holds nothing but
    the open, the identity check, one read and the hash.
    """
    if resident_only and RWF_NOWAIT is None:  # nothing can be told: every file is left
        return HashResult(NO_DIGEST * len(task.rows), (), 0, 0), list(range(len(task.rows)))
    flags = read_flags(task.follow_links)
    reader = _Reader(task.window)
    read = reader.resident if resident_only else reader.waiting
    digests = bytearray()
    failed: list[Failure] = []
    left: list[int] = []
    opened = total = 0
    os_open, os_close, os_fstat, hasher = os.open, os.close, os.fstat, blake3
    rows, writeback = task.rows, task.writeback
    handles, names, devs, inos = _located(rows, store, anchors)
    opener = (
        _Ahead(handles, names, task.sizes, flags, reader, ahead)
        if ahead and not resident_only and WILLNEED is not None
        else None
    )
    try:
        for position, (at, name, size) in enumerate(zip(handles, names, task.sizes, strict=True)):
            try:
                fd = os_open(name, flags, dir_fd=at) if opener is None else opener.take()
            except OSError as exc:
                failed.append((position, _path(store, rows[position], at, name), describe(exc)))
                digests += NO_DIGEST
                continue
            opened += 1
            try:
                # The name is looked up again (in a directory whose handle may have been opened
                # long after the scan): a directory on the way swapped or renamed since could lead
                # elsewhere, so the file opened must be the one the scan saw.
                st = os_fstat(fd)
                if st.st_ino != inos[position] or st.st_dev != devs[position]:
                    raise ChangedError(
                        errno.EIO, what_changed(st, size, inos[position], devs[position])
                    )
                if writeback:
                    expose_mapped_writes(fd)
                data = read(fd, size, st.st_size)
                digest = NO_DIGEST if data is None else hasher(data).digest()
            except OSError as exc:
                failed.append((position, _path(store, rows[position], at, name), describe(exc)))
                digests += NO_DIGEST
                continue
            finally:
                os_close(fd)
            digests += digest
            if data is not None:
                total += len(data)
                continue
            # On the disk, or changed since the scan: a waiting read decides.
            left.append(position)
            opened -= 1
            if reader.blind or _on_the_disk(len(left), opened + len(left)):
                left.extend(range(position + 1, len(rows)))
                digests += NO_DIGEST * (len(rows) - position - 1)
                break
    finally:
        if opener is not None:  # what an interruption left open
            opener.close()
    return HashResult(bytes(digests), tuple(failed), opened, total), left


def _located(
    rows: Sequence[int], store: RowStore, anchors: Anchors | None
) -> tuple[Sequence[int | None], list[str], Sequence[int], list[int]]:
    """Where to open each row's file (its directory's handle, or None, and its name there, or
    its path) and the device and inode it must be."""
    handles, names = (
        anchors.located(rows) if anchors is not None else ([None] * len(rows), store.paths(rows))
    )
    return handles, names, store.devs(rows), [store.ino[row] for row in rows]


def _path(store: RowStore, row: int, at: int | None, name: str) -> str:
    """A row's path for its issue: `name` is one where it was opened by path."""
    return name if at is None else store.paths([row])[0]


def _on_the_disk(left: int, tried: int) -> bool:
    """Whether a task whose reads from the page cache left so many of the files tried is on the
    disk: three in four of them, `GIVE_UP_AFTER` tried at least."""
    return tried >= GIVE_UP_AFTER and 4 * left >= 3 * tried


class _Reader:
    """Reads one window of a file (`window.whole_limit` and below: the whole file), either
    waiting for the disk or only from the page cache."""

    def __init__(self, window: Window) -> None:
        self.length = window.length
        self.limit = window.whole_limit
        self.head = window.stage is Stage.HEAD
        #: The filesystem cannot tell what is in the page cache (`resident`).
        self.blind = False
        self._buffer = memoryview(bytearray(0))

    def span(self, size: int) -> tuple[int, int]:
        """Where `waiting` reads a file of `size` bytes: (offset, bytes asked for)."""
        if size <= self.limit:
            return 0, size + 1
        return (0 if self.head else size - self.length), self.length

    def waiting(self, fd: int, size: int, now: int) -> bytes:
        """The window's bytes, waiting for the disk where it must; `now` is unused.  Its offsets
        are `span`'s, written out: this runs once per file."""
        if size <= self.limit:
            # The file is read whole and this digest is final.  One byte more than expected is
            # asked for, so a file that grew since the scan shows itself; on a regular file a
            # read is short only at end of file.  Any other change is for the parent's re-check.
            data = os.pread(fd, size + 1, 0)
            return data if len(data) == size else _finish_whole(fd, data, size)
        offset = 0 if self.head else size - self.length
        data = os.pread(fd, self.length, offset)
        return data if len(data) == self.length else _read_rest(fd, data, self.length, offset)

    def resident(self, fd: int, size: int, now: int) -> memoryview | None:
        """The window's bytes if they are all in the page cache and the file is the size the
        scan saw (`now`: its size at the open), else None; None too, and `blind` set, where
        the filesystem cannot tell."""
        whole = size <= self.limit
        want = size if whole else self.length
        if now != size or want >= _ONE_READ:  # a read that long comes back short on Linux
            return None
        buffer = self._buffer
        if len(buffer) <= want:  # grown only for a file the size the scan saw
            buffer = self._buffer = memoryview(bytearray(want + 1))
        try:
            # A whole file is asked for one byte more, as above.
            got = os.preadv(
                fd, [buffer[: want + whole]], 0 if whole or self.head else size - want, _NOWAIT
            )
        except BlockingIOError:
            return None
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
            self.blind = True  # the waiting reads, with threads, are then the safe side
            return None
        return buffer[:got] if got == want else None


class _Ahead:
    """A task's files opened `depth` files before they are read, each window asked of the disk
    as its file is opened (`posix_fadvise(WILLNEED)` starts the reads and returns).

    So one thread keeps `depth` reads in flight, without a thread per read contending for the
    GIL, and the disk is asked for the window alone: a cold `pread` of 4 KiB has the kernel read
    ahead past it, 128 KiB at most.  On this project's virtio disk, cold, the small tree's
    search read 2,765 MiB from the disk instead of 3,243, in less time and CPU than with threads
    (`docs/architecture.md`, Reads per device).  An open that fails is raised when its file's
    turn comes, as an open made then would be; advice refused is only a read not started early.
    Out of descriptors (EMFILE, ENFILE), it reads no further ahead than the files it holds allow,
    and opens the file that met the limit at its turn, once the files before it are closed.

    Nothing is opened before the first `take`, and a file opened is in `_opened` until it is
    taken: an interruption leaves `close` every descriptor but the one being taken.
    """

    def __init__(
        self,
        handles: Sequence[int | None],
        names: Sequence[str],
        sizes: Sequence[int],
        flags: int,
        reader: _Reader,
        depth: int,
    ) -> None:
        self._handles, self._names, self._sizes = handles, names, sizes
        self._flags, self._reader = flags, reader
        self._depth = depth
        #: The files from the next to take on: a descriptor, the open's error, or None for a
        #: file to open at its turn.
        self._opened: deque[int | OSError | None] = deque()
        self._taken = 0  # the position of the next file to take
        self._next = 0  # the position of the next file to open

    def take(self) -> int:
        """The next file's descriptor, the caller's to close; its open's error, raised."""
        names = self._names
        while self._next < len(names) and len(self._opened) <= self._depth:
            self._open_next()
        at = self._taken
        self._taken += 1
        got = self._opened.popleft()
        if got is None:
            return self._open(at)
        if isinstance(got, OSError):
            raise got
        return got

    def _open_next(self) -> None:
        at = self._next
        self._next += 1
        opened = self._opened
        try:
            fd = self._open(at)
        except OSError as exc:
            if exc.errno not in OUT_OF_DESCRIPTORS:
                opened.append(exc)
                return
            # As far ahead as the descriptors held now go, less one: the one this file is
            # opened with at its turn, which the files after it must leave free.
            self._depth = max(0, sum(isinstance(got, int) for got in opened) - 1)
            opened.append(None)
            return
        opened.append(fd)
        offset, length = self._reader.span(self._sizes[at])
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, offset, length, WILLNEED or 0)

    def _open(self, at: int) -> int:
        return os.open(self._names[at], self._flags, dir_fd=self._handles[at])

    def close(self) -> None:
        """Close the files opened and not taken."""
        while self._opened:
            got = self._opened.popleft()
            if isinstance(got, int):
                os.close(got)


def _finish_whole(fd: int, data: bytes, size: int) -> bytes:
    if len(data) < size:
        data = _read_rest(fd, data, size, 0)
    if len(data) != size:
        raise ChangedError(errno.EIO, f"size changed while reading: expected {size} bytes")
    return data


def _read_rest(fd: int, data: bytes, want: int, offset: int) -> bytes:
    # Only for short reads: regular local files do not produce them; network and FUSE mounts can.
    parts = [data]
    have = len(data)
    while have < want:
        more = os.pread(fd, want - have, offset + have)
        if not more:
            raise ChangedError(errno.EIO, f"short read: file ended at {offset + have} bytes")
        parts.append(more)
        have += len(more)
    return b"".join(parts)
