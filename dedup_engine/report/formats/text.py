"""The text format, for people: each group with its size and digest, then a summary of the run.

Groups are written one at a time as they are read, so the report is never whole in memory.

Names are escaped (`display.printable`), so a line is always one path and a terminal shows it as is.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import IO

from dedup_engine.model import FileEntry, Findings, Verified, reclaimable_bytes
from dedup_engine.options import ScanOptions
from dedup_engine.paths import RootIndex
from dedup_engine.report.display import human_size, printable


def write_text(result: Findings, out: IO[bytes]) -> None:
    """For people: each group with its size and digest, then a summary.  Odd names are escaped.

    Each group is written as it comes from `result.groups`, which is read once."""
    roots = RootIndex(result.reference_roots, result.reference_roots)

    def mark(path: str) -> str:
        return _REFERENCE if roots.is_reference(path) else ""

    def listed(files: Iterable[FileEntry]) -> list[str]:
        if not result.reference_roots:  # the common run: no name to look up
            return [printable(f.path) for f in files]
        return [f"{printable(f.path)}{mark(f.path)}" for f in files]

    for number, directories in enumerate(result.directory_groups, 1):
        header = (
            f"directory group {number}: {len(directories.paths)} directories, "
            f"{human_size(directories.bytes)} each"
        )
        names = [f"{printable(path.rstrip('/'))}/{mark(path)}" for path in directories.paths]
        out.write(_block(header, names))
    for number, group in enumerate(result.groups, 1):
        size, inodes = group.size, group.inodes  # counted once: `group.reclaimable` counts again
        header = (
            f"group {number}: {len(group.files)} files, {inodes} distinct, "
            f"{human_size(size)} each, {human_size(reclaimable_bytes(size, inodes))} reclaimable, "
            f"blake3 {group.digest[:16]}{_HOW.get(group.verified, '')}"
        )
        out.write(_block(header, listed(group.files)))
    stats = result.stats
    out.write(
        _encode(
            f"{stats.groups} groups, {stats.files_in_groups} files in groups, "
            f"{human_size(stats.bytes_reclaimable)} reclaimable; scanned {stats.files_scanned} "
            f"files ({human_size(stats.bytes_scanned)}) in {stats.seconds:.2f} s\n"
        )
    )
    if result.directory_groups:
        out.write(_encode(f"{len(result.directory_groups)} groups of duplicate directories\n"))
    if result.issues:
        out.write(_encode(f"{len(result.issues)} files could not be read:\n"))
        for i in result.issues:
            out.write(_encode(f"  {printable(i.path)}: {i.message} ({i.stage.value})\n"))


#: After a group's digest, how its files were found equal where it was not byte by byte:
#: with `--sample` on windows only; with `--root-on` by their digests (no worker could read
#: them all).
_HOW = {
    Verified.SAMPLED: " of sampled windows: SAMPLED, NOT VERIFIED (the files may differ elsewhere)",
    Verified.DIGEST: " (verified by digest, across workers' disks)",
}
#: After a file under a reference root: kept by `dedup apply`, whatever its policy.
_REFERENCE = "   (reference)"


def _block(header: str, names: list[str]) -> bytes:
    """A group as printed: its line, each of its names indented, a blank line."""
    return _encode("\n".join([header, *(f"  {name}" for name in names), "\n"]))


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "backslashreplace")


def write(result: Findings, options: ScanOptions, out: IO[bytes], *, null: bool) -> int:
    """The format's `Writer`: the result for people; `options` and `null` have no use here."""
    write_text(result, out)
    return 0
