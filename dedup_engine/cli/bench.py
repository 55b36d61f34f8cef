"""The `dedup bench` commands: the work gate, the time gate, and side-by-side comparisons.

A thin typer layer over `bench.workgate`, `bench.timegate`, `bench.compare` and their baselines,
reports and cached trees: options in, figures out, exit code from the result.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from dedup_engine.cli.common import fail_usage, parse_size
from dedup_engine.cli.exitcode import check_exit_code
from dedup_engine.find.roots import canonical_roots
from dedup_engine.options import OptionsError, ScanOptions

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
    if not failures:
        typer.echo(
            f"work gate passed: {len(current['trees'])} trees, no stage does more work", err=True
        )
    raise typer.Exit(check_exit_code(held=not failures))


@bench.command(
    "compare",
    epilog="Exit codes: 0 every tool found the same groups; 1 some tool disagreed; 2 usage error.",
)
def bench_compare(
    root: Annotated[
        Path | None, typer.Argument(help="The tree every tool searches (or --profile).")
    ] = None,
    profile: Annotated[
        str | None,
        typer.Option(
            help="Instead of root: the `dedup synth` tree of this profile (small, large, "
            "mixed, scale, realistic or backup), made once into --cache and reused."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="The --profile tree's seed.")] = 1,
    cache: Annotated[
        Path | None,
        typer.Option(
            help="Where --profile trees are kept (default: $DEDUP_BENCH_CACHE or "
            "~/.cache/dedup-engine/bench)."
        ),
    ] = None,
    tools: Annotated[
        str,
        typer.Option(
            help="Comma-separated: dedup,jdupes,rmlint,fdupes,rdfind; also jdupes-Q, jdupes "
            "trusting its hashes (-Q)."
        ),
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
    dedup: Annotated[
        str | None,
        typer.Option(
            help="The dedup executable to time, a path or a name on PATH (default: this "
            "Python's -m dedup_engine)."
        ),
    ] = None,
    out: Annotated[
        Path,
        typer.Option(
            help="Where comparison.json, comparison.csv, comparison.svg and comparison.md go."
        ),
    ] = Path("."),
) -> None:
    """Time the duplicate finders side by side on one tree and check they agree."""
    from dedup_engine.bench import compare as benchcompare
    from dedup_engine.bench import compare_report

    names = [n.strip() for n in tools.split(",") if n.strip()]
    if runs < 1 or warmup < 0:
        fail_usage("--runs must be at least 1 and --warmup at least 0")
    tree = _compare_tree(root, profile, seed, cache)
    dedup_command = None if dedup is None else [_executable(dedup)]
    out.mkdir(parents=True, exist_ok=True)
    found, skipped = benchcompare.available_tools(names, dedup_command)
    for name, reason in skipped:
        typer.echo(f"skipped {name}: {reason}", err=True)
    result = _compare_with_progress(benchcompare, tree, found, runs, warmup, cold, skipped)
    paths = compare_report.write_all(result, out)
    _print_comparison(result)
    typer.echo("written: " + ", ".join(str(p) for p in paths), err=True)
    raise typer.Exit(check_exit_code(held=all(tool.agrees for tool in result.tools)))


def _compare_tree(root: Path | None, profile: str | None, seed: int, cache: Path | None) -> Path:
    """ROOT as given, or the --profile tree from the cache (made there on first use)."""
    from dedup_engine.bench import treecache
    from dedup_engine.bench.synth import Profile

    if (root is None) == (profile is None):
        fail_usage("give either a root or --profile")
    if root is not None:
        if not root.is_dir():
            fail_usage(f"{str(root)!r} is not a directory")
        return root
    try:
        spec = treecache.SynthTree.full_size(Profile(profile), seed)
    except ValueError:
        fail_usage(f"unknown profile {profile!r} ({', '.join(p.value for p in Profile)})")
    tree = treecache.ensure_tree(spec, cache or treecache.default_cache())
    typer.echo(f"tree: {tree}", err=True)
    return tree


def _executable(command: str) -> str:
    """Its absolute path: the tools run in a directory of their own."""
    found = shutil.which(command)
    if found is None:
        fail_usage(f"--dedup: {command!r} is not an executable")
    return os.path.abspath(found)


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

    from dedup_engine.bench import compare_report

    table = Table(title=compare_report.title(result))
    for column in compare_report.TABLE_COLUMNS:
        table.add_column(column, justify="left" if column in ("tool", "version") else "right")
    for tool in result.tools:
        cells = compare_report.table_row(tool)
        table.add_row(*cells[:-2], "yes" if tool.agrees else "[bold red]NO[/]", cells[-1])
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
    if not failures:
        typer.echo("time gate passed", err=True)
    raise typer.Exit(check_exit_code(held=not failures))


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
