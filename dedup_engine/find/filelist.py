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


def read_paths(stream: BinaryIO, null: bool) -> Iterator[str]:
    """The paths of a list, in order, as they are read."""
    separator = b"\0" if null else b"\n"
    rest = b""
    while block := stream.read(BLOCK):
        *paths, rest = (rest + block).split(separator)
        for path in paths:
            if path:
                yield os.fsdecode(path)
    if rest:
        yield os.fsdecode(rest)
