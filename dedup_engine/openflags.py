"""How the engine opens what it only reads: one set of flags for files, one for directories,
and the one way to reach a directory by its path without following a symlink on the way.

Every read-only open in the engine (the find stages, `apply`'s compare, the journal and its report
copy, the gates) takes its flags from here, so a safety flag added once holds everywhere.
"""

from __future__ import annotations

import errno
import os
import stat

# O_NOFOLLOW: a path swapped for a symlink is refused rather than followed somewhere else.
# O_NONBLOCK: a path swapped for a FIFO must not hang the open; no effect on regular files.
# O_NOCTTY: a path swapped for a terminal must not become our controlling terminal.
# O_CLOEXEC: no descriptor leaks into a child (a worker, a peer tool under benchmark).
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_COMMON = getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)

#: What every open of an existing file the engine did not just create adds to its access mode.
GUARDS = _NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | _COMMON

#: A file read for its bytes, never through a symlink.
OPEN_READ = os.O_RDONLY | GUARDS

#: A directory listed or used as an anchor (`dir_fd`), never through a symlink.
OPEN_DIR = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _NOFOLLOW | _COMMON


def read_flags(follow_links: bool = False) -> int:
    """OPEN_READ, or the same flags following a symlink where the user asked for it (`-L`)."""
    return OPEN_READ & ~_NOFOLLOW if follow_links else OPEN_READ


def dir_flags(follow_links: bool = False) -> int:
    """OPEN_DIR, or the same flags following a symlink (`-L`, or a directory the user named)."""
    return OPEN_DIR & ~_NOFOLLOW if follow_links else OPEN_DIR


#: A directory on the way to a file: a handle for the *at calls only (O_PATH needs no read
#: permission, as path lookup needs none), and never a symlink.  With O_PATH the kernel keeps
#: only O_DIRECTORY, O_NOFOLLOW and O_CLOEXEC of OPEN_DIR's flags.
DIR_HANDLE = os.O_PATH | OPEN_DIR


def handle_flags(follow_links: bool = False) -> int:
    """DIR_HANDLE, or the same flags following a symlink (`-L`)."""
    return DIR_HANDLE & ~_NOFOLLOW if follow_links else DIR_HANDLE


class SymlinkInPath(OSError):
    """A directory on the way is a symlink: neither `find` nor `apply` goes through one."""


def open_dir_handle(at: int | None, path: str) -> int:
    """`path` (absolute when `at` is None, else relative to `at`) as an O_PATH descriptor,
    opened a component at a time; `SymlinkInPath` (ELOOP) if any component is a symlink."""
    if at is None and not path.startswith("/"):
        raise OSError(errno.EINVAL, "not an absolute path", path)
    fd = os.open("/", DIR_HANDLE) if at is None else os.dup(at)
    try:
        for part in path.split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                raise OSError(errno.EINVAL, "'..' in a path", path)
            try:
                below = os.open(part, DIR_HANDLE, dir_fd=fd)
            except NotADirectoryError:
                if stat.S_ISLNK(os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode):
                    raise SymlinkInPath(errno.ELOOP, f"{part!r} is a symlink", path) from None
                raise
            os.close(fd)
            fd = below
    except BaseException:
        os.close(fd)
        raise
    return fd
