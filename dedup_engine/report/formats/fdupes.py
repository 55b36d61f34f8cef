"""The fdupes format: one path per line and a blank line after each group, in the names' own bytes.

With `--dirs`, groups of duplicate directories come first, each path ending in "/".

Names that are not valid UTF-8 are Python's surrogateescape strings; `os.fsencode` writes back
their exact bytes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import IO

from dedup_engine.model import DirectoryGroup, DuplicateGroup, Findings
from dedup_engine.options import ScanOptions
from dedup_engine.report.formats.blocks import Block, Counted, Renderer


def write_fdupes(groups: Iterable[DuplicateGroup], out: IO[bytes], *, null: bool = False) -> int:
    """fdupes' own format: one path per line, a blank line after each group, raw name bytes.

    With `null` (`-0`, as `jdupes -0` and `rmlint -0`), a NUL ends each path and one more each
    group: exact for any name.  Without it, a name holding a newline would read as two paths (a
    directory `x\\n` holding `etc/passwd` would give a line `/etc/passwd`), so such paths are left
    out, with a group left with no copy.  Returns the number of paths left out so.
    """
    render = Counted(_renderer(null))
    _write_groups(render.each(groups), out)
    return render.left_out


def renderer(options: ScanOptions, null: bool) -> Renderer:
    """Renders a group as `write_fdupes` writes it."""
    return _renderer(null)


def _renderer(null: bool) -> Renderer:
    end = b"\0" if null else b"\n"

    def render(group: DuplicateGroup) -> Block:
        files = group.files
        left_out = 0
        if not null and any("\n" in f.path for f in files):
            files = tuple(f for f in files if "\n" not in f.path)
            left_out = len(group.files) - len(files)
            # What is left must still be a group: two paths, and two files if it had two.
            if len(files) < 2 or len({(f.dev, f.ino) for f in files}) < min(2, group.inodes):
                return b"", left_out
        return b"".join([*(os.fsencode(f.path) + end for f in files), end]), left_out

    return render


def _write_groups(blocks: Iterable[bytes], out: IO[bytes]) -> None:
    for block in blocks:
        if block:
            out.write(block)


def write_directories(
    groups: Iterable[DirectoryGroup], out: IO[bytes], *, null: bool = False
) -> int:
    """Groups of duplicate directories (`--dirs`) as groups of paths, each ending in "/" so
    that no tool reading the format takes one for a file; a path holding a newline is left out
    without `null`, as for files.  Returns the number of paths left out."""
    end = b"\0" if null else b"\n"
    left_out = 0
    for group in groups:
        paths = [p for p in group.paths if null or "\n" not in p]
        left_out += len(group.paths) - len(paths)
        if len(paths) >= 2:
            out.write(b"".join(os.fsencode(p.rstrip("/")) + b"/" + end for p in paths) + end)
    return left_out


def write(result: Findings, options: ScanOptions, out: IO[bytes], *, null: bool) -> int:
    """The format's `Writer`: the directory groups, then the file groups; the number of paths
    left out."""
    left_out = write_directories(result.directory_groups, out, null=null)
    return left_out + write_fdupes(result.groups, out, null=null)


def write_rendered(
    result: Findings, blocks: Iterable[bytes], options: ScanOptions, out: IO[bytes], *, null: bool
) -> int:
    """The format's `BlockWriter`: `write` with the groups rendered already; the number of
    directory paths left out (the groups' own are their blocks')."""
    left_out = write_directories(result.directory_groups, out, null=null)
    _write_groups(blocks, out)
    return left_out
