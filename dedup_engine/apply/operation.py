"""Carrying out one planned operation safely: check, lease, compare, swap the link in, commit.

The operation has already been journaled as begun (by `runner.apply_plan`, with its temporary
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
differ.  The checks are `identity.py`'s and `access.py`'s; putting everything back is
`rollback.py`'s; the outcome is journaled by the `Ledger` (`outcome.py`).
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field

from dedup_engine.apply.access import Access
from dedup_engine.apply.fsquery import free_bytes, lease_intact, lstat_at
from dedup_engine.apply.identity import (
    Opened,
    Refused,
    changed_since,
    compare,
    links_to_kept,
    open_read,
    same_file,
    take_lease,
    written,
)
from dedup_engine.apply.outcome import Ledger, OpResult, Outcome
from dedup_engine.apply.places import Dirs, Place, target_dir
from dedup_engine.apply.plan import Action, Operation
from dedup_engine.apply.rollback import Rollback
from dedup_engine.apply.syscalls import REAL, ContentDiffers, Syscalls, fs_type
from dedup_engine.model import FileEntry
from dedup_engine.oserror import describe_error, errno_name

#: Errors that mean "this filesystem cannot dedupe", as opposed to a failure of this file.
_NO_REFLINK = {errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL, errno.ENOSYS}
#: Errors that mean "this filesystem cannot swap two names" (RENAME_EXCHANGE).
_NO_EXCHANGE = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP}


class _Changed(Exception):
    """A check failed once the disk had been changed: roll back, then skip with this reason."""


@dataclass(slots=True)
class Actor:
    """Carries out operations one at a time; keeps what the run learns on the way: the files
    as its own operations left them (in its `Ledger`), the directories they changed, and
    what the filesystems cannot do."""

    verify: bool = True
    across_owners: bool = False
    syscalls: Syscalls = REAL
    ledger: Ledger = field(default_factory=Ledger)
    #: Directories whose entries our completed operations changed, not yet made durable.
    touched: set[str] = field(default_factory=set)
    #: Said once per run: where leases are unavailable, and what protects the operation there.
    notices: dict[tuple[int, str], str] = field(default_factory=dict)
    access: Access = field(default_factory=Access)
    _no_reflink: dict[int, str] = field(default_factory=dict)  # st_dev -> filesystem type
    _no_exchange: dict[int, str] = field(default_factory=dict)  # st_dev -> filesystem type

    def run(self, index: int, op: Operation, aside: str | None) -> OpResult:
        """Carry out `op`, already journaled as begun with `aside` as its temporary name."""
        self.ledger.ended = False
        dirs = Dirs(self.syscalls)
        try:
            return self._run(index, op, aside, dirs)
        except Refused as exc:
            if self.ledger.ended:
                raise AssertionError("an operation ended twice") from None
            return self.ledger.end(index, op, Outcome.SKIPPED, str(exc))
        finally:
            dirs.close()

    def _run(self, index: int, op: Operation, aside: str | None, dirs: Dirs) -> OpResult:
        keep, victim = self._check_all(op, dirs)
        if op.action in (Action.HARDLINK, Action.REFLINK) and op.victim.dev != op.keep.dev:
            raise Refused(f"{op.action.value} across filesystems is refused (no fallback)")
        if op.action is Action.REFLINK and op.victim.dev in self._no_reflink:
            message = f"reflink not supported on {self._no_reflink[op.victim.dev]}"
            return self.ledger.end(index, op, Outcome.FAILED, message, general=True)
        kept = self._open(keep, op.keep, "kept file")
        try:
            victim_file = self._open(victim, op.victim, "victim")
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

    def _check_all(self, op: Operation, dirs: Dirs) -> tuple[Place, Place]:
        """The kept file, the further copies --min-copies and --protect count on, and the
        victim, each re-stat'ed through its directory."""
        keep = dirs.place(op.keep.path, "kept file")
        self._check(keep, op.keep, "kept file")
        for other in op.also_kept:
            self._check(dirs.place(other.path, "kept copy"), other, "kept copy")
        victim = dirs.place(op.victim.path, "victim")
        self._check(victim, op.victim, "victim")
        return keep, victim

    def _check(self, place: Place, entry: FileEntry, role: str) -> None:
        try:
            st = os.stat(place.name, dir_fd=place.at, follow_symlinks=False)
        except OSError as exc:
            raise Refused(f"{role} {entry.path!r}: {describe_error(exc)}") from None
        problem = changed_since(st, entry, self.ledger.seen)
        if problem:
            raise Refused(f"{role} {entry.path!r} changed since the report: {problem}")

    def _open(self, place: Place, entry: FileEntry, role: str) -> Opened:
        try:
            opened = open_read(self.syscalls, place.at, place.name)
        except OSError as exc:
            raise Refused(f"{role} {entry.path!r}: cannot open: {describe_error(exc)}") from None
        problem = changed_since(opened.st, entry, self.ledger.seen)
        if problem:
            os.close(opened.fd)
            raise Refused(f"{role} {entry.path!r} changed while being opened: {problem}")
        return opened

    def _may_act(
        self, op: Operation, keep: Place, victim: Place, kept: Opened, victim_file: Opened
    ) -> None:
        """Refuse what would change who can read or write a path, or lose the only copy."""
        try:
            refusal = self.access.refusal(
                op.action,
                (keep.at, kept.fd),
                (victim.at, victim_file.fd),
                across_owners=self.across_owners,
            )
        except OSError as exc:
            why = f"cannot tell who can reach it: {describe_error(exc)}"
            raise Refused(f"{victim.path!r}: {why}") from None
        if refusal is None:
            return
        if refusal.waivable:
            raise Refused(f"{victim.path!r} {refusal.why}; --across-owners allows it")
        raise Refused(f"{victim.path!r}: {refusal.why}")

    def _lease(self, opened: Opened, place: Place, role: str) -> Opened:
        """`opened`, leased where the system allows it."""
        opened, unavailable = take_lease(self.syscalls, opened, f"{role} {place.path!r}")
        if unavailable is not None:
            self._no_lease(opened.fd, unavailable)
        return opened

    def _no_lease(self, fd: int, exc: OSError) -> None:
        code = errno_name(exc)
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

    def _compare(self, kept: Opened, victim: Opened, op: Operation) -> str | None:
        # A group found on sampled windows has its bytes compared even with --no-verify.
        verify = self.verify or op.sampled
        return compare(self.syscalls, kept, victim, op.victim.size, verify=verify)

    # -- delete, hardlink, symlink: aside, link, verify, commit ---------------------------

    def _replace(
        self,
        index: int,
        op: Operation,
        keep: Place,
        victim: Place,
        kept: Opened,
        victim_file: Opened,
        aside: str,
    ) -> OpResult:
        """Put our link in the copy's place (a delete: set the copy aside), check, and remove
        the copy's name for good; any failure before that puts everything back."""
        undo = Rollback(
            self.ledger,
            self.syscalls,
            index,
            op,
            keep,
            victim,
            kept,
            victim_file,
            os.path.basename(aside),
        )
        self.ledger.start(index, op)
        try:
            if op.action is Action.DELETE or not self._swap_in(undo):
                self._set_aside(undo)
            self.touched.add(os.path.dirname(victim.path))
            self._commit(undo)
        except _Changed as exc:
            return undo.back(str(exc))
        except OSError as exc:
            return self._failed(undo, exc)
        return self._replaced(undo)

    def _swap_in(self, undo: Rollback) -> bool:
        """Compare, then put the link in the copy's place in one step: made under the temporary
        name and swapped with the copy (RENAME_EXCHANGE), so the name is never absent and no one
        can take it meanwhile.  The comparison comes first: once the name holds the kept file,
        a writer opening it gets the kept file, and undoing would misplace its write.  False
        where the filesystem cannot swap: the caller sets the copy aside and links after."""
        victim, dev = undo.victim, undo.victim_file.st.st_dev
        if dev in self._no_exchange:
            return False
        undo.step = "compare the bytes"
        problem = self._compare(undo.kept, undo.victim_file, undo.op)
        if problem:
            raise _Changed(problem)
        # Nothing of ours has touched either file yet, so any change of ctime since they were
        # opened is someone else's: a write whose mtime was put back shows there.
        for role, opened in (("kept file", undo.kept), ("victim", undo.victim_file)):
            _unchanged(role, opened)
        self._link_under_temp(undo)
        undo.step = "swap the link in"
        try:
            self.syscalls.exchange(victim.at, victim.name, victim.at, undo.temp)
        except OSError as exc:
            if exc.errno not in _NO_EXCHANGE:
                raise
            self._cannot_swap(undo)
            return False
        undo.made, undo.swapped = False, True
        if not same_file(lstat_at(victim.at, undo.temp), undo.victim_file.st):
            raise _Changed("the copy's name held another file than the victim when swapped")
        return True

    def _link_under_temp(self, undo: Rollback) -> None:
        """Our link, made under the temporary name and checked: it is the kept file, and
        neither file was written meanwhile."""
        op, victim = undo.op, undo.victim
        undo.step = "link" if op.action is Action.HARDLINK else "symlink"
        self._make(op, undo.keep, victim.at, undo.temp)
        undo.made = True
        if not links_to_kept(op.action, victim.at, undo.temp, undo.kept.st, undo.keep.path):
            raise _Changed(f"kept file {undo.keep.path!r} is not the kept file when linked")
        problem = written(("kept file", undo.kept), ("victim", undo.victim_file))
        if problem:
            raise _Changed(problem)
        _unchanged("victim", undo.victim_file)  # our link changed only the kept file's ctime

    def _cannot_swap(self, undo: Rollback) -> None:
        """The filesystem cannot swap two names: our link goes, and from now on its copies
        are set aside before they are linked; the run says so once."""
        self.syscalls.unlink(undo.victim.at, undo.temp)
        undo.made = False
        dev, fs = undo.victim_file.st.st_dev, fs_type(undo.victim_file.fd)
        self._no_exchange[dev] = fs
        self.notices[(dev, "exchange")] = (
            f"{fs} cannot swap two names in one step (RENAME_EXCHANGE): there, a copy is "
            "set aside before its link is made, and its name is absent for that moment"
        )

    def _set_aside(self, undo: Rollback) -> None:
        """Rename the copy to the temporary name, compare it there, and (hardlink, symlink)
        make the link at its name; `_Changed` if it must not go on."""
        victim, op = undo.victim, undo.op
        undo.step = "set the copy aside"
        self.syscalls.rename_noreplace(victim.at, victim.name, victim.at, undo.temp)
        undo.aside = True
        if not same_file(lstat_at(victim.at, undo.temp), undo.victim_file.st):
            raise _Changed("the set-aside name is not the victim")
        undo.step = "compare the bytes"
        problem = self._compare(undo.kept, undo.victim_file, op)
        if problem:
            raise _Changed(problem)
        if op.action is not Action.DELETE:
            undo.step = "link" if op.action is Action.HARDLINK else "symlink"
            self._make(op, undo.keep, victim.at, victim.name)

    def _make(self, op: Operation, keep: Place, at: int, name: str) -> None:
        """The hard link or symlink to the kept file, at `name` in `at`."""
        if op.action is Action.HARDLINK:
            self.syscalls.link(keep.at, keep.name, at, name)
        else:
            self.syscalls.symlink(keep.path, at, name)

    def _commit(self, undo: Rollback) -> None:
        """The last checks before the copy's name goes for good, then its removal; `_Changed`
        if one fails.

        The kept copy must still be there, and neither file written to since it was opened.
        Once the copy's name holds the kept file, a program opening that name for writing gets
        the kept file, and waits in open() on our lease: it has written nothing yet, and
        finishing is what makes its write land where it will look for it (undoing would leave
        it in the kept file and the copy back under its name)."""
        op, keep, victim = undo.op, undo.keep, undo.victim
        if op.action is not Action.DELETE and not links_to_kept(
            op.action, victim.at, victim.name, undo.kept.st, keep.path
        ):
            raise _Changed(f"{victim.path!r} is not the kept file after linking")
        undo.step = "check the kept file"
        if not same_file(lstat_at(keep.at, keep.name), undo.kept.st):
            raise _Changed(f"kept file {keep.path!r} changed")
        opened_ok = ("kept file",) if op.action is not Action.DELETE else ()
        files = (("kept file", undo.kept), ("victim", undo.victim_file))
        problem = written(*files, ok=opened_ok)
        if problem:
            raise _Changed(problem)
        undo.step = "remove the set-aside name"
        self.syscalls.unlink(victim.at, undo.temp)

    def _failed(self, undo: Rollback, exc: OSError) -> OpResult:
        """A call failed on the way: everything put back, and said why."""
        if exc.errno == errno.EMLINK and undo.step == "link":
            why = (f"the kept file {undo.keep.path!r} can take no more links (EMLINK): "
                   f"{undo.victim.path!r} is kept instead for the rest of its group")  # fmt: skip
            return undo.back(why, Outcome.KEPT)
        return undo.back(f"{undo.step}: {describe_error(exc)}", Outcome.FAILED)

    def _replaced(self, undo: Rollback) -> OpResult:
        """Done: the space reclaimed (the copy's blocks when its last name went, less a
        symlink's own), and the files remembered as we left them."""
        before = undo.victim_file.st
        after = os.fstat(undo.victim_file.fd)
        reclaimed = before.st_blocks * 512 if after.st_nlink == 0 else 0
        if undo.op.action is Action.SYMLINK:
            link = lstat_at(undo.victim.at, undo.victim.name)
            reclaimed -= link.st_blocks * 512 if link is not None else 0
        seen = self.ledger.remember(undo.kept.fd, undo.victim_file.fd)
        return self.ledger.end(undo.index, undo.op, Outcome.DONE, "", reclaimed, seen)

    # -- move and reflink -----------------------------------------------------------------

    def _move(
        self, index: int, op: Operation, victim: Place, kept: Opened, victim_file: Opened
    ) -> OpResult:
        """Compare, then rename the copy into its destination, made where missing."""
        assert op.target is not None
        path, target = victim.path, op.target
        try:
            problem = self._compare(kept, victim_file, op)
        except OSError as exc:
            raise Refused(f"{path!r}: cannot compare the bytes: {describe_error(exc)}") from None
        if problem:
            raise Refused(f"{path!r}: {problem}")
        dev = victim_file.st.st_dev
        directory = target_dir(self.syscalls, os.path.dirname(target), dev, self.touched)
        try:
            if not self.across_owners:
                self._may_move(path, directory, victim, victim_file)
            return self._rename_to_target(index, op, victim, kept, victim_file, directory)
        finally:
            os.close(directory)

    def _may_move(self, path: str, directory: int, victim: Place, victim_file: Opened) -> None:
        """Refuse a destination that would let someone new reach the copy."""
        try:
            problem = self.access.exposes(directory, victim.at, victim_file.fd)
        except OSError as exc:
            problem = f"cannot tell who can reach the destination: {describe_error(exc)}"
        if problem:
            raise Refused(f"{path!r}: {problem}; --across-owners allows it")

    def _rename_to_target(
        self,
        index: int,
        op: Operation,
        victim: Place,
        kept: Opened,
        victim_file: Opened,
        directory: int,
    ) -> OpResult:
        """The rename (never over a name), checked to have moved the copy; else moved back."""
        assert op.target is not None
        path, target, name = victim.path, op.target, os.path.basename(op.target)
        self.ledger.start(index, op)
        try:
            self.syscalls.rename_noreplace(victim.at, victim.name, directory, name)
        except OSError as exc:
            why = f"cannot move to {target!r}: {describe_error(exc)}"
            return self.ledger.end(index, op, Outcome.FAILED, why)
        self.touched.update((os.path.dirname(target), os.path.dirname(path)))
        if same_file(lstat_at(directory, name), victim_file.st):
            seen = self.ledger.remember(kept.fd, victim_file.fd)
            return self.ledger.end(index, op, Outcome.DONE, "", seen=seen)
        try:
            self.syscalls.rename_noreplace(directory, name, victim.at, victim.name)
        except OSError as exc:
            why = f"moved file is not the victim and cannot be put back: {describe_error(exc)}"
            return self.ledger.rollback_failed(index, op, why, original_at=target, belongs_at=path)
        return self.ledger.end(
            index, op, Outcome.FAILED, f"{target!r} is not the victim after moving"
        )

    def _reflink(self, index: int, op: Operation, kept: Opened, victim: Opened) -> OpResult:
        """Ask the kernel to share the kept file's blocks with the copy: it compares the bytes
        itself, and changes nothing if they differ."""
        keep_fd, victim_fd, before = kept.fd, victim.fd, victim.st
        # Not required (the kernel compares and shares under its own locks), but only a lease
        # still intact afterwards tells that a changed mtime is the dedupe's, not a writer's.
        try:
            self.syscalls.lease(victim_fd)
            leased = True
        except OSError:
            leased = False
        free_before = free_bytes(victim_fd)
        self.ledger.start(index, op)
        try:
            self.syscalls.dedupe(keep_fd, victim_fd, op.victim.size)
        except ContentDiffers:
            message = "content differs (compared by the kernel)"
            return self.ledger.end(index, op, Outcome.SKIPPED, message)
        except OSError as exc:
            return self._reflink_failed(index, op, victim_fd, before, exc)
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
        seen = self.ledger.remember(keep_fd, victim_fd)
        # Shared blocks leave st_blocks as it was: the filesystem's free space tells what was
        # freed.  Taken around this one call and bounded by the file's own blocks, so other
        # writers on the filesystem move the figure as little as possible.
        freed = min(max(free_bytes(victim_fd) - free_before, 0), before.st_blocks * 512)
        return self.ledger.end(index, op, Outcome.DONE, "", freed, seen)

    def _reflink_failed(
        self, index: int, op: Operation, victim_fd: int, before: os.stat_result, exc: OSError
    ) -> OpResult:
        if exc.errno in _NO_REFLINK:
            self._no_reflink[before.st_dev] = fs_type(victim_fd)
            message = f"reflink not supported on {self._no_reflink[before.st_dev]}"
            return self.ledger.end(index, op, Outcome.FAILED, message, general=True)
        return self.ledger.end(index, op, Outcome.FAILED, f"reflink failed: {describe_error(exc)}")


def _unchanged(role: str, opened: Opened) -> None:
    """`_Changed` if the file's ctime moved since it was opened."""
    if os.fstat(opened.fd).st_ctime_ns != opened.st.st_ctime_ns:
        raise _Changed(f"the {role} changed while it was compared (ctime)")
