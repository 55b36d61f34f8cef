"""Worker side of the full stage: the members of each group read side by side, compared and
hashed once.

Members are split as soon as their bytes differ, and a member left alone stops being read, so
files that differ only deep inside cost only what precedes the difference.  Each set of identical
members feeds one BLAKE3 hasher (copied when a set splits): a digest is the BLAKE3 of the whole
file, yet identical copies are hashed once and compared byte for byte.  The parent side is
`hashstep.FullStep`.
"""

from __future__ import annotations

import errno
import os
from array import array

from blake3 import blake3

from dedup_engine.find.changes import ChangedError, Scanned, check_unchanged, describe
from dedup_engine.find.fsidentity import expose_mapped_writes
from dedup_engine.find.tasks import NO_DIGEST, CompareResult, CompareTask, Failure
from dedup_engine.openflags import read_flags

#: Larger groups are hashed file by file, so a group never holds more than this many files open;
#: so are groups of one (with --hard-links, where one inode's paths count as copies).
MAX_COMPARED = 64


def compare_groups(task: CompareTask) -> CompareResult:
    """Digests for the task's groups (laid end to end, sizes in `task.groups`), chunk by chunk."""
    comparison = _Comparison(task)
    start = 0
    for members in task.groups:
        end = start + members
        if task.sampled(task.sizes[start]):
            comparison.hash_each(start, end, sampled=True)
        elif members > MAX_COMPARED or members == 1:
            comparison.hash_each(start, end)
        else:
            comparison.compare(start, end)
        start = end
    return comparison.result()


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


#: Members whose bytes so far are identical, and the hasher that has taken those bytes.
_Set = tuple[list[_Open], blake3]


class _Comparison:
    """One compare task in a worker: its buffers, and the digests, failures and counts so far."""

    def __init__(self, task: CompareTask) -> None:
        self.task = task
        self.flags = read_flags(task.follow_links)
        self.digests = [NO_DIGEST] * len(task.paths)
        count = len(task.paths)
        # Owner and permission bits from the check on each open file: the final group's entry.
        self.uids = array("I", bytes(4 * count))
        self.gids = array("I", bytes(4 * count))
        self.modes = array("H", bytes(2 * count))
        self.failed: list[Failure] = []
        self.opened = 0
        self.total = 0
        # Buffers are reused across the task's groups: a fresh zeroed buffer per file costs page
        # faults that outweigh the reading itself for files of a few dozen KiB.
        self.chunk = min(task.chunk_size, max(task.sizes, default=1) + 1)
        count = min(max(task.groups, default=0), MAX_COMPARED)
        self.buffers = [bytearray(self.chunk) for _ in range(count)]

    def result(self) -> CompareResult:
        digests, failed = b"".join(self.digests), tuple(self.failed)
        return CompareResult(
            digests, failed, self.opened, self.total, self.uids, self.gids, self.modes
        )

    def _fail(self, position: int, exc: OSError) -> None:
        self.failed.append((position, self.task.paths[position], describe(exc)))

    def hash_each(self, start: int, end: int, sampled: bool = False) -> None:
        """Hash the members of a group one by one, each file on its own: in full, or with
        `sampled` (`--sample`) on `task.sample` windows spread from its first byte to its last,
        whose equal digests say only that those windows are equal."""
        hash_one = self._hash_windows if sampled else self._hash_chunked
        for position in range(start, end):
            fd = self._open(position)
            if fd is None:
                continue
            try:
                self.digests[position] = hash_one(position, fd)
            except OSError as exc:
                self._fail(position, exc)
            finally:
                os.close(fd)

    def _hash_windows(self, position: int, fd: int) -> bytes:
        size = self.task.sizes[position]
        window = min(self.chunk, size)
        view = memoryview(self.buffers[0])[:window]
        hasher = blake3()
        for offset in sample_offsets(size, window, self.task.sample):
            got = os.preadv(fd, [view], offset)
            if got != window:
                raise ChangedError(errno.EIO, f"short read: the file ended before {offset + got}")
            hasher.update(view)
            self.total += got
        self._check(position, fd)  # size, mtime and ctime as the scan saw them
        return bytes(hasher.digest())

    def compare(self, start: int, end: int) -> None:
        """Read the members of a group side by side, a chunk at a time, splitting them as their
        bytes differ; every set of two or more that reaches the end shares one digest."""
        size = self.task.sizes[start]
        live: list[_Open] = []
        try:
            for position in range(start, end):
                fd = self._open(position)
                if fd is not None:
                    live.append(_Open(position, fd, self.buffers[len(live)]))
            sets: list[_Set] = [(live, blake3())] if len(live) > 1 else []
            offset = 0
            while offset < size and sets:
                want = min(self.chunk, size - offset)
                sets = [split for alike in sets for split in self._next_chunk(alike, want)]
                offset += want
            for members, hasher in sets:
                self._finish(members, hasher, size)
        finally:
            for member in live:
                os.close(member.fd)

    def _next_chunk(self, alike: _Set, want: int) -> list[_Set]:
        """Read the next `want` bytes of each member, and split the set by them: the sets of two
        or more, each with its hasher updated."""
        members, hasher = alike
        parts: list[list[_Open]] = []
        for member in self._read_chunk(members, want):
            for part in parts:
                if _same(part[0].buf, member.buf, want, self.chunk):
                    part.append(member)
                    break
            else:
                parts.append([member])
        keep = [part for part in parts if len(part) > 1]
        out: list[_Set] = []
        for index, part in enumerate(keep):
            # The last set takes the hasher itself; the others need their own copy of the state
            # the chunks so far have left in it.
            own = hasher if index == len(keep) - 1 else hasher.copy()
            own.update(memoryview(part[0].buf)[:want])
            out.append((part, own))
        return out

    def _read_chunk(self, members: list[_Open], want: int) -> list[_Open]:
        """The members whose next `want` bytes are now in their buffers; the others failed."""
        read: list[_Open] = []
        for member in members:
            try:
                got, member.eof = _read_exact(member.fd, member.buf, want)
            except OSError as exc:
                self._fail(member.position, exc)
                continue
            self.total += got
            read.append(member)
        return read

    def _finish(self, members: list[_Open], hasher: blake3, size: int) -> None:
        """Give the set's digest to each member still as the scan saw it, once all are read."""
        intact = []
        for member in members:
            try:
                if not member.eof and os.read(member.fd, 1):
                    raise ChangedError(errno.EIO, f"grew while reading: expected {size} bytes")
                # Once every member is read: unchanged since the scan, each held the bytes
                # compared from its scan to now, so they were all equal at once.
                self._check(member.position, member.fd)
                intact.append(member)
            except OSError as exc:
                self._fail(member.position, exc)
        digest = bytes(hasher.digest())
        for member in intact:
            self.digests[member.position] = digest

    def _open(self, position: int) -> int | None:
        try:
            fd = os.open(self.task.paths[position], self.flags)
        except OSError as exc:
            self._fail(position, exc)
            return None
        self.opened += 1
        if self.task.writeback:
            try:
                expose_mapped_writes(fd)
            except OSError as exc:
                os.close(fd)
                self._fail(position, exc)
                return None
        return fd

    def _hash_chunked(self, position: int, fd: int) -> bytes:
        size = self.task.sizes[position]
        buf = self.buffers[0]
        hasher = blake3()
        view = memoryview(buf)
        total = 0
        while total <= size:
            n = os.readv(fd, [buf])
            if n == 0:
                break
            hasher.update(view[:n])
            total += n
        if total != size:
            raise ChangedError(errno.EIO, f"size changed while reading: expected {size} bytes")
        self._check(position, fd)
        self.total += size
        return bytes(hasher.digest())

    def _check(self, position: int, fd: int) -> None:
        t, p = self.task, position
        st = check_unchanged(
            fd, Scanned(t.devs[p], t.inos[p], t.sizes[p], t.mtimes[p], t.ctimes[p])
        )
        self.uids[position] = st.st_uid
        self.gids[position] = st.st_gid
        self.modes[position] = st.st_mode & 0o7777


def sample_offsets(size: int, window: int, count: int) -> list[int]:
    """Where `count` windows of `window` bytes lie in a file of `size` bytes: the first at its
    start, the last at its end, the others evenly between."""
    last = max(0, size - window)
    return sorted({last * index // (count - 1) for index in range(count)})


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
