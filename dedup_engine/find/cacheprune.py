"""Pruning the digest cache: dropping the rows of files gone or changed, and the least recently
used rows past a size cap.

Each row names the directory its file was stored from.  A row is kept only where that directory
still holds a file with the row's filesystem, inode, size, mtime and ctime; a file moved, renamed
away or changed loses its rows (a later run stores them again).  Rows of a filesystem that is not
mounted now are kept (an unplugged disk comes back) but for the size cap, which drops whole
directories' rows, those a run used least recently first.  Nothing here reads a file's bytes or
changes a file: only the cache's rows go.
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass

from dedup_engine.find.cache import DigestCache, Directory
from dedup_engine.find.fsidentity import TRUSTED_MOUNT_TYPES, filesystem_id
from dedup_engine.openflags import OPEN_DIR

#: What a listed directory holds: (filesystem, inode) of each regular file (a symlink's target
#: too, as runs with links followed store it), and its (size, mtime_ns, ctime_ns).
Listing = dict[tuple[bytes, int], tuple[int, int, int]]
#: Passes of dropping the least used directories and compacting, while the estimate falls short.
_CAP_PASSES = 4


@dataclass(frozen=True, slots=True)
class Pruned:
    """What `prune` did: rows and bytes before and after, and why rows went or stayed."""

    rows_before: int
    rows_after: int
    bytes_before: int
    bytes_after: int
    gone: int  # rows of files no longer found as they were stored
    capped: int  # rows of the least recently used directories, dropped for the size cap
    unmounted: int  # rows kept unchecked: their filesystem is not mounted now


def prune(cache: DigestCache, max_bytes: int | None = None) -> Pruned:
    """Drop the rows of files gone or changed, then, past `max_bytes` on disk, the rows of the
    least recently used directories; the file is compacted to its new size."""
    rows_before, bytes_before = cache.count(), cache.bytes_on_disk()
    mounted = mounted_filesystems()
    unmounted = 0
    for directory, keys in cache.by_directory():
        if directory is not None and mounted is not None and directory.fs not in mounted:
            unmounted += len(keys)
            continue
        listing = None if directory is None else list_directory(directory)
        cache.doom(
            key
            for key in keys
            if listing is None or listing.get((key.fs, key.ino)) != (key.size, key.mtime, key.ctime)
        )
    gone = cache.forget_doomed()
    cache.compact()
    capped = 0 if max_bytes is None else _cap(cache, max_bytes)
    return Pruned(
        rows_before,
        cache.count(),
        bytes_before,
        cache.bytes_on_disk(),
        gone,
        capped,
        unmounted,
    )


def _cap(cache: DigestCache, max_bytes: int) -> int:
    """Drop the least recently used directories' rows until the file is at most `max_bytes`
    (or empty); the rows dropped."""
    dropped = 0
    for _ in range(_CAP_PASSES):
        size, rows = cache.bytes_on_disk(), cache.count()
        if size <= max_bytes or rows == 0:
            break
        # Bytes are near proportional to rows: drop the share above the cap.
        excess = rows - rows * max_bytes // size
        doomed: list[int] = []
        for directory, count in cache.least_used():
            if excess <= 0:
                break
            doomed.append(directory)
            excess -= count
        dropped += cache.forget_directories(doomed)
        cache.compact()
    return dropped


def list_directory(directory: Directory) -> Listing | None:
    """The regular files in `directory`, or None where it cannot be listed or is no longer on
    the filesystem it was stored from (another disk mounted in its place)."""
    try:
        fd = os.open(directory.path, OPEN_DIR)
    except (OSError, ValueError):  # ValueError: a NUL in a path from a crafted row
        return None
    try:
        dev = os.fstat(fd).st_dev
        if filesystem_id(".", dev, dir_fd=fd) != directory.fs:
            return None
        found: Listing = {}
        with os.scandir(fd) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):  # gone since listed: not found
                    _add(found, fd, entry.name, directory.fs, dev)
        return found
    except OSError:
        return None
    finally:
        os.close(fd)


def _add(found: Listing, dir_fd: int, name: str, fs: bytes, dev: int) -> None:
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    followed = stat.S_ISLNK(st.st_mode)
    if followed:
        st = os.stat(name, dir_fd=dir_fd)
    if not stat.S_ISREG(st.st_mode):
        return
    if st.st_dev != dev:  # a symlink's target, or a file mounted over a name: another filesystem
        other = filesystem_id(name, st.st_dev, followed, dir_fd=dir_fd)
        if other is None:
            return
        fs = other
    found[(fs, st.st_ino)] = (st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def mounted_filesystems() -> set[bytes] | None:
    """The identities of the filesystems mounted now, as this process sees them; None where
    /proc cannot say (then every filesystem is taken as mounted).  Only mounts of the types the
    cache trusts are asked: a network mount whose server is gone would hang the question."""
    try:
        with open("/proc/self/mountinfo", "rb") as lines:
            points = [
                _unescape(fields[4])
                for fields in map(bytes.split, lines)
                if fields[fields.index(b"-") + 1] in TRUSTED_MOUNT_TYPES
            ]
    except (OSError, IndexError, ValueError):
        return None
    found: set[bytes] = set()
    for point in points:
        with contextlib.suppress(OSError):
            identity = filesystem_id(os.fsdecode(point), os.stat(point).st_dev)
            if identity is not None:
                found.add(identity)
    return found


def _unescape(field: bytes) -> bytes:
    """A mountinfo path: space, tab, newline and backslash are written as octal escapes."""
    for code in (b"\\040", b"\\011", b"\\012", b"\\134"):
        field = field.replace(code, bytes([int(code[1:], 8)]))
    return field
