"""The CSV format: one row per path with its group's number, size and digest, in the names' bytes.

With `--dirs`, a row per duplicate directory comes first.  Names that are not valid UTF-8 are
Python's surrogateescape strings, written back as their exact bytes; a name holding a comma, a
quote or a newline is quoted.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from typing import IO

from dedup_engine.model import DirectoryGroup, DuplicateGroup, Findings
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
    for number, group in enumerate(groups, 1):
        how = [group.verified.value] if verified else []
        for f in group.files:
            row = [number, group.size, group.digest, f.path, f.dev, f.ino, f.mtime_ns, f.ctime_ns]
            writer.writerow([*row, *how])
    text.flush()
    text.detach()


def write(result: Findings, options: ScanOptions, out: IO[bytes], *, null: bool) -> int:
    """The format's `Writer`: the result's directory groups and groups; `null` has no use
    here."""
    verified = options.sample > 0 or bool(options.root_on)
    write_csv(result.groups, out, result.directory_groups, verified=verified)
    return 0
