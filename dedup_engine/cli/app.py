"""The `dedup` command line: the typer app, its commands attached, and the console script.

The commands live in their own modules (`find`, `apply`, `synth`, `bench`), each a thin edge
over the library: only the command line uses typer and rich.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Annotated

import typer

from dedup_engine.cli.apply import apply
from dedup_engine.cli.bench import bench
from dedup_engine.cli.cache import cache
from dedup_engine.cli.common import interruptible
from dedup_engine.cli.exitcode import APPLY_EXIT_HELP, EXIT_CODES_HELP
from dedup_engine.cli.find import find
from dedup_engine.cli.synth import synth
from dedup_engine.version import __version__

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


# In this order in `dedup --help`.
app.command(epilog=EXIT_CODES_HELP)(interruptible(find))
app.command(epilog=EXIT_CODES_HELP)(synth)
app.command(epilog=APPLY_EXIT_HELP)(interruptible(apply))
app.add_typer(bench, name="bench")
app.add_typer(cache, name="cache")


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
