"""The `dedup apply` command: read a report, plan, then print, script or act; and `--resume`.

A thin layer over `apply.plan`, `apply.preview`, `apply.runner` and `apply.resume`.  Every
option is checked and the report read before the first file is touched; each way of running
ends in an `ApplyStatus`, which the command exits with.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated

import typer

from dedup_engine.apply.plan import (
    Action,
    Keep,
    LeftAlone,
    LeftAloneKind,
    Plan,
    Policy,
    make_plan,
)
from dedup_engine.cli.common import (
    OutputError,
    ProgressOption,
    fail_usage,
    heeded_stop_signals,
    output_to,
    print_error,
    progress_shown,
    reader_may_leave,
    stdout_usable,
)
from dedup_engine.cli.exitcode import ApplyStatus, ExitCode
from dedup_engine.globs import Globs
from dedup_engine.oserror import describe_error
from dedup_engine.paths import RootIndex
from dedup_engine.report.display import human_size, printable
from dedup_engine.report.read import Report, ReportError, absolute, read_json
from dedup_engine.report.schema import TOOL
from dedup_engine.version import __version__

# What only acting or previewing needs loads when a run acts or previews (in the functions
# below), so that every other command, `dedup find` above all, starts without it.
if TYPE_CHECKING:
    from dedup_engine.apply.journal import JournalError
    from dedup_engine.apply.outcome import OpResult
    from dedup_engine.apply.resume import Resumed
    from dedup_engine.apply.runner import ApplySummary, ProgressCallback


def apply(
    report: Annotated[
        str | None,
        typer.Argument(help="A JSON report of `dedup find --format json`; '-' reads stdin."),
    ] = None,
    action: Annotated[
        Action | None,
        typer.Option(help="delete, hardlink, symlink, reflink or move (with --to)."),
    ] = None,
    to: Annotated[
        str | None,
        typer.Option(
            "--to",
            help="For move: the directory (no symlink on its way); paths below their root are "
            "kept.",
        ),
    ] = None,
    keep: Annotated[Keep, typer.Option(help="Which copy is kept.")] = Keep.FIRST_ROOT,
    keep_path: Annotated[
        list[str] | None,
        typer.Option(
            help="Keep the copy matching GLOB first: a name, or with a '/' a path (below its "
            "root, or absolute)."
        ),
    ] = None,
    protect: Annotated[
        list[str] | None,
        typer.Option(
            help="Never touch files matching GLOB, as --keep-path (they may be the kept copy)."
        ),
    ] = None,
    min_copies: Annotated[int, typer.Option(help="Copies (distinct files) to keep.")] = 1,
    across_owners: Annotated[
        bool,
        typer.Option(
            "--across-owners",
            help="RISKY: also act among copies of different owner, group or mode. A hard link "
            "or symlink then gives a path the kept file's owner and mode (another user may "
            "then write what was yours), and a delete or move may leave a user only a copy "
            "they cannot read. Default: only among files that share all three.",
        ),
    ] = False,
    trust_sampled: Annotated[
        bool,
        typer.Option(
            "--trust-sampled",
            help="Also act on groups dedup find --sample found on sampled windows only; each "
            "file's bytes are compared first all the same (even with --no-verify).",
        ),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", "-n", help="Print the operations; change nothing.")
    ] = False,
    output_format: Annotated[
        str, typer.Option("--format", "-f", help="text or json (dry run and results).")
    ] = "text",
    script: Annotated[
        Path | None,
        typer.Option(
            help="Write a reviewable sh script of the operations instead of acting (a new file, "
            "mode 700)."
        ),
    ] = None,
    no_verify: Annotated[
        bool,
        typer.Option(
            "--no-verify",
            help="RISKY: do not compare the bytes before each operation (identity and "
            "timestamps are still checked; a change that keeps them is not seen).",
        ),
    ] = False,
    journal_path: Annotated[
        Path | None,
        typer.Option("--journal", help="Journal file (default: in the user's state directory)."),
    ] = None,
    resume_journal: Annotated[
        Path | None,
        typer.Option(
            "--resume",
            help="Finish the interrupted run of JOURNAL: settle what was under way, then carry "
            "out the rest of its plan, with every check.",
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only problems on stderr.")] = False,
    progress: ProgressOption = None,
) -> None:
    """Act on the duplicates of a report: delete, link or move all but the kept copies."""
    if output_format not in ("text", "json"):
        fail_usage(f"--format {output_format!r}: text or json")
    if resume_journal is not None:
        _check_resume_alone(report, action, dry_run, script)
        if no_verify or trust_sampled:
            fail_usage(
                "--resume finishes the run as it was asked: its checks come from the journal, "
                "not from --no-verify or --trust-sampled"
            )
        status = _resume(str(resume_journal), output_format, quiet)
    else:
        report, action = _check_request(report, action, dry_run, script)
        policy = _policy(
            action, keep, keep_path, protect, min_copies, to, across_owners, trust_sampled
        )
        data, plan = _read_and_plan(report, policy)
        if dry_run:
            status = _dry_run(plan, action, output_format)
        elif script is not None:
            status = _script(script, plan, action, report, quiet)
        else:
            run = _Run(report, data, policy, not no_verify, output_format, quiet, progress)
            status = _act(plan, run, journal_path)
    raise typer.Exit(status.exit_code)


@dataclass(frozen=True, slots=True)
class _Run:
    """A run that acts on the disk: what it acts for, and what it says on the way."""

    report: str  # as given: the journal names it
    data: bytes  # the report's bytes: the journal keeps their digest
    policy: Policy
    verify: bool
    form: str
    quiet: bool
    progress: bool | None  # None: when stderr is a terminal


def _check_resume_alone(
    report: str | None, action: Action | None, dry_run: bool, script: Path | None
) -> None:
    if report is not None or action is not None:
        fail_usage("--resume takes only the journal")
    if dry_run or script is not None:
        fail_usage("--resume acts on the disk; it takes no --dry-run or --script")


def _check_request(
    report: str | None, action: Action | None, dry_run: bool, script: Path | None
) -> tuple[str, Action]:
    """The report and the action, both required; at most one way of changing nothing."""
    if report is None:
        fail_usage("missing REPORT (a JSON report, or '-' for stdin)")
    if action is None:
        fail_usage("missing --action (delete, hardlink, symlink, reflink, move)")
    if dry_run and script is not None:
        fail_usage("--dry-run and --script both change nothing: give one")
    return report, action


def _policy(
    action: Action,
    keep: Keep,
    keep_path: list[str] | None,
    protect: list[str] | None,
    min_copies: int,
    to: str | None,
    across_owners: bool,
    trust_sampled: bool,
) -> Policy:
    move_to = _move_target(to) if to is not None else None
    try:
        return Policy(
            action,
            keep,
            tuple(keep_path or ()),
            tuple(protect or ()),
            min_copies,
            move_to,
            across_owners,
            trust_sampled,
        )
    except ValueError as exc:
        fail_usage(str(exc))


def _read_and_plan(report: str, policy: Policy) -> tuple[bytes, Plan]:
    """The report's bytes, and the plan for its groups."""
    data, source = _read_report(report)
    _warn_unmatched(source, policy)
    return data, make_plan(source.groups, source.roots, policy, source.reference_roots)


def _dry_run(plan: Plan, action: Action, form: str) -> ApplyStatus:
    from dedup_engine.apply.preview import write_json, write_text

    try:
        with reader_may_leave(), output_to(None, "the dry run") as out:
            if form == "json":
                _as_text(out, lambda text: write_json(plan, action, text))
            else:
                write_text(plan, out)
    except OutputError as exc:
        print_error(str(exc))
        return ApplyStatus(unwritten=True)
    return ApplyStatus()


def _script(script: Path, plan: Plan, action: Action, report: str, quiet: bool) -> ApplyStatus:
    if not _write_script(str(script), plan, action, report):
        return ApplyStatus(unwritten=True)
    if not quiet:
        typer.echo(f"{len(plan.operations)} operations written to {script}", err=True)
    return ApplyStatus()


def _act(plan: Plan, run: _Run, journal_path: Path | None) -> ApplyStatus:
    """Carry out the plan, journaled, then print the results."""
    from dedup_engine.apply.journal import JournalError, default_path
    from dedup_engine.apply.resume import open_journal
    from dedup_engine.apply.runner import apply_plan

    if not stdout_usable():
        print_error("cannot write the results: stdout is closed; nothing was touched")
        return ApplyStatus(unwritten=True)
    path = str(journal_path) if journal_path is not None else default_path()
    header = {"tool": TOOL, "version": __version__, "pid": os.getpid()}
    try:
        journal = open_journal(
            path,
            run.data,
            run.report,
            run.policy,
            verify=run.verify,
            operations=len(plan.operations),
            extra=header,
        )
    except JournalError as exc:
        fail_usage(str(exc))
    if not run.quiet:
        typer.echo(f"journal: {path}", err=True)
    show_progress = progress_shown(run.progress, run.quiet)
    try:
        with _progress(show_progress, len(plan.operations)) as callback, _deferred() as stop:
            summary = apply_plan(
                plan, verify=run.verify, journal=journal, progress=callback, should_stop=stop
            )
    except JournalError as exc:
        _print_stopped(exc, path)
        return ApplyStatus(needs_you=True)
    finally:
        journal.close()
    return _finish(summary, len(plan.operations), run.policy.action, run.form, run.quiet, path)


def _print_stopped(exc: JournalError, journal: str) -> None:
    print_error(f"{exc}; stopped. Finish the run with --resume {journal}")


def _finish(
    summary: ApplySummary, total: int, action: Action, form: str, quiet: bool, journal: str
) -> ApplyStatus:
    """Print the run's results and what to do next; what the run came to."""
    from dedup_engine.apply.outcome import Outcome

    written = _print_results(summary, action, form, quiet)
    status = ApplyStatus(
        needs_you=summary.count(Outcome.ROLLBACK_FAILED) > 0,
        interrupted=summary.interrupted,
        unwritten=not written,
        incomplete=not summary.clean,
    )
    code = status.exit_code
    if code is ExitCode.FAILED:
        # A rollback failed: a file waits under a temporary name.
        typer.echo(f"dedup: once the cause is fixed: dedup apply --resume {journal}", err=True)
    elif code is ExitCode.INTERRUPTED:
        left = total - len(summary.results)
        typer.echo(
            f"dedup: interrupted: stopped between operations, {left} not started; nothing is "
            f"half done. Finish with: dedup apply --resume {journal}",
            err=True,
        )
    elif code is ExitCode.OUTPUT:
        typer.echo(f"dedup: the journal holds every outcome: {journal}", err=True)
    return status


@contextlib.contextmanager
def _deferred() -> Iterator[Callable[[], bool]]:
    """Ctrl-C, SIGTERM and SIGHUP stop the run between operations, never in the middle of one
    (which would leave a file under its temporary name until --resume); but one ignored when
    the run started, as under `nohup`, stays ignored (`heeded_stop_signals`)."""
    caught: list[int] = []
    old = heeded_stop_signals()
    for number in old:
        signal.signal(number, lambda received, frame: caught.append(received))
    try:
        yield lambda: bool(caught)
    finally:
        for number, handler in old.items():
            signal.signal(number, handler)


def _warn_unmatched(source: Report, policy: Policy) -> None:
    # A --protect that matches nothing is most likely a typo, and then protects nothing.
    paths = [f.path for g in source.groups for f in g.files]
    roots = RootIndex(source.roots)
    for option, patterns in (("--protect", policy.protect), ("--keep-path", policy.keep_paths)):
        for pattern in patterns:
            globs = Globs((pattern,))  # compiled once, not once per path
            if not any(globs.match_file(path, roots) for path in paths):
                hint = (
                    "a pattern with '/' matches the path below its root, or the absolute "
                    "path: the files below a directory need 'DIR/*'"
                    if "/" in pattern
                    else "a pattern without '/' matches a file's name"
                )
                typer.echo(
                    f"dedup: warning: {option} {pattern!r} matches no file of the report ({hint})",
                    err=True,
                )


@contextlib.contextmanager
def _progress(enabled: bool, total: int) -> Iterator[ProgressCallback | None]:
    if not enabled or total == 0:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    # On stderr, as `--progress` says, where it never mixes with the results on stdout.
    bar = Progress(
        "apply",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=True,
        console=Console(stderr=True),
    )
    task = bar.add_task("apply", total=total)
    bar.start()
    try:
        yield lambda done, _: bar.update(task, completed=done)
    finally:
        # A terminal gone (EIO: hung up, the run going on under nohup) leaves the bar nowhere
        # to be cleared from; the run is not failed for it (its results say how it went).
        with contextlib.suppress(OSError):
            bar.stop()


def _move_target(to: str) -> str:
    """--to as an absolute path, its symlinks not resolved: a symlink on the way (one planted
    by another user in a shared directory) is refused here and again when acting."""
    if not to:
        fail_usage("--to is empty (an unset variable?): give the directory")
    path = absolute(to)
    probe = path
    while True:
        if os.path.islink(probe):
            fail_usage(f"--to {to!r}: {probe!r} is a symlink; give a path without symlinks")
        if probe == os.path.dirname(probe):
            break
        probe = os.path.dirname(probe)
    if os.path.lexists(path) and not os.path.isdir(path):
        fail_usage(f"--to {to!r} is not a directory")
    return path


def _write_script(path: str, plan: Plan, action: Action, report: str) -> bool:
    """A new file, never through a symlink nor over an existing file (someone else's could
    be changed between the review and `sh FILE`), readable by its owner only (it lists every
    path of the plan).  False if it could not be written (said on stderr; no file is left)."""
    from dedup_engine.apply.preview import write_script

    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o700)
    except FileExistsError:
        fail_usage(f"--script {path!r} exists: give a new file name")
    except OSError as exc:
        fail_usage(f"--script {path!r}: {describe_error(exc)}")
    try:
        with os.fdopen(fd, "wb") as out:
            write_script(plan, action, report, out)
            os.fchmod(out.fileno(), 0o700)  # the umask may have taken the owner's x bit
    except OSError as exc:
        os.unlink(path)
        print_error(f"cannot write the script {path!r}: {describe_error(exc)}")
        return False
    return True


def _read_report(name: str) -> tuple[bytes, Report]:
    """The report's bytes (the journal keeps their digest) and the report they hold, checked;
    read the same way from a file as from stdin."""
    try:
        if name == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(name, "rb") as source:
                data = source.read()
    except OSError as exc:
        fail_usage(f"cannot read report {name!r}: {describe_error(exc)}")
    try:
        return data, read_json(data)
    except ReportError as exc:
        fail_usage(f"report {name!r}: {exc}")


def _print_results(summary: ApplySummary, action: Action, form: str, quiet: bool) -> bool:
    """Problems on stderr, the results on stdout; False if stdout could not be written."""
    from dedup_engine.apply.outcome import Outcome

    _print_problems(summary, form, quiet)
    counts = ", ".join(
        f"{summary.count(o)} {word}"
        for o, word in (
            (Outcome.DONE, "done"),
            (Outcome.KEPT, "kept instead (EMLINK)"),
            (Outcome.SKIPPED, "skipped"),
            (Outcome.FAILED, "failed"),
            (Outcome.ROLLBACK_FAILED, "ROLLBACK FAILED"),
        )
        if summary.count(o) or o in (Outcome.DONE, Outcome.SKIPPED, Outcome.FAILED)
    )
    line = (
        f"{action.value}: {counts}"
        + f"; {human_size(summary.reclaimed)} reclaimed (measured by {summary.measured_by})"
        + (f"; {_groups(summary.left_alone)} groups left alone" if summary.left_alone else "")
    )
    try:
        with reader_may_leave(), output_to(None, "the results") as out:
            if form == "json":
                _as_text(out, lambda text: _write_json_results(summary, action, text))
            else:
                out.write(f"{line}\n".encode())
    except OutputError as exc:
        print_error(str(exc))
        return False
    if form == "json" and not quiet:
        typer.echo(line, err=True)
    return True


def _as_text(out: IO[bytes], write: Callable[[IO[str]], None]) -> None:
    """Write JSON text (pure ASCII: odd names travel as escapes) to a byte stream."""
    text = io.TextIOWrapper(out, encoding="ascii", newline="\n")
    write(text)
    text.flush()
    text.detach()


def _print_problems(summary: ApplySummary, form: str, quiet: bool) -> None:
    from dedup_engine.apply.outcome import Outcome

    for notice in summary.notices:
        if not quiet:
            typer.echo(f"dedup: note: {notice}", err=True)
    general: dict[tuple[Outcome, str], int] = {}
    for result in summary.results:
        if result.outcome is Outcome.ROLLBACK_FAILED:
            typer.echo(f"dedup: {result.message}", err=True)
        elif result.general:
            key = (result.outcome, result.message)
            general[key] = general.get(key, 0) + 1
        elif result.outcome is not Outcome.DONE and not (quiet and form == "json"):
            typer.echo(f"{result.outcome.value}: {_describe(result)}", err=True)
    for (outcome, message), count in general.items():
        typer.echo(f"{outcome.value}: {message} ({count} files)", err=True)
    if not quiet:
        for line in _left_alone(summary.left_alone):
            typer.echo(line, err=True)


_LEFT_ALONE = {
    LeftAloneKind.ONE_FILE: "all the names are one file",
    LeftAloneKind.ALL_KEPT: "every file kept by --min-copies, --protect or a reference root",
    LeftAloneKind.OWNER: "no copy of the same owner, group and mode (--across-owners acts across)",
    LeftAloneKind.MOVE_CLASH: "two files would move to one target",
    LeftAloneKind.SAMPLED: "found on sampled windows only (--trust-sampled acts on it)",
}


def _groups(skipped: tuple[LeftAlone, ...]) -> int:
    """Groups with something left alone (a group split by owner may count twice otherwise)."""
    return len({item.group for item in skipped})


def _left_alone(skipped: tuple[LeftAlone, ...]) -> list[str]:
    """One line per reason, with a count: the dry run lists each one."""
    counts: dict[LeftAloneKind, int] = {}
    for item in skipped:
        counts[item.kind] = counts.get(item.kind, 0) + 1
    return [f"left alone ({n}): {_LEFT_ALONE[kind]}" for kind, n in counts.items()]


def _describe(result: OpResult) -> str:
    # Messages name paths with repr(), escaped already: printable() would escape them twice.
    return f"{printable(result.op.victim.path)}: {result.message}"


#: The version of the results document of `dedup apply -f json` (not a report: `report.schema`).
RESULTS_SCHEMA = 1


def _write_json_results(summary: ApplySummary, action: Action, out: IO[str]) -> None:
    from dedup_engine.apply.outcome import Outcome

    data = {
        "schema": RESULTS_SCHEMA,
        "tool": TOOL,
        "action": action.value,
        "reclaimed": summary.reclaimed,
        "measured_by": summary.measured_by,
        "counts": {o.value: summary.count(o) for o in Outcome},
        "operations": [
            {
                "group": r.op.group + 1,
                "path": r.op.victim.path,
                "keep": r.op.keep.path,
                "target": r.op.target,
                "outcome": r.outcome.value,
                "message": r.message,
                "reclaimed": r.reclaimed,
            }
            for r in summary.results
        ],
        "left_alone": [{"group": s.group + 1, "reason": s.reason} for s in summary.left_alone],
    }
    json.dump(data, out, indent=1, ensure_ascii=True)
    out.write("\n")
    out.flush()


def _resume(path: str, form: str, quiet: bool) -> ApplyStatus:
    """Settle what the interrupted run left under way, then the rest of its plan."""
    from dedup_engine.apply.journal import JournalError, JournalWriteError
    from dedup_engine.apply.resume import resume

    if not stdout_usable():
        print_error("cannot write the results: stdout is closed; nothing was touched")
        return ApplyStatus(unwritten=True)
    try:
        with _deferred() as stop:
            done = resume(path, should_stop=stop)
    except JournalWriteError as exc:
        _print_stopped(exc, path)
        return ApplyStatus(needs_you=True)
    except JournalError as exc:
        fail_usage(str(exc))
    broken = _print_settled(done, quiet)
    line = f"resume: {len(done.settled)} interrupted operations settled, {broken} need you"
    if form == "text":
        try:
            with reader_may_leave(), output_to(None, "the results") as out:
                out.write(f"{line}\n".encode())
        except OutputError as exc:
            print_error(f"{exc}; the journal holds every outcome: {path}")
            return ApplyStatus(unwritten=True)
    elif not quiet:
        typer.echo(line, err=True)
    if done.summary is None or done.plan is None:
        typer.echo(f"dedup: the rest of the run cannot be carried out: {done.why_not}", err=True)
        return ApplyStatus(needs_you=broken > 0, incomplete=True)
    action = done.action or Action.DELETE
    return _finish(done.summary, len(done.plan.operations), action, form, quiet, path)


def _print_settled(done: Resumed, quiet: bool) -> int:
    from dedup_engine.apply.settle import Settlement

    broken = 0
    for item in done.settled:
        if item.settlement is Settlement.NEEDS_YOU:
            broken += 1
            typer.echo(f"dedup: NEEDS YOU: {item.message}", err=True)
        elif not quiet:
            typer.echo(f"{item.settlement.value}: {item.message}", err=True)
    return broken
