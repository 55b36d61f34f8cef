"""Reading one window of a file and hashing it with BLAKE3: the work of every hashing stage.

A stage is a `Window`: head, tail or full.  `hash_batch` runs in the worker processes (or in process
with `--workers 0`) and returns digests for the files it could read; a file it could not read, or
whose size differs from what the scan saw, gets no digest and an issue instead, so it never matches.
"""

from __future__ import annotations

import errno
import os
import stat
from array import array
from dataclasses import dataclass, field

from blake3 import blake3

from dedup_engine.records import Stage

# O_NONBLOCK: a path swapped for a FIFO after the scan must not hang the open; it has no effect on
# regular files.  O_NOFOLLOW (unless links are followed): a path swapped for a symlink is refused.
DIGEST_SIZE = 32
NO_DIGEST = bytes(DIGEST_SIZE)

_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_NONBLOCK", 0)
_OPEN_FLAGS |= getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


@dataclass(frozen=True, slots=True)
class Window:
    """Which bytes a stage reads.

    `length` is the window for head and tail (0 for full).  A file no bigger than
    `max(length, whole)` is read whole in one go: its digest is then the digest of the file, and the
    file is complete, so it skips the later stages.  Files smaller than `min_size` skip this stage
    (their groups pass through unchanged): where a stage would cost about what the next one does,
    it is not worth an extra open.
    """

    stage: Stage
    length: int = 0
    whole: int = 0
    min_size: int = 0

    @property
    def whole_limit(self) -> float:
        return float("inf") if self.stage is Stage.FULL else max(self.length, self.whole)

    def reads_whole(self, size: int) -> bool:
        return size <= self.whole_limit

    def applies(self, size: int) -> bool:
        return size >= self.min_size


@dataclass(frozen=True, slots=True)
class HashTask:
    """A batch of files for one window; `ids` are the caller's row numbers, echoed back."""

    window: Window
    ids: array[int]
    paths: tuple[str, ...]
    sizes: array[int]
    follow_links: bool
    chunk_size: int
    #: Full stage: the files come as consecutive groups of these sizes, compared within each group.
    groups: array[int] = field(default_factory=lambda: array("I"))


@dataclass(frozen=True, slots=True)
class HashResult:
    """Digests in task order, `DIGEST_SIZE` bytes each; a failed file has zeros and an entry in
    `failed`."""

    window: Window
    ids: array[int]
    digests: bytes
    failed: tuple[tuple[int, str], ...]
    files_opened: int
    bytes_read: int


class ChangedError(OSError):
    """The file is not the size the scan saw, or is no longer a regular file."""


def hash_batch(task: HashTask) -> HashResult:
    """Hash the window of every file in the task; never raises for a single file's failure.

    The loop is written out flat because it runs once per candidate file: at ~200k files a
    function call per file costs a measurable share of the run.
    """
    window = task.window
    flags = _OPEN_FLAGS if task.follow_links else _OPEN_FLAGS | _NOFOLLOW
    if task.groups:
        return _compare_groups(task, flags)
    full = window.stage is Stage.FULL
    head = window.stage is Stage.HEAD
    length = window.length
    limit = window.whole_limit
    buf = bytearray(task.chunk_size) if full else bytearray(0)
    digests = bytearray()
    failed: list[tuple[int, str]] = []
    opened = 0
    total = 0
    os_open, os_close, os_read, os_pread, hasher = os.open, os.close, os.read, os.pread, blake3
    for position, (path, size) in enumerate(zip(task.paths, task.sizes, strict=True)):
        try:
            fd = os_open(path, flags)
        except OSError as exc:
            failed.append((position, _describe(exc)))
            digests += NO_DIGEST
            continue
        opened += 1
        try:
            if full:
                digest = _hash_chunked(fd, size, buf)
                nread = size
            elif size <= limit:
                # One byte more than expected is asked for, so a file that grew since the scan
                # shows itself; on a regular file a read is short only at end of file.  No fstat
                # for a non-empty file: a FIFO (opened O_NONBLOCK) or a device swapped in cannot
                # return exactly `size` bytes, so the count check keeps them out, one syscall
                # cheaper per small file.  An empty FIFO reads like an empty file, hence the check.
                if not size:
                    _check_regular(fd, size)
                data = os_read(fd, size + 1)
                if len(data) != size:
                    data = _finish_whole(fd, data, size)
                digest = hasher(data).digest()
                nread = size
            else:
                offset = 0 if head else size - length
                data = os_pread(fd, length, offset)
                if len(data) != length:
                    data = _read_rest(fd, data, length, offset)
                digest = hasher(data).digest()
                nread = length
        except OSError as exc:
            failed.append((position, _describe(exc)))
            digests += NO_DIGEST
            continue
        finally:
            os_close(fd)
        total += nread
        digests += digest
    return HashResult(window, task.ids, bytes(digests), tuple(failed), opened, total)


#: Larger groups are hashed file by file, so a group never holds more than this many files open;
#: so are groups of one (with --hard-links, where one inode's paths count as copies).
MAX_COMPARED = 64


class _Open:
    """A member of a group being compared: its position in the task, its file and its buffer."""

    __slots__ = ("buf", "fd", "position")

    def __init__(self, position: int, fd: int, buf: bytearray) -> None:
        self.position = position
        self.fd = fd
        self.buf = buf


def _compare_groups(task: HashTask, flags: int) -> HashResult:
    """The full stage: read the members of each group side by side, chunk by chunk.

    Members are split as soon as their bytes differ, and a member left alone stops being read, so
    files that differ only deep inside cost only what precedes the difference.  Each set of
    identical members feeds one BLAKE3 hasher (copied when a set splits): a digest is the BLAKE3
    of the whole file, yet identical copies are hashed once and compared byte for byte.
    """
    digests = [NO_DIGEST] * len(task.paths)
    failed: list[tuple[int, str]] = []
    opened = 0
    total = 0
    start = 0
    # Buffers are reused across the task's groups: a fresh zeroed buffer per file costs page
    # faults that outweigh the reading itself for files of a few dozen KiB.
    chunk = min(task.chunk_size, max(task.sizes, default=1) + 1)
    buffers = [bytearray(chunk) for _ in range(min(max(task.groups), MAX_COMPARED))]
    for members in task.groups:
        end = start + members
        size = task.sizes[start]
        if members > MAX_COMPARED or members == 1:
            for position in range(start, end):
                fd = _open(task.paths[position], flags, position, failed)
                if fd is None:
                    continue
                opened += 1
                try:
                    digests[position] = _hash_chunked(fd, size, buffers[0])
                    total += size
                except OSError as exc:
                    failed.append((position, _describe(exc)))
                finally:
                    os.close(fd)
        else:
            n_opened, n_read = _compare_group(
                task, start, end, size, flags, buffers, digests, failed
            )
            opened += n_opened
            total += n_read
        start = end
    return HashResult(task.window, task.ids, b"".join(digests), tuple(failed), opened, total)


def _compare_group(
    task: HashTask,
    start: int,
    end: int,
    size: int,
    flags: int,
    buffers: list[bytearray],
    digests: list[bytes],
    failed: list[tuple[int, str]],
) -> tuple[int, int]:
    chunk = len(buffers[0])
    live: list[_Open] = []
    total = 0
    opened = 0
    try:
        for position in range(start, end):
            fd = _open(task.paths[position], flags, position, failed)
            if fd is None:
                continue
            opened += 1
            live.append(_Open(position, fd, buffers[len(live)]))
            try:
                _check_regular(fd, size)
            except OSError as exc:
                failed.append((position, _describe(exc)))
                live.pop()
                os.close(fd)
        sets: list[tuple[list[_Open], blake3]] = [(live, blake3())] if len(live) > 1 else []
        offset = 0
        while offset < size and sets:
            want = min(chunk, size - offset)
            following: list[tuple[list[_Open], blake3]] = []
            for members, hasher in sets:
                read_ok = []
                for member in members:
                    try:
                        got = _read_exact(member.fd, member.buf, want)
                    except OSError as exc:
                        failed.append((member.position, _describe(exc)))
                        continue
                    total += got
                    read_ok.append(member)
                parts: list[list[_Open]] = []
                for member in read_ok:
                    for part in parts:
                        if _same(part[0].buf, member.buf, want, chunk):
                            part.append(member)
                            break
                    else:
                        parts.append([member])
                keep = [part for part in parts if len(part) > 1]
                for index, part in enumerate(keep):
                    # The last set takes the hasher itself; the others need their own copy of the
                    # state the chunks so far have left in it.
                    own = hasher if index == len(keep) - 1 else hasher.copy()
                    own.update(memoryview(part[0].buf)[:want])
                    following.append((part, own))
            sets = following
            offset += want
        for members, hasher in sets:
            intact = []
            for member in members:
                try:
                    if os.read(member.fd, 1):
                        raise ChangedError(errno.EIO, f"grew while reading: expected {size} bytes")
                    intact.append(member)
                except OSError as exc:
                    failed.append((member.position, _describe(exc)))
            digest = bytes(hasher.digest())
            for member in intact:
                digests[member.position] = digest
    finally:
        for member in live:
            os.close(member.fd)
    return opened, total


def _open(path: str, flags: int, position: int, failed: list[tuple[int, str]]) -> int | None:
    try:
        return os.open(path, flags)
    except OSError as exc:
        failed.append((position, _describe(exc)))
        return None


def _read_exact(fd: int, buf: bytearray, want: int) -> int:
    """Fill buf[:want] from the file; anything else (short file, grown file) is a change."""
    got = os.readv(fd, [buf])
    if got == want:
        return got
    if got > want:
        raise ChangedError(errno.EIO, "grew while reading")
    view = memoryview(buf)
    while got < want:
        more = os.readv(fd, [view[got:want]])
        if more == 0:
            raise ChangedError(errno.EIO, "short read: the file shrank while reading")
        got += more
    return got


def _same(a: bytearray, b: bytearray, want: int, chunk: int) -> bool:
    # Whole bytearrays compare with memcmp; memoryview comparison is element by element.
    if want == chunk:
        return a == b
    return a[:want] == b[:want]


def _finish_whole(fd: int, data: bytes, size: int) -> bytes:
    if len(data) < size:
        data = _read_rest(fd, data, size, 0)
    if len(data) != size:
        raise ChangedError(errno.EIO, f"size changed while reading: expected {size} bytes")
    return data


def _hash_chunked(fd: int, size: int, buf: bytearray) -> bytes:
    _check_regular(fd, size)
    hasher = blake3()
    view = memoryview(buf)
    total = 0
    readinto = os.readv
    while total <= size:
        n = readinto(fd, [buf])
        if n == 0:
            break
        hasher.update(view[:n])
        total += n
    if total != size:
        raise ChangedError(errno.EIO, f"size changed while reading: expected {size} bytes")
    return bytes(hasher.digest())


def _check_regular(fd: int, size: int) -> None:
    # The stage that produces a file's final digest confirms the open file is still a regular file
    # of the scanned size: a file replaced or resized after the scan must never match.
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise ChangedError(errno.EINVAL, "no longer a regular file")
    if st.st_size != size:
        raise ChangedError(errno.EIO, f"size changed since scan: {size} -> {st.st_size} bytes")


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


def _describe(exc: OSError) -> str:
    if isinstance(exc, ChangedError):
        return str(exc.strerror)
    if exc.errno == errno.ELOOP:
        return "is now a symbolic link (not followed)"
    name = errno.errorcode.get(exc.errno or 0, "")
    text = exc.strerror or str(exc)
    return f"{name}: {text}" if name else text
