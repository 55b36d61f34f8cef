"""The `dedup bench` commands: the work gate, the time gate, and side-by-side comparisons.

A thin layer over `workgate`, `timegate` and `benchcompare`, like `cli` over the engine.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from dedup_engine.cli.common import EXIT_ISSUES, fail_usage, parse_size
from dedup_engine.find.pipeline import canonical_roots
from dedup_engine.options import OptionsError, ScanOptions
from dedup_engine.report.display import human_size

bench = typer.Typer(
    help="Benchmarks and gates on the engine's work.", no_args_is_help=True, add_completion=False
)


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
    from dedup_engine.bench import treecache, workgate

    stages = tuple(s.strip() for s in partial_stages.split(",") if s.strip())
    try:
        options = ScanOptions(stages=stages)
    except OptionsError as exc:
        fail_usage(str(exc))
    current = workgate.measure(cache or treecache.default_cache(), options)
    reference = _baseline_or_update(current, baseline, update)
    if reference is None:
        return
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
    from dedup_engine.bench import compare as benchcompare

    names = [n.strip() for n in tools.split(",") if n.strip()]
    if runs < 1 or warmup < 0:
        fail_usage("--runs must be at least 1 and --warmup at least 0")
    if not root.is_dir():
        fail_usage(f"{str(root)!r} is not a directory")
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
    from dedup_engine.bench import timegate

    try:
        options = ScanOptions(workers=0, chunk_size=parse_size(chunk_size))
        if rounds < 1 or tolerance < 0:
            raise OptionsError("--rounds must be at least 1 and --tolerance at least 0")
        canonical_roots([root])
    except OptionsError as exc:
        fail_usage(str(exc))
    current = timegate.measure(root, options, rounds)
    for name, row in current["stages"].items():
        typer.echo(f"{name:5} {row['seconds']:.4f} s  ratio {row['ratio']:.4f}", err=True)
    typer.echo(
        f"reference {current['reference_seconds']:.4f} s (read + BLAKE3 of the tree)", err=True
    )
    reference = _baseline_or_update(current, baseline, update)
    if reference is None:
        return
    failures = timegate.compare(reference, current, tolerance)
    for failure in failures:
        typer.echo(f"FAIL: {failure}", err=True)
    if failures:
        raise typer.Exit(EXIT_ISSUES)
    typer.echo("time gate passed", err=True)


def _baseline_or_update(current: Any, baseline: Path, update: bool) -> Any:
    """With --update, write today's figures and return None; else the saved ones to compare."""
    from dedup_engine.bench.baseline import load_baseline, save_baseline

    if update:
        save_baseline(current, baseline)
        typer.echo(f"baseline written: {baseline}", err=True)
        return None
    try:
        return load_baseline(baseline)
    except (OSError, ValueError) as exc:
        fail_usage(f"cannot read the baseline {str(baseline)!r}: {exc}")
