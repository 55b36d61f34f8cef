"""The text format, for people: each group with its size and digest, then a summary of the run.

Groups are written one at a time as they are read, so the report is never whole in memory.

Names are escaped (`display.printable`), so a line is always one path and a terminal shows it as is.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import IO

from dedup_engine.model import DuplicateGroup, FileEntry, Findings, Verified, reclaimable_bytes
from dedup_engine.options import ScanOptions
from dedup_engine.paths import RootIndex
from dedup_engine.report.display import human_size, printable
from dedup_engine.report.formats.blocks import Block, Counted, Renderer


def write_text(result: Findings, out: IO[bytes]) -> None:
    """For people: each group with its size and digest, then a summary.  Odd names are escaped.

    Each group is written as it comes from `result.groups`, which is read once."""
    reference = RootIndex(result.reference_roots, result.reference_roots)
    render = Counted(_renderer(reference if result.reference_roots else None))
    write_blocks(result, render.each(result.groups), out)


def renderer(options: ScanOptions, null: bool) -> Renderer | None:
    """Renders a group as `write_text` writes it, but for its number; None with reference roots,
    whose files are marked by the roots the search makes canonical."""
    return None if options.reference else _renderer(None)


def _renderer(reference: RootIndex | None) -> Renderer:
    def listed(files: Iterable[FileEntry]) -> list[str]:
        if reference is None:  # the common run: no name to look up
            return [printable(f.path) for f in files]
        return [f"{printable(f.path)}{_mark(reference, f.path)}" for f in files]

    def render(group: DuplicateGroup) -> Block:
        size, inodes = group.size, group.inodes  # counted once: `group.reclaimable` counts again
        header = (
            f": {len(group.files)} files, {inodes} distinct, "
            f"{human_size(size)} each, {human_size(reclaimable_bytes(size, inodes))} reclaimable, "
            f"blake3 {group.digest[:16]}{_HOW.get(group.verified, '')}"
        )
        return _block(header, listed(group.files)), 0

    return render


def write_blocks(result: Findings, blocks: Iterable[bytes], out: IO[bytes]) -> None:
    """The text report of `result` with its groups rendered already (`renderer`), in report
    order: each block after its number, then the summary."""
    reference = RootIndex(result.reference_roots, result.reference_roots)
    for number, directories in enumerate(result.directory_groups, 1):
        header = (
            f"directory group {number}: {len(directories.paths)} directories, "
            f"{human_size(directories.bytes)} each"
        )
        names = [
            f"{printable(path.rstrip('/'))}/{_mark(reference, path)}" for path in directories.paths
        ]
        out.write(_block(header, names))
    for number, block in enumerate(blocks, 1):
        out.write(b"group %d%b" % (number, block))
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


def _mark(reference: RootIndex, path: str) -> str:
    return _REFERENCE if reference.is_reference(path) else ""


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
    return _encode("\n  ".join([header, *names]) + "\n\n")


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "backslashreplace")


def write(result: Findings, options: ScanOptions, out: IO[bytes], *, null: bool) -> int:
    """The format's `Writer`: the result for people; `options` and `null` have no use here."""
    write_text(result, out)
    return 0


def write_rendered(
    result: Findings, blocks: Iterable[bytes], options: ScanOptions, out: IO[bytes], *, null: bool
) -> int:
    """The format's `BlockWriter`: `write` with the groups rendered already."""
    write_blocks(result, blocks, out)
    return 0
