"""Putting a copy back as it was, from whichever step its replacement reached.

A delete, hard link or symlink changes the copy's directory in steps (`operation.py`): our link
made under the temporary name, then swapped with the copy; or the copy set aside under the
temporary name, then our link made at its name.  `Rollback` follows those steps as they are
taken and, when one fails or a check refuses, undoes what was done: it swaps back, removes only
what we made (checked by identity, and never the kept file's last name) and overwrites nothing
(RENAME_NOREPLACE).  When that is impossible the outcome is ROLLBACK_FAILED, naming both paths,
and the original stays under the temporary name, where `dedup apply --resume` finds it.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

from dedup_engine.apply.fsquery import lstat_at
from dedup_engine.apply.identity import Opened, is_only_name, is_our_link, same_file
from dedup_engine.apply.outcome import Ledger, OpResult, Outcome
from dedup_engine.apply.places import Place
from dedup_engine.apply.plan import Action, Operation
from dedup_engine.apply.syscalls import Syscalls
from dedup_engine.oserror import describe_error


@dataclass(slots=True)
class Rollback:
    """What a replacement has done so far, and how to undo it: our link made under the
    temporary name (`made`), swapped with the copy (`swapped`), or the copy set aside
    (`aside`), with our link perhaps made at its name."""

    ledger: Ledger
    syscalls: Syscalls
    index: int
    op: Operation
    keep: Place
    victim: Place
    kept: Opened
    victim_file: Opened
    temp: str  # the temporary name in the copy's directory
    step: str = "start"  # what was under way, for messages
    made: bool = False
    swapped: bool = False
    aside: bool = False

    @property
    def temp_path(self) -> str:
        return os.path.join(os.path.dirname(self.victim.path), self.temp)

    def back(self, why: str, outcome: Outcome = Outcome.SKIPPED) -> OpResult:
        """Undo every step taken, and end the operation with `outcome` and the reason."""
        try:
            failed = self._swap_back(why) or self._remove_made(why) or self._put_aside_back(why)
        except OSError as exc:
            return self._failed(f"{why}; then {describe_error(exc)}")
        if failed is not None:
            return failed
        # What our links and renames did to the files' ctime is ours, not a change to refuse
        # later (an EMLINK victim kept instead, a retry by --resume); a write is not.
        seen = self.ledger.remember_unwritten(self.kept, self.victim_file)
        message = f"{why}; rolled back" if outcome is Outcome.FAILED else why
        return self.ledger.end(self.index, self.op, outcome, message, seen=seen)

    def _swap_back(self, why: str) -> OpResult | None:
        """Our link swapped in: swapped back, so it is under the temporary name again."""
        if not self.swapped:
            return None
        victim = self.victim
        if not self._ours(victim.name):
            return self._lost(f"{why}; {victim.path!r} now holds a file we did not create")
        self.syscalls.exchange(victim.at, victim.name, victim.at, self.temp)
        self.swapped, self.made = False, True
        return None

    def _remove_made(self, why: str) -> OpResult | None:
        """Our link under the temporary name: removed.  Our own random name, so whatever our
        link made there goes (a link to what the kept path held then, even a symlink), unless
        it is the copy itself, or the kept file's only name left (its other name removed
        meanwhile)."""
        if not self.made:
            return None
        st = lstat_at(self.victim.at, self.temp)
        if st is not None and not same_file(st, self.victim_file.st):
            if is_only_name(self.op.action, st):
                message = (f"ROLLBACK FAILED: {why}; {self.victim.path!r} is in place, and "
                           f"{self.temp_path!r} is the kept file's only name now")  # fmt: skip
                return self.ledger.end(self.index, self.op, Outcome.ROLLBACK_FAILED, message)
            with contextlib.suppress(FileNotFoundError):
                self.syscalls.unlink(self.victim.at, self.temp)
        self.made = False
        return None

    def _put_aside_back(self, why: str) -> OpResult | None:
        """The copy set aside: renamed back to its name, once our link there is removed."""
        if not self.aside:
            return None
        victim = self.victim
        if lstat_at(victim.at, victim.name) is not None:
            if not self._ours(victim.name):
                return self._lost(f"{why}; {victim.path!r} now holds a file we did not create")
            self.syscalls.unlink(victim.at, victim.name)
        self.syscalls.rename_noreplace(victim.at, self.temp, victim.at, victim.name)
        return None

    def _failed(self, why: str) -> OpResult:
        """A call of the rollback itself failed."""
        if self.made:  # the copy is in place; only our extra link is left over
            message = (f"ROLLBACK FAILED: {why}; {self.victim.path!r} is in place, and "
                       f"{self.temp_path!r} is a link we made: --resume removes it")  # fmt: skip
            return self.ledger.end(self.index, self.op, Outcome.ROLLBACK_FAILED, message)
        return self._lost(why)

    def _lost(self, why: str) -> OpResult:
        """The copy cannot go back to its name: it waits under the temporary one."""
        return self.ledger.rollback_failed(
            self.index, self.op, why, original_at=self.temp_path, belongs_at=self.victim.path
        )

    def _ours(self, name: str) -> bool:
        """Whether `name` holds nothing, or what the operation creates: removing it loses
        nothing, since the copy's bytes go back in."""
        st = lstat_at(self.victim.at, name)
        if st is None:
            return True
        action, at, keep_path = self.op.action, self.victim.at, self.keep.path
        if is_our_link(action, at, name, st, (self.op.keep.dev, self.op.keep.ino), keep_path):
            return True
        if action is not Action.HARDLINK:
            return False
        # A hard link names whatever the kept path named when it was made: swapped for another
        # file just before, our link names that file, which keeps the kept path's name when
        # this one goes.
        now = lstat_at(self.keep.at, self.keep.name)
        return now is not None and is_our_link(
            action, at, name, st, (now.st_dev, now.st_ino), keep_path
        )
