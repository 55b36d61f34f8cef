"""Reading the head or tail window of a file and hashing it with BLAKE3; the stages' shared types.

A stage is a `Window`: head, tail or full (the full stage's reader is `fullstage`).  `hash_batch`
runs in the worker processes (or in process with `--workers 0`) and returns digests for the files
it could read; a file it could not read, or whose size differs from what the scan saw, gets no
digest and an issue instead, so it never matches.
"""

from __future__ import annotations

import errno
import os
import stat
from array import array
from dataclasses import dataclass, field

from blake3 import blake3

from dedup_engine.model import Stage
from dedup_engine.openflags import read_flags
from dedup_engine.oserror import describe_error

DIGEST_SIZE = 32
NO_DIGEST = bytes(DIGEST_SIZE)


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
    #: Full stage: what the scan saw of each file, checked on the open file once it is read.  The
    #: partial windows go without: their digests are never final but for files read whole, which
    #: the parent re-checks by path once every read of their group is done.
    inos: array[int] = field(default_factory=lambda: array("Q"))
    mtimes: array[int] = field(default_factory=lambda: array("q"))
    ctimes: array[int] = field(default_factory=lambda: array("q"))


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
    groups: array[int] = field(default_factory=lambda: array("I"))  #: the task's, echoed


class ChangedError(OSError):
    """The file is not as the scan saw it: another inode, size, mtime or ctime, or not a regular
    file."""


def hash_batch(task: HashTask) -> HashResult:
    """Hash the head or tail window of every file in the task; never raises for one file.

    The loop is written out flat because it runs once per candidate file: at ~200k files a
    function call per file costs a measurable share of the run.
    """
    window = task.window
    flags = read_flags(task.follow_links)
    head = window.stage is Stage.HEAD
    length = window.length
    limit = window.whole_limit
    digests = bytearray()
    failed: list[tuple[int, str]] = []
    opened = 0
    total = 0
    os_open, os_close, os_pread, hasher = os.open, os.close, os.pread, blake3
    for position, (path, size) in enumerate(zip(task.paths, task.sizes, strict=True)):
        try:
            fd = os_open(path, flags)
        except OSError as exc:
            failed.append((position, describe(exc)))
            digests += NO_DIGEST
            continue
        opened += 1
        try:
            if size <= limit:
                # The file is read whole and this digest is final.  pread, not read: a FIFO or
                # socket swapped in after the scan fails it (ESPIPE) however many bytes it holds,
                # which spares an fstat per small file.  One byte more than expected is asked
                # for, so a file that grew since the scan shows itself; on a regular file a read
                # is short only at end of file.  Any other change is for the parent's re-check.
                data = os_pread(fd, size + 1, 0)
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
            failed.append((position, describe(exc)))
            digests += NO_DIGEST
            continue
        finally:
            os_close(fd)
        total += nread
        digests += digest
    return HashResult(window, task.ids, bytes(digests), tuple(failed), opened, total)


def _finish_whole(fd: int, data: bytes, size: int) -> bytes:
    if len(data) < size:
        data = _read_rest(fd, data, size, 0)
    if len(data) != size:
        raise ChangedError(errno.EIO, f"size changed while reading: expected {size} bytes")
    return data


def check_unchanged(fd: int, size: int, ino: int, mtime: int, ctime: int) -> None:
    """Refuse a file just read that is not the one the scan saw: another inode, size, mtime or
    ctime (a write since the scan changes both times), or not a regular file."""
    st = os.fstat(fd)
    if st.st_mtime_ns != mtime or st.st_ctime_ns != ctime or st.st_ino != ino or st.st_size != size:
        raise ChangedError(errno.EIO, what_changed(st, size, ino))


def what_changed(st: os.stat_result, size: int, ino: int, dev: int | None = None) -> str:
    """Why a file is not as the scan saw it, in words (something differs by assumption)."""
    if not stat.S_ISREG(st.st_mode):
        return "no longer a regular file"
    if st.st_ino != ino or (dev is not None and st.st_dev != dev):
        return "replaced since the scan (another file at this path)"
    if st.st_size != size:
        return f"changed since the scan: size {size} -> {st.st_size} bytes"
    return "changed since the scan (mtime or ctime differs)"


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


def describe(exc: OSError) -> str:
    """An issue's text for a failed read: what the find stages make of the errors they expect
    (a file that changed, or was swapped for a symlink or a FIFO), else the plain error."""
    if isinstance(exc, ChangedError):
        return str(exc.strerror)
    if exc.errno == errno.ELOOP:
        return "is now a symbolic link (not followed)"
    if exc.errno == errno.ESPIPE:
        return "no longer a regular file (a FIFO or socket now)"
    return describe_error(exc)
