"""What `apply` asks the filesystem: the same bytes? still unwritten? whose? what kind?

Small queries over `os`, shared by an operation and `--resume`; none changes anything on disk
except `sync_dir`, which only makes a directory's entries durable.
"""

from __future__ import annotations

import fcntl
import os
import stat
from collections.abc import Callable

from dedup_engine.apply.syscalls import REAL, Syscalls
from dedup_engine.model import Owner
from dedup_engine.openflags import OPEN_DIR

_COMPARE_CHUNK = 1 << 20


def owner(st: os.stat_result) -> Owner:
    return Owner(st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))


def same_bytes(
    a: int,
    b: int,
    size: int,
    syscalls: Syscalls = REAL,
    still: Callable[[], bool] | None = None,
) -> bool:
    """Whether two descriptors hold the same `size` bytes (and no more) from offset 0.

    `still` is asked before each chunk: once it says no (a lease broke), comparing further is
    pointless and the answer is False."""
    offset = 0
    while offset < size:
        if still is not None and not still():
            return False
        n = min(_COMPARE_CHUNK, size - offset)
        x, y = syscalls.pread(a, n, offset), syscalls.pread(b, n, offset)
        if len(x) != n or x != y:
            return False
        offset += n
    return syscalls.pread(a, 1, size) == b"" and syscalls.pread(b, 1, size) == b""


def lease_intact(fd: int) -> bool:
    """Our read lease on `fd` is still held and not being broken by a writer's open."""
    try:
        return fcntl.fcntl(fd, fcntl.F_GETLEASE) == fcntl.F_RDLCK
    except OSError:
        return False


def sync_dir(directory: str) -> None:
    """Make the directory's new entries durable before the journal says "done": resume
    trusts a done record, and on some filesystems (btrfs) the journal's fsync alone does not
    carry the rename and link with it.  Reached without following symlinks, so a path longer
    than PATH_MAX works too."""
    try:
        handle = REAL.open_dir(None, directory)
    except OSError:
        return
    try:
        fd = os.open(".", OPEN_DIR, dir_fd=handle)
    except OSError:
        return
    finally:
        os.close(handle)
    try:
        os.fsync(fd)
    except OSError:
        pass  # the operation is done; a directory that cannot be synced is no reason to undo it
    finally:
        os.close(fd)


def content_stamp(fd: int) -> tuple[int, int]:
    """Size and mtime: what any write changes (our own links and renames change only ctime)."""
    st = os.fstat(fd)
    return st.st_size, st.st_mtime_ns


def free_bytes(fd: int) -> int:
    info = os.fstatvfs(fd)
    return info.f_bfree * info.f_frsize


def lstat_at(at: int, name: str) -> os.stat_result | None:
    """The entry `name` in the directory `at`, not followed; None if it is not there.  Any
    other error is raised: an unreadable name is not a name that is gone."""
    try:
        return os.stat(name, dir_fd=at, follow_symlinks=False)
    except FileNotFoundError:
        return None


def readlink_at(at: int, name: str) -> str | None:
    try:
        return os.readlink(name, dir_fd=at)
    except OSError:
        return None


def kind(mode: int) -> str:
    kinds: list[tuple[Callable[[int], bool], str]] = [
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISDIR, "directory"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    ]
    return next((name for test, name in kinds if test(mode)), "special file")
