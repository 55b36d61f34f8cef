"""What every `dedup` command shares: error lines, usage errors, the progress option, size
parsing, output files, the cache's directory and how a signal stops a command.

The command modules (`find`, `apply`, `synth`, `bench`) import it, never each other, and `app`
attaches them: any of them can be imported first.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import stat
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import IO, Annotated, Any, NoReturn, ParamSpec

import typer

from dedup_engine.cli.exitcode import ExitCode
from dedup_engine.find.cache import default_directory as default_cache_directory
from dedup_engine.find.pool import STOP_SIGNALS
from dedup_engine.openflags import dir_flags
from dedup_engine.oserror import describe_error

#: `--progress/--no-progress`, for the commands that show a progress bar.
ProgressOption = Annotated[
    bool | None,
    typer.Option(
        "--progress/--no-progress", help="Progress on stderr (default: when it is a terminal)."
    ),
]

P = ParamSpec("P")

_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(text: str) -> int:
    """'4096', '4K', '4KiB', '1.5' is refused; units are binary (K = 1024)."""
    match = _SIZE.match(text)
    if not match:
        raise typer.BadParameter(f"{text!r} is not a size (examples: 4096, 64K, 10M, 1G)")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def progress_shown(progress: bool | None, quiet: bool) -> bool:
    """Whether to show progress: as `--progress/--no-progress` say, by default when stderr is a
    terminal; never with `--quiet`."""
    return (not quiet) and (sys.stderr.isatty() if progress is None else progress)


def print_error(message: str) -> None:
    """One line on stderr, as every error of `dedup` is said."""
    typer.echo(f"dedup: error: {message}", err=True)


def fail_usage(message: str) -> NoReturn:
    """A usage error (bad option, missing root, invalid report or journal): found before the
    command has done anything, so it ends the command there, with its own code."""
    print_error(message)
    raise typer.Exit(ExitCode.USAGE)


@contextlib.contextmanager
def reader_may_leave() -> Iterator[None]:
    """Writing to stdout for a reader that may stop early (`dedup ... | head`).

    That is not an error of ours: the output stops there, quietly, and the exit code stays the
    one the run earned.  Later writes to stdout go nowhere, so the exit cannot fail flushing it.
    """
    try:
        yield
        if sys.stdout is not None:
            sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


class OutputError(Exception):
    """The report could not be written where asked; the message says where and why."""


def stdout_usable() -> bool:
    """Whether there is a stdout to write to (a process started with `>&-` has none)."""
    if sys.stdout is None or sys.stdout.closed:
        return False
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError):  # a stream of the caller's, on no descriptor (a test's capture)
        return True
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@contextlib.contextmanager
def output_to(path: str | None, what: str = "the report") -> Iterator[IO[bytes]]:
    """Where a report goes: stdout (`None` or "-"), or the file at `path`.

    A regular file, or a new one, is written under a temporary name in its directory, fsync'd,
    and renamed over `path` only once complete, so no half report is ever left there; on any
    failure the temporary name is removed and `path` is as it was.  The file keeps the mode and,
    where allowed, the owner of the one it replaces (a symlink's target is replaced, not the
    link).  Anything else (a FIFO, a device, /dev/stdout) is written in place.  A failed write
    raises `OutputError`, except a reader that left early (EPIPE), which is `reader_may_leave`'s.
    """
    if path is None or path == "-":
        if not stdout_usable():
            raise OutputError(f"cannot write {what}: stdout is closed")
        assert sys.stdout is not None
        try:
            yield sys.stdout.buffer
            sys.stdout.buffer.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise OutputError(f"cannot write {what} to stdout: {describe_error(exc)}") from None
        return
    target = os.path.realpath(path)
    try:
        st: os.stat_result | None = os.stat(target)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise OutputError(f"cannot write {what} to {path!r}: {describe_error(exc)}") from None
    try:
        if st is not None and not stat.S_ISREG(st.st_mode):
            with open(target, "wb") as out:
                yield out
            return
        with _replacing(target, st) as out:
            yield out
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise OutputError(f"cannot write {what} to {path!r}: {describe_error(exc)}") from None


@contextlib.contextmanager
def _replacing(target: str, old: os.stat_result | None) -> Iterator[IO[bytes]]:
    directory = os.path.dirname(target)
    while True:
        # A short fixed name: the report's own name may be as long as a name can be.
        temp = os.path.join(directory, f".dedup-report-{os.urandom(4).hex()}.tmp")
        try:
            # 0o666 less the umask, as a plain create would give; O_EXCL: never someone else's.
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as out:
            if old is not None:
                os.fchmod(fd, stat.S_IMODE(old.st_mode))
                with contextlib.suppress(PermissionError):
                    os.fchown(fd, old.st_uid, old.st_gid)
            yield out
            out.flush()
            os.fsync(fd)
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    with contextlib.suppress(OSError):  # the rename made durable too, where the system allows
        dir_fd = os.open(directory, dir_flags(follow_links=True))  # the user named it
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


#: A handler `signal.signal` takes back: a function, SIG_DFL or SIG_IGN.
SignalHandler = Callable[[int, FrameType | None], Any] | int | signal.Handlers


def heeded_stop_signals() -> dict[int, SignalHandler]:
    """The stop signals (Ctrl-C, SIGTERM, SIGHUP) a command takes over, with their handlers
    now, to be put back after.  A signal ignored when the command started stays ignored: `nohup`
    ignores SIGHUP, a shell's background job SIGINT.  One whose handler was set outside Python
    (None), which could not be put back, is left as it is too.  Off the main thread, where
    handlers cannot be set (a caller's test harness), no signal is taken over."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    now = {number: signal.getsignal(number) for number in STOP_SIGNALS}
    return {
        number: handler
        for number, handler in now.items()
        if handler is not None and handler != signal.SIG_IGN
    }


def interruptible(command: Callable[P, None]) -> Callable[P, None]:
    """Ctrl-C, SIGTERM and SIGHUP stop the command: one line on stderr, exit 130, no traceback.

    `find`'s worker processes ignore Ctrl-C (the terminal sends it to the whole process group)
    and are killed by the search on its way out (`find_duplicates`); `apply` takes the signals
    over itself while it acts, to stop between two operations.  A second signal while stopping
    is ignored, so that the stop is never cut short.  Stopped or not, the handlers there before
    are put back once the command is done: called from Python, its caller's are its own again.
    """

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        stopping: list[int] = []

        def stop(number: int, frame: FrameType | None) -> None:
            if not stopping:
                stopping.append(number)
                raise KeyboardInterrupt

        old = heeded_stop_signals()
        for number in old:
            signal.signal(number, stop)
        try:
            command(*args, **kwargs)
        except KeyboardInterrupt:
            typer.echo("dedup: interrupted", err=True)
            raise typer.Exit(ExitCode.INTERRUPTED) from None
        finally:
            for number, handler in old.items():
                signal.signal(number, handler)

    return run


def cache_directory(given: str | None) -> str:
    """The digest cache's directory: `--cache-dir` made absolute, else the default.  An empty
    one is a usage error (it would be the current directory)."""
    if given is None:
        return default_cache_directory()
    if not given:
        fail_usage("--cache-dir is empty")
    return os.path.abspath(given)
