"""How an operation ends: its outcome and result, and where that is recorded.

Each planned operation ends in one `OpResult`.  The `Journal` records every operation before it
starts and after it ends (`journal.FileJournal` is the one on disk); the `Ledger` ends an
operation there and remembers the files as our own operation left them (`Stamp`s), so that a
later check, and `--resume`, expects the new ctime our links and renames gave them.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field
from typing import Protocol

from dedup_engine.apply.fsquery import content_stamp
from dedup_engine.apply.identity import Opened
from dedup_engine.apply.plan import Operation
from dedup_engine.model import FileEntry

#: (dev, ino, size, mtime_ns, ctime_ns) of a file as our own last operation left it.
Stamp = tuple[int, int, int, int, int]
#: The same, by (dev, ino): (size, mtime_ns, ctime_ns).
Seen = dict[tuple[int, int], tuple[int, int, int]]


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


@dataclass(slots=True)
class Ledger:
    """Ends operations: journals each one's start and end, and remembers what it left.

    Our own operations change the ctime of the files they touch (a new link, a rename), so the
    state each later check expects is what we saw after our last operation on that file, not
    what the report says: `seen`.
    """

    journal: Journal | None = None
    seen: Seen = field(default_factory=dict)
    #: Whether the operation under way has ended (its end record is written).
    ended: bool = False

    def start(self, index: int, op: Operation) -> None:
        if self.journal is not None:
            self.journal.start(index, op.keep)

    def end(
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
        self.ended = True
        return result

    def rollback_failed(
        self, index: int, op: Operation, why: str, *, original_at: str, belongs_at: str
    ) -> OpResult:
        """The end of an operation that could not put the original back where it belongs."""
        message = (
            f"ROLLBACK FAILED: {why}; the original is at {original_at!r}, "
            f"it belongs at {belongs_at!r}"
        )
        return self.end(index, op, Outcome.ROLLBACK_FAILED, message)

    def remember(self, *fds: int) -> tuple[Stamp, ...]:
        """The open files as they are now, expected so by later checks."""
        stamps = []
        for fd in fds:
            st = os.fstat(fd)
            self.seen[(st.st_dev, st.st_ino)] = (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            stamps.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
        return tuple(stamps)

    def remember_unwritten(self, *files: Opened) -> tuple[Stamp, ...]:
        """Remember the files whose size and mtime are still what they were at open: only
        our own links and renames changed them since."""
        unwritten = [f.fd for f in files if content_stamp(f.fd) == (f.st.st_size, f.st.st_mtime_ns)]
        return self.remember(*unwritten)
