"""The exit code of every `dedup` command: the codes, and per command which fact wins.

`dedup find` and `dedup apply` gather what their run came to in a status (`FindStatus`,
`ApplyStatus`) and exit once, with its `exit_code`, where the precedence is written (as black's
`Report.return_code`); a `dedup bench` command has one fact, whether its check held
(`check_exit_code`).  Three ends need no precedence, as nothing else is known by then: a usage
error, found before a command has done anything (`common.fail_usage`); an interrupt of `dedup
find`, which stops it wherever it is (`common.interruptible`); and `--version`.  The help texts
that list the codes are here too, beside the rules they describe.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class ExitCode(IntEnum):
    """What a shell sees of a `dedup` run."""

    OK = 0
    #: Done, but not everything: files that could not be read; operations skipped or failed.
    ISSUES = 1
    #: A bad option, a missing root, an invalid report or journal (click's code for its own).
    USAGE = 2
    #: Duplicates were found and `--fail-on-duplicates` was given.
    DUPLICATES = 3
    #: The run could not finish: a worker died, a rollback failed, the journal failed.
    FAILED = 4
    #: The report (dry run, script, results) could not be written: never 0, whatever was found.
    OUTPUT = 5
    #: Interrupted (Ctrl-C, SIGTERM, SIGHUP), as a shell reports a command stopped by Ctrl-C.
    INTERRUPTED = 130


EXIT_CODES_HELP = (
    "Exit codes: 0 done; 1 done, but some files could not be read; 2 usage error; "
    "3 duplicates found with --fail-on-duplicates; 4 the run could not finish (a worker died); "
    "5 the report could not be written; 130 interrupted (Ctrl-C, SIGTERM, SIGHUP)."
)

APPLY_EXIT_HELP = (
    "Exit codes: 0 every planned operation done (or printed); 1 some were skipped or failed, "
    "and were rolled back; 2 usage error or an invalid report or journal (nothing was "
    "touched); 4 a rollback failed: a file is under a temporary name, named on stderr; 5 the "
    "dry run, script or results could not be written (the journal has the outcomes); 130 "
    "interrupted (Ctrl-C, SIGTERM, SIGHUP) between operations, nothing half done: --resume "
    "finishes."
)


def check_exit_code(held: bool) -> ExitCode:
    """A `dedup bench` gate or comparison: 0 when its check held (no more work, no slower
    stage, every tool agreeing), else 1."""
    return ExitCode.OK if held else ExitCode.ISSUES


@dataclass(frozen=True, slots=True)
class FindStatus:
    """What a `dedup find` run came to.  Each fact is False when it did not happen."""

    worker_died: bool = False  # the search could not finish: there is no result
    report_unwritten: bool = False
    duplicates_found: bool = False
    fail_on_duplicates: bool = False  # the option: found duplicates are a failure
    unreadable: bool = False  # some files could not be read

    @property
    def exit_code(self) -> ExitCode:
        """4 wins over all; 5 over 3 and 1 (without the report, neither can be acted on); 3 over
        1."""
        if self.worker_died:
            return ExitCode.FAILED
        if self.report_unwritten:
            return ExitCode.OUTPUT
        if self.duplicates_found and self.fail_on_duplicates:
            return ExitCode.DUPLICATES
        if self.unreadable:
            return ExitCode.ISSUES
        return ExitCode.OK


@dataclass(frozen=True, slots=True)
class ApplyStatus:
    """What a `dedup apply` run (or its `--resume`) came to.  Each fact is False when it did not
    happen; the closing hint on stderr follows the same precedence."""

    # A file waits for a person before --resume can finish the run: a rollback failed (the file
    # is under a temporary name), an interrupted operation could not be settled, or the journal
    # could not be written.
    needs_you: bool = False
    interrupted: bool = False  # stopped between operations; --resume finishes
    unwritten: bool = False  # the dry run, the script or the results could not be written
    incomplete: bool = False  # some operations were skipped or failed (and rolled back)

    @property
    def exit_code(self) -> ExitCode:
        """4 wins over all; 130 over 5 and 1 (--resume is the next step); 5 over 1."""
        if self.needs_you:
            return ExitCode.FAILED
        if self.interrupted:
            return ExitCode.INTERRUPTED
        if self.unwritten:
            return ExitCode.OUTPUT
        if self.incomplete:
            return ExitCode.ISSUES
        return ExitCode.OK
