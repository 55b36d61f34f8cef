"""The `dedup` command line: parse options, call the library, print; nothing else.

Exit codes: 0 done; 1 done, but some files could not be read; 2 usage error (bad option, missing
root); 3 duplicates were found and `--fail-on-duplicates` was given (it wins over 1).
"""

from __future__ import annotations

import contextlib
import gc
import io
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Annotated, Any

import typer

from dedup_engine import __version__
from dedup_engine.options import OptionsError, ScanOptions
from dedup_engine.pipeline import Progress, ProgressCallback, canonical_roots, find_duplicates
from dedup_engine.pool import WorkerError
from dedup_engine.records import FindResult
from dedup_engine.report import Format, human_size, write_csv, write_fdupes, write_json, write_text

EXIT_OK = 0
EXIT_ISSUES = 1
EXIT_USAGE = 2
EXIT_DUPLICATES = 3
EXIT_FAILED = 4

EXIT_CODES_HELP = (
    "Exit codes: 0 done; 1 done, but some files could not be read; 2 usage error; "
    "3 duplicates found with --fail-on-duplicates; 4 the run could not finish (a worker died)."
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

_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(text: str) -> int:
    """'4096', '4K', '4KiB', '1.5' is refused; units are binary (K = 1024)."""
    match = _SIZE.match(text)
    if not match:
        raise typer.BadParameter(f"{text!r} is not a size (examples: 4096, 64K, 10M, 1G)")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


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


@app.command(epilog=EXIT_CODES_HELP)
def find(
    roots: Annotated[list[str], typer.Argument(help="Directories or files to search.")],
    output_format: Annotated[
        Format, typer.Option("--format", "-f", help="text (for people), fdupes, json or csv.")
    ] = Format.TEXT,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the report here, not stdout.")
    ] = None,
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
        _check_output(output)
        show_progress = (not quiet) and (sys.stderr.isatty() if progress is None else progress)
        with _progress(show_progress) as callback, _no_gc():
            result = find_duplicates(roots, options, progress=callback)
    except OptionsError as exc:
        _fail_usage(str(exc))
    except WorkerError as exc:
        typer.echo(f"dedup: error: {exc}", err=True)
        raise typer.Exit(EXIT_FAILED) from None
    try:
        with _open_output(output) as out:
            _write(result, options, output_format, out)
    except BrokenPipeError:
        # The reader stopped early (`dedup find ... | head`): not an error of ours.  Later writes
        # to stdout go nowhere, so the exit does not fail on flushing it.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
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
    from dedup_engine.synth import Profile, generate

    try:
        chosen = Profile(profile)
    except ValueError:
        _fail_usage(f"unknown profile {profile!r} (small, large, mixed)")
    try:
        manifest = generate(directory, chosen, seed, files)
    except ValueError as exc:
        _fail_usage(str(exc))
    typer.echo(
        f"{manifest.files} files, {human_size(manifest.bytes)}, {len(manifest.groups)} groups "
        f"holding {manifest.files_in_groups} files; manifest: {directory / 'manifest.json'}",
        err=True,
    )


def _write(result: FindResult, options: ScanOptions, form: Format, out: IO[bytes]) -> None:
    if form is Format.JSON:
        text = io.TextIOWrapper(out, encoding="ascii", newline="\n")
        write_json(result, options, __version__, text)
        text.flush()
        text.detach()
    elif form is Format.CSV:
        write_csv(result.groups, out)
    elif form is Format.FDUPES:
        write_fdupes(result.groups, out)
    else:
        write_text(result, out)


bench = typer.Typer(
    help="Benchmarks and gates on the engine's work.", no_args_is_help=True, add_completion=False
)
app.add_typer(bench, name="bench")


@bench.command(
    "work-gate",
    epilog="Exit codes: 0 no more work than the baseline; 1 more work or "
    "other groups; 2 usage error.",
)
def work_gate(
    baseline: Annotated[
        Path, typer.Option(help="The committed counts (run from the repository root).")
    ] = Path("benchmarks/work_baseline.json"),
    update: Annotated[
        bool, typer.Option("--update", help="Write today's counts as the new baseline.")
    ] = False,
    cache: Annotated[
        Path | None,
        typer.Option(
            help="Where the gate's trees are kept (default: $DEDUP_BENCH_CACHE or "
            "~/.cache/dedup-engine/bench)."
        ),
    ] = None,
    partial_stages: Annotated[
        str, typer.Option(help="Partial stages to run (to see the gate fail).", hidden=True)
    ] = "head,tail",
) -> None:
    """Count the engine's work on fixed synthetic trees; fail if any stage does more."""
    from dedup_engine import workgate

    stages = tuple(s.strip() for s in partial_stages.split(",") if s.strip())
    try:
        options = ScanOptions(stages=stages)
    except OptionsError as exc:
        _fail_usage(str(exc))
    current = workgate.measure(cache or workgate.default_cache(), options)
    if update:
        workgate.save_baseline(current, baseline)
        typer.echo(f"baseline written: {baseline}", err=True)
        return
    try:
        reference = workgate.load_baseline(baseline)
    except (OSError, ValueError) as exc:
        _fail_usage(f"cannot read the baseline {str(baseline)!r}: {exc}")
    failures, notes = workgate.compare(reference, current)
    for note in notes:
        typer.echo(f"less work: {note} (tighten with --update)", err=True)
    for failure in failures:
        typer.echo(f"FAIL: {failure}", err=True)
    if failures:
        raise typer.Exit(EXIT_ISSUES)
    typer.echo(
        f"work gate passed: {len(current['trees'])} trees, no stage does more work", err=True
    )


@bench.command(
    "compare",
    epilog="Exit codes: 0 every tool found the same groups; 1 some tool disagreed; 2 usage error.",
)
def bench_compare(
    root: Annotated[Path, typer.Argument(help="The tree every tool searches.")],
    tools: Annotated[
        str, typer.Option(help="Comma-separated: dedup,jdupes,rmlint,fdupes,rdfind.")
    ] = "dedup,jdupes,rmlint,fdupes,rdfind",
    runs: Annotated[int, typer.Option(help="Timed runs of each tool, interleaved.")] = 5,
    warmup: Annotated[int, typer.Option(help="Untimed runs of each tool first.")] = 1,
    cold: Annotated[
        bool,
        typer.Option(
            "--cold",
            help="Evict the tree from the page cache before every run (drop_caches as root, "
            "else posix_fadvise on every file).",
        ),
    ] = False,
    out: Annotated[
        Path, typer.Option(help="Where comparison.json, comparison.csv and comparison.svg go.")
    ] = Path("."),
) -> None:
    """Time the duplicate finders side by side on one tree and check they agree."""
    from dedup_engine import benchcompare

    names = [n.strip() for n in tools.split(",") if n.strip()]
    if runs < 1 or warmup < 0:
        _fail_usage("--runs must be at least 1 and --warmup at least 0")
    if not root.is_dir():
        _fail_usage(f"{str(root)!r} is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    found, skipped = benchcompare.available_tools(names)
    for name, reason in skipped:
        typer.echo(f"skipped {name}: {reason}", err=True)
    result = _compare_with_progress(benchcompare, root, found, runs, warmup, cold, skipped)
    paths = {kind: out / f"comparison.{kind}" for kind in ("json", "csv", "svg")}
    benchcompare.write_json(result, paths["json"])
    benchcompare.write_csv(result, paths["csv"])
    benchcompare.write_svg(result, paths["svg"])
    _print_comparison(result)
    typer.echo("written: " + ", ".join(str(p) for p in paths.values()), err=True)
    if not all(tool.agrees for tool in result.tools):
        raise typer.Exit(EXIT_ISSUES)


def _compare_with_progress(
    benchcompare: Any,
    root: Path,
    found: Any,
    runs: int,
    warmup: int,
    cold: bool,
    skipped: Any,
) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as RichProgress

    bar = RichProgress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
        disable=not sys.stderr.isatty(),
    )
    with bar:
        task = bar.add_task("runs", total=runs * len(found))

        def progress(tool: str, run: int, total: int, elapsed: float) -> None:
            bar.update(task, advance=1, description=f"{tool} run {run}/{total} ({elapsed:.2f} s)")

        return benchcompare.compare(
            root, found, runs=runs, warmup=warmup, cold=cold, progress=progress, skipped=skipped
        )


def _print_comparison(result: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    title = f"{result.root}: {result.runs} interleaved runs, " + (
        f"cold ({result.cold})" if result.cold else "warm page cache"
    )
    table = Table(title=title)
    columns = ("tool", "version", "median", "min", "max", "CPU", "peak RSS", "groups", "files",
               "agrees", "vs dedup")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column in ("tool", "version") else "right")
    for tool in result.tools:
        table.add_row(
            tool.name,
            tool.version,
            f"{tool.median_wall:.3f} s",
            f"{tool.min_wall:.3f} s",
            f"{tool.max_wall:.3f} s",
            f"{tool.median_cpu:.3f} s",
            human_size(tool.peak_rss),
            f"{tool.groups:,}",
            f"{tool.files_in_groups:,}",
            "yes" if tool.agrees else "[bold red]NO[/]",
            f"{tool.relative:.2f}x",
        )
    # Piped or redirected, a table of 11 columns needs more than the 80 columns rich assumes.
    console = Console(width=None if sys.stdout.isatty() else 150)
    console.print(table)
    for tool in result.tools:
        for difference in tool.differences:
            console.print(f"[red]{tool.name} differs:[/] {difference}", markup=True)
    for name, reason in result.skipped:
        console.print(f"skipped {name}: {reason}")


@bench.command(
    "time-gate",
    epilog="Exit codes: 0 within tolerance; 1 a stage's time ratio grew past it; 2 usage error.",
)
def time_gate(
    root: Annotated[Path, typer.Argument(help="The tree to time (the same tree every run).")],
    baseline: Annotated[Path, typer.Option(help="Saved ratios (JSON).")],
    update: Annotated[
        bool, typer.Option("--update", help="Write this run's ratios as the baseline.")
    ] = False,
    tolerance: Annotated[
        float, typer.Option(help="Allowed growth of a stage's ratio (0.25: 25%).")
    ] = 0.25,
    rounds: Annotated[int, typer.Option(help="Runs to take the median of.")] = 3,
    chunk_size: Annotated[
        str, typer.Option(help="Read chunk of the full stage (to see the gate fail).", hidden=True)
    ] = "128K",
) -> None:
    """Each stage's time over a plain read+BLAKE3 of the same tree in the same run; fail on growth.

    The ratio, unlike seconds, carries from one machine to another, so a baseline saved on a
    developer's machine can gate a CI run elsewhere.  Runs in one process, for steadier figures.
    """
    from dedup_engine import timegate

    try:
        options = ScanOptions(workers=0, chunk_size=parse_size(chunk_size))
        if rounds < 1 or tolerance < 0:
            raise OptionsError("--rounds must be at least 1 and --tolerance at least 0")
        canonical_roots([root])
    except OptionsError as exc:
        _fail_usage(str(exc))
    current = timegate.measure(root, options, rounds)
    for name, row in current["stages"].items():
        typer.echo(f"{name:5} {row['seconds']:.4f} s  ratio {row['ratio']:.4f}", err=True)
    typer.echo(
        f"reference {current['reference_seconds']:.4f} s (read + BLAKE3 of the tree)", err=True
    )
    if update:
        timegate.save(current, baseline)
        typer.echo(f"baseline written: {baseline}", err=True)
        return
    try:
        reference = timegate.load(baseline)
    except (OSError, ValueError) as exc:
        _fail_usage(f"cannot read the baseline {str(baseline)!r}: {exc}")
    failures = timegate.compare(reference, current, tolerance)
    for failure in failures:
        typer.echo(f"FAIL: {failure}", err=True)
    if failures:
        raise typer.Exit(EXIT_ISSUES)
    typer.echo("time gate passed", err=True)


def _fail_usage(message: str) -> Any:
    typer.echo(f"dedup: error: {message}", err=True)
    raise typer.Exit(EXIT_USAGE)


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
    if path.is_dir():
        raise OptionsError(f"--output {str(path)!r} is a directory")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OptionsError(f"--output {str(path)!r}: no such directory {str(parent)!r}")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise OptionsError(f"--output {str(path)!r} is not writable")


@contextlib.contextmanager
def _open_output(path: Path | None) -> Iterator[IO[bytes]]:
    if path is None or str(path) == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    with path.open("wb") as out:
        yield out


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
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code or 0)


if __name__ == "__main__":
    main()
