"""Finishing an interrupted `apply`: settle what was under way, then carry out the rest of the plan.

A journal's header names the report the run acted on, with its BLAKE3 digest (a report read
from stdin is kept beside the journal), and the policy; from these `--resume` makes the same
plan again and checks it against the journal's begin records.  It then looks at what is on disk
for each operation that was begun and never ended (killed, power lost, or a rollback that
failed): completed, put back, untouched, changed by someone else, or needs a person.  Last, it
carries out every operation not yet done (never started, put back, skipped or failed: the cause
may be gone), with all the usual checks, and its summary covers the whole run.  A journal
without a usable report (another version's, one the library wrote without a header, a report
changed since) is settled only, and the reason is given.
"""

from __future__ import annotations

import enum
import errno
import os
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from blake3 import blake3

from dedup_engine.apply.access import Access
from dedup_engine.apply.fsquery import (
    content_stamp,
    lease_intact,
    lstat_at,
    readlink_at,
    same_bytes,
    same_file,
)
from dedup_engine.apply.journal import (
    FileJournal,
    JournalError,
    JournalWriteError,
    Pending,
    State,
    create_private,
    open_private,
    read,
)
from dedup_engine.apply.operation import OpResult, Outcome, Stamp
from dedup_engine.apply.plan import Action, Operation, Plan, Policy, make_plan
from dedup_engine.apply.runner import ApplySummary, Prior, ProgressCallback, apply_plan
from dedup_engine.apply.syscalls import REAL, Syscalls
from dedup_engine.openflags import OPEN_READ
from dedup_engine.oserror import describe_error
from dedup_engine.report.read import ReportError, absolute, path_problem, read_json


def open_journal(
    path: str,
    report: bytes,
    report_name: str,
    policy: Policy,
    *,
    verify: bool,
    operations: int,
    extra: Mapping[str, Any] | None = None,
) -> FileJournal:
    """A new journal holding what `--resume` needs to finish the run: the report's path and
    digest (a report from stdin is saved beside the journal), the policy, `verify`."""
    path = absolute(path)
    source = absolute(report_name) if report_name != "-" else path + ".report.json"
    if report_name == "-":
        _save(source, report)
    header = {
        **(extra or {}),
        "report": source,
        "report_saved": report_name == "-",
        "report_blake3": blake3(report).hexdigest(),
        "policy": policy.as_dict(),
        "verify": verify,
        "operations": operations,
    }
    try:
        return FileJournal(path, header)
    except JournalError:
        if report_name == "-":
            os.unlink(source)
        raise


def _save(copy: str, data: bytes) -> None:
    """The report read from stdin, kept beside the journal: all of it, or nothing."""
    fd = create_private(copy, "report copy")
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError as exc:
        os.close(fd)
        os.unlink(copy)
        raise JournalWriteError(
            f"cannot save the report beside the journal: {describe_error(exc)}"
        ) from None
    os.close(fd)


class Settlement(str, enum.Enum):
    """What `--resume` found on disk for an operation that was under way."""

    COMPLETED = "completed"
    PUT_BACK = "put back"  # our temporary name was renamed back: to be carried out again
    UNTOUCHED = "untouched"  # nothing of the operation happened: to be carried out
    LEFT = "left alone"  # someone else changed the files since: skipped
    NEEDS_YOU = "needs you"  # the operation stays open in the journal


@dataclass(frozen=True, slots=True)
class Settled:
    pending: Pending
    settlement: Settlement
    message: str


@dataclass(frozen=True, slots=True)
class Resumed:
    """What `--resume` did: the settlements, then the whole run's summary (None when the
    rest could not be carried out, `why_not` says why)."""

    settled: tuple[Settled, ...]
    plan: Plan | None
    summary: ApplySummary | None
    why_not: str | None
    action: Action | None  # the run's, from its journal


def resume(
    path: str,
    sys: Syscalls = REAL,
    *,
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Resumed:
    """Settle every interrupted operation of the journal at `path`, then finish the run.

    `JournalError` before anything is touched (the journal not trusted, in use, unreadable);
    `JournalWriteError` when a record cannot be written later, which stops the run."""
    journal = FileJournal.reopen(path)  # locked first: no live run ends between here and read
    try:
        state = read(path)
        plan, verify, why_not = _plan_again(state)
        policy = state.header.get("policy")
        across_owners = isinstance(policy, dict) and policy.get("across_owners") is True
        seen: Seen = {}
        _see(seen, state.seen)
        settled = []
        for item in state.pending:
            if item.started is False:
                continue  # surely never started: carried out below, as any other not done
            done = _settle(item, sys, across_owners)
            stamps = _stamps_now(plan.operations[item.index], seen) if plan else ()
            _record(journal, done, stamps)
            settled.append(done)
        journal.commit()
        if plan is None:
            return Resumed(tuple(settled), None, None, why_not, _action(policy))
        summary = apply_plan(
            plan,
            verify=verify,
            journal=journal,
            sys=sys,
            progress=progress,
            should_stop=should_stop,
            prior=Prior(_prior_results(state, plan, settled), seen),
        )
        return Resumed(tuple(settled), plan, summary, None, _action(policy))
    finally:
        journal.close()


def _action(policy: object) -> Action | None:
    try:
        return Policy.from_dict(policy).action
    except ValueError:
        return None


def _plan_again(state: State) -> tuple[Plan | None, bool, str | None]:
    """The run's plan, made again from its report and policy; or why that cannot be done."""
    header = state.header
    source, digest = header.get("report"), header.get("report_blake3")
    if not isinstance(source, str) or not isinstance(digest, str):
        return None, True, "the journal names no report to finish the run from"
    problem = path_problem(source)
    if problem:
        return None, True, f"the journal's report path: {problem}"
    try:
        policy = Policy.from_dict(header.get("policy"))
    except ValueError as exc:
        return None, True, f"the journal's policy is not readable ({exc})"
    try:
        # Our own copy of a report from stdin must be as private as the journal; the user's
        # own report file need not be: its digest says it is what the run acted on.
        if header.get("report_saved") is True:
            fd = open_private(source, os.O_RDONLY, "report copy")
        else:
            fd = os.open(source, OPEN_READ)
    except (OSError, JournalError) as exc:
        return None, True, f"cannot read the report {source!r}: {exc}"
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None, True, f"the report {source!r} is not a regular file"
        data = _read_fd(fd)
    except OSError as exc:
        return None, True, f"cannot read the report {source!r}: {describe_error(exc)}"
    finally:
        os.close(fd)
    if blake3(data).hexdigest() != digest:
        return None, True, f"the report {source!r} changed since the run began"
    try:
        report = read_json(data)
    except ReportError as exc:
        return None, True, f"the report {source!r}: {exc}"
    plan = make_plan(report.groups, report.roots, policy)
    ops = plan.operations
    for index, begun in state.begun.items():
        if index >= len(ops) or begun != (
            ops[index].action,
            ops[index].victim.path,
            ops[index].keep.path,
            ops[index].target,
        ):
            return None, True, f"the plan made again differs from the journal at operation {index}"
    return plan, header.get("verify") is not False, None


def _read_fd(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _record(journal: FileJournal, settled: Settled, seen: tuple[Stamp, ...]) -> None:
    """The settlement, in the journal, with the files as it left them: a later resume expects
    them so, as it does what the run's own operations left."""
    index, message = settled.pending.index, f"resumed: {settled.message}"
    if settled.settlement in (Settlement.PUT_BACK, Settlement.UNTOUCHED):
        journal.unstarted(index, message, seen)
        return
    outcome = {
        Settlement.COMPLETED: Outcome.DONE,
        Settlement.LEFT: Outcome.SKIPPED,
        Settlement.NEEDS_YOU: Outcome.ROLLBACK_FAILED,
    }[settled.settlement]
    journal.end_as(index, outcome, message, seen=seen)


def _prior_results(state: State, plan: Plan, settled: list[Settled]) -> dict[int, OpResult]:
    """What the run already did: done, kept instead, or settled for good (left alone, or
    waiting for a person).  Anything else is tried again, with every check."""
    results: dict[int, OpResult] = {}
    for index in sorted(state.ended):
        end = state.ended[index]
        if end.outcome in (Outcome.DONE, Outcome.KEPT):
            op = plan.operations[index]
            results[index] = OpResult(
                op, end.outcome, end.message, end.reclaimed, end.seen, end.general
            )
    final = {
        Settlement.COMPLETED: Outcome.DONE,
        Settlement.LEFT: Outcome.SKIPPED,
        Settlement.NEEDS_YOU: Outcome.ROLLBACK_FAILED,
    }
    for item in settled:
        if item.settlement in final:
            op = plan.operations[item.pending.index]
            results[item.pending.index] = OpResult(
                op, final[item.settlement], f"resumed: {item.message}"
            )
    return results


Seen = dict[tuple[int, int], tuple[int, int, int]]


def _see(seen: Seen, stamps: Iterable[Stamp]) -> None:
    for dev, ino, size, mtime, ctime in stamps:
        seen[(dev, ino)] = (size, mtime, ctime)


def _stamps_now(op: Operation, seen: Seen) -> tuple[Stamp, ...]:
    """The operation's files as settling left them, where their size and mtime are still what
    the run expects: our renames and links changed their ctime, not a write of someone else's,
    which still shows."""
    stamps = []
    for entry in (op.keep, op.victim, *op.also_kept):
        try:
            st = os.lstat(entry.path)
        except OSError:
            continue
        expected = seen.get((entry.dev, entry.ino), (entry.size, entry.mtime_ns, 0))
        if same_file(st, (entry.dev, entry.ino)) and (st.st_size, st.st_mtime_ns) == expected[:2]:
            stamps.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    _see(seen, stamps)
    return tuple(stamps)


# -- settling one operation from what is on disk ----------------------------------------------


def _settle(item: Pending, sys: Syscalls, across_owners: bool) -> Settled:
    try:
        if item.action is Action.REFLINK:
            why = "a reflink is atomic: it is done, or tried again with its checks"
            return Settled(item, Settlement.UNTOUCHED, why)
        if item.action is Action.MOVE:
            return _settle_move(item, sys)
        directory = sys.open_dir(None, os.path.dirname(item.path))
        try:
            return _settle_replace(item, directory, sys, across_owners)
        finally:
            os.close(directory)
    except OSError as exc:
        where = f"{item.path!r}" + (f" and {item.aside!r}" if item.aside else "")
        return Settled(item, Settlement.NEEDS_YOU, f"{describe_error(exc)}; look at {where}")


def _settle_move(item: Pending, sys: Syscalls) -> Settled:
    assert item.target is not None
    at_path, at_target = _lstat_path(item.path, sys), _lstat_path(item.target, sys)
    if _is(at_target, item.victim):
        if not _is(at_path, item.victim):
            why = f"{item.path!r} had been moved to {item.target!r}"
            return Settled(item, Settlement.COMPLETED, why)
        # Where a filesystem has no RENAME_NOREPLACE a move is a link, then an unlink: stopped
        # between the two, the file has both names, and the old one goes.
        directory = sys.open_dir(None, os.path.dirname(item.path))
        try:
            sys.unlink(directory, os.path.basename(item.path))
        finally:
            os.close(directory)
        why = f"{item.path!r} had been linked to {item.target!r}; its old name removed"
        return Settled(item, Settlement.COMPLETED, why)
    if _is(at_path, item.victim):
        return Settled(item, Settlement.UNTOUCHED, f"{item.path!r} had not been moved")
    # A move leaves no temporary name: with the file at neither place, someone moved or
    # removed it, and nothing of ours is stranded.
    why = f"neither {item.path!r} nor {item.target!r} holds the file now"
    return Settled(item, Settlement.LEFT, why)


def _settle_replace(item: Pending, directory: int, sys: Syscalls, across_owners: bool) -> Settled:
    """From what the copy's name and its temporary name hold: the operation sets the copy aside
    (delete; hardlink and symlink where names cannot be swapped) and links after, or makes its
    link under the temporary name and swaps it with the copy."""
    assert item.aside is not None
    name, temp = os.path.basename(item.path), os.path.basename(item.aside)
    path, aside = item.path, item.aside
    at_path, at_aside = lstat_at(directory, name), lstat_at(directory, temp)
    if at_aside is None:
        return _nothing_aside(item, directory, at_path, sys)
    if _is_new(item, directory, temp, at_aside):
        # Our link, made under the temporary name and not yet swapped in: the copy is in place.
        sys.unlink(directory, temp)
        if _is(at_path, item.victim):
            return Settled(item, Settlement.UNTOUCHED, f"{path!r} had not been replaced")
        why = f"{path!r} was changed by someone else; our link {aside!r} removed"
        return Settled(item, Settlement.LEFT, why)
    if not _is(at_aside, item.victim):
        return Settled(item, Settlement.NEEDS_YOU, f"{aside!r} is not the victim; left alone")
    if _is(at_path, item.victim):
        # A rename without RENAME_NOREPLACE is a link then an unlink: stopped between the two.
        sys.unlink(directory, temp)
        why = f"{path!r} had not been replaced; {aside!r} removed"
        return Settled(item, Settlement.UNTOUCHED, why)
    if at_path is None:
        sys.rename_noreplace(directory, temp, directory, name)
        return Settled(item, Settlement.PUT_BACK, f"{path!r} put back from {aside!r}")
    if not _is_new(item, directory, name, at_path):
        why = f"the original is at {aside!r}; {path!r} now holds a file we did not create"
        return Settled(item, Settlement.NEEDS_YOU, why)
    problem = _still_duplicate(item, directory, temp, sys, across_owners)
    if problem is None:
        sys.unlink(directory, temp)
        return Settled(item, Settlement.COMPLETED, f"{path!r} completed; {aside!r} removed")
    return _put_back(item, directory, sys, problem)


def _put_back(item: Pending, directory: int, sys: Syscalls, why: str) -> Settled:
    """The copy back at its name from the temporary one, where our link stands: swapped, so the
    link (the kept file, perhaps written to through this name since) is never the one removed
    while it is the kept file's last name."""
    assert item.aside is not None
    name, temp = os.path.basename(item.path), os.path.basename(item.aside)
    try:
        sys.exchange(directory, name, directory, temp)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
        if _last_name(lstat_at(directory, name), item):
            return Settled(item, Settlement.NEEDS_YOU, f"{why}; {item.path!r} is the kept file's "
                           f"only name now, and the original is at {item.aside!r}")  # fmt: skip
        sys.unlink(directory, name)
        sys.rename_noreplace(directory, temp, directory, name)
        return Settled(item, Settlement.PUT_BACK, f"{item.path!r} put back: {why}")
    if _last_name(lstat_at(directory, temp), item):
        why += f"; the kept file's only name is now {item.aside!r}: look at it"
        return Settled(item, Settlement.NEEDS_YOU, f"{item.path!r} put back: {why}")
    sys.unlink(directory, temp)
    return Settled(item, Settlement.PUT_BACK, f"{item.path!r} put back: {why}")


def _last_name(st: os.stat_result | None, item: Pending) -> bool:
    """Whether `st` is our hard link and the kept file's only name left."""
    return item.action is Action.HARDLINK and st is not None and st.st_nlink < 2


def _nothing_aside(
    item: Pending, directory: int, at_path: os.stat_result | None, sys: Syscalls
) -> Settled:
    """No temporary name: the operation did not start, was completed, or the name changed."""
    path = item.path
    if _is(at_path, item.victim):
        return Settled(item, Settlement.UNTOUCHED, f"{path!r} had not been touched")
    if not _same_directory(item, directory):
        # An unmounted volume or a renamed directory hides both names: nothing can be told
        # from here, and a temporary name may be waiting there.
        why = f"the directory of {path!r} is not the one we worked in"
        return Settled(item, Settlement.NEEDS_YOU, why)
    if at_path is not None and _is_new(item, directory, os.path.basename(path), at_path):
        return Settled(item, Settlement.COMPLETED, f"{path!r} had been completed")
    if at_path is None and item.action is Action.DELETE:
        if _is(_lstat_path(item.keep, sys), item.kept):
            return Settled(item, Settlement.COMPLETED, f"{path!r} had been deleted")
        why = f"{path!r} and its kept copy {item.keep!r} are gone"
        return Settled(item, Settlement.NEEDS_YOU, why)
    # No temporary name and nothing of ours at the path: never started (a file changed after
    # the report is skipped before it is set aside), or changed by someone since.
    why = f"{path!r} was changed by someone else; nothing of ours is there"
    return Settled(item, Settlement.LEFT, why)


def _same_directory(item: Pending, directory: int) -> bool:
    """The victim's directory is the one we worked in: not an unmounted volume, nor a new
    directory in place of one renamed away (which may hold our temporary name)."""
    st = os.fstat(directory)
    if item.directory is not None:
        return (st.st_dev, st.st_ino) == item.directory
    return st.st_dev == item.victim[0]


def _is_new(item: Pending, directory: int, name: str, st: os.stat_result) -> bool:
    """Whether `name` holds what the operation creates there (the link or symlink)."""
    if item.action is Action.HARDLINK:
        return stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) == item.kept
    if item.action is Action.SYMLINK:
        return stat.S_ISLNK(st.st_mode) and readlink_at(directory, name) == item.keep
    return False


def _still_duplicate(
    item: Pending, directory: int, temp: str, sys: Syscalls, across_owners: bool
) -> str | None:
    """Why the set-aside copy may not go (None: it may), checked as `apply` checks: the right
    files, with equal access (owner, mode, ACLs, the directories on the way), neither open for
    writing elsewhere (read leases), the same bytes, and neither written while compared."""
    try:
        keep_dir = sys.open_dir(None, os.path.dirname(item.keep))
    except OSError as exc:
        return f"the kept file cannot be reached: {describe_error(exc)}"
    try:
        a = sys.open(keep_dir, os.path.basename(item.keep), OPEN_READ)
        try:
            b = sys.open(directory, temp, OPEN_READ)
            try:
                return _compare(item, (keep_dir, a), (directory, b), sys, across_owners)
            finally:
                os.close(b)
        finally:
            os.close(a)
    except OSError as exc:
        return f"cannot compare: {describe_error(exc)}"
    finally:
        os.close(keep_dir)


def _compare(
    item: Pending,
    kept: tuple[int, int],
    victim: tuple[int, int],
    sys: Syscalls,
    across_owners: bool,
) -> str | None:
    """The checks of `_still_duplicate` on the open files ((directory, file) descriptors)."""
    a, b = kept[1], victim[1]
    sa, sb = os.fstat(a), os.fstat(b)
    if (sa.st_dev, sa.st_ino) != item.kept or (sb.st_dev, sb.st_ino) != item.victim:
        return "the kept file is another file now"
    access = Access()
    problem = access.one_file_possible(a, b) if item.action is not Action.HARDLINK else None
    if problem is None and not across_owners:
        problem = access.differs(kept, victim)
    if problem:
        return problem
    leased = []
    for fd in (a, b):
        try:
            sys.lease(fd)
            leased.append(fd)
        except OSError as exc:  # no lease to be had: the size and mtime check below guards
            if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                return "it or the kept file is open for writing by another process"
    if sa.st_size != sb.st_size or not same_bytes(a, b, sa.st_size, sys):
        return "its bytes no longer match the kept file"
    if not all(map(lease_intact, leased)):
        return "it or the kept file was opened for writing while they were compared"
    for fd, before in ((a, sa), (b, sb)):
        if content_stamp(fd) != (before.st_size, before.st_mtime_ns):
            return "it or the kept file was written to while they were compared"
    return None


def _lstat_path(path: str, sys: Syscalls) -> os.stat_result | None:
    """`path` not followed, reached without following symlinks; None if it is not there."""
    try:
        directory = sys.open_dir(None, os.path.dirname(path))
    except FileNotFoundError:
        return None
    try:
        return lstat_at(directory, os.path.basename(path))
    finally:
        os.close(directory)


def _is(st: os.stat_result | None, identity: tuple[int, int]) -> bool:
    return st is not None and (st.st_dev, st.st_ino) == identity
