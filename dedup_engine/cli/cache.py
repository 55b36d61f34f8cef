"""`dedup cache`: what the digest cache of `dedup find --cache` holds, and removing it.

A thin typer layer over `find.cache`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from dedup_engine.cli.common import fail_usage
from dedup_engine.find.cache import FILE_NAME, CacheError, DigestCache, clear, default_directory
from dedup_engine.report.display import human_size

cache = typer.Typer(
    help="The digest cache of dedup find --cache: what it holds, and removing it.",
    no_args_is_help=True,
)

CacheDir = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir", help="The cache's directory (default: $XDG_CACHE_HOME/dedup-engine)."
    ),
]


def _directory(given: Path | None) -> str:
    return os.path.abspath(given) if given is not None else default_directory()


@cache.command()
def stats(cache_dir: CacheDir = None) -> None:
    """Rows held, by kind, and the bytes on disk."""
    directory = _directory(cache_dir)
    if not os.path.lexists(os.path.join(directory, FILE_NAME)):
        typer.echo(f"no cache in {directory}")
        return
    try:
        opened = DigestCache.open(directory)
    except CacheError as exc:
        fail_usage(str(exc.strerror))
    if opened.warning is not None:
        typer.echo(f"dedup: warning: {opened.warning}", err=True)
    if opened.cache is None:
        raise typer.Exit(1)
    summary = opened.cache.summary()
    opened.cache.close()
    per_row = summary.bytes / summary.rows if summary.rows else 0.0
    typer.echo(f"{summary.path}: {summary.rows:,} digests, {human_size(summary.bytes)}")
    typer.echo(f"  {per_row:.0f} bytes a digest")
    for kind, rows in summary.by_kind.items():
        typer.echo(f"  {kind}: {rows:,}")


@cache.command(name="clear")
def clear_command(cache_dir: CacheDir = None) -> None:
    """Remove the cache: the next run with --cache reads every file again."""
    directory = _directory(cache_dir)
    try:
        removed = clear(directory)
    except CacheError as exc:
        fail_usage(str(exc.strerror))
    typer.echo(f"removed the cache in {directory}" if removed else f"no cache in {directory}")
