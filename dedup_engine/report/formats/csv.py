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
    waiting: list[str] = []
    held = 0
    for number, group in enumerate(groups, 1):
        how = (group.verified.value,) if verified else ()
        rows = _lines(number, group, how)
        waiting += rows
        held += sum(map(len, rows))
        if held >= _WRITE_CHARACTERS:
            text.write("".join(waiting))
            waiting, held = [], 0
    text.write("".join(waiting))
    text.flush()
    text.detach()


#: Rows are written to the stream once they hold this many characters: a write for each row
#: cost five times the rows' own formatting.
_WRITE_CHARACTERS = 1 << 16
#: A row whose path holds none of these needs no quotes (the excel dialect's QUOTE_MINIMAL: the
#: delimiter, the quote and the line terminator's characters); the other fields never do.
_QUOTED = re.compile(r'[,"\r\n]')


def _lines(number: int, group: DuplicateGroup, how: tuple[str, ...]) -> list[str]:
    """A group's rows as the csv module writes them: formatted here where no field needs
    quoting, by the csv module where a path does."""
    size, digest, tail = group.size, group.digest, "".join(f",{v}" for v in how) + "\r\n"
    return [
        f"{number},{size},{digest},{f.path},{f.dev},{f.ino},{f.mtime_ns},{f.ctime_ns}{tail}"
        if _QUOTED.search(f.path) is None
        else _quoted(number, size, digest, f, how)
        for f in group.files
    ]


def _quoted(number: int, size: int, digest: str, f: FileEntry, how: tuple[str, ...]) -> str:
    out = io.StringIO()
    csv.writer(out).writerow(
        [number, size, digest, f.path, f.dev, f.ino, f.mtime_ns, f.ctime_ns, *how]
    )
    return out.getvalue()


def write(result: Findings, options: ScanOptions, out: IO[bytes], *, null: bool) -> int:
    """The format's `Writer`: the result's directory groups and groups; `null` has no use
    here."""
    verified = options.sample > 0 or bool(options.root_on)
    write_csv(result.groups, out, result.directory_groups, verified=verified)
    return 0
