"""Running a plan: each operation through the `Actor`, in order, and a summary of the outcome.

`apply_plan` is the library's way to act on a report (`dedup apply` is a thin layer over it).
Within a group, the first operation that does not complete stops the group: the rest of it is
skipped with that reason, so a group that changed since the report is left as it is now.
Operations are journaled in batches: the batch's begin records are synced together before any of
them starts, and its end records after the directories it changed are synced.
Space reclaimed is measured, not predicted: from st_blocks of each file whose last name went
(so sparse files and files with other links count right), and for reflinks, which leave every
file its st_blocks, from the filesystem's free space just before and after each one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dedup_engine.act import Actor, Journal, OpResult, Outcome, aside_name
from dedup_engine.fsops import REAL, Syscalls
from dedup_engine.fsquery import sync_dir
from dedup_engine.plan import Action, Operation, Plan, Skipped

ProgressCallback = Callable[[int, int], None]  # operations finished, operations in all


@dataclass(frozen=True, slots=True)
class ApplySummary:
    results: tuple[OpResult, ...]
    left_alone: tuple[Skipped, ...]  # groups the plan had nothing to do for
    reclaimed: int  # bytes
    measured_by: str  # "st_blocks" or "free space" (reflink)
    interrupted: bool = False  # stopped between operations; `results` holds those done so far

    def count(self, outcome: Outcome) -> int:
        return sum(1 for r in self.results if r.outcome is outcome)

    @property
    def clean(self) -> bool:
        """Every planned operation was done."""
        return not self.interrupted and all(r.outcome is Outcome.DONE for r in self.results)


#: Operations journaled as begun with one fsync.  Each costs an lstat on `--resume` if the run
#: dies; 128 keeps that trivial while saving nearly all the journal's fsyncs.
BATCH = 128


def apply_plan(
    plan: Plan,
    *,
    verify: bool = True,
    journal: Journal | None = None,
    sys: Syscalls = REAL,
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ApplySummary:
    """Carry out `plan` operation by operation; never raises for a per-file problem.

    `should_stop` is asked between operations (never during one): the command sets it on
    Ctrl-C or SIGTERM, so an interrupted run leaves nothing half done."""
    actor = Actor(verify=verify, sys=sys, journal=journal)
    results: list[OpResult] = []
    stopped: dict[int, str] = {}
    total = len(plan.operations)
    interrupted = False
    for start in range(0, total, BATCH):
        batch = list(enumerate(plan.operations[start : start + BATCH], start))
        asides = _asides([op for _, op in batch])
        if journal is not None:
            # One fsync makes the whole batch's begin records durable before any of them
            # starts: resume finds a begun operation that was never touched as it was.
            for (index, op), aside in zip(batch, asides, strict=True):
                journal.begin(index, op, aside)
            journal.commit()
        try:
            for (index, op), aside in zip(batch, asides, strict=True):
                if interrupted or (should_stop is not None and should_stop()):
                    interrupted = True
                    _close(journal, index, "interrupted before it started")
                    continue
                if op.group in stopped:
                    message = f"group stopped: {stopped[op.group]}"
                    result = OpResult(op, Outcome.SKIPPED, message)
                    _close(journal, index, message)
                else:
                    result = actor.run(index, op, aside)
                    if result.outcome is not Outcome.DONE:
                        stopped[op.group] = result.message
                results.append(result)
                if progress is not None:
                    progress(index + 1, total)
        finally:
            # What the batch changed is on disk before the journal says so, even when an
            # error stops the run here.
            for directory in sorted(actor.touched):
                sync_dir(directory)
            actor.touched.clear()
        if journal is not None:
            journal.commit()
        if interrupted:
            break
    reflink = any(op.action is Action.REFLINK for op in plan.operations)
    reclaimed = sum(r.reclaimed for r in results)
    measured_by = "free space" if reflink else "st_blocks"
    return ApplySummary(tuple(results), plan.skipped, reclaimed, measured_by, interrupted)


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


def _close(journal: Journal | None, index: int, why: str) -> None:
    """End an operation that was journaled as begun but never started."""
    if journal is not None:
        journal.end(index, Outcome.SKIPPED, why)
