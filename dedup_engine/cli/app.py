"""The `dedup` command line: parse options, call the library, print; nothing else.

Exit codes: 0 done; 1 done, but some files could not be read; 2 usage error (bad option, missing
root); 3 duplicates were found and `--fail-on-duplicates` was given (it wins over 1); 4 the run
could not finish (a worker died); 5 the report could not be written (it wins over 1 and 3); 130
interrupted (Ctrl-C, SIGTERM, SIGHUP).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import IO, Annotated, Any, ParamSpec

import typer

from dedup_engine import __version__
from dedup_engine.cli.common import (
    EXIT_DUPLICATES,
    EXIT_FAILED,
    EXIT_ISSUES,
    OutputError,
    fail_output,
    fail_usage,
    output_to,
    parse_size,
    reader_may_leave,
    stdout_usable,
)
from dedup_engine.find.pipeline import Progress, ProgressCallback, find_duplicates
from dedup_engine.find.pool import STOP_SIGNALS, WorkerError
from dedup_engine.model import FindResult
from dedup_engine.options import OptionsError, ScanOptions
from dedup_engine.report.display import human_size
from dedup_engine.report.formats import WRITERS, Format

#: Interrupted (Ctrl-C, SIGTERM, SIGHUP), as a shell reports a command stopped by Ctrl-C.
EXIT_INTERRUPTED = 130
P = ParamSpec("P")

EXIT_CODES_HELP = (
    "Exit codes: 0 done; 1 done, but some files could not be read; 2 usage error; "
    "3 duplicates found with --fail-on-duplicates; 4 the run could not finish (a worker died); "
    "5 the report could not be written; 130 interrupted (Ctrl-C, SIGTERM, SIGHUP)."
)

app = typer.Typer(
    name="dedup",
    help="Find duplicate files fast; act on them safely.",
    epilog=EXIT_CODES_HELP,
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        print(f"dedup-engine {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Find duplicate files fast; act on them safely."""


def _interruptible(command: Callable[P, None]) -> Callable[P, None]:
    """Ctrl-C, SIGTERM and SIGHUP stop the command: one line on stderr, exit 130, no traceback.

    The worker processes ignore Ctrl-C (the terminal sends it to the whole process group) and
    are killed by the search on its way out (`find_duplicates`).  A second signal while stopping
    is ignored, so that the stop is never cut short; the command is about to exit anyway.
    """

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        stopping: list[int] = []

        def stop(number: int, frame: FrameType | None) -> None:
            if not stopping:
                stopping.append(number)
                raise KeyboardInterrupt

        # Handlers can be set only from the main thread (elsewhere: a caller's test harness).  A
        # signal ignored when the command started stays ignored: `nohup`, a background job.
        main = threading.current_thread() is threading.main_thread()
        old = {number: signal.getsignal(number) for number in STOP_SIGNALS} if main else {}
        old = {number: handler for number, handler in old.items() if handler != signal.SIG_IGN}
        for number in old:
            signal.signal(number, stop)
        try:
            command(*args, **kwargs)
        except KeyboardInterrupt:
            typer.echo("dedup: interrupted", err=True)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        finally:
            if not stopping:
                for number, handler in old.items():
                    signal.signal(number, handler)

    return run


@app.command(epilog=EXIT_CODES_HELP)
@_interruptible
def find(
    roots: Annotated[list[str], typer.Argument(help="Directories or files to search.")],
    output_format: Annotated[
        Format, typer.Option("--format", "-f", help="text (for people), fdupes, json or csv.")
    ] = Format.TEXT,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the report here, not stdout.")
    ] = None,
    null: Annotated[
        bool,
        typer.Option(
            "--null", "-0", help="fdupes format: a NUL after each path and after each group."
        ),
    ] = False,
    follow_links: Annotated[
        bool, typer.Option("--follow-links", "-L", help="Follow symlinks (loops are detected).")
    ] = False,
    one_file_system: Annotated[
        bool, typer.Option("--one-file-system", "-x", help="Stay on each root's filesystem.")
    ] = False,
    max_depth: Annotated[
        int | None,
        typer.Option(help="Descend at most this many directories below a root (0: root only)."),
    ] = None,
    include: Annotated[
        list[str] | None,
        typer.Option(
            help="Only files matching GLOB (name; or path below the root if it has a '/'). "
            "Repeatable."
        ),
    ] = None,
    exclude: Annotated[
        list[str] | None,
        typer.Option(help="Skip files and directories matching GLOB. Repeatable."),
    ] = None,
    hidden: Annotated[
        bool,
        typer.Option(
            "--hidden/--no-hidden",
            help="Include names starting with '.' (default, as jdupes/fdupes/rdfind do).",
        ),
    ] = True,
    min_size: Annotated[
        str, typer.Option(help="Ignore files smaller than this (4096, 64K, 1M...).")
    ] = "1",
    max_size: Annotated[str | None, typer.Option(help="Ignore files larger than this.")] = None,
    empty: Annotated[bool, typer.Option("--empty", help="Report empty files as duplicates.")] = (
        False
    ),
    hard_links: Annotated[
        bool,
        typer.Option("--hard-links", help="Report hard links of one file as duplicates too."),
    ] = False,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers", "-j", help="Worker processes (default: usable CPUs; 0: in process)."
        ),
    ] = None,
    progress: Annotated[
        bool | None,
        typer.Option(
            "--progress/--no-progress", help="Progress on stderr (default: when it is a terminal)."
        ),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Nothing on stderr but errors.")
    ] = False,
    show_stats: Annotated[
        bool, typer.Option("--stats", help="A per-stage table of the work done, on stderr.")
    ] = False,
    fail_on_duplicates: Annotated[
        bool, typer.Option("--fail-on-duplicates", help="Exit 3 if any group is found.")
    ] = False,
    partial_stages: Annotated[
        str,
        typer.Option(
            help="Partial-hash stages to run, comma-separated (head,tail); for benchmarking.",
            hidden=True,
        ),
    ] = "head,tail",
    chunk_size: Annotated[
        str, typer.Option(help="Read chunk of the full hash.", hidden=True)
    ] = "128K",
    head_window: Annotated[str, typer.Option(hidden=True)] = "4K",
    tail_window: Annotated[str, typer.Option(hidden=True)] = "4K",
    whole_threshold: Annotated[str, typer.Option(hidden=True)] = "16K",
    tail_min_size: Annotated[str, typer.Option(hidden=True)] = "64K",
) -> None:
    """Find groups of files with identical content (read-only)."""
    try:
        options = ScanOptions(
            follow_links=follow_links,
            one_file_system=one_file_system,
            max_depth=max_depth,
            include=tuple(include or ()),
            exclude=tuple(exclude or ()),
            hidden=hidden,
            min_size=parse_size(min_size),
            max_size=parse_size(max_size) if max_size is not None else None,
            empty=empty,
            hard_links=hard_links,
            workers=workers,
            head_window=parse_size(head_window),
            tail_window=parse_size(tail_window),
            whole_threshold=parse_size(whole_threshold),
            tail_min_size=parse_size(tail_min_size),
            chunk_size=parse_size(chunk_size),
            stages=tuple(s.strip() for s in partial_stages.split(",") if s.strip()),
        )
        if null and output_format is not Format.FDUPES:
            raise OptionsError("-0/--null is for --format fdupes only")
        _check_output(output)
        if (output is None or str(output) == "-") and not stdout_usable():
            fail_output("cannot write the report: stdout is closed")
        show_progress = (not quiet) and (sys.stderr.isatty() if progress is None else progress)
        with _progress(show_progress) as callback, _no_gc():
            result = find_duplicates(roots, options, progress=callback)
    except OptionsError as exc:
        fail_usage(str(exc))
    except WorkerError as exc:
        typer.echo(f"dedup: error: {exc}", err=True)
        raise typer.Exit(EXIT_FAILED) from None
    left_out = 0  # stays 0 if the reader leaves early
    try:
        with reader_may_leave(), output_to(None if output is None else str(output)) as out:
            left_out = _write(result, options, output_format, out, null)
    except OutputError as exc:
        fail_output(str(exc))
    if left_out:
        typer.echo(
            f"dedup: warning: {left_out} paths holding a newline are left out of the fdupes "
            "output, where they would read as other paths; -0 or -f json lists them",
            err=True,
        )
    if show_stats:
        _print_stats(result)
    if not quiet and (output_format is not Format.TEXT or output is not None):
        _print_summary(result)
    if fail_on_duplicates and result.groups:
        raise typer.Exit(EXIT_DUPLICATES)
    if result.issues:
        raise typer.Exit(EXIT_ISSUES)


@app.command(epilog=EXIT_CODES_HELP)
def synth(
    directory: Annotated[Path, typer.Argument(help="Where to write data/ and manifest.json.")],
    profile: Annotated[str, typer.Option(help="small, large or mixed.")] = "small",
    seed: Annotated[int, typer.Option(help="Same seed, same tree, byte for byte.")] = 1,
    files: Annotated[int | None, typer.Option(help="Number of files (default: profile's).")] = None,
) -> None:
    """Write a deterministic synthetic tree with a manifest of its true duplicate groups."""
    from dedup_engine.bench.synth import Profile, generate

    try:
        chosen = Profile(profile)
    except ValueError:
        fail_usage(f"unknown profile {profile!r} (small, large, mixed)")
    try:
        manifest = generate(directory, chosen, seed, files)
    except ValueError as exc:
        fail_usage(str(exc))
    typer.echo(
        f"{manifest.files} files, {human_size(manifest.bytes)}, {len(manifest.groups)} groups "
        f"holding {manifest.files_in_groups} files; manifest: {directory / 'manifest.json'}",
        err=True,
    )


def _write(
    result: FindResult, options: ScanOptions, form: Format, out: IO[bytes], null: bool
) -> int:
    """Write the report; the number of paths left out of it (fdupes without -0)."""
    return WRITERS[form](result, options, out, null=null)


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    # The search allocates hundreds of thousands of objects and no reference cycles; the cyclic
    # collector's passes over them cost ~15% of the main process's CPU.  The library leaves the
    # collector alone (it is the caller's to set); the command is its own caller.
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _check_output(path: Path | None) -> None:
    """Refuse an output we could not write before the search, not after it."""
    if path is None or str(path) == "-":
        return
    target = Path(os.path.realpath(path))  # what `output_to` writes: a symlink's target
    if target.is_dir():
        raise OptionsError(f"--output {str(path)!r} is a directory")
    parent = target.parent
    if not parent.is_dir():
        raise OptionsError(f"--output {str(path)!r}: no such directory {str(parent)!r}")
    if target.exists() and not os.access(target, os.W_OK):
        raise OptionsError(f"--output {str(path)!r} is not writable")
    if (not target.exists() or target.is_file()) and not os.access(parent, os.W_OK):
        # A regular file is replaced by a new one written beside it.
        raise OptionsError(f"--output {str(path)!r} is not writable (its directory is not)")


@contextlib.contextmanager
def _progress(enabled: bool) -> Iterator[ProgressCallback | None]:
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as RichProgress

    console = Console(stderr=True)
    bar = RichProgress(
        TextColumn("{task.description:>6}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[size]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    tasks: dict[str, Any] = {}

    def update(event: Progress) -> None:
        # Started on the first event, which comes after the workers are forked: the display's
        # refresh thread must not exist at fork time.
        if not bar.live.is_started:
            bar.start()
        name = event.stage.value
        if name not in tasks:
            tasks[name] = bar.add_task(name, total=event.total, size="")
        bar.update(
            tasks[name], completed=event.files, total=event.total, size=human_size(event.bytes)
        )
        if event.finished:
            bar.stop_task(tasks[name])  # its clock stops at the stage's own duration

    try:
        yield update
    finally:
        if bar.live.is_started:
            bar.stop()


def _print_summary(result: FindResult) -> None:
    stats = result.stats
    line = (
        f"{stats.groups} groups, {stats.files_in_groups} files in groups, "
        f"{human_size(stats.bytes_reclaimable)} reclaimable; {stats.files_scanned} files scanned "
        f"in {stats.seconds:.2f} s"
    )
    if result.issues:
        line += f"; {len(result.issues)} files could not be read"
    typer.echo(line, err=True)


def _print_stats(result: FindResult) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="dedup find: work per stage")
    for column in ("stage", "files in", "files out", "opened", "bytes read", "seconds"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for row in result.stats.stages:
        table.add_row(
            row.stage.value,
            f"{row.files_in:,}",
            f"{row.files_out:,}",
            f"{row.files_opened:,}",
            human_size(row.bytes_read),
            f"{row.seconds:.3f}",
        )
    Console(stderr=True).print(table)


def _register_commands() -> None:
    # `apply` and the bench commands live in their own modules (each a second reason to change);
    # they use this module's helpers, so they are attached once both exist.
    from dedup_engine.cli.apply import APPLY_EXIT_HELP, apply
    from dedup_engine.cli.bench import bench

    app.command(epilog=APPLY_EXIT_HELP)(apply)
    app.add_typer(bench, name="bench")


_register_commands()


def main() -> None:
    """The console script.  Usage errors exit 2 (click's code, as documented)."""
    code: int | str | None = 0
    try:
        app(prog_name="dedup")
    except SystemExit as exc:
        code = exc.code
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    # Everything is written and closed by now; skipping the interpreter's teardown (freeing
    # every object of a large run, module by module) saves a noticeable share of a short run.
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:  # None: started without it (`>&-`)
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
    os._exit(code or 0)


if __name__ == "__main__":
    main()
