"""Carrying out one planned operation safely: check, lease, compare, swap the link in, commit.

The operation has already been journaled as begun (by `apply.apply_plan`, with its temporary
name) when it gets here.  Every file is reached through its directory, opened one component at
a time without following symlinks, and named relative to it.  Every operation follows the same
steps, and any failure before the commit puts everything back:

1. re-stat the kept files and the victim (dev, ino, size, mtime_ns, ctime_ns, type, owner and
   mode) against what the report (or our own earlier operation) left; any difference skips the
   group;
2. open both without following links and check the descriptors are those files, and (unless
   told otherwise) that they are equally accessible (`access.py`);
3. take a read lease on both: the kernel refuses it while any process holds the file open for
   writing (the group is skipped), and breaks it, visibly, when one opens it for writing later;
4. hardlink, symlink: compare the bytes (unless `verify` is off) and check neither ctime moved,
   make the link under a short temporary name in the victim's directory, and swap it with the
   victim in one step (RENAME_EXCHANGE), so the victim's name is never absent; the temporary
   name must then hold the victim.  Delete (and hardlink, symlink where a filesystem cannot
   swap): rename the victim aside to the temporary name, compare it there, and make the link at
   its name.  Move: compare, then rename it to its destination;
5. check the victim's name holds the kept inode (or a symlink to the kept path), the kept path
   still the kept file, both leases intact and neither file's size or mtime moved since it was
   opened; then remove the temporary name and journal the outcome.  Once the victim's name holds
   the kept file, a broken lease on the kept file (someone opening that name for writing, who
   waits on the lease having written nothing) lets the operation finish rather than undo it.

Where leases are unavailable (another owner's file without CAP_LEASE, NFS), the size and mtime
check is what catches a write, and the run says so once.  A reflink instead asks the kernel to
share the blocks (FIDEDUPERANGE), which compares the bytes itself and changes nothing if they
differ.  Rolling back swaps back or renames back, removes only what we created (checked by
identity) and overwrites nothing (RENAME_NOREPLACE); when that is impossible the outcome is
ROLLBACK_FAILED, naming both paths, and the original stays under the temporary name, where
`dedup apply --resume` finds it.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import os
import secrets
import stat
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from dedup_engine.apply.access import Access
from dedup_engine.apply.fsquery import (
    content_stamp,
    free_bytes,
    kind,
    lease_intact,
    lstat_at,
    owner,
    readlink_at,
    same_bytes,
    same_file,
)
from dedup_engine.apply.plan import Action, Operation
from dedup_engine.apply.syscalls import (
    REAL,
    ContentDiffers,
    SymlinkInPath,
    Syscalls,
    fs_type,
)
from dedup_engine.model import FileEntry
from dedup_engine.openflags import OPEN_READ
from dedup_engine.oserror import describe_error

#: Errors that mean "this filesystem cannot dedupe", as opposed to a failure of this file.
_NO_REFLINK = {errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL, errno.ENOSYS}
#: Errors that mean "this filesystem cannot swap two names" (RENAME_EXCHANGE).
_NO_EXCHANGE = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP}
#: Errors that mean "no lease can be had here" (not the owner and no CAP_LEASE; a filesystem
#: without leases), as opposed to "someone has the file open for writing" (EAGAIN).
_NO_LEASE = {errno.EACCES, errno.EPERM, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK}

#: (dev, ino, size, mtime_ns, ctime_ns) of a file as our own last operation left it.
Stamp = tuple[int, int, int, int, int]


class Outcome(str, enum.Enum):
    DONE = "done"
    SKIPPED = "skipped"  # not attempted, or undone cleanly because a check failed
    FAILED = "failed"  # a system call failed; everything was put back
    ROLLBACK_FAILED = "rollback-failed"  # could not put everything back: needs a person
    #: The kept file could take no more links (EMLINK): the victim, put back, is kept instead
    #: for the rest of its group.
    KEPT = "kept"


@dataclass(frozen=True, slots=True)
class OpResult:
    op: Operation
    outcome: Outcome
    message: str = ""
    reclaimed: int = 0  # bytes of blocks freed (st_blocks), counted when a file's last name goes
    #: The files as this operation left them, for the checks of later operations (and resume).
    seen: tuple[Stamp, ...] = ()
    #: The message is about the filesystem, not this file ("reflink not supported on ext4"):
    #: said once, with a count, not once per file.
    general: bool = False


class Journal(Protocol):
    """Where each operation is recorded before it starts and after it ends (journal.py)."""

    def begin(self, index: int, op: Operation, aside: str | None) -> None: ...
    def start(self, index: int, keep: FileEntry) -> None:
        """The operation, keeping `keep`, is about to change the disk (not synced: it tells
        `--resume`, in the same boot, that an operation without it never started)."""

    def end(self, index: int, result: OpResult) -> None: ...
    def unstarted(self, index: int, why: str) -> None:
        """The operation was closed without starting; `--resume` carries it out."""

    def commit(self) -> None:
        """Make every record written so far durable (fsync)."""


class _Place(NamedTuple):
    """A name in a directory opened without following symlinks."""

    at: int  # O_PATH descriptor of the directory
    name: str
    path: str  # as the report gives it, for messages and the journal


class _Opened(NamedTuple):
    """A file opened for an operation: its fstat from the moment it was checked, and whether
    we hold a read lease on it."""

    fd: int
    st: os.stat_result
    leased: bool


class _Skip(Exception):
    """A check failed: the group is skipped with this reason."""


class _Changed(Exception):
    """A check failed once the disk had been changed: roll back, then skip with this reason."""


class _Dirs:
    """The directories one operation works in, each opened once, closed together."""

    def __init__(self, sys: Syscalls) -> None:
        self.sys = sys
        self._open: dict[str, int] = {}

    def place(self, path: str, role: str) -> _Place:
        directory, name = os.path.split(path)
        at = self._open.get(directory)
        if at is None:
            try:
                at = self.sys.open_dir(None, directory)
            except SymlinkInPath as exc:
                # Only a report made with -L names such paths: acting through the link would
                # change a file outside the roots that were searched.
                raise _Skip(
                    f"{role} {path!r} is reached through a symlink ({exc.strerror})"
                ) from None
            except OSError as exc:
                raise _Skip(
                    f"{role} {path!r}: cannot open its directory: {describe_error(exc)}"
                ) from None
            self._open[directory] = at
        return _Place(at, name, path)

    def close(self) -> None:
        for fd in self._open.values():
            os.close(fd)
        self._open.clear()


@dataclass(slots=True)
class Actor:
    """Carries out operations one at a time; remembers what its own operations changed.

    Our own operations change the ctime of the files they touch (a new link, a rename), so the
    state each later check expects is what we saw after our last operation on that file, not
    what the report says.
    """

    verify: bool = True
    across_owners: bool = False
    sys: Syscalls = REAL
    journal: Journal | None = None
    #: Directories whose entries our completed operations changed, not yet made durable.
    touched: set[str] = field(default_factory=set)
    #: Said once per run: where leases are unavailable, and what protects the operation there.
    notices: dict[tuple[int, str], str] = field(default_factory=dict)
    seen: dict[tuple[int, int], tuple[int, int, int]] = field(default_factory=dict)
    access: Access = field(default_factory=Access)
    _no_reflink: dict[int, str] = field(default_factory=dict)  # st_dev -> filesystem type
    _no_exchange: dict[int, str] = field(default_factory=dict)  # st_dev -> filesystem type
    _ended: bool = False

    def run(self, index: int, op: Operation, aside: str | None) -> OpResult:
        """Carry out `op`, already journaled as begun with `aside` as its temporary name."""
        self._ended = False
        dirs = _Dirs(self.sys)
        try:
            return self._run(index, op, aside, dirs)
        except _Skip as exc:
            if self._ended:
                raise AssertionError("an operation ended twice") from None
            return self._end(index, op, Outcome.SKIPPED, str(exc))
        finally:
            dirs.close()

    def _run(self, index: int, op: Operation, aside: str | None, dirs: _Dirs) -> OpResult:
        victim_entry, keep_entry = op.victim, op.keep
        keep = dirs.place(keep_entry.path, "kept file")
        self._check(keep, keep_entry, "kept file")
        for other in op.also_kept:  # the further copies --min-copies and --protect count on
            self._check(dirs.place(other.path, "kept copy"), other, "kept copy")
        victim = dirs.place(victim_entry.path, "victim")
        self._check(victim, victim_entry, "victim")
        if op.action in (Action.HARDLINK, Action.REFLINK) and victim_entry.dev != keep_entry.dev:
            raise _Skip(f"{op.action.value} across filesystems is refused (no fallback)")
        if op.action is Action.REFLINK and victim_entry.dev in self._no_reflink:
            message = f"reflink not supported on {self._no_reflink[victim_entry.dev]}"
            return self._end(index, op, Outcome.FAILED, message, general=True)
        kept = self._open(keep, keep_entry, "kept file")
        try:
            victim_file = self._open(victim, victim_entry, "victim")
            try:
                if op.action is Action.REFLINK:
                    return self._reflink(index, op, kept, victim_file)
                self._may_act(op, keep, victim, kept, victim_file)
                kept = self._lease(kept, keep, "kept file")
                victim_file = self._lease(victim_file, victim, "victim")
                if op.action is Action.MOVE:
                    return self._move(index, op, victim, kept, victim_file)
                assert aside is not None, "delete, hardlink and symlink set the victim aside"
                return self._replace(index, op, keep, victim, kept, victim_file, aside)
            finally:
                os.close(victim_file.fd)
        finally:
            os.close(kept.fd)

    # -- checks ---------------------------------------------------------------------------

    def _check(self, place: _Place, entry: FileEntry, role: str) -> None:
        try:
            st = os.stat(place.name, dir_fd=place.at, follow_symlinks=False)
        except OSError as exc:
            raise _Skip(f"{role} {entry.path!r}: {describe_error(exc)}") from None
        problem = self._differs(st, entry)
        if problem:
            raise _Skip(f"{role} {entry.path!r} changed since the report: {problem}")

    def _differs(self, st: os.stat_result, entry: FileEntry) -> str | None:
        if not stat.S_ISREG(st.st_mode):
            return f"it is no longer a regular file ({kind(st.st_mode)})"
        if (st.st_dev, st.st_ino) != (entry.dev, entry.ino):
            return "it is another file now (dev, ino differ)"
        size, mtime, ctime = self.seen.get(
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

    def _open(self, place: _Place, entry: FileEntry, role: str) -> _Opened:
        try:
            fd = self.sys.open(place.at, place.name, OPEN_READ)
        except OSError as exc:
            raise _Skip(f"{role} {entry.path!r}: cannot open: {describe_error(exc)}") from None
        st = os.fstat(fd)
        problem = self._differs(st, entry)
        if problem:
            os.close(fd)
            raise _Skip(f"{role} {entry.path!r} changed while being opened: {problem}")
        return _Opened(fd, st, False)

    def _may_act(
        self, op: Operation, keep: _Place, victim: _Place, kept: _Opened, victim_file: _Opened
    ) -> None:
        """Refuse what would change who can read or write a path, or lose the only copy."""
        try:
            if op.action in (Action.DELETE, Action.SYMLINK):
                problem = self.access.one_file_possible(kept.fd, victim_file.fd)
                if problem:
                    raise _Skip(f"{victim.path!r}: {problem}")
            if self.across_owners:
                return
            problem = self.access.differs((keep.at, kept.fd), (victim.at, victim_file.fd))
        except OSError as exc:
            why = f"cannot tell who can reach it: {describe_error(exc)}"
            raise _Skip(f"{victim.path!r}: {why}") from None
        if problem:
            raise _Skip(f"{victim.path!r} {problem}; --across-owners allows it")

    def _lease(self, opened: _Opened, place: _Place, role: str) -> _Opened:
        """`opened`, leased where the system allows it."""
        try:
            self.sys.lease(opened.fd)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                raise _Skip(
                    f"{role} {place.path!r} is open for writing by another process"
                ) from None
            if exc.errno not in _NO_LEASE:
                raise _Skip(
                    f"{role} {place.path!r}: cannot take a lease: {describe_error(exc)}"
                ) from None
            self._no_lease(opened.fd, exc)
            return opened
        return opened._replace(leased=True)

    def _no_lease(self, fd: int, exc: OSError) -> None:
        code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        other_owner = exc.errno in (errno.EACCES, errno.EPERM)
        key = (0 if other_owner else os.fstat(fd).st_dev, code)
        if key in self.notices:
            return
        where = "for files of other owners (no CAP_LEASE)" if other_owner else f"on {fs_type(fd)}"
        self.notices[key] = (
            f"read leases are unavailable {where} ({code}): there, a write during an operation "
            "is caught by the file's size and mtime, checked again after the link, not by the "
            "kernel; a file held open for writing is not seen until it is written"
        )

    def _written(self, *files: tuple[str, _Opened], ok: tuple[str, ...] = ()) -> str | None:
        """Why a file may have been written since it was opened, or None.  A broken lease of
        a role in `ok` is no reason: its opener waits for us and has written nothing."""
        for role, opened in files:
            if content_stamp(opened.fd) != (opened.st.st_size, opened.st.st_mtime_ns):
                return f"the {role} was written to during the operation"
            if opened.leased and not lease_intact(opened.fd) and role not in ok:
                return f"the {role} was opened for writing by another process (lease broken)"
        return None

    def _compare(self, kept: _Opened, victim: _Opened, size: int) -> str | None:
        """Why the two files may not be taken for copies (None: they are), read to the end."""
        files = (("kept file", kept), ("victim", victim))
        if self.verify and not same_bytes(
            kept.fd, victim.fd, size, self.sys, lambda: self._written(*files) is None
        ):
            return self._written(*files) or "content differs from the kept file"
        return self._written(*files)

    def _remember_ours(self, *files: _Opened) -> tuple[Stamp, ...]:
        """Remember the files whose size and mtime are still what they were at open: only
        our own links and renames changed them since."""
        unwritten = [f.fd for f in files if content_stamp(f.fd) == (f.st.st_size, f.st.st_mtime_ns)]
        return self._remember(*unwritten)

    def _remember(self, *fds: int) -> tuple[Stamp, ...]:
        stamps = []
        for fd in fds:
            st = os.fstat(fd)
            self.seen[(st.st_dev, st.st_ino)] = (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            stamps.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
        return tuple(stamps)

    # -- delete, hardlink, symlink: aside, link, verify, commit ---------------------------

    def _replace(
        self,
        index: int,
        op: Operation,
        keep: _Place,
        victim: _Place,
        kept: _Opened,
        victim_file: _Opened,
        aside: str,
    ) -> OpResult:
        path, before = victim.path, victim_file.st
        undo = _Undo(self, index, op, keep, victim, kept, victim_file, os.path.basename(aside))
        self._start(index, op)
        try:
            if op.action is Action.DELETE or not self._swap_in(undo):
                self._set_aside(undo)
            self.touched.add(os.path.dirname(path))
            if op.action is not Action.DELETE and not self._holds_kept(
                op, victim.at, victim.name, keep, kept
            ):
                return undo.back(f"{path!r} is not the kept file after linking")
            # The last moment before a name goes for good: the kept copy must still be there,
            # and neither file written to since it was opened.  Once the copy's name holds the
            # kept file, a program opening that name for writing gets the kept file, and waits
            # in open() on our lease: it has written nothing yet, and finishing is what makes
            # its write land where it will look for it (undoing would leave it in the kept file
            # and the copy back under its name).
            undo.step = "check the kept file"
            if not same_file(lstat_at(keep.at, keep.name), kept.st):
                return undo.back(f"kept file {keep.path!r} changed")
            opened_ok = ("kept file",) if op.action is not Action.DELETE else ()
            problem = self._written(("kept file", kept), ("victim", victim_file), ok=opened_ok)
            if problem:
                return undo.back(problem)
            undo.step = "remove the set-aside name"
            self.sys.unlink(victim.at, undo.temp)
        except _Changed as exc:
            return undo.back(str(exc))
        except OSError as exc:
            if exc.errno == errno.EMLINK and undo.step == "link":
                why = (f"the kept file {keep.path!r} can take no more links (EMLINK): "
                       f"{path!r} is kept instead for the rest of its group")  # fmt: skip
                return undo.back(why, Outcome.KEPT)
            return undo.back(f"{undo.step}: {describe_error(exc)}", Outcome.FAILED)
        after = os.fstat(victim_file.fd)
        reclaimed = before.st_blocks * 512 if after.st_nlink == 0 else 0
        if op.action is Action.SYMLINK:
            link = lstat_at(victim.at, victim.name)
            reclaimed -= link.st_blocks * 512 if link is not None else 0
        seen = self._remember(kept.fd, victim_file.fd)
        return self._end(index, op, Outcome.DONE, "", reclaimed, seen)

    def _set_aside(self, undo: _Undo) -> None:
        """Rename the copy to the temporary name, compare it there, and (hardlink, symlink)
        make the link at its name; `_Changed` if it must not go on."""
        victim, op = undo.victim, undo.op
        undo.step = "set the copy aside"
        self.sys.rename_noreplace(victim.at, victim.name, victim.at, undo.temp)
        undo.aside = True
        if not same_file(lstat_at(victim.at, undo.temp), undo.victim_file.st):
            raise _Changed("the set-aside name is not the victim")
        undo.step = "compare the bytes"
        problem = self._compare(undo.kept, undo.victim_file, op.victim.size)
        if problem:
            raise _Changed(problem)
        if op.action is not Action.DELETE:
            undo.step = "link" if op.action is Action.HARDLINK else "symlink"
            self._make(op, undo.keep, victim.at, victim.name)
            undo.created = True

    def _swap_in(self, undo: _Undo) -> bool:
        """Compare, then put the link in the copy's place in one step: made under the temporary
        name and swapped with the copy (RENAME_EXCHANGE), so the name is never absent and no one
        can take it meanwhile.  The comparison comes first: once the name holds the kept file,
        a writer opening it gets the kept file, and undoing would misplace its write.  False
        where the filesystem cannot swap: the caller sets the copy aside and links after."""
        victim, op, dev = undo.victim, undo.op, undo.victim_file.st.st_dev
        if dev in self._no_exchange:
            return False
        undo.step = "compare the bytes"
        problem = self._compare(undo.kept, undo.victim_file, op.victim.size)
        if problem:
            raise _Changed(problem)
        # Nothing of ours has touched either file yet, so any change of ctime since they were
        # opened is someone else's: a write whose mtime was put back shows there.
        for role, opened in (("kept file", undo.kept), ("victim", undo.victim_file)):
            _unchanged(role, opened)
        undo.step = "link" if op.action is Action.HARDLINK else "symlink"
        self._make(op, undo.keep, victim.at, undo.temp)
        undo.made = True
        if not self._holds_kept(op, victim.at, undo.temp, undo.keep, undo.kept):
            raise _Changed(f"kept file {undo.keep.path!r} is not the kept file when linked")
        problem = self._written(("kept file", undo.kept), ("victim", undo.victim_file))
        if problem:
            raise _Changed(problem)
        _unchanged("victim", undo.victim_file)  # our link changed only the kept file's ctime
        undo.step = "swap the link in"
        try:
            self.sys.exchange(victim.at, victim.name, victim.at, undo.temp)
        except OSError as exc:
            if exc.errno not in _NO_EXCHANGE:
                raise
            self.sys.unlink(victim.at, undo.temp)
            undo.made = False
            fs = fs_type(undo.victim_file.fd)
            self._no_exchange[dev] = fs
            self.notices[(dev, "exchange")] = (
                f"{fs} cannot swap two names in one step (RENAME_EXCHANGE): there, a copy is "
                "set aside before its link is made, and its name is absent for that moment"
            )
            return False
        undo.made, undo.swapped = False, True
        if not same_file(lstat_at(victim.at, undo.temp), undo.victim_file.st):
            raise _Changed("the copy's name held another file than the victim when swapped")
        return True

    def _make(self, op: Operation, keep: _Place, at: int, name: str) -> None:
        """The hard link or symlink to the kept file, at `name` in `at`."""
        if op.action is Action.HARDLINK:
            self.sys.link(keep.at, keep.name, at, name)
        else:
            self.sys.symlink(keep.path, at, name)

    def _holds_kept(self, op: Operation, at: int, name: str, keep: _Place, kept: _Opened) -> bool:
        """`name` is our hard link (the kept inode) or symlink (to the kept path)."""
        if op.action is Action.HARDLINK:
            return same_file(lstat_at(at, name), kept.st)
        return self._is_symlink_to_kept(_Place(at, name, ""), keep.path, kept)

    def _is_symlink_to_kept(self, place: _Place, target: str, kept: _Opened) -> bool:
        st = lstat_at(place.at, place.name)
        if st is None or not stat.S_ISLNK(st.st_mode):
            return False
        if readlink_at(place.at, place.name) != target:
            return False
        try:
            return same_file(os.stat(place.name, dir_fd=place.at), kept.st)
        except OSError:
            return False

    # -- move and reflink -----------------------------------------------------------------

    def _move(
        self, index: int, op: Operation, victim: _Place, kept: _Opened, victim_file: _Opened
    ) -> OpResult:
        assert op.target is not None
        path, target = victim.path, op.target
        try:
            problem = self._compare(kept, victim_file, op.victim.size)
        except OSError as exc:
            raise _Skip(f"{path!r}: cannot compare the bytes: {describe_error(exc)}") from None
        if problem:
            raise _Skip(f"{path!r}: {problem}")
        directory = self._target_dir(os.path.dirname(target), victim_file.st.st_dev)
        try:
            if not self.across_owners:
                try:
                    problem = self.access.exposes(directory, victim.at, victim_file.fd)
                except OSError as exc:
                    problem = f"cannot tell who can reach the destination: {describe_error(exc)}"
                if problem:
                    raise _Skip(f"{path!r}: {problem}; --across-owners allows it")
            name = os.path.basename(target)
            self._start(index, op)
            try:
                self.sys.rename_noreplace(victim.at, victim.name, directory, name)
            except OSError as exc:
                why = f"cannot move to {target!r}: {describe_error(exc)}"
                return self._end(index, op, Outcome.FAILED, why)
            self.touched.update((os.path.dirname(target), os.path.dirname(path)))
            if same_file(lstat_at(directory, name), victim_file.st):
                seen = self._remember(kept.fd, victim_file.fd)
                return self._end(index, op, Outcome.DONE, "", seen=seen)
            try:
                self.sys.rename_noreplace(directory, name, victim.at, victim.name)
            except OSError as exc:
                why = f"moved file is not the victim and cannot be put back: {describe_error(exc)}"
                return self._loud(index, op, path, target, why)
            return self._end(
                index, op, Outcome.FAILED, f"{target!r} is not the victim after moving"
            )
        finally:
            os.close(directory)

    def _target_dir(self, directory: str, dev: int) -> int:
        """The move's destination directory, made where missing (mode 700); no component a
        symlink.

        Walked from "/" a component at a time, so a symlink planted inside --to by another
        user is refused rather than followed."""
        missing: list[str] = []
        probe = directory
        while True:
            try:
                at = self.sys.open_dir(None, probe)
                break
            except FileNotFoundError:
                parent = os.path.dirname(probe)
                if parent == probe:
                    raise _Skip(
                        f"cannot create {directory!r}: no directory to start from"
                    ) from None
                missing.append(os.path.basename(probe))
                probe = parent
            except OSError as exc:
                raise _Skip(
                    f"cannot create the directory {directory!r}: {describe_error(exc)}"
                ) from None
        try:
            if os.fstat(at).st_dev != dev:
                raise _Skip(
                    f"--to {directory!r} is on another filesystem than the victim; not copying"
                )
            for name in reversed(missing):
                # Made meanwhile by someone else: opened below without following a symlink,
                # and judged with the rest of the destination.
                with contextlib.suppress(FileExistsError):
                    self.sys.mkdir(at, name)
                self.touched.add(probe)
                below = self.sys.open_dir(at, name)
                os.close(at)
                at, probe = below, os.path.join(probe, name)
        except OSError as exc:
            os.close(at)
            raise _Skip(
                f"cannot create the directory {directory!r}: {describe_error(exc)}"
            ) from None
        except BaseException:
            os.close(at)
            raise
        return at

    def _reflink(self, index: int, op: Operation, kept: _Opened, victim: _Opened) -> OpResult:
        keep_fd, victim_fd, before = kept.fd, victim.fd, victim.st
        # Not required (the kernel compares and shares under its own locks), but only a lease
        # still intact afterwards tells that a changed mtime is the dedupe's, not a writer's.
        try:
            self.sys.lease(victim_fd)
            leased = True
        except OSError:
            leased = False
        free_before = free_bytes(victim_fd)
        self._start(index, op)
        try:
            self.sys.dedupe(keep_fd, victim_fd, op.victim.size)
        except ContentDiffers:
            return self._end(index, op, Outcome.SKIPPED, "content differs (compared by the kernel)")
        except OSError as exc:
            if exc.errno in _NO_REFLINK:
                self._no_reflink[before.st_dev] = fs_type(victim_fd)
                message = f"reflink not supported on {self._no_reflink[before.st_dev]}"
                return self._end(index, op, Outcome.FAILED, message, general=True)
            return self._end(index, op, Outcome.FAILED, f"reflink failed: {describe_error(exc)}")
        after = os.fstat(victim_fd)
        unwritten = leased and lease_intact(victim_fd) and after.st_size == before.st_size
        if unwritten and (after.st_atime_ns, after.st_mtime_ns) != (
            before.st_atime_ns,
            before.st_mtime_ns,
        ):
            # Sharing blocks is not a change of content: the file keeps its timestamps.  A
            # write may have landed just after the dedupe, though, unless the lease says no:
            # its mtime must stay, or backups and the next find would miss it.
            os.utime(victim_fd, ns=(before.st_atime_ns, before.st_mtime_ns))
        seen = self._remember(keep_fd, victim_fd)
        # Shared blocks leave st_blocks as it was: the filesystem's free space tells what was
        # freed.  Taken around this one call and bounded by the file's own blocks, so other
        # writers on the filesystem move the figure as little as possible.
        freed = min(max(free_bytes(victim_fd) - free_before, 0), before.st_blocks * 512)
        return self._end(index, op, Outcome.DONE, "", freed, seen)

    # -- helpers --------------------------------------------------------------------------

    def _start(self, index: int, op: Operation) -> None:
        if self.journal is not None:
            self.journal.start(index, op.keep)

    def _end(
        self,
        index: int,
        op: Operation,
        outcome: Outcome,
        message: str,
        reclaimed: int = 0,
        seen: tuple[Stamp, ...] = (),
        *,
        general: bool = False,
    ) -> OpResult:
        result = OpResult(op, outcome, message, reclaimed, seen, general)
        if self.journal is not None:
            self.journal.end(index, result)
        self._ended = True
        return result

    def _loud(self, index: int, op: Operation, path: str, other: str, why: str) -> OpResult:
        message = f"ROLLBACK FAILED: {why}; the original is at {other!r}, it belongs at {path!r}"
        return self._end(index, op, Outcome.ROLLBACK_FAILED, message)


@dataclass(slots=True)
class _Undo:
    """Puts the copy back as it was, from whichever step the operation reached: our link made
    under the temporary name (`made`), swapped with the copy (`swapped`), or the copy set aside
    (`aside`) with our link perhaps made at its name (`created`).  Only what we made is
    removed (checked by identity), and nothing is overwritten."""

    actor: Actor
    index: int
    op: Operation
    keep: _Place
    victim: _Place
    kept: _Opened
    victim_file: _Opened
    temp: str  # the temporary name in the copy's directory
    step: str = "start"  # what was under way, for messages
    made: bool = False
    swapped: bool = False
    aside: bool = False
    created: bool = False

    def back(self, why: str, outcome: Outcome = Outcome.SKIPPED) -> OpResult:
        actor, victim, sys = self.actor, self.victim, self.actor.sys
        temp_path = os.path.join(os.path.dirname(victim.path), self.temp)
        try:
            if self.swapped:
                if not self._ours(victim.name):
                    why += f"; {victim.path!r} now holds a file we did not create"
                    return actor._loud(self.index, self.op, victim.path, temp_path, why)
                sys.exchange(victim.at, victim.name, victim.at, self.temp)
                self.swapped, self.made = False, True
            if self.made:
                # Our own random name: whatever our link made there goes (a link to what the
                # kept path held then, even a symlink), unless it is the copy itself, or the
                # kept file's only name left (its other name removed meanwhile).
                st = lstat_at(victim.at, self.temp)
                if st is not None and not same_file(st, self.victim_file.st):
                    if stat.S_ISREG(st.st_mode) and st.st_nlink < 2:
                        message = (f"ROLLBACK FAILED: {why}; {victim.path!r} is in place, and "
                                   f"{temp_path!r} is the kept file's only name now")  # fmt: skip
                        return actor._end(self.index, self.op, Outcome.ROLLBACK_FAILED, message)
                    with contextlib.suppress(FileNotFoundError):
                        sys.unlink(victim.at, self.temp)
                self.made = False
            if self.aside:
                if lstat_at(victim.at, victim.name) is not None:
                    if not self._ours(victim.name):
                        why += f"; {victim.path!r} now holds a file we did not create"
                        return actor._loud(self.index, self.op, victim.path, temp_path, why)
                    sys.unlink(victim.at, victim.name)
                sys.rename_noreplace(victim.at, self.temp, victim.at, victim.name)
        except OSError as exc:
            why += f"; then {describe_error(exc)}"
            if self.made:  # the copy is in place; only our extra link is left over
                message = (f"ROLLBACK FAILED: {why}; {victim.path!r} is in place, and "
                           f"{temp_path!r} is a link we made: --resume removes it")  # fmt: skip
                return actor._end(self.index, self.op, Outcome.ROLLBACK_FAILED, message)
            return actor._loud(self.index, self.op, victim.path, temp_path, why)
        # What our links and renames did to the files' ctime is ours, not a change to refuse
        # later (an EMLINK victim kept instead, a retry by --resume); a write is not.
        seen = actor._remember_ours(self.kept, self.victim_file)
        message = f"{why}; rolled back" if outcome is Outcome.FAILED else why
        return actor._end(self.index, self.op, outcome, message, seen=seen)

    def _ours(self, name: str) -> bool:
        """Whether `name` holds nothing, or what the operation creates: removing it loses
        nothing, since the copy's bytes go back in."""
        victim = self.victim
        st = lstat_at(victim.at, name)
        if st is None:
            return True
        if self.op.action is Action.HARDLINK:
            # The link names the kept inode, or whatever the kept path named when we linked
            # it (it was swapped).
            linked = {(self.op.keep.dev, self.op.keep.ino)}
            now = lstat_at(self.keep.at, self.keep.name)
            if now is not None:
                linked.add((now.st_dev, now.st_ino))
            return (st.st_dev, st.st_ino) in linked and stat.S_ISREG(st.st_mode)
        if self.op.action is Action.SYMLINK:
            return stat.S_ISLNK(st.st_mode) and readlink_at(victim.at, name) == self.keep.path
        return False


def _unchanged(role: str, opened: _Opened) -> None:
    """`_Changed` if the file's ctime moved since it was opened."""
    if os.fstat(opened.fd).st_ctime_ns != opened.st.st_ctime_ns:
        raise _Changed(f"the {role} changed while it was compared (ctime)")


ASIDE_PREFIX = ".dedup-"
#: Only names of this shape are ever set aside, so `--resume` can refuse any other.
ASIDE_PATTERN = r"\.dedup-[0-9a-f]{8}\.tmp"


def aside_name(path: str) -> str:
    """A short, unused temporary name in the directory of `path` (never a long name)."""
    return os.path.join(os.path.dirname(path), f"{ASIDE_PREFIX}{secrets.token_hex(4)}.tmp")
