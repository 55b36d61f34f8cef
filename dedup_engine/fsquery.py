"""What `apply` asks the filesystem: is it the same file, the same bytes, still unwritten.

Small queries over `os`, shared by the acting step (`act`) and `--resume` (`journal`); none
changes anything on disk except `sync_dir`, which only makes a directory's entries durable.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable

_COMPARE_CHUNK = 1 << 20


def same_bytes(a: int, b: int, size: int) -> bool:
    """Whether two descriptors hold the same `size` bytes (and no more) from offset 0."""
    offset = 0
    while offset < size:
        n = min(_COMPARE_CHUNK, size - offset)
        x, y = os.pread(a, n, offset), os.pread(b, n, offset)
        if len(x) != n or x != y:
            return False
        offset += n
    return os.pread(a, 1, size) == b"" and os.pread(b, 1, size) == b""


def device_of(target: str) -> int | None:
    parent = os.path.dirname(target)
    while True:
        try:
            return os.stat(parent).st_dev
        except FileNotFoundError:
            if parent == os.path.dirname(parent):
                return None
            parent = os.path.dirname(parent)
        except OSError:
            return None


def sync_dir(directory: str) -> None:
    """Make the directory's new entries durable before the journal says "done": resume
    trusts a done record, and on some filesystems (btrfs) the journal's fsync alone does not
    carry the rename and link with it."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
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


def lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except OSError:
        return None


def lexists(path: str) -> bool:
    return lstat(path) is not None


def readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def same_file(st: os.stat_result | None, other: os.stat_result) -> bool:
    return st is not None and (st.st_dev, st.st_ino) == (other.st_dev, other.st_ino)


def is_symlink_to(path: str, target: str, keep: os.stat_result) -> bool:
    st = lstat(path)
    if st is None or not stat.S_ISLNK(st.st_mode) or readlink(path) != target:
        return False
    try:
        return same_file(os.stat(path), keep)
    except OSError:
        return False


def blocks(path: str) -> int:
    st = lstat(path)
    return st.st_blocks if st is not None else 0


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


def describe_error(exc: OSError) -> str:
    """ "Permission denied (EACCES)": what happened, and the name to search for."""
    if not exc.errno:
        return str(exc)
    return f"{os.strerror(exc.errno)} ({errno.errorcode.get(exc.errno, exc.errno)})"
