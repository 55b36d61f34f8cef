"""Carrying out one planned operation safely: check, set the victim aside, act, verify, commit.

The operation has already been journaled as begun (by `apply.apply_plan`, with its temporary
name) when it gets here.  Every operation follows the same steps, and any failure before the
commit puts everything back:

1. re-stat the kept files and the victim (dev, ino, size, mtime_ns, ctime_ns, type) against what
   the report (or our own earlier operation) left; any difference skips the group;
2. open both without following links and check the descriptors are those files;
3. rename the victim aside to a short temporary name in its directory (delete, hardlink, symlink),
   or to its destination (move);
4. compare the bytes of the kept file and the set-aside victim (unless `verify` is off);
5. create the hard link or symlink at the victim's name and lstat it: it must be the kept inode,
   or a symlink to the kept path;
6. check that neither file was written since the comparison and the kept path is still the kept
   file, then remove the temporary name and journal the outcome.

A reflink instead asks the kernel to share the blocks (FIDEDUPERANGE), which compares the bytes
itself and changes nothing if they differ.  Rolling back removes only what we created (checked by
identity) and puts the victim back without overwriting anything (RENAME_NOREPLACE); when that is
impossible the outcome is ROLLBACK_FAILED, naming both paths, and the original stays under the
temporary name, where `dedup apply --resume` finds it.
"""

from __future__ import annotations

import enum
import errno
import os
import secrets
import stat
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from dedup_engine.fsops import REAL, ContentDiffers, Syscalls, fs_type
from dedup_engine.fsquery import (
    blocks,
    content_stamp,
    describe_error,
    device_of,
    free_bytes,
    is_symlink_to,
    kind,
    lexists,
    lstat,
    readlink,
    same_bytes,
    same_file,
)
from dedup_engine.plan import Action, Operation
from dedup_engine.records import FileEntry

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC
#: Errors that mean "this filesystem cannot dedupe", as opposed to a failure of this file.
_NO_REFLINK = {errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL, errno.ENOSYS}


class Outcome(str, enum.Enum):
    DONE = "done"
    SKIPPED = "skipped"  # not attempted, or undone cleanly because a check failed
    FAILED = "failed"  # a system call failed; everything was put back
    ROLLBACK_FAILED = "rollback-failed"  # could not put everything back: needs a person


@dataclass(frozen=True, slots=True)
class OpResult:
    op: Operation
    outcome: Outcome
    message: str = ""
    reclaimed: int = 0  # bytes of blocks freed (st_blocks), counted when a file's last name goes


class Journal(Protocol):
    """Where each operation is recorded before it starts and after it ends (journal.py)."""

    def begin(self, index: int, op: Operation, aside: str | None) -> None: ...
    def start(self, index: int) -> None:
        """The operation is about to change the disk (not synced: it tells `--resume`, in the
        same boot, that an operation without it never started)."""

    def end(self, index: int, outcome: Outcome, message: str) -> None: ...
    def commit(self) -> None:
        """Make every record written so far durable (fsync)."""


class _Opened(NamedTuple):
    """A file opened for an operation, with its fstat from the moment it was checked."""

    fd: int
    st: os.stat_result


class _Skip(Exception):
    """A check failed: the group is skipped with this reason."""


@dataclass(slots=True)
class Actor:
    """Carries out operations one at a time; remembers what its own operations changed.

    Our own operations change the ctime of the files they touch (a new link, a rename), so the
    state each later check expects is what we saw after our last operation on that file, not
    what the report says.
    """

    verify: bool = True
    sys: Syscalls = REAL
    journal: Journal | None = None
    #: Directories whose entries our completed operations changed, not yet made durable.
    touched: set[str] = field(default_factory=set)
    _seen: dict[tuple[int, int], tuple[int, int, int]] = field(default_factory=dict)
    _ended: bool = False
    _real_dirs: set[str] = field(default_factory=set)

    def run(self, index: int, op: Operation, aside: str | None) -> OpResult:
        """Carry out `op`, already journaled as begun with `aside` as its temporary name."""
        self._ended = False
        try:
            return self._run(index, op, aside)
        except _Skip as exc:
            if not self._ended:
                self._end(index, op, Outcome.SKIPPED, str(exc))
            return OpResult(op, Outcome.SKIPPED, str(exc))

    def _run(self, index: int, op: Operation, aside: str | None) -> OpResult:
        victim, keep = op.victim, op.keep
        self._check(keep, "kept file")
        for other in op.also_kept:  # the further copies --min-copies and --protect count on
            self._check(other, "kept copy")
        self._check(victim, "victim")
        if op.action in (Action.HARDLINK, Action.REFLINK) and victim.dev != keep.dev:
            raise _Skip(f"{op.action.value} across filesystems is refused (no fallback)")
        if op.action is Action.MOVE:
            assert op.target is not None
            if device_of(op.target) != victim.dev:
                raise _Skip(f"--to is on another filesystem than {victim.path!r}; not copying")
        kept = self._open(keep, "kept file")
        try:
            victim_file = self._open(victim, "victim")
            try:
                if op.action is Action.REFLINK:
                    return self._reflink(index, op, kept, victim_file)
                if op.action is Action.MOVE:
                    return self._move(index, op, kept, victim_file)
                assert aside is not None, "delete, hardlink and symlink set the victim aside"
                return self._replace(index, op, kept, victim_file, aside)
            finally:
                os.close(victim_file.fd)
        finally:
            os.close(kept.fd)

    # -- checks ---------------------------------------------------------------------------

    def _check(self, entry: FileEntry, role: str) -> None:
        try:
            st = os.lstat(entry.path)
        except OSError as exc:
            raise _Skip(f"{role} {entry.path!r}: {describe_error(exc)}") from None
        directory = os.path.dirname(entry.path)
        if directory not in self._real_dirs and os.path.realpath(directory) != directory:
            # Only a report made with -L names such paths: acting through the link would
            # change a file outside the roots that were searched.
            raise _Skip(f"{role} {entry.path!r} is reached through a symlinked directory")
        # Asked once per directory: it is about what the report names (made with -L or not),
        # and the (dev, ino) checks, not this, guard against a tree changing under the run.
        self._real_dirs.add(directory)
        problem = self._differs(st, entry)
        if problem:
            raise _Skip(f"{role} {entry.path!r} changed since the report: {problem}")

    def _differs(self, st: os.stat_result, entry: FileEntry) -> str | None:
        if not stat.S_ISREG(st.st_mode):
            return f"it is no longer a regular file ({kind(st.st_mode)})"
        if (st.st_dev, st.st_ino) != (entry.dev, entry.ino):
            return "it is another file now (dev, ino differ)"
        size, mtime, ctime = self._seen.get(
            (entry.dev, entry.ino), (entry.size, entry.mtime_ns, entry.ctime_ns)
        )
        if st.st_size != size:
            return f"size {size} -> {st.st_size}"
        if st.st_mtime_ns != mtime:
            return "modified (mtime differs)"
        if st.st_ctime_ns != ctime:
            return "its metadata or links changed (ctime differs)"
        return None

    def _open(self, entry: FileEntry, role: str) -> _Opened:
        try:
            fd = self.sys.open(entry.path, _OPEN_FLAGS)
        except OSError as exc:
            raise _Skip(f"{role} {entry.path!r}: cannot open: {describe_error(exc)}") from None
        st = os.fstat(fd)
        problem = self._differs(st, entry)
        if problem:
            os.close(fd)
            raise _Skip(f"{role} {entry.path!r} changed while being opened: {problem}")
        return _Opened(fd, st)

    def _remember(self, *fds: int) -> None:
        for fd in fds:
            st = os.fstat(fd)
            self._seen[(st.st_dev, st.st_ino)] = (st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    # -- delete, hardlink, symlink: aside, link, verify, commit ---------------------------

    def _replace(
        self, index: int, op: Operation, kept: _Opened, victim: _Opened, aside: str
    ) -> OpResult:
        path, keep_fd, victim_fd, before = op.victim.path, kept.fd, victim.fd, victim.st
        self._start(index)
        try:
            self.sys.rename_noreplace(path, aside)
        except OSError as exc:
            return self._end(
                index, op, Outcome.FAILED, f"cannot set {path!r} aside: {describe_error(exc)}"
            )
        undo = _Undo(self.sys, op, aside)
        step = "check the set-aside name"
        try:
            if not same_file(lstat(aside), before):
                return undo.back(self, index, "the set-aside name is not the victim")
            step = "compare the bytes"
            if self.verify and not same_bytes(keep_fd, victim_fd, op.victim.size):
                return undo.back(self, index, "content differs from the kept file", skip=True)
            compared = content_stamp(keep_fd), content_stamp(victim_fd)
            if op.action is Action.HARDLINK:
                step = "link"
                self.sys.link(op.keep.path, path)
                undo.created = True
                if not same_file(lstat(path), kept.st):
                    return undo.back(self, index, f"{path!r} is not the kept file after linking")
            elif op.action is Action.SYMLINK:
                step = "symlink"
                self.sys.symlink(op.keep.path, path)
                undo.created = True
                if not is_symlink_to(path, op.keep.path, kept.st):
                    return undo.back(self, index, f"{path!r} is not a symlink to the kept file")
            # The last moment before a name goes for good: the kept copy must still be there,
            # and neither file written to since their bytes were compared.
            if not same_file(lstat(op.keep.path), kept.st):
                return undo.back(self, index, f"kept file {op.keep.path!r} changed", skip=True)
            if (content_stamp(keep_fd), content_stamp(victim_fd)) != compared:
                why = "a file was written to while it was being compared"
                return undo.back(self, index, why, skip=True)
            step = "remove the set-aside name"
            self.sys.unlink(aside)
        except OSError as exc:
            return undo.back(self, index, f"{step}: {describe_error(exc)}", failed=True)
        self.touched.add(os.path.dirname(path))
        after = os.fstat(victim_fd)
        reclaimed = before.st_blocks * 512 if after.st_nlink == 0 else 0
        if op.action is Action.SYMLINK:
            reclaimed -= blocks(path) * 512
        self._remember(keep_fd, victim_fd)
        return self._end(index, op, Outcome.DONE, "", reclaimed)

    # -- move and reflink -----------------------------------------------------------------

    def _move(self, index: int, op: Operation, kept: _Opened, victim: _Opened) -> OpResult:
        assert op.target is not None
        path, target = op.victim.path, op.target
        try:
            if self.verify and not same_bytes(kept.fd, victim.fd, op.victim.size):
                raise _Skip(f"{path!r}: content differs from the kept file")
        except OSError as exc:
            raise _Skip(f"{path!r}: cannot compare the bytes: {describe_error(exc)}") from None
        try:
            self._make_parents(target)
        except OSError as exc:
            raise _Skip(
                f"cannot create the directory of {target!r}: {describe_error(exc)}"
            ) from None
        self._start(index)
        try:
            self.sys.rename_noreplace(path, target)
        except OSError as exc:
            return self._end(
                index, op, Outcome.FAILED, f"cannot move to {target!r}: {describe_error(exc)}"
            )
        self.touched.update((os.path.dirname(target), os.path.dirname(path)))
        if same_file(lstat(target), victim.st):
            self._remember(kept.fd, victim.fd)
            return self._end(index, op, Outcome.DONE, "")
        try:
            self.sys.rename_noreplace(target, path)
        except OSError as exc:
            message = f"moved file is not the victim and cannot be put back: {describe_error(exc)}"
            return self._loud(index, op, path, target, message)
        return self._end(index, op, Outcome.FAILED, f"{target!r} is not the victim after moving")

    def _make_parents(self, target: str) -> None:
        missing = []
        parent = os.path.dirname(target)
        while not os.path.isdir(parent):
            missing.append(parent)
            parent = os.path.dirname(parent)
        for directory in reversed(missing):
            self.sys.mkdir(directory)
            self.touched.add(os.path.dirname(directory))

    def _reflink(self, index: int, op: Operation, kept: _Opened, victim: _Opened) -> OpResult:
        keep_fd, victim_fd, before = kept.fd, victim.fd, victim.st
        free_before = free_bytes(victim_fd)
        self._start(index)
        try:
            self.sys.dedupe(keep_fd, victim_fd, op.victim.size)
        except ContentDiffers:
            self._end(index, op, Outcome.SKIPPED, "content differs (compared by the kernel)")
            raise _Skip(f"{op.victim.path!r}: content differs (compared by the kernel)") from None
        except OSError as exc:
            if exc.errno in _NO_REFLINK:
                message = f"reflink not supported on {fs_type(op.victim.path)}"
            else:
                message = f"reflink failed: {describe_error(exc)}"
            return self._end(index, op, Outcome.FAILED, message)
        after = os.fstat(victim_fd)
        if (after.st_atime_ns, after.st_mtime_ns) != (before.st_atime_ns, before.st_mtime_ns):
            # Sharing blocks is not a change of content: the file keeps its timestamps.
            os.utime(victim_fd, ns=(before.st_atime_ns, before.st_mtime_ns))
        self._remember(keep_fd, victim_fd)
        # Shared blocks leave st_blocks as it was: the filesystem's free space tells what was
        # freed.  Taken around this one call and bounded by the file's own blocks, so other
        # writers on the filesystem move the figure as little as possible.
        freed = min(max(free_bytes(victim_fd) - free_before, 0), before.st_blocks * 512)
        return self._end(index, op, Outcome.DONE, "", freed)

    # -- helpers --------------------------------------------------------------------------

    def _start(self, index: int) -> None:
        if self.journal is not None:
            self.journal.start(index)

    def _end(
        self, index: int, op: Operation, outcome: Outcome, message: str, reclaimed: int = 0
    ) -> OpResult:
        if self.journal is not None:
            self.journal.end(index, outcome, message)
        self._ended = True
        return OpResult(op, outcome, message, reclaimed)

    def _loud(self, index: int, op: Operation, path: str, other: str, why: str) -> OpResult:
        message = f"ROLLBACK FAILED: {why}; the original is at {other!r}, it belongs at {path!r}"
        return self._end(index, op, Outcome.ROLLBACK_FAILED, message)


@dataclass(slots=True)
class _Undo:
    """Puts a set-aside victim back: removes our link (if it is ours), renames back."""

    sys: Syscalls
    op: Operation
    aside: str
    created: bool = False

    def back(
        self, actor: Actor, index: int, why: str, *, skip: bool = False, failed: bool = False
    ) -> OpResult:
        path = self.op.victim.path
        try:
            if self.created or lexists(path):
                if not self._ours(path):
                    return actor._loud(index, self.op, path, self.aside, f"{why}; {path!r} "
                                       "now holds a file we did not create")  # fmt: skip
                self.sys.unlink(path)
            actor.touched.add(os.path.dirname(path))
            self.sys.rename_noreplace(self.aside, path)
        except OSError as exc:
            return actor._loud(
                index, self.op, path, self.aside, f"{why}; then {describe_error(exc)}"
            )
        outcome = Outcome.FAILED if failed else Outcome.SKIPPED
        message = f"{why}; rolled back" if failed else why
        result = actor._end(index, self.op, outcome, message)
        if skip:
            raise _Skip(f"{path!r}: {why}")
        return result

    def _ours(self, path: str) -> bool:
        st = lstat(path)
        if st is None:
            return True  # nothing there: nothing to remove
        if self.op.action is Action.HARDLINK:
            # The link names the kept inode, or whatever the kept path named when we linked
            # it (it was swapped).  Removing it loses nothing: the victim's bytes go back in.
            linked = {(self.op.keep.dev, self.op.keep.ino)}
            now = lstat(self.op.keep.path)
            if now is not None:
                linked.add((now.st_dev, now.st_ino))
            return (st.st_dev, st.st_ino) in linked and stat.S_ISREG(st.st_mode)
        if self.op.action is Action.SYMLINK:
            return stat.S_ISLNK(st.st_mode) and readlink(path) == self.op.keep.path
        return False


ASIDE_PREFIX = ".dedup-"


def aside_name(path: str) -> str:
    """A short, unused temporary name in the directory of `path` (never a long name)."""
    return os.path.join(os.path.dirname(path), f"{ASIDE_PREFIX}{secrets.token_hex(4)}.tmp")
