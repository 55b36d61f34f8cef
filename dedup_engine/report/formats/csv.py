"""The CSV format: one row per path with its group's number, size and digest, in the names' bytes.

With `--dirs`, a row per duplicate directory comes first.  Names that are not valid UTF-8 are
Python's surrogateescape strings, written back as their exact bytes; a name holding a comma, a
quote or a newline is quoted.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable
from typing import IO

from dedup_engine.model import DirectoryGroup, DuplicateGroup, FileEntry, Findings
from dedup_engine.options import ScanOptions
from dedup_engine.report.formats.blocks import Block, Counted, Renderer


def write_csv(
    groups: Iterable[DuplicateGroup],
    out: IO[bytes],
    directories: Iterable[DirectoryGroup] = (),
    verified: bool = False,
) -> None:
    """One row per path with a group id; names keep their bytes (quoted where needed).

    With `--dirs`, the groups of duplicate directories come first: one row per directory, its
    group numbered "d1", "d2"..., `size` the bytes its tree holds, its path ending in "/", and
    no digest, inode or times.  With `verified` (`--sample` and `--root-on` runs), a last column
    says how each group was found equal: "bytes", "sampled" or "digest"."""
    render = Counted(_renderer(verified))
    write_blocks(render.each(groups), out, directories, verified)


def renderer(options: ScanOptions, null: bool) -> Renderer:
    """Renders a group as `write_csv` writes it, but for its number: each row without it, the
    rows apart by a NUL (which no field holds)."""
    return _renderer(_verified(options))


def _renderer(verified: bool) -> Renderer:
    def render(group: DuplicateGroup) -> Block:
        how = (group.verified.value,) if verified else ()
        rows = "\0".join(_rows(group, how))
        return rows.encode("utf-8", "surrogateescape"), 0

    return render


def write_blocks(
    blocks: Iterable[bytes],
    out: IO[bytes],
    directories: Iterable[DirectoryGroup] = (),
    verified: bool = False,
) -> None:
    """`write_csv` with the groups rendered already (`renderer`), in report order: each of a
    block's rows after its group's number."""
    text = io.TextIOWrapper(out, encoding="utf-8", errors="surrogateescape", newline="")
    writer = csv.writer(text)
    extra = ["verified"] if verified else []
    writer.writerow(
        ["group", "size", "digest", "path", "dev", "ino", "mtime_ns", "ctime_ns", *extra]
    )
    for number, directory in enumerate(directories, 1):
        for path in directory.paths:
            blank = [""] * (4 + len(extra))
            writer.writerow([f"d{number}", directory.bytes, "", path.rstrip("/") + "/", *blank])
    text.flush()
    text.detach()
    waiting: list[bytes] = []
    held = 0
    for number, block in enumerate(blocks, 1):
        prefix = b"%d" % number
        rows = [prefix + row for row in block.split(b"\0")]
        waiting += rows
        held += len(block) + len(prefix) * len(rows)
        if held >= _WRITE_BYTES:
            out.write(b"".join(waiting))
            waiting, held = [], 0
    out.write(b"".join(waiting))


#: Rows are written once they hold this many bytes: a write for each row cost five times the
#: rows' own formatting.
_WRITE_BYTES = 1 << 16
#: A row whose path holds none of these needs no quotes (the excel dialect's QUOTE_MINIMAL: the
#: delimiter, the quote and the line terminator's characters); the other fields never do.
_QUOTED = re.compile(r'[,"\r\n]')


def _rows(group: DuplicateGroup, how: tuple[str, ...]) -> list[str]:
    """A group's rows as the csv module writes them, each without its first field, the group's
    number (never quoted): formatted here where no field needs quoting, by the csv module where
    a path does."""
    size, digest, tail = group.size, group.digest, "".join(f",{v}" for v in how) + "\r\n"
    return [
        f",{size},{digest},{f.path},{f.dev},{f.ino},{f.mtime_ns},{f.ctime_ns}{tail}"
        if _QUOTED.search(f.path) is None
        else _quoted(size, digest, f, how)
        for f in group.files
    ]


def _quoted(size: int, digest: str, f: FileEntry, how: tuple[str, ...]) -> str:
    out = io.StringIO()
    csv.writer(out).writerow(["", size, digest, f.path, f.dev, f.ino, f.mtime_ns, f.ctime_ns, *how])
    return out.getvalue()


def write(result: Findings, options: ScanOptions, out: IO[bytes], *, null: bool) -> int:
    """The format's `Writer`: the result's directory groups and groups; `null` has no use
    here."""
    write_csv(result.groups, out, result.directory_groups, verified=_verified(options))
    return 0


def write_rendered(
    result: Findings, blocks: Iterable[bytes], options: ScanOptions, out: IO[bytes], *, null: bool
) -> int:
    """The format's `BlockWriter`: `write` with the groups rendered already."""
    write_blocks(blocks, out, result.directory_groups, verified=_verified(options))
    return 0


def _verified(options: ScanOptions) -> bool:
    """Whether the rows say how each group was found equal: in runs where not every group was
    compared byte by byte."""
    return options.sample > 0 or bool(options.root_on)
