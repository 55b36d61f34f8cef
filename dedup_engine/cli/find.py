"""The `dedup find` command: read the options, search, write the report, say how it went.

Its steps: the options checked (a usage error before anything is read), the search with its
progress display, the report written where asked, the notes on stderr, and the `FindStatus`
the command exits with.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Annotated, Any, BinaryIO

import typer

from dedup_engine.cli.common import (
    OutputError,
    ProgressOption,
    cache_directory,
    fail_usage,
    output_to,
    parse_size,
    print_error,
    progress_shown,
    reader_may_leave,
    stdout_usable,
)
from dedup_engine.cli.exitcode import FindStatus
from dedup_engine.find.cache import ENVIRONMENT as CACHE_ENVIRONMENT
from dedup_engine.find.filelist import ListError, read_paths
from dedup_engine.find.pipeline import Progress, ProgressCallback, find_duplicates
from dedup_engine.find.pool import WorkerError
from dedup_engine.find.tasks import TASK_KINDS
from dedup_engine.model import DuplicateGroup, FindResult
from dedup_engine.options import OptionsError, ScanOptions
from dedup_engine.oserror import describe_error
from dedup_engine.report.display import human_size
from dedup_engine.report.formats import RENDERINGS, WRITERS, Format
from dedup_engine.report.formats.blocks import Counted, Renderer
from dedup_engine.report.spool import BlockSpool, GroupSpool, SpooledResult, default_directory


@dataclass(frozen=True, slots=True)
class _Request:
    """What the command line asks of the report and of stderr, beside the search itself."""

    form: Format
    output: Path | None  # None or "-": stdout
    null: bool
    quiet: bool
    progress: bool | None  # None: when stderr is a terminal
    stats: bool
    fail_on_duplicates: bool

    @property
    def to_stdout(self) -> bool:
        return self.output is None or str(self.output) == "-"


def find(
    ctx: typer.Context,
    roots: Annotated[
        list[str] | None, typer.Argument(help="Directories or files to search.")
    ] = None,
    output_format: Annotated[
        Format, typer.Option("--format", "-f", help="text (for people), fdupes, json or csv.")
    ] = Format.TEXT,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the report here, not stdout.")
    ] = None,
    null: Annotated[
        bool,
        typer.Option(
            "--null",
            "-0",
            help="A NUL after each path: in the fdupes format (and after each group), and in"
            " the list --files-from reads.",
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
            help="Only files matching GLOB: a name, or with a '/' a path (below the root, or "
            "absolute). Repeatable."
        ),
    ] = None,
    exclude: Annotated[
        list[str] | None,
        typer.Option(
            help="Skip files and directories matching GLOB ('DIR/': directories only). Repeatable."
        ),
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
    isolate: Annotated[
        bool,
        typer.Option(
            "--isolate",
            help="Report only groups whose files lie under two roots or more (a file counts"
            " under the innermost root that holds it).",
        ),
    ] = False,
    sample: Annotated[
        int,
        typer.Option(
            "--sample",
            metavar="N",
            help="RISKY, never the default: compare files above --sample-above on N windows"
            " spread over them, not in full; their groups are marked sampled, not verified,"
            " and dedup apply leaves them alone without --trust-sampled.",
        ),
    ] = 0,
    sample_above: Annotated[
        str,
        typer.Option(
            "--sample-above",
            metavar="SIZE",
            help="With --sample: the size above which files are sampled.",
        ),
    ] = "1G",
    dirs: Annotated[
        bool,
        typer.Option(
            "--dirs",
            help="Also report duplicate directories: whole trees of the same names, types and"
            " bytes (from the file groups; no file is read again).",
        ),
    ] = False,
    reference: Annotated[
        list[str] | None,
        typer.Option(
            "--reference",
            metavar="DIR",
            help="A reference root (repeatable): searched, never acted on; a group is reported"
            " only with a file under a reference root and one outside them.",
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers", "-j", help="Worker processes (default: usable CPUs; 0: in process)."
        ),
    ] = None,
    cluster: Annotated[
        str | None,
        typer.Option(
            "--cluster",
            metavar="ADDRESS",
            help="Run on a Dask cluster: its scheduler (tcp://host:8786), or local:N for N"
            " worker processes here.  Needs: pip install 'dedup-engine[dask]'.",
        ),
    ] = None,
    root_on: Annotated[
        list[str] | None,
        typer.Option(
            "--root-on",
            metavar="WORKERS=DIR",
            help="With --cluster: search DIR, a directory that only the workers of that name,"
            " address or host hold (their own disk); files of two such are compared by"
            " digest.  Repeatable; then every root is given so.",
        ),
    ] = None,
    io_depth: Annotated[
        int | None,
        typer.Option(
            "--io-depth",
            help=(
                "Reads in flight per device, over all workers (default: the device's own: 1 "
                "in physical order on a spinning disk, 16 on SSDs, 32 on virtual disks and "
                "network filesystems)."
            ),
        ),
    ] = None,
    cache: Annotated[
        bool,
        typer.Option(
            "--cache/--no-cache",
            help=(
                "Keep the digests of what was read, and read only files that changed since "
                "(default: off, or on where DEDUP_ENGINE_CACHE=1)."
            ),
            envvar=CACHE_ENVIRONMENT,
        ),
    ] = False,
    files_from: Annotated[
        list[str] | None,
        typer.Option(
            "--files-from",
            help="Also search the paths listed in FILE (- for stdin), one a line or, with -0,"
            " each followed by a NUL: each is a root.  Repeatable: each list in turn.",
        ),
    ] = None,
    cache_dir: Annotated[
        str | None,
        typer.Option(
            "--cache-dir",
            help="Where the cache lives (implies --cache; default: $XDG_CACHE_HOME/dedup-engine).",
        ),
    ] = None,
    progress: ProgressOption = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Nothing on stderr but errors.")
    ] = False,
    show_stats: Annotated[
        bool,
        typer.Option(
            "--stats",
            help="A per-stage table of the work done, and the CPU time of this process and its"
            " workers, on stderr.",
        ),
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
            isolate=isolate,
            reference=tuple(reference or ()),
            dirs=dirs,
            sample=sample,
            sample_above=parse_size(sample_above),
            workers=workers,
            cluster=cluster,
            root_on=tuple(_root_on(given) for given in root_on or ()),
            io_depth=io_depth,
            head_window=parse_size(head_window),
            tail_window=parse_size(tail_window),
            whole_threshold=parse_size(whole_threshold),
            tail_min_size=parse_size(tail_min_size),
            chunk_size=parse_size(chunk_size),
            stages=tuple(s.strip() for s in partial_stages.split(",") if s.strip()),
            cache_dir=_cache_dir(cache, cache_dir, ctx),
        )
        if null and output_format is not Format.FDUPES and not files_from:
            raise OptionsError("-0/--null is for --format fdupes or --files-from")
        if sample and output_format is Format.FDUPES:
            raise OptionsError(
                "--sample with --format fdupes: fdupes' format cannot mark a group as sampled;"
                " use text, csv or json"
            )
        if root_on and output_format is Format.FDUPES:
            raise OptionsError(
                "--root-on with --format fdupes: fdupes' format cannot say that a group across"
                " hosts was verified by digest, not byte by byte; use text, csv or json"
            )
        _check_output(output)
        if cluster is not None:
            _quiet_dask()
        searched = itertools.chain(
            roots or (), *(_listed(source, null) for source in files_from or ())
        )
    except OptionsError as exc:
        fail_usage(str(exc))
    fdupes_null = null and output_format is Format.FDUPES
    request = _Request(
        output_format, output, fdupes_null, quiet, progress, show_stats, fail_on_duplicates
    )
    raise typer.Exit(_run(searched, options, request).exit_code)


def _listed(source: str, null: bool) -> Iterator[str]:
    """The paths one `--files-from` list names, read as the search takes its roots; a list that
    cannot be opened or read is a usage error (before any work: the roots are all read first)."""
    if source == "-":
        if sys.stdin is None:
            raise OptionsError("--files-from -: standard input is closed")
        return _reading(sys.stdin.buffer, "standard input", null, close=False)
    try:
        stream = open(source, "rb")  # noqa: SIM115 - closed by _reading when the list ends
    except OSError as exc:
        raise OptionsError(f"--files-from {source!r}: {describe_error(exc)}") from None
    return _reading(stream, repr(source), null, close=True)


def _reading(stream: BinaryIO, name: str, null: bool, *, close: bool) -> Iterator[str]:
    try:
        yield from read_paths(stream, null)
    except OSError as exc:
        raise OptionsError(f"--files-from {name}: {describe_error(exc)}") from None
    except ListError as exc:
        raise OptionsError(f"--files-from {name}: {exc}") from None
    finally:
        if close:
            stream.close()


def _cache_dir(cache: bool, directory: str | None, ctx: typer.Context) -> str | None:
    """The cache's directory, or None for no cache.  `--no-cache` on the command line with
    `--cache-dir` is a contradiction; `DEDUP_ENGINE_CACHE=0` is only a default, which an
    explicit `--cache-dir` overrides."""
    if directory is not None:
        source = ctx.get_parameter_source("cache")
        if not cache and source is not None and source.name == "COMMANDLINE":
            fail_usage("--no-cache and --cache-dir contradict each other")
        return cache_directory(directory)
    return cache_directory(None) if cache else None


def _run(roots: Iterable[str], options: ScanOptions, request: _Request) -> FindStatus:
    """Search, write the report and say how it went; what the run came to."""
    if request.to_stdout and not stdout_usable():
        print_error("cannot write the report: stdout is closed")
        return FindStatus(report_unwritten=True)
    show_progress = progress_shown(request.progress, request.quiet)
    # Each group goes to the spool as it is final, and comes back in report order: the report
    # is never whole in memory.
    with _spool(options, request) as spool:
        try:
            with _progress(show_progress) as callback, _no_gc():
                before = os.times()
                result = find_duplicates(roots, options, progress=callback, on_group=spool.keep)
                cpu = _Cpu.between(before, os.times(), options.cluster is None)
            spool.kept()
        except OptionsError as exc:  # a root that cannot be searched, before any work
            fail_usage(str(exc))
        except WorkerError as exc:
            print_error(str(exc))
            return FindStatus(worker_died=True)
        except OutputError as exc:  # the groups could not be kept for the report
            print_error(str(exc))
            return FindStatus(report_unwritten=True)
        left_out = _write_report(spool.report(result), request)
    if left_out is not None:
        _print_notes(result, request, left_out, cpu)
    return FindStatus(
        report_unwritten=left_out is None,
        duplicates_found=result.stats.groups > 0 or bool(result.directory_groups),
        fail_on_duplicates=request.fail_on_duplicates,
        unreadable=bool(result.issues),
    )


def _write_report(write: Callable[[IO[bytes]], int], request: _Request) -> int | None:
    """Write the report where asked (`write`): the number of paths left out of it, None if it
    could not be written (said on stderr)."""
    left_out = 0  # stays 0 if the reader leaves early
    output = None if request.output is None else str(request.output)
    try:
        with reader_may_leave(), output_to(output) as out:
            left_out = write(out)
    except OutputError as exc:
        print_error(str(exc))
        return None
    return left_out


@dataclass(frozen=True, slots=True)
class _Cpu:
    """The search's CPU time, user and system: this process's, and its workers' where they are
    its own child processes (None on a cluster, whose workers' time is on their machines)."""

    main: float
    workers: float | None

    @staticmethod
    def between(before: os.times_result, after: os.times_result, local: bool) -> _Cpu:
        """From `os.times()` before and after the search: the pool has reaped its workers by
        its end, so their time is in the children's."""
        main = (after.user - before.user) + (after.system - before.system)
        children = (after.children_user - before.children_user) + (
            after.children_system - before.children_system
        )
        return _Cpu(main, children if local else None)

    def line(self, workers: int) -> str:
        """What `--stats` says of it, for a search by so many workers (0: in this process)."""
        if self.workers is None:
            return f"CPU: {self.main:.2f} s in this process (the cluster's workers not counted)"
        if not workers:
            return f"CPU: {self.main:.2f} s, all in this process (no worker processes)"
        total = self.main + self.workers
        share = f" ({self.main / total:.1%} in this process)" if total else ""
        plural = "s" if workers > 1 else ""
        return (
            f"CPU: {self.main:.2f} s in this process, {self.workers:.2f} s in its {workers} "
            f"worker{plural}{share}"
        )

    def tasks_line(self, task_cpu: Mapping[str, float], workers: int) -> str | None:
        """What `--stats` says of the tasks' CPU time by kind (`RunStats.task_cpu`), and of the
        workers' time outside them (reading tasks, pickling results); None where not counted."""
        if not task_cpu:
            return None
        kinds = [k for k in TASK_KINDS if k in task_cpu]  # `task_kind` names no other
        line = "CPU of the tasks: " + ", ".join(f"{k} {task_cpu[k]:.2f} s" for k in kinds)
        if workers and self.workers is not None:
            line += f"; {max(0.0, self.workers - sum(task_cpu.values())):.2f} s between them"
        return line


def _print_notes(result: FindResult, request: _Request, left_out: int, cpu: _Cpu) -> None:
    """What stderr says after the report: warnings, paths left out of it, the stages' work and
    CPU time, a summary."""
    if not request.quiet:
        for warning in result.stats.warnings:
            typer.echo(f"dedup: warning: {warning}", err=True)
    if left_out:
        typer.echo(
            f"dedup: warning: {left_out} paths holding a newline are left out of the fdupes "
            "output, where they would read as other paths; -0 or -f json lists them",
            err=True,
        )
    if request.stats:
        _print_stats(result)
        typer.echo(cpu.line(result.stats.workers), err=True)
        tasks = cpu.tasks_line(result.stats.task_cpu, result.stats.workers)
        if tasks is not None:
            typer.echo(tasks, err=True)
    if not request.quiet and (request.form is not Format.TEXT or request.output is not None):
        _print_summary(result)


def _root_on(given: str) -> tuple[str, str]:
    """`WORKERS=DIR` of `--root-on` (the name may not hold an "="; the directory may)."""
    name, equals, path = given.partition("=")
    if not equals:
        raise OptionsError(f"--root-on {given!r}: give it as WORKERS=DIR")
    return name, path


def _quiet_dask() -> None:
    """Dask's own log lines and warnings (a worker rescheduled, a port taken, versions that
    differ in their last digit) are not the run's: stderr holds what dedup has to say."""
    import logging
    import warnings

    with contextlib.suppress(ImportError):  # without it, --cluster says how to install it
        import distributed  # noqa: F401 - its logging set up now, to be quietened below
    for name in ["distributed", "tornado", *logging.root.manager.loggerDict]:
        if name in ("distributed", "tornado") or name.startswith(("distributed.", "tornado.")):
            # Dask gives some their own level and handler ("distributed.client"): each is set;
            # tornado's are Dask's event loop's ("Exception in callback" as a scheduler goes).
            logging.getLogger(name).setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", module=r"distributed(\.|$)")


@contextlib.contextmanager
def _spool(options: ScanOptions, request: _Request) -> Iterator[_Spooled]:
    """Where each final group waits for the report: rendered in the report's format where the
    format can render it before the search is done, else as it is.  A temporary directory that
    cannot hold them is one line: before the search a usage error, during it or at its end an
    `OutputError` (the report is not written)."""
    directory = default_directory()
    where = directory or tempfile.gettempdir()
    render = RENDERINGS[request.form].renderer(options, request.null)
    try:
        spool = GroupSpool(directory) if render is None else BlockSpool(directory)
    except OSError as exc:
        fail_usage(f"cannot make a temporary file in {where!r} ($TMPDIR): {describe_error(exc)}")
    with spool:
        yield _Spooled(spool, where, options, request, render)


class _Spooled:
    """The spool of a `dedup find`: what adds each final group to it (`keep`), what puts every
    group on disk once the search is done (`kept`), and what writes the report from it."""

    def __init__(
        self,
        spool: GroupSpool | BlockSpool,
        where: str,
        options: ScanOptions,
        request: _Request,
        render: Renderer | None,
    ) -> None:
        self._spool = spool
        self._where = where
        self._options = options
        self._form = request.form
        self._null = request.null
        self._counted = None if render is None else Counted(render)
        #: Adds a final group: called once per group, so no more than the add and a try.
        self.keep: Callable[[DuplicateGroup], None]
        if isinstance(spool, GroupSpool):
            self.keep = self._keeping_groups(spool)
        else:
            assert self._counted is not None, "blocks are spooled only where a format renders them"
            self.keep = self._keeping_blocks(spool, self._counted)

    def _keeping_groups(self, spool: GroupSpool) -> Callable[[DuplicateGroup], None]:
        def keep(group: DuplicateGroup) -> None:
            try:
                spool.add(group)
            except OSError as exc:
                raise self._failed(exc) from None

        return keep

    def _keeping_blocks(
        self, spool: BlockSpool, render: Counted
    ) -> Callable[[DuplicateGroup], None]:
        def keep(group: DuplicateGroup) -> None:
            block = render(group)
            try:
                spool.add(group, block)
            except OSError as exc:
                raise self._failed(exc) from None

        return keep

    def kept(self) -> None:
        """Every group is added: all of them on disk, so that a full disk shows now."""
        try:
            self._spool.flush()
        except OSError as exc:
            raise self._failed(exc) from None

    def _failed(self, exc: OSError) -> OutputError:
        return OutputError(
            f"cannot keep the groups for the report in {self._where!r} ($TMPDIR): "
            f"{describe_error(exc)}"
        )

    def report(self, result: FindResult) -> Callable[[IO[bytes]], int]:
        """What writes the report of `result`, whose groups are in the spool, to a stream: the
        number of paths it left out (fdupes without -0)."""
        spool, counted, options, null = self._spool, self._counted, self._options, self._null
        spooled = SpooledResult(
            result.roots,
            spool if isinstance(spool, GroupSpool) else (),
            result.issues,
            result.stats,
            result.reference_roots,
            result.directory_groups,
        )
        if isinstance(spool, GroupSpool):
            writer = WRITERS[self._form]
            return lambda out: writer(spooled, options, out, null=null)
        assert counted is not None, "blocks are spooled only where a format renders them"
        write_around = RENDERINGS[self._form].write
        return lambda out: write_around(spooled, spool, options, out, null=null) + counted.left_out


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
    cached = any(row.cache_hits or row.cache_misses for row in result.stats.stages)
    columns = ["stage", "files in", "files out", "opened", "bytes read", "seconds"]
    for column in columns + (["cache hits", "cache misses"] if cached else []):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for row in result.stats.stages:
        cells = [
            row.stage.value,
            f"{row.files_in:,}",
            f"{row.files_out:,}",
            f"{row.files_opened:,}",
            human_size(row.bytes_read),
            f"{row.seconds:.3f}",
        ]
        if cached:
            cells += [f"{row.cache_hits:,}", f"{row.cache_misses:,}"]
        table.add_row(*cells)
    Console(stderr=True).print(table)
