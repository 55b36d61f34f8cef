"""Whether a file or a name is still what an operation expects: one check for apply and resume.

An operation checks its files before and while it changes anything; `--resume` checks, later,
what an interrupted one left, with only the journal to go by.  Both ask the same questions, here:

- is this the file (`same_file`: its (dev, ino)), unchanged since the report or our own last
  operation on it (`changed_since`: type, size, mtime, owner and mode, ctime)?
- does a name hold the link the operation makes (`is_our_link`), and does that link reach the
  kept file (`links_to_kept`)?  Would removing a name remove the kept file's last one
  (`is_only_name`)?
- are two open files (`Opened`) still the same bytes, neither held open for writing elsewhere
  (`take_lease`) nor written while compared (`compare`, `written`)?

Who can reach the two files is the rest of "may the copy give way", in `access.py`.  A check that
fails raises `Refused`, or returns its reason, in the words the summary prints.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import NamedTuple

from dedup_engine.apply.fsquery import (
    content_stamp,
    kind,
    lease_intact,
    lstat_at,
    owner,
    readlink_at,
    same_bytes,
)
from dedup_engine.apply.plan import Action
from dedup_engine.apply.syscalls import Syscalls
from dedup_engine.model import FileEntry
from dedup_engine.openflags import OPEN_READ
from dedup_engine.oserror import describe_error

#: A file's identity: (st_dev, st_ino).
Identity = tuple[int, int]
#: Errors that mean "no lease can be had here" (not the owner and no CAP_LEASE; a filesystem
#: without leases), as opposed to "someone has the file open for writing" (EAGAIN).
NO_LEASE = frozenset(
    {errno.EACCES, errno.EPERM, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK}
)


class Refused(Exception):
    """A check failed: the operation does not go on, for this reason."""


class Opened(NamedTuple):
    """A file opened for an operation: its fstat from the moment it was checked, and whether
    we hold a read lease on it."""

    fd: int
    st: os.stat_result
    leased: bool


# -- names --------------------------------------------------------------------------------


def same_file(st: os.stat_result | None, other: os.stat_result | Identity) -> bool:
    """Whether `st` is the file `other` (a stat, or a (dev, ino) identity)."""
    if st is None:
        return False
    # A stat_result is a tuple too: tell them apart by what they are, not by tuple-ness.
    key = (other.st_dev, other.st_ino) if isinstance(other, os.stat_result) else other
    return (st.st_dev, st.st_ino) == key


def changed_since(
    st: os.stat_result, entry: FileEntry, seen: dict[Identity, tuple[int, int, int]]
) -> str | None:
    """How `st` differs from `entry` as the report saw it, or as our own last operation on it
    left it (`seen`: size, mtime, ctime), or None."""
    if not stat.S_ISREG(st.st_mode):
        return f"it is no longer a regular file ({kind(st.st_mode)})"
    if (st.st_dev, st.st_ino) != (entry.dev, entry.ino):
        return "it is another file now (dev, ino differ)"
    size, mtime, ctime = seen.get(
        (entry.dev, entry.ino), (entry.size, entry.mtime_ns, entry.ctime_ns)
    )
    if st.st_size != size:
        return f"size {size} -> {st.st_size}"
    if st.st_mtime_ns != mtime:
        return "modified (mtime differs)"
    if owner(st) != entry.owner:
        return f"owner or mode {entry.owner} -> {owner(st)}"
    if st.st_ctime_ns != ctime:
        return "its metadata or links changed (ctime differs)"
    return None


def is_our_link(
    action: Action, at: int, name: str, st: os.stat_result, kept: Identity, keep_path: str
) -> bool:
    """Whether `st`, the entry `name` in the directory `at` (not followed), is what `action`
    creates there: a hard link to the kept inode, or a symlink whose target is the kept path.
    Removing it loses nothing.  A delete, move or reflink creates no name."""
    if action is Action.HARDLINK:
        return stat.S_ISREG(st.st_mode) and same_file(st, kept)
    if action is Action.SYMLINK:
        return stat.S_ISLNK(st.st_mode) and readlink_at(at, name) == keep_path
    return False


def links_to_kept(action: Action, at: int, name: str, kept: os.stat_result, keep_path: str) -> bool:
    """Whether `name` in `at` is our link and reaches the kept file now: a hard link is the
    kept inode, and a symlink, followed, lands on it."""
    st = lstat_at(at, name)
    if st is None or not is_our_link(action, at, name, st, (kept.st_dev, kept.st_ino), keep_path):
        return False
    if action is Action.HARDLINK:
        return True
    try:
        return same_file(os.stat(name, dir_fd=at), kept)
    except OSError:
        return False


def is_only_name(action: Action, st: os.stat_result | None) -> bool:
    """Whether `st` may be the kept file's last name, which must not be removed: one link
    left, on a regular file, or on anything a hard link made."""
    if st is None or st.st_nlink >= 2:
        return False
    return action is Action.HARDLINK or stat.S_ISREG(st.st_mode)


# -- open files ---------------------------------------------------------------------------


def open_read(syscalls: Syscalls, at: int, name: str) -> Opened:
    """`name` in the directory `at`, opened read-only without following a symlink."""
    fd = syscalls.open(at, name, OPEN_READ)
    try:
        return Opened(fd, os.fstat(fd), False)
    except BaseException:
        os.close(fd)
        raise


def take_lease(syscalls: Syscalls, opened: Opened, who: str) -> tuple[Opened, OSError | None]:
    """`opened` with a read lease; or, where none can be had here, without one and with the
    error that says why.  `Refused` while another process holds the file open for writing
    (EAGAIN), or when the lease fails otherwise."""
    try:
        syscalls.lease(opened.fd)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
            raise Refused(f"{who} is open for writing by another process") from None
        if exc.errno not in NO_LEASE:
            raise Refused(f"{who}: cannot take a lease: {describe_error(exc)}") from None
        return opened, exc
    return opened._replace(leased=True), None


def written(*files: tuple[str, Opened], ok: tuple[str, ...] = ()) -> str | None:
    """Why a file (with its role) may have been written since it was opened, or None.  A
    broken lease of a role in `ok` is no reason: its opener waits for us and has written
    nothing."""
    for role, opened in files:
        if content_stamp(opened.fd) != (opened.st.st_size, opened.st.st_mtime_ns):
            return f"the {role} was written to during the operation"
        if opened.leased and not lease_intact(opened.fd) and role not in ok:
            return f"the {role} was opened for writing by another process (lease broken)"
    return None


def compare(
    syscalls: Syscalls, kept: Opened, victim: Opened, size: int, *, verify: bool
) -> str | None:
    """Why the two files may not be taken for copies (None: they are), their `size` bytes
    read to the end (unless not `verify`), and neither written meanwhile."""
    files = (("kept file", kept), ("victim", victim))
    if verify and not same_bytes(
        kept.fd, victim.fd, size, syscalls, lambda: written(*files) is None
    ):
        return written(*files) or "content differs from the kept file"
    return written(*files)
