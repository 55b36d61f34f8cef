"""How the engine opens what it only reads: one set of flags for files, one for directories.

Every read-only open in the engine (the find stages, `apply`'s compare, the journal and its report
copy, the gates) takes its flags from here, so a safety flag added once holds everywhere.
"""

from __future__ import annotations

import os

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
