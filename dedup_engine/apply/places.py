"""The directories an operation works in, opened without following symlinks.

A file is reached through its directory: `Dirs` opens each directory an operation names once, a
component at a time from "/", refusing a symlink anywhere on the way, and closes them together;
a `Place` is a name in one of them.  `target_dir` opens a move's destination the same way, and
makes what is missing of it.
"""

from __future__ import annotations

import contextlib
import os
from typing import NamedTuple

from dedup_engine.apply.identity import Refused
from dedup_engine.apply.syscalls import Syscalls
from dedup_engine.openflags import SymlinkInPath
from dedup_engine.oserror import describe_error


class Place(NamedTuple):
    """A name in a directory opened without following symlinks."""

    at: int  # O_PATH descriptor of the directory
    name: str
    path: str  # as the report gives it, for messages and the journal


class Dirs:
    """The directories one operation works in, each opened once, closed together."""

    def __init__(self, syscalls: Syscalls) -> None:
        self.syscalls = syscalls
        self._open: dict[str, int] = {}

    def place(self, path: str, role: str) -> Place:
        """`path` as a name in its opened directory; `Refused` if the directory cannot be."""
        directory, name = os.path.split(path)
        at = self._open.get(directory)
        if at is None:
            try:
                at = self.syscalls.open_dir(None, directory)
            except SymlinkInPath as exc:
                # Only a report made with -L names such paths: acting through the link would
                # change a file outside the roots that were searched.
                raise Refused(
                    f"{role} {path!r} is reached through a symlink: {describe_error(exc)}"
                ) from None
            except OSError as exc:
                raise Refused(
                    f"{role} {path!r}: cannot open its directory: {describe_error(exc)}"
                ) from None
            self._open[directory] = at
        return Place(at, name, path)

    def close(self) -> None:
        for fd in self._open.values():
            os.close(fd)
        self._open.clear()


def target_dir(syscalls: Syscalls, directory: str, dev: int, touched: set[str]) -> int:
    """The move's destination directory, made where missing (mode 700); no component a
    symlink, and on the victim's filesystem (`dev`).  The directories it makes entries in are
    added to `touched`.

    Walked from "/" a component at a time, so a symlink planted inside --to by another user is
    refused rather than followed."""
    at, probe, missing = _deepest_existing(syscalls, directory)
    try:
        if os.fstat(at).st_dev != dev:
            raise Refused(
                f"--to {directory!r} is on another filesystem than the victim; not copying"
            )
        for name in reversed(missing):
            # Made meanwhile by someone else: opened below without following a symlink, and
            # judged with the rest of the destination.
            with contextlib.suppress(FileExistsError):
                syscalls.mkdir(at, name)
            touched.add(probe)
            below = syscalls.open_dir(at, name)
            os.close(at)
            at, probe = below, os.path.join(probe, name)
    except OSError as exc:
        os.close(at)
        raise Refused(f"cannot create the directory {directory!r}: {describe_error(exc)}") from None
    except BaseException:
        os.close(at)
        raise
    return at


def _deepest_existing(syscalls: Syscalls, directory: str) -> tuple[int, str, list[str]]:
    """The deepest directory of `directory`'s path that exists, opened; its path; and the
    names below it that are missing, deepest first."""
    missing: list[str] = []
    probe = directory
    while True:
        try:
            return syscalls.open_dir(None, probe), probe, missing
        except FileNotFoundError:
            parent = os.path.dirname(probe)
            if parent == probe:
                raise Refused(f"cannot create {directory!r}: no directory to start from") from None
            missing.append(os.path.basename(probe))
            probe = parent
        except OSError as exc:
            raise Refused(
                f"cannot create the directory {directory!r}: {describe_error(exc)}"
            ) from None
