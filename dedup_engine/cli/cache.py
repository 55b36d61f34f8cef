"""`dedup cache`: what the digest cache of `dedup find --cache` holds, pruning it, removing it.

A thin typer layer over `find.cache`.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Annotated

import typer

from dedup_engine.cli.common import (
    cache_directory,
    fail_usage,
    interruptible,
    parse_size,
    print_error,
)
from dedup_engine.cli.exitcode import ExitCode
from dedup_engine.find.cache import FILE_NAME, CacheError, DigestCache, clear
from dedup_engine.find.cacheprune import prune
from dedup_engine.report.display import human_size

cache = typer.Typer(
    help="The digest cache of dedup find --cache: what it holds, pruning it, removing it.",
    no_args_is_help=True,
)

CacheDir = Annotated[
    str | None,
    typer.Option(
        "--cache-dir", help="The cache's directory (default: $XDG_CACHE_HOME/dedup-engine)."
    ),
]


def _opened(directory: str) -> DigestCache | None:
    """The cache in `directory`, or None (said) where there is none; exit 2 for a directory
    that cannot be trusted, 1 for a cache that cannot be used now."""
    if not os.path.lexists(os.path.join(directory, FILE_NAME)):
        typer.echo(f"no cache in {directory}")
        return None
    try:
        opened = DigestCache.open(directory)
    except CacheError as exc:
        fail_usage(str(exc.strerror))
    if opened.warning is not None:
        typer.echo(f"dedup: warning: {opened.warning}", err=True)
    if opened.cache is None:
        raise typer.Exit(1)
    return opened.cache


@cache.command()
@interruptible
def stats(cache_dir: CacheDir = None) -> None:
    """Rows held, by kind, and the bytes on disk."""
    opened = _opened(cache_directory(cache_dir))
    if opened is None:
        return
    summary = opened.summary()
    opened.close()
    per_row = summary.bytes / summary.rows if summary.rows else 0.0
    typer.echo(f"{summary.path}: {summary.rows:,} digests, {human_size(summary.bytes)}")
    typer.echo(f"  {per_row:.0f} bytes a digest, from {summary.directories:,} directories")
    for kind, rows in summary.by_kind.items():
        typer.echo(f"  {kind}: {rows:,}")


@cache.command(name="prune")
@interruptible
def prune_command(
    cache_dir: CacheDir = None,
    max_size: Annotated[
        str | None,
        typer.Option(
            "--max-size",
            help="Then drop the least recently used directories' digests until the cache is at"
            " most this size (e.g. 500M, 2G).",
        ),
    ] = None,
) -> None:
    """Drop the digests of files gone or changed, and cap the size."""
    cap = None if max_size is None else parse_size(max_size)
    opened = _opened(cache_directory(cache_dir))
    if opened is None:
        return
    try:
        done = prune(opened, cap)
    except sqlite3.Error as exc:  # locked past the wait, a full disk: the rows dropped stay so
        print_error(f"the cache in {opened.directory} could not be pruned: {exc}")
        raise typer.Exit(ExitCode.FAILED) from None
    finally:
        opened.close()
    typer.echo(
        f"{opened.directory}: {done.rows_before:,} digests, {human_size(done.bytes_before)}"
        f" -> {done.rows_after:,} digests, {human_size(done.bytes_after)}"
    )
    typer.echo(f"  {done.gone:,} dropped: files gone or changed")
    if cap is not None:
        typer.echo(f"  {done.capped:,} dropped: least recently used, for --max-size")
    if done.unmounted:
        typer.echo(f"  {done.unmounted:,} kept unchecked: their filesystem is not mounted now")


@cache.command(name="clear")
@interruptible
def clear_command(cache_dir: CacheDir = None) -> None:
    """Remove the cache: the next run with --cache reads every file again."""
    directory = cache_directory(cache_dir)
    try:
        removed = clear(directory)
    except CacheError as exc:
        fail_usage(str(exc.strerror))
    typer.echo(f"removed the cache in {directory}" if removed else f"no cache in {directory}")
