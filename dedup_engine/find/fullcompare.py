"""The full stage: the members of each group read side by side, compared and hashed once.

Members are split as soon as their bytes differ, and a member left alone stops being read, so
files that differ only deep inside cost only what precedes the difference.  Each set of identical
members feeds one BLAKE3 hasher (copied when a set splits): a digest is the BLAKE3 of the whole
file, yet identical copies are hashed once and compared byte for byte.
"""

from __future__ import annotations

import errno
import os

from blake3 import blake3

from dedup_engine.find.hashtasks import (
    NO_DIGEST,
    ChangedError,
    HashResult,
    HashTask,
    check_unchanged,
    describe,
)
from dedup_engine.openflags import read_flags

#: Larger groups are hashed file by file, so a group never holds more than this many files open;
#: so are groups of one (with --hard-links, where one inode's paths count as copies).
MAX_COMPARED = 64


class _Open:
    """A member of a group being compared: its position in the task, its file and its buffer."""

    __slots__ = ("buf", "eof", "fd", "position")

    def __init__(self, position: int, fd: int, buf: bytearray) -> None:
        self.position = position
        self.fd = fd
        self.buf = buf
        #: The last read asked for more than was left and got exactly the rest: the end of
        #: file is seen (a regular file's read is short only there), so no extra read to check
        #: that the file did not grow.
        self.eof = False


def compare_groups(task: HashTask) -> HashResult:
    """Digests for the task's groups (laid end to end, sizes in `task.groups`), chunk by chunk."""
    flags = read_flags(task.follow_links)
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
                    digests[position] = _hash_chunked(task, position, fd, buffers[0])
                    total += size
                except OSError as exc:
                    failed.append((position, describe(exc)))
                finally:
                    os.close(fd)
        else:
            n_opened, n_read = _compare_group(
                task, start, end, size, flags, buffers, digests, failed
            )
            opened += n_opened
            total += n_read
        start = end
    return HashResult(
        task.window, task.ids, b"".join(digests), tuple(failed), opened, total, task.groups
    )


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
        sets: list[tuple[list[_Open], blake3]] = [(live, blake3())] if len(live) > 1 else []
        offset = 0
        while offset < size and sets:
            want = min(chunk, size - offset)
            following: list[tuple[list[_Open], blake3]] = []
            for members, hasher in sets:
                read_ok = []
                for member in members:
                    try:
                        got, member.eof = _read_exact(member.fd, member.buf, want)
                    except OSError as exc:
                        failed.append((member.position, describe(exc)))
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
                    if not member.eof and os.read(member.fd, 1):
                        raise ChangedError(errno.EIO, f"grew while reading: expected {size} bytes")
                    # Once every member is read: unchanged since the scan, each held the bytes
                    # compared from its scan to now, so they were all equal at once.
                    _check(task, member.position, member.fd)
                    intact.append(member)
                except OSError as exc:
                    failed.append((member.position, describe(exc)))
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
        failed.append((position, describe(exc)))
        return None


def _read_exact(fd: int, buf: bytearray, want: int) -> tuple[int, bool]:
    """Fill buf[:want] from the file; anything else (short file, grown file) is a change.

    Also says whether the read met the end of file: it asked for the whole buffer, more than
    `want`, and got `want`.
    """
    got = os.readv(fd, [buf])
    if got == want:
        return got, want < len(buf)
    if got > want:
        raise ChangedError(errno.EIO, "grew while reading")
    view = memoryview(buf)
    while got < want:
        more = os.readv(fd, [view[got:want]])
        if more == 0:
            raise ChangedError(errno.EIO, "short read: the file shrank while reading")
        got += more
    return got, False


def _same(a: bytearray, b: bytearray, want: int, chunk: int) -> bool:
    # Whole bytearrays compare with memcmp; memoryview comparison is element by element.
    if want == chunk:
        return a == b
    return a[:want] == b[:want]


def _check(task: HashTask, position: int, fd: int) -> None:
    check_unchanged(
        fd, task.sizes[position], task.inos[position], task.mtimes[position], task.ctimes[position]
    )


def _hash_chunked(task: HashTask, position: int, fd: int, buf: bytearray) -> bytes:
    size = task.sizes[position]
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
    _check(task, position, fd)
    return bytes(hasher.digest())
