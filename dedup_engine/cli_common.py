"""What every `dedup` command shares: exit codes, usage errors and size parsing.

Its own module so that `cli` (which attaches the other commands) and the command modules
(`cli_apply`, `cli_bench`) import it, never each other: any of them can be imported first.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator
from typing import NoReturn

import typer

EXIT_OK = 0
EXIT_ISSUES = 1
EXIT_USAGE = 2
EXIT_DUPLICATES = 3
EXIT_FAILED = 4

_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(text: str) -> int:
    """'4096', '4K', '4KiB', '1.5' is refused; units are binary (K = 1024)."""
    match = _SIZE.match(text)
    if not match:
        raise typer.BadParameter(f"{text!r} is not a size (examples: 4096, 64K, 10M, 1G)")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def fail_usage(message: str) -> NoReturn:
    typer.echo(f"dedup: error: {message}", err=True)
    raise typer.Exit(EXIT_USAGE)


@contextlib.contextmanager
def reader_may_leave() -> Iterator[None]:
    """Writing to stdout for a reader that may stop early (`dedup ... | head`).

    That is not an error of ours: the output stops there, quietly, and the exit code stays the
    one the run earned.  Later writes to stdout go nowhere, so the exit cannot fail flushing it.
    """
    try:
        yield
        sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
