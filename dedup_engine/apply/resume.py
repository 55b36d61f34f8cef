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

import os
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from blake3 import blake3

from dedup_engine.apply.identity import same_file
from dedup_engine.apply.journal import (
    FileJournal,
    JournalError,
    JournalWriteError,
    State,
    create_private,
    open_private,
    read,
)
from dedup_engine.apply.outcome import OpResult, Outcome, Seen, Stamp
from dedup_engine.apply.plan import Action, Operation, Plan, Policy, make_plan
from dedup_engine.apply.runner import ApplySummary, Prior, ProgressCallback, apply_plan
from dedup_engine.apply.settle import ENDS, Settled, settle
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
    syscalls: Syscalls = REAL,
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
        seen: Seen = {}
        _see(seen, state.seen)
        settled = _settle_all(journal, state, plan, seen, syscalls)
        if plan is None:
            return Resumed(settled, None, None, why_not, _action(policy))
        summary = apply_plan(
            plan,
            verify=verify,
            journal=journal,
            syscalls=syscalls,
            progress=progress,
            should_stop=should_stop,
            prior=Prior(_prior_results(state, plan, settled), seen),
        )
        return Resumed(settled, plan, summary, None, _action(policy))
    finally:
        journal.close()


def _settle_all(
    journal: FileJournal, state: State, plan: Plan | None, seen: Seen, syscalls: Syscalls
) -> tuple[Settled, ...]:
    """Every operation that may have been under way, settled and journaled so, with the files
    as settling left them (added to `seen`)."""
    policy = state.header.get("policy")
    across_owners = isinstance(policy, dict) and policy.get("across_owners") is True
    settled = []
    for item in state.pending:
        if item.started is False:
            continue  # surely never started: carried out later, as any other not done
        done = settle(item, syscalls, across_owners=across_owners)
        stamps = _stamps_now(plan.operations[item.index], seen) if plan else ()
        _record(journal, done, stamps)
        settled.append(done)
    journal.commit()
    return tuple(settled)


def _action(policy: object) -> Action | None:
    try:
        return Policy.from_dict(policy).action
    except ValueError:
        return None


class _NoPlan(Exception):
    """Why the run's plan cannot be made again."""


def _plan_again(state: State) -> tuple[Plan | None, bool, str | None]:
    """The run's plan, made again from its report and policy, and its `verify`; or why that
    cannot be done."""
    try:
        plan = _remake(state)
    except _NoPlan as exc:
        return None, True, str(exc)
    return plan, state.header.get("verify") is not False, None


def _remake(state: State) -> Plan:
    header = state.header
    source, digest = header.get("report"), header.get("report_blake3")
    if not isinstance(source, str) or not isinstance(digest, str):
        raise _NoPlan("the journal names no report to finish the run from")
    problem = path_problem(source)
    if problem:
        raise _NoPlan(f"the journal's report path: {problem}")
    try:
        policy = Policy.from_dict(header.get("policy"))
    except ValueError as exc:
        raise _NoPlan(f"the journal's policy is not readable ({exc})") from None
    data = _read_report(source, saved=header.get("report_saved") is True)
    if blake3(data).hexdigest() != digest:
        raise _NoPlan(f"the report {source!r} changed since the run began")
    try:
        report = read_json(data)
    except ReportError as exc:
        raise _NoPlan(f"the report {source!r}: {exc}") from None
    plan = make_plan(report.groups, report.roots, policy, report.reference_roots)
    ops = plan.operations
    for index, begun in state.begun.items():
        if index >= len(ops) or begun != (
            ops[index].action,
            ops[index].victim.path,
            ops[index].keep.path,
            ops[index].target,
        ):
            raise _NoPlan(f"the plan made again differs from the journal at operation {index}")
    return plan


def _read_report(source: str, *, saved: bool) -> bytes:
    """The report's bytes.  Our own copy of a report from stdin (`saved`) must be as private as
    the journal; the user's own report file need not be: its digest says it is what the run
    acted on."""
    try:
        if saved:
            fd = open_private(source, os.O_RDONLY, "report copy")
        else:
            fd = os.open(source, OPEN_READ)
    except (OSError, JournalError) as exc:
        raise _NoPlan(f"cannot read the report {source!r}: {exc}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _NoPlan(f"the report {source!r} is not a regular file")
        return _read_fd(fd)
    except OSError as exc:
        raise _NoPlan(f"cannot read the report {source!r}: {describe_error(exc)}") from None
    finally:
        os.close(fd)


def _read_fd(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _record(journal: FileJournal, settled: Settled, seen: tuple[Stamp, ...]) -> None:
    """The settlement, in the journal, with the files as it left them: a later resume expects
    them so, as it does what the run's own operations left."""
    index, message = settled.pending.index, f"resumed: {settled.message}"
    outcome = ENDS.get(settled.settlement)
    if outcome is None:  # put back, or untouched: to be carried out
        journal.unstarted(index, message, seen)
        return
    journal.end_as(index, outcome, message, seen=seen)


def _prior_results(state: State, plan: Plan, settled: tuple[Settled, ...]) -> dict[int, OpResult]:
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
    for item in settled:
        outcome = ENDS.get(item.settlement)
        if outcome is not None:
            op = plan.operations[item.pending.index]
            results[item.pending.index] = OpResult(op, outcome, f"resumed: {item.message}")
    return results


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
