"""Settling an operation a run left under way: from what is on disk, done, put back, or untouched.

An operation the journal shows begun and never ended (the run was killed, the power lost) or
ended in a failed rollback may have stopped at any step.  Its names say which: the copy's name
and its temporary name, each holding the copy, our link, nothing, or something else.  From them
`settle` finishes the step under way, or undoes it, or leaves it to a person, never removing a
file's last name nor anything we did not make; it asks of each name what the operation itself
asks (`identity.py`), and before completing a copy's removal it checks the pair again as the
operation does (the same files, equal access, no writer, the same bytes).
"""

from __future__ import annotations

import enum
import errno
import os
from dataclasses import dataclass

from dedup_engine.apply.access import Access
from dedup_engine.apply.fsquery import lstat_at
from dedup_engine.apply.identity import (
    Opened,
    Refused,
    compare,
    is_only_name,
    is_our_link,
    open_read,
    same_file,
    take_lease,
)
from dedup_engine.apply.journal import Pending
from dedup_engine.apply.outcome import Outcome
from dedup_engine.apply.plan import Action
from dedup_engine.apply.syscalls import Syscalls
from dedup_engine.oserror import describe_error


class Settlement(str, enum.Enum):
    """What `--resume` found on disk for an operation that was under way."""

    COMPLETED = "completed"
    PUT_BACK = "put back"  # our temporary name was renamed back: to be carried out again
    UNTOUCHED = "untouched"  # nothing of the operation happened: to be carried out
    LEFT_ALONE = "left alone"  # someone else changed the files since: skipped
    NEEDS_YOU = "needs you"  # the operation stays open in the journal


#: The settlements that end their operation, as its outcome; the others leave it to be
#: carried out again.
ENDS = {
    Settlement.COMPLETED: Outcome.DONE,
    Settlement.LEFT_ALONE: Outcome.SKIPPED,
    Settlement.NEEDS_YOU: Outcome.ROLLBACK_FAILED,
}


@dataclass(frozen=True, slots=True)
class Settled:
    pending: Pending
    settlement: Settlement
    message: str


def settle(item: Pending, syscalls: Syscalls, *, across_owners: bool) -> Settled:
    """What `item` left on disk, finished, undone or left to a person."""
    try:
        if item.action is Action.REFLINK:
            why = "a reflink is atomic: it is done, or tried again with its checks"
            return Settled(item, Settlement.UNTOUCHED, why)
        if item.action is Action.MOVE:
            return _settle_move(item, syscalls)
        directory = syscalls.open_dir(None, os.path.dirname(item.path))
        try:
            return _settle_replace(item, directory, syscalls, across_owners)
        finally:
            os.close(directory)
    except OSError as exc:
        where = f"{item.path!r}" + (f" and {item.aside!r}" if item.aside else "")
        return Settled(item, Settlement.NEEDS_YOU, f"{describe_error(exc)}; look at {where}")


def _settle_move(item: Pending, syscalls: Syscalls) -> Settled:
    assert item.target is not None
    at_path, at_target = _lstat_path(item.path, syscalls), _lstat_path(item.target, syscalls)
    if same_file(at_target, item.victim):
        if not same_file(at_path, item.victim):
            why = f"{item.path!r} had been moved to {item.target!r}"
            return Settled(item, Settlement.COMPLETED, why)
        # Where a filesystem has no RENAME_NOREPLACE a move is a link, then an unlink: stopped
        # between the two, the file has both names, and the old one goes.
        directory = syscalls.open_dir(None, os.path.dirname(item.path))
        try:
            syscalls.unlink(directory, os.path.basename(item.path))
        finally:
            os.close(directory)
        why = f"{item.path!r} had been linked to {item.target!r}; its old name removed"
        return Settled(item, Settlement.COMPLETED, why)
    if same_file(at_path, item.victim):
        return Settled(item, Settlement.UNTOUCHED, f"{item.path!r} had not been moved")
    # A move leaves no temporary name: with the file at neither place, someone moved or
    # removed it, and nothing of ours is stranded.
    why = f"neither {item.path!r} nor {item.target!r} holds the file now"
    return Settled(item, Settlement.LEFT_ALONE, why)


def _settle_replace(
    item: Pending, directory: int, syscalls: Syscalls, across_owners: bool
) -> Settled:
    """From what the copy's name and its temporary name hold: the operation sets the copy aside
    (delete; hardlink and symlink where names cannot be swapped) and links after, or makes its
    link under the temporary name and swaps it with the copy."""
    assert item.aside is not None
    name, temp = os.path.basename(item.path), os.path.basename(item.aside)
    path, aside = item.path, item.aside
    at_path, at_aside = lstat_at(directory, name), lstat_at(directory, temp)
    if at_aside is None:
        return _nothing_aside(item, directory, at_path, syscalls)
    if _is_our_link(item, directory, temp, at_aside):
        # Our link, made under the temporary name and not yet swapped in: the copy is in place.
        syscalls.unlink(directory, temp)
        if same_file(at_path, item.victim):
            return Settled(item, Settlement.UNTOUCHED, f"{path!r} had not been replaced")
        why = f"{path!r} was changed by someone else; our link {aside!r} removed"
        return Settled(item, Settlement.LEFT_ALONE, why)
    if not same_file(at_aside, item.victim):
        return Settled(item, Settlement.NEEDS_YOU, f"{aside!r} is not the victim; left alone")
    if same_file(at_path, item.victim):
        # A rename without RENAME_NOREPLACE is a link then an unlink: stopped between the two.
        syscalls.unlink(directory, temp)
        why = f"{path!r} had not been replaced; {aside!r} removed"
        return Settled(item, Settlement.UNTOUCHED, why)
    if at_path is None:
        syscalls.rename_noreplace(directory, temp, directory, name)
        return Settled(item, Settlement.PUT_BACK, f"{path!r} put back from {aside!r}")
    if not _is_our_link(item, directory, name, at_path):
        why = f"the original is at {aside!r}; {path!r} now holds a file we did not create"
        return Settled(item, Settlement.NEEDS_YOU, why)
    problem = _still_duplicate(item, directory, temp, syscalls, across_owners)
    if problem is None:
        syscalls.unlink(directory, temp)
        return Settled(item, Settlement.COMPLETED, f"{path!r} completed; {aside!r} removed")
    return _put_back(item, directory, syscalls, problem)


def _put_back(item: Pending, directory: int, syscalls: Syscalls, why: str) -> Settled:
    """The copy back at its name from the temporary one, where our link stands: swapped, so the
    link (the kept file, perhaps written to through this name since) is never the one removed
    while it is the kept file's last name."""
    assert item.aside is not None
    name, temp = os.path.basename(item.path), os.path.basename(item.aside)
    try:
        syscalls.exchange(directory, name, directory, temp)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
        if is_only_name(item.action, lstat_at(directory, name)):
            return Settled(item, Settlement.NEEDS_YOU, f"{why}; {item.path!r} is the kept file's "
                           f"only name now, and the original is at {item.aside!r}")  # fmt: skip
        syscalls.unlink(directory, name)
        syscalls.rename_noreplace(directory, temp, directory, name)
        return Settled(item, Settlement.PUT_BACK, f"{item.path!r} put back: {why}")
    if is_only_name(item.action, lstat_at(directory, temp)):
        why += f"; the kept file's only name is now {item.aside!r}: look at it"
        return Settled(item, Settlement.NEEDS_YOU, f"{item.path!r} put back: {why}")
    syscalls.unlink(directory, temp)
    return Settled(item, Settlement.PUT_BACK, f"{item.path!r} put back: {why}")


def _nothing_aside(
    item: Pending, directory: int, at_path: os.stat_result | None, syscalls: Syscalls
) -> Settled:
    """No temporary name: the operation did not start, was completed, or the name changed."""
    path = item.path
    if same_file(at_path, item.victim):
        return Settled(item, Settlement.UNTOUCHED, f"{path!r} had not been touched")
    if not _same_directory(item, directory):
        # An unmounted volume or a renamed directory hides both names: nothing can be told
        # from here, and a temporary name may be waiting there.
        why = f"the directory of {path!r} is not the one we worked in"
        return Settled(item, Settlement.NEEDS_YOU, why)
    if at_path is not None and _is_our_link(item, directory, os.path.basename(path), at_path):
        return Settled(item, Settlement.COMPLETED, f"{path!r} had been completed")
    if at_path is None and item.action is Action.DELETE:
        if same_file(_lstat_path(item.keep, syscalls), item.kept):
            return Settled(item, Settlement.COMPLETED, f"{path!r} had been deleted")
        why = f"{path!r} and its kept copy {item.keep!r} are gone"
        return Settled(item, Settlement.NEEDS_YOU, why)
    # No temporary name and nothing of ours at the path: never started (a file changed after
    # the report is skipped before it is set aside), or changed by someone since.
    why = f"{path!r} was changed by someone else; nothing of ours is there"
    return Settled(item, Settlement.LEFT_ALONE, why)


def _same_directory(item: Pending, directory: int) -> bool:
    """The victim's directory is the one we worked in: not an unmounted volume, nor a new
    directory in place of one renamed away (which may hold our temporary name)."""
    st = os.fstat(directory)
    if item.directory is not None:
        return (st.st_dev, st.st_ino) == item.directory
    return st.st_dev == item.victim[0]


def _is_our_link(item: Pending, directory: int, name: str, st: os.stat_result) -> bool:
    return is_our_link(item.action, directory, name, st, item.kept, item.keep)


def _still_duplicate(
    item: Pending, directory: int, temp: str, syscalls: Syscalls, across_owners: bool
) -> str | None:
    """Why the set-aside copy may not go (None: it may), checked as `apply` checks: the right
    files, with equal access (owner, mode, ACLs, the directories on the way), neither open for
    writing elsewhere (read leases), the same bytes, and neither written while compared."""
    try:
        keep_dir = syscalls.open_dir(None, os.path.dirname(item.keep))
    except OSError as exc:
        return f"the kept file cannot be reached: {describe_error(exc)}"
    try:
        kept = open_read(syscalls, keep_dir, os.path.basename(item.keep))
        try:
            copy = open_read(syscalls, directory, temp)
            try:
                return _check_pair(
                    item, (keep_dir, kept), (directory, copy), syscalls, across_owners
                )
            finally:
                os.close(copy.fd)
        finally:
            os.close(kept.fd)
    except OSError as exc:
        return f"cannot compare: {describe_error(exc)}"
    finally:
        os.close(keep_dir)


def _check_pair(
    item: Pending,
    kept: tuple[int, Opened],
    copy: tuple[int, Opened],
    syscalls: Syscalls,
    across_owners: bool,
) -> str | None:
    """The checks of `_still_duplicate` on the open files (with their directories)."""
    (keep_dir, kept_file), (copy_dir, copy_file) = kept, copy
    if not same_file(kept_file.st, item.kept) or not same_file(copy_file.st, item.victim):
        return "the kept file is another file now"
    refusal = Access().refusal(
        item.action, (keep_dir, kept_file.fd), (copy_dir, copy_file.fd), across_owners=across_owners
    )
    if refusal is not None:
        return refusal.why
    try:
        kept_file, _ = take_lease(syscalls, kept_file, f"kept file {item.keep!r}")
        copy_file, _ = take_lease(syscalls, copy_file, f"victim {item.aside!r}")
    except Refused as exc:
        return str(exc)
    # Every byte, whatever the run's `verify`: the copy's last name is about to go.
    return compare(syscalls, kept_file, copy_file, kept_file.st.st_size, verify=True)


def _lstat_path(path: str, syscalls: Syscalls) -> os.stat_result | None:
    """`path` not followed, reached without following symlinks; None if it is not there."""
    try:
        directory = syscalls.open_dir(None, os.path.dirname(path))
    except FileNotFoundError:
        return None
    try:
        return lstat_at(directory, os.path.basename(path))
    finally:
        os.close(directory)
