"""The `dedup` command line: the typer app, its commands attached, and the console script.

The commands live in their own modules (`find`, `apply`, `synth`, `bench`), each a thin edge
over the library: only the command line uses typer and rich.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Annotated, ParamSpec

import typer

from dedup_engine.cli.apply import apply
from dedup_engine.cli.bench import bench
from dedup_engine.cli.cache import cache
from dedup_engine.cli.exitcode import APPLY_EXIT_HELP, EXIT_CODES_HELP, ExitCode
from dedup_engine.cli.find import find
from dedup_engine.cli.synth import synth
from dedup_engine.find.pool import STOP_SIGNALS
from dedup_engine.version import __version__

P = ParamSpec("P")

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
            raise typer.Exit(ExitCode.INTERRUPTED) from None
        finally:
            if not stopping:
                for number, handler in old.items():
                    signal.signal(number, handler)

    return run


# In this order in `dedup --help`.
app.command(epilog=EXIT_CODES_HELP)(_interruptible(find))
app.command(epilog=EXIT_CODES_HELP)(synth)
app.command(epilog=APPLY_EXIT_HELP)(apply)
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
