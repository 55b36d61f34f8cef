"""Reading a list of paths to search (`--files-from`): one path a line, or NUL after each path,
from a file or a stream, read a block at a time.

Names are bytes on Linux and may hold any byte but NUL and "/"-less oddities; a newline-separated
list cannot hold a name with a newline (`find -print0` and `-0` can).  Each path is decoded as
the rest of the engine decodes names (surrogateescape), so the exact bytes come back.  Empty
entries (a blank line, the separator after the last path) are passed over.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import BinaryIO

#: Bytes read at a time.
BLOCK = 1 << 16
#: The longest path Linux takes (PATH_MAX): an entry longer is a list read with the wrong
#: separator (a NUL-separated list without -0, or the other way), not a path.
LONGEST = 4096
#: Separators in a row, at most, with no path between them (`/dev/zero` read with -0).
EMPTY_RUN = 1 << 20


class ListError(ValueError):
    """The list is not a list of paths: said in one line, before any work."""


def read_paths(stream: BinaryIO, null: bool) -> Iterator[str]:
    """The paths of a list, in order, as they are read.  ListError for an entry longer than a
    path can be, a NUL in a newline-separated entry, or a run of separators with no path."""
    separator = b"\0" if null else b"\n"
    rest = b""
    empty = 0
    number = 0
    while block := stream.read(BLOCK):
        *paths, rest = (rest + block).split(separator)
        for path in paths:
            number += 1
            if not path:
                empty += 1
                if empty > EMPTY_RUN:
                    raise ListError(f"{EMPTY_RUN:,} empty entries in a row: not a list of paths")
                continue
            empty = 0
            yield _checked(path, number, null)
        if len(rest) > LONGEST:
            raise ListError(_too_long(number + 1, null))
    if rest:
        yield _checked(rest, number + 1, null)


def _checked(path: bytes, number: int, null: bool) -> str:
    if len(path) > LONGEST:
        raise ListError(_too_long(number, null))
    if b"\0" in path:
        raise ListError(f"entry {number} holds a NUL (a NUL-separated list wants -0)")
    return os.fsdecode(path)


def _too_long(number: int, null: bool) -> str:
    hint = "a newline-separated list read with -0?" if null else "a NUL-separated list without -0?"
    return f"entry {number} is longer than {LONGEST} bytes ({hint})"
