"""Running a plan: each operation through the `Actor`, in order, and a summary of the outcome.

`apply_plan` is the library's way to act on a report (`dedup apply` is a thin layer over it).
Within a group, the first operation that does not complete stops the group: the rest of it is
skipped with that reason, so a group that changed since the report is left as it is now.  The
one exception is a kept file that can take no more links (EMLINK): that victim is kept instead,
and the rest of its group is linked to it.
Operations are journaled in batches: the batch's begin records are synced together before any of
them starts, and its end records after the directories it changed are synced.  `--resume` runs
the same plan again with what the journal says was already done (`Prior`), so the run finishes.
Space reclaimed is measured, not predicted: from st_blocks of each file whose last name went
(so sparse files and files with other links count right), and for reflinks, which leave every
file its st_blocks, from the filesystem's free space just before and after each one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from dedup_engine.apply.aside import aside_name
from dedup_engine.apply.fsquery import sync_dir
from dedup_engine.apply.operation import Actor
from dedup_engine.apply.outcome import Journal, Ledger, OpResult, Outcome, Seen
from dedup_engine.apply.plan import Action, LeftAlone, Operation, Plan
from dedup_engine.apply.syscalls import REAL, Syscalls
from dedup_engine.model import FileEntry

ProgressCallback = Callable[[int, int], None]  # operations finished, operations in all


@dataclass(frozen=True, slots=True)
class ApplySummary:
    results: tuple[OpResult, ...]
    left_alone: tuple[LeftAlone, ...]  # what the plan had nothing to do for
    reclaimed: int  # bytes
    measured_by: str  # "st_blocks" or "free space" (reflink)
    interrupted: bool = False  # stopped between operations; `results` holds those done so far
    #: Said once for the whole run (where leases are unavailable, and what protects instead).
    notices: tuple[str, ...] = ()

    def count(self, outcome: Outcome) -> int:
        return sum(1 for r in self.results if r.outcome is outcome)

    @property
    def clean(self) -> bool:
        """Every planned operation was done (or its victim kept in place of a full kept file)."""
        return not self.interrupted and all(
            r.outcome in (Outcome.DONE, Outcome.KEPT) for r in self.results
        )


@dataclass(frozen=True, slots=True)
class Prior:
    """What an earlier run of the same plan settled: its results by operation index, and the
    files as its own operations left them (so their new ctimes are not taken for changes)."""

    results: Mapping[int, OpResult] = field(default_factory=dict)
    seen: Mapping[tuple[int, int], tuple[int, int, int]] = field(default_factory=dict)


#: Operations journaled as begun with one fsync.  Each costs an lstat on `--resume` if the run
#: dies; 128 keeps that trivial while saving nearly all the journal's fsyncs.
BATCH = 128


def apply_plan(
    plan: Plan,
    *,
    verify: bool = True,
    journal: Journal | None = None,
    syscalls: Syscalls = REAL,
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    prior: Prior | None = None,
) -> ApplySummary:
    """Carry out `plan` operation by operation; never raises for a per-file problem.

    `should_stop` is asked between operations (never during one): the command sets it on
    Ctrl-C or SIGTERM, so an interrupted run leaves nothing half done.  With `prior`, the
    operations it holds are not done again, and the summary covers them too."""
    prior = prior or Prior()
    seen: Seen = dict(prior.seen)
    actor = Actor(
        verify=verify,
        across_owners=plan.across_owners,
        syscalls=syscalls,
        ledger=Ledger(journal, seen),
    )
    run = _Run(actor, journal, len(plan.operations), progress, should_stop or (lambda: False))
    for index in sorted(prior.results):
        run.take(index, prior.results[index])
    todo = [(i, op) for i, op in enumerate(plan.operations) if i not in prior.results]
    for start in range(0, len(todo), BATCH):
        run.batch(todo[start : start + BATCH])
        if run.interrupted:
            break
    # A signal during the last operation is seen here: the run was still interrupted.
    interrupted = run.interrupted or run.stop()
    ordered = tuple(run.results[i] for i in sorted(run.results))
    reflink = any(op.action is Action.REFLINK for op in plan.operations)
    return ApplySummary(
        ordered,
        plan.left_alone,
        sum(r.reclaimed for r in ordered),
        "free space" if reflink else "st_blocks",
        interrupted,
        tuple(actor.notices.values()),
    )


class _GroupRules:
    """The group rules across operations: a group stops at its first operation that does not
    complete, and a victim kept in place of a full kept file is the group's kept file after."""

    def __init__(self) -> None:
        self.stopped: dict[int, str] = {}
        self.keep: dict[int, FileEntry] = {}

    def run(self, actor: Actor, index: int, op: Operation, aside: str | None) -> OpResult:
        if op.group in self.stopped:
            message = f"group stopped: {self.stopped[op.group]}"
            return actor.ledger.end(index, op, Outcome.SKIPPED, message)
        keep = self.keep.get(op.group)
        if keep is not None:
            if (keep.dev, keep.ino) == (op.victim.dev, op.victim.ino):
                message = f"another name of the kept file {keep.path!r}"
                return actor.ledger.end(index, op, Outcome.KEPT, message)
            op = dataclasses.replace(op, keep=keep)
        result = actor.run(index, op, aside)
        self.record(result)
        return result

    def record(self, result: OpResult) -> None:
        group = result.op.group
        if result.outcome is Outcome.KEPT:
            self.keep.setdefault(group, result.op.victim)
        elif result.outcome is not Outcome.DONE:
            self.stopped.setdefault(group, result.message)


@dataclass(slots=True)
class _Run:
    """The operations of one run, carried out a batch at a time, with their results so far."""

    actor: Actor
    journal: Journal | None
    total: int
    progress: ProgressCallback | None
    stop: Callable[[], bool]
    groups: _GroupRules = field(default_factory=_GroupRules)
    results: dict[int, OpResult] = field(default_factory=dict)
    interrupted: bool = False

    def take(self, index: int, result: OpResult) -> None:
        """An operation an earlier run settled: counted, and its group rules kept."""
        self.results[index] = result
        self.groups.record(result)

    def batch(self, batch: list[tuple[int, Operation]]) -> None:
        """Journal the batch as begun, carry it out, make what it changed durable, then
        journal that too."""
        asides = _asides([op for _, op in batch])
        if self.journal is not None:
            # One fsync makes the whole batch's begin records durable before any of them
            # starts: resume finds a begun operation that was never touched as it was.
            for (index, op), aside in zip(batch, asides, strict=True):
                self.journal.begin(index, op, aside)
            self.journal.commit()
        try:
            for (index, op), aside in zip(batch, asides, strict=True):
                self._one(index, op, aside)
        finally:
            # What the batch changed is on disk before the journal says so, even when an
            # error stops the run here.
            for directory in sorted(self.actor.touched):
                sync_dir(directory)
            self.actor.touched.clear()
        if self.journal is not None:
            self.journal.commit()

    def _one(self, index: int, op: Operation, aside: str | None) -> None:
        if self.interrupted or self.stop():
            self.interrupted = True
            if self.journal is not None:
                self.journal.unstarted(index, "interrupted before it started")
            return
        self.results[index] = self.groups.run(self.actor, index, op, aside)
        if self.progress is not None:
            self.progress(len(self.results), self.total)


def _asides(ops: list[Operation]) -> list[str | None]:
    """A temporary name for each operation that sets its victim aside, all distinct."""
    names: list[str | None] = []
    taken: set[str] = set()
    for op in ops:
        if op.action not in (Action.DELETE, Action.HARDLINK, Action.SYMLINK):
            names.append(None)
            continue
        name = aside_name(op.victim.path)
        while name in taken:  # 32 random bits: a clash is rare, but two would be one name
            name = aside_name(op.victim.path)
        taken.add(name)
        names.append(name)
    return names
