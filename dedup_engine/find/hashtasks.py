"""Worker side of the head and tail stages: reading each file's window and hashing it (BLAKE3).

`hash_batch` runs in the worker processes (or in process with `--workers 0`) and returns digests
for the files it could read; a file it could not read, or whose size differs from what the scan
saw, gets no digest and an issue instead, so it never matches.  The full stage's reader is
`fullcompare`; the parent side of every hashing stage is `hashstep`.
"""

from __future__ import annotations

import errno
import os

from blake3 import blake3

from dedup_engine.find.changes import ChangedError, describe, what_changed
from dedup_engine.find.fsidentity import expose_mapped_writes
from dedup_engine.find.store import RowStore
from dedup_engine.find.tasks import NO_DIGEST, Failure, HashResult, HashTask
from dedup_engine.model import Stage
from dedup_engine.openflags import read_flags


def hash_batch(task: HashTask, store: RowStore) -> HashResult:
    """Hash the head or tail window of each of the task's rows of `store`; never raises for one
    file.

    The loop is written out flat because it runs once per candidate file: at ~200k files a
    function call per file costs a measurable share of the run.
    """
    window = task.window
    flags = read_flags(task.follow_links)
    head = window.stage is Stage.HEAD
    length = window.length
    limit = window.whole_limit
    digests = bytearray()
    failed: list[Failure] = []
    opened = 0
    total = 0
    os_open, os_close, os_fstat, os_pread, hasher = os.open, os.close, os.fstat, os.pread, blake3
    writeback = task.writeback
    rows = task.rows
    paths = store.paths(rows)
    devs, inos = store.devs(rows), [store.ino[row] for row in rows]
    for position, (path, size) in enumerate(zip(paths, task.sizes, strict=True)):
        try:
            fd = os_open(path, flags)
        except OSError as exc:
            failed.append((position, path, describe(exc)))
            digests += NO_DIGEST
            continue
        opened += 1
        try:
            # The path is looked up again: a directory on it swapped for a symlink since the
            # scan would lead elsewhere, so the file opened must be the one the scan saw.
            st = os_fstat(fd)
            if st.st_ino != inos[position] or st.st_dev != devs[position]:
                raise ChangedError(
                    errno.EIO, what_changed(st, size, inos[position], devs[position])
                )
            if writeback:
                expose_mapped_writes(fd)
            if size <= limit:
                # The file is read whole and this digest is final.  One byte more than expected
                # is asked for, so a file that grew since the scan shows itself; on a regular
                # file a read is short only at end of file.  Any other change is for the
                # parent's re-check.
                data = os_pread(fd, size + 1, 0)
                if len(data) != size:
                    data = _finish_whole(fd, data, size)
            else:
                offset = 0 if head else size - length
                data = os_pread(fd, length, offset)
                if len(data) != length:
                    data = _read_rest(fd, data, length, offset)
            digest = hasher(data).digest()
        except OSError as exc:
            failed.append((position, path, describe(exc)))
            digests += NO_DIGEST
            continue
        finally:
            os_close(fd)
        total += len(data)
        digests += digest
    return HashResult(bytes(digests), tuple(failed), opened, total)


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
