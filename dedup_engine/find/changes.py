"""Whether a file read is still the one the scan saw, and a failed read's issue text.

Used by the workers: the readers (`hashtasks`, `fullcompare`) refuse a file that changed under
them, and the owners re-check by path the files a window read whole (`entries`).
A changed file gets no digest and an issue, so it never matches.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import NamedTuple

from dedup_engine.oserror import describe_error


class ChangedError(OSError):
    """The file is not as the scan saw it: another inode, size, mtime or ctime, or not a regular
    file."""


class Scanned(NamedTuple):
    """What the scan saw of a file: enough to tell whether a file is still that one.

    A named tuple, not a dataclass: one is made for every file re-checked, and it compares
    equal to the same fields of a stat (`seen_as`).
    """

    dev: int
    ino: int
    size: int
    mtime: int
    ctime: int

    def matches(self, st: os.stat_result) -> bool:
        """The same inode, size, mtime and ctime (a write since the scan changes both times)."""
        return seen_as(st) == self


def seen_as(st: os.stat_result) -> tuple[int, int, int, int, int]:
    """A stat's fields in `Scanned`'s order."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def check_unchanged(fd: int, seen: Scanned) -> os.stat_result:
    """Refuse a file just read that is not the one the scan saw: another inode, size, mtime or
    ctime (a write since the scan changes both times), or not a regular file.  Returns its
    stat."""
    st = os.fstat(fd)
    if not seen.matches(st):
        raise ChangedError(errno.EIO, what_changed(st, seen.size, seen.ino, seen.dev))
    return st


def still_as_scanned(path: str, seen: Scanned, follow_links: bool) -> os.stat_result:
    """Stat `path` again (its target, with links followed) and refuse a file that is not the
    one the scan saw (`ChangedError`, saying why); returns its stat."""
    try:
        st = (os.stat if follow_links else os.lstat)(path)
    except OSError as exc:
        why = f"changed since the scan: {describe(exc)}"
        raise ChangedError(exc.errno or errno.EIO, why) from None
    if not seen.matches(st):
        raise ChangedError(errno.EIO, what_changed(st, seen.size, seen.ino, seen.dev))
    return st


def what_changed(st: os.stat_result, size: int, ino: int, dev: int | None = None) -> str:
    """Why a file is not as the scan saw it, in words (something differs by assumption)."""
    if not stat.S_ISREG(st.st_mode):
        return "no longer a regular file"
    if st.st_ino != ino or (dev is not None and st.st_dev != dev):
        return "replaced since the scan (another file at this path)"
    if st.st_size != size:
        return f"changed since the scan: size {size} -> {st.st_size} bytes"
    return "changed since the scan (mtime or ctime differs)"


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
