"""The `dedup apply` command: read a report, plan, then print, script or act; and `--resume`.

A thin layer over `plan`, `planfmt`, `apply` and `journal`, like `cli` over the engine.  Every
option is checked and the report read before the first file is touched.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Annotated

import typer

from dedup_engine import __version__
from dedup_engine.act import OpResult, Outcome
from dedup_engine.apply import ApplySummary, ProgressCallback, apply_plan
from dedup_engine.cli_common import (
    EXIT_FAILED,
    EXIT_ISSUES,
    EXIT_OK,
    fail_usage,
    reader_may_leave,
)
from dedup_engine.journal import FileJournal, JournalError, default_path, resume
from dedup_engine.plan import Action, Keep, Policy, make_plan, matches
from dedup_engine.planfmt import write_json, write_script, write_text
from dedup_engine.report import Report, ReportError, human_size, printable, read_json

EXIT_INTERRUPTED = 130  # as a shell reports a command stopped by Ctrl-C

APPLY_EXIT_HELP = (
    "Exit codes: 0 every planned operation done (or printed); 1 some were skipped or failed, "
    "and were rolled back; 2 usage error (nothing was touched); 4 a rollback failed: a file is "
    "under a temporary name, named on stderr; 130 interrupted (Ctrl-C, SIGTERM) between "
    "operations, nothing half done."
)


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
        Path | None,
        typer.Option("--to", help="For move: the directory; paths below their root are kept."),
    ] = None,
    keep: Annotated[Keep, typer.Option(help="Which copy is kept.")] = Keep.FIRST_ROOT,
    keep_path: Annotated[
        list[str] | None,
        typer.Option(help="Keep the copy matching GLOB first (path if it has a '/', else name)."),
    ] = None,
    protect: Annotated[
        list[str] | None,
        typer.Option(help="Never touch files matching GLOB (they may be the kept copy)."),
    ] = None,
    min_copies: Annotated[int, typer.Option(help="Copies (distinct files) to keep.")] = 1,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", "-n", help="Print the operations; change nothing.")
    ] = False,
    output_format: Annotated[
        str, typer.Option("--format", "-f", help="text or json (dry run and results).")
    ] = "text",
    script: Annotated[
        Path | None,
        typer.Option(help="Write a reviewable sh script of the operations instead of acting."),
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
        typer.Option("--resume", help="Complete or roll back the interrupted run of JOURNAL."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only problems on stderr.")] = False,
    progress: Annotated[
        bool | None,
        typer.Option(
            "--progress/--no-progress", help="Progress on stderr (default: when it is a terminal)."
        ),
    ] = None,
) -> None:
    """Act on the duplicates of a report: delete, link or move all but the kept copies."""
    if output_format not in ("text", "json"):
        fail_usage(f"--format {output_format!r}: text or json")
    if resume_journal is not None:
        if report is not None or action is not None:
            fail_usage("--resume takes only the journal")
        if dry_run or script is not None:
            fail_usage("--resume acts on the disk; it takes no --dry-run or --script")
        raise typer.Exit(_resume(str(resume_journal), quiet))
    if report is None:
        fail_usage("missing REPORT (a JSON report, or '-' for stdin)")
    if action is None:
        fail_usage("missing --action (delete, hardlink, symlink, reflink, move)")
    if dry_run and script is not None:
        fail_usage("--dry-run and --script both change nothing: give one")
    move_to = _move_target(to) if to is not None else None
    try:
        policy = Policy(
            action, keep, tuple(keep_path or ()), tuple(protect or ()), min_copies, move_to
        )
    except ValueError as exc:
        fail_usage(str(exc))
    source = _read_report(report)
    _warn_unmatched(source, policy)
    plan = make_plan(source.groups, source.roots, policy)

    if dry_run:
        with reader_may_leave():
            if output_format == "json":
                text = io.TextIOWrapper(sys.stdout.buffer, encoding="ascii", newline="\n")
                write_json(plan, action, text)
                text.flush()
                text.detach()
            else:
                write_text(plan, sys.stdout.buffer)
            sys.stdout.buffer.flush()
        raise typer.Exit(EXIT_OK)
    if script is not None:
        try:
            with script.open("wb") as out:
                write_script(plan, action, report, out)
        except OSError as exc:
            fail_usage(f"--script {str(script)!r}: {exc.strerror}")
        script.chmod(0o755)
        if not quiet:
            typer.echo(f"{len(plan.operations)} operations written to {script}", err=True)
        raise typer.Exit(EXIT_OK)

    path = str(journal_path) if journal_path is not None else default_path()
    header = {
        "tool": "dedup-engine",
        "version": __version__,
        "pid": os.getpid(),
        "report": report,
        "action": action.value,
        "operations": len(plan.operations),
    }
    try:
        journal = FileJournal(path, header)
    except JournalError as exc:
        fail_usage(str(exc))
    if not quiet:
        typer.echo(f"journal: {path}", err=True)
    show_progress = (not quiet) and (sys.stderr.isatty() if progress is None else progress)
    try:
        with _progress(show_progress, len(plan.operations)) as callback, _deferred() as stop:
            summary = apply_plan(
                plan, verify=not no_verify, journal=journal, progress=callback, should_stop=stop
            )
    except JournalError as exc:
        typer.echo(f"dedup: error: {exc}; stopped. Settle the run with --resume {path}", err=True)
        raise typer.Exit(EXIT_FAILED) from None
    finally:
        journal.close()
    _print_results(summary, action, output_format, quiet)
    if summary.interrupted:
        left = len(plan.operations) - len(summary.results)
        typer.echo(
            f"dedup: interrupted: stopped between operations, {left} not started; nothing is "
            "half done. Run find and apply again to finish.",
            err=True,
        )
        raise typer.Exit(EXIT_INTERRUPTED)
    if summary.count(Outcome.ROLLBACK_FAILED):
        typer.echo(f"dedup: once the cause is fixed: dedup apply --resume {path}", err=True)
        raise typer.Exit(EXIT_FAILED)
    raise typer.Exit(EXIT_OK if summary.clean else EXIT_ISSUES)


@contextlib.contextmanager
def _deferred() -> Iterator[Callable[[], bool]]:
    """Ctrl-C, SIGTERM and SIGHUP stop the run between operations, never in the middle of one
    (which would leave a file under its temporary name until --resume)."""
    caught: list[int] = []
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    old = {number: signal.getsignal(number) for number in signals}
    for number in signals:
        signal.signal(number, lambda received, frame: caught.append(received))
    try:
        yield lambda: bool(caught)
    finally:
        for number, handler in old.items():
            signal.signal(number, handler)


def _warn_unmatched(source: Report, policy: Policy) -> None:
    # A --protect that matches nothing is most likely a typo, and then protects nothing.
    paths = [f.path for g in source.groups for f in g.files]
    for option, patterns in (("--protect", policy.protect), ("--keep-path", policy.keep_paths)):
        for pattern in patterns:
            if not any(matches(path, (pattern,)) for path in paths):
                typer.echo(
                    f"dedup: warning: {option} {pattern!r} matches no file of the report "
                    "(a pattern with '/' matches whole absolute paths: a directory needs 'DIR/*')",
                    err=True,
                )


@contextlib.contextmanager
def _progress(enabled: bool, total: int) -> Iterator[ProgressCallback | None]:
    if not enabled or total == 0:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    bar = Progress("apply", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True)
    task = bar.add_task("apply", total=total)
    with bar:
        yield lambda done, _: bar.update(task, completed=done)


def _move_target(to: Path) -> str:
    if to.exists() and not to.is_dir():
        fail_usage(f"--to {str(to)!r} is not a directory")
    return os.path.realpath(to)


def _read_report(name: str) -> Report:
    try:
        if name == "-":
            return read_json(sys.stdin)
        with open(name, encoding="ascii", errors="strict") as source:
            return read_json(source)
    except (OSError, UnicodeDecodeError) as exc:
        fail_usage(f"cannot read report {name!r}: {exc}")
    except ReportError as exc:
        fail_usage(f"{name}: {exc}")


def _print_results(summary: ApplySummary, action: Action, form: str, quiet: bool) -> None:
    done = summary.count(Outcome.DONE)
    skipped = summary.count(Outcome.SKIPPED)
    failed = summary.count(Outcome.FAILED)
    broken = summary.count(Outcome.ROLLBACK_FAILED)
    if form == "json":
        with reader_may_leave():
            _write_json_results(summary, action, sys.stdout)
    for result in summary.results:
        if result.outcome is Outcome.ROLLBACK_FAILED:
            typer.echo(f"dedup: {printable(result.message)}", err=True)
        elif result.outcome is not Outcome.DONE and not (quiet and form == "json"):
            typer.echo(f"{result.outcome.value}: {_describe(result)}", err=True)
    line = (
        f"{action.value}: {done} done, {skipped} skipped, {failed} failed"
        + (f", {broken} ROLLBACK FAILED" if broken else "")
        + f"; {human_size(summary.reclaimed)} reclaimed (measured by {summary.measured_by})"
        + (f"; {len(summary.left_alone)} groups left alone" if summary.left_alone else "")
    )
    if form == "text":
        with reader_may_leave():
            print(line)
    elif not quiet:
        typer.echo(line, err=True)


def _describe(result: OpResult) -> str:
    return f"{printable(result.op.victim.path)}: {printable(result.message)}"


def _write_json_results(summary: ApplySummary, action: Action, out: IO[str]) -> None:
    data = {
        "schema": 1,
        "tool": "dedup-engine",
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


def _resume(path: str, quiet: bool) -> int:
    try:
        settled = resume(path)
    except JournalError as exc:
        fail_usage(str(exc))
    broken = 0
    for item in settled:
        if item.outcome is Outcome.ROLLBACK_FAILED:
            broken += 1
            typer.echo(f"dedup: NEEDS YOU: {printable(item.message)}", err=True)
        elif not quiet:
            word = "completed" if item.outcome is Outcome.DONE else "rolled back"
            typer.echo(f"{word}: {printable(item.message)}", err=True)
    print(f"resume: {len(settled)} interrupted operations settled, {broken} need you")
    return EXIT_FAILED if broken else EXIT_OK
