"""The text format, for people: each group with its size and digest, then a summary of the run.

Names are escaped (`display.printable`), so a line is always one path and a terminal shows it as is.
"""

from __future__ import annotations

from typing import IO

from dedup_engine.model import FindResult
from dedup_engine.options import ScanOptions
from dedup_engine.report.display import human_size, printable


def write_text(result: FindResult, out: IO[bytes]) -> None:
    """For people: each group with its size and digest, then a summary.  Odd names are escaped."""
    lines: list[str] = []
    for number, group in enumerate(result.groups, 1):
        inodes = group.inodes
        lines.append(
            f"group {number}: {len(group.files)} files, {inodes} distinct, "
            f"{human_size(group.size)} each, {human_size(group.reclaimable)} reclaimable, "
            f"blake3 {group.digest[:16]}"
        )
        lines.extend(f"  {printable(f.path)}" for f in group.files)
        lines.append("")
    stats = result.stats
    lines.append(
        f"{stats.groups} groups, {stats.files_in_groups} files in groups, "
        f"{human_size(stats.bytes_reclaimable)} reclaimable; scanned {stats.files_scanned} files "
        f"({human_size(stats.bytes_scanned)}) in {stats.seconds:.2f} s"
    )
    if result.issues:
        lines.append(f"{len(result.issues)} files could not be read:")
        lines.extend(f"  {printable(i.path)}: {i.message} ({i.stage.value})" for i in result.issues)
    out.write(("\n".join(lines) + "\n").encode("utf-8", "backslashreplace"))


def write(result: FindResult, options: ScanOptions, out: IO[bytes], *, null: bool) -> int:
    """The format's `Writer`: the result for people; `options` and `null` have no use here."""
    write_text(result, out)
    return 0
