"""Reading a list of paths to search (`--files-from`): one path a line, or NUL after each path,
from a file or a stream, read a block at a time.

Names are bytes on Linux and may hold any byte but NUL and "/"-less oddities; a newline-separated
list cannot hold a name with a newline (`find -print0` and `-0` can).  Each path is decoded as
the rest of the engine decodes names (surrogateescape), so the exact bytes come back.  Empty
entries (a blank line, the separator after the last path) are passed over.
"""

from __future__ import annotations

import os
import select
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
    while block := _read(stream):
        whole, cut, rest = (rest + block).rpartition(separator)
        if cut:  # else no separator yet: all of it is the start of an entry
            entries = _entries(whole, separator, number, null)
            number += len(entries)
            for path in entries:
                if not path:
                    empty += 1
                    if empty > EMPTY_RUN:
                        raise ListError(
                            f"{EMPTY_RUN:,} empty entries in a row: not a list of paths"
                        )
                    continue
                empty = 0
                yield path
        if len(rest) > LONGEST:
            raise ListError(_too_long(number + 1, null))
    if rest:
        yield from _entries(rest, separator, number, null)


def _read(stream: BinaryIO) -> bytes:
    """The next block, b"" at the end; a stream that has nothing yet (a non-blocking pipe,
    whose `read` then answers None) is waited for, not taken to have ended."""
    while (block := stream.read(BLOCK)) is None:
        select.select([stream], [], [])
    return block


def _entries(whole: bytes, separator: bytes, number: int, null: bool) -> list[str]:
    """The entries of a run of whole entries, checked and decoded together: a newline or a NUL
    is never part of a multibyte character, so splitting the decoded text is splitting the
    bytes (numbered from `number + 1`, for the messages)."""
    entries = whole.split(separator)
    if not null and b"\0" in whole:
        at = next(i for i, entry in enumerate(entries) if b"\0" in entry)
        raise ListError(f"entry {number + at + 1} holds a NUL (a NUL-separated list wants -0)")
    if max(map(len, entries)) > LONGEST:
        at = next(i for i, entry in enumerate(entries) if len(entry) > LONGEST)
        raise ListError(_too_long(number + at + 1, null))
    return os.fsdecode(whole).split(os.fsdecode(separator))


def _too_long(number: int, null: bool) -> str:
    hint = "a newline-separated list read with -0?" if null else "a NUL-separated list without -0?"
    return f"entry {number} is longer than {LONGEST} bytes ({hint})"
