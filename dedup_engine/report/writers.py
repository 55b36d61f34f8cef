"""Writing results as text, fdupes, JSON and CSV.

The JSON report is what `dedup apply` acts on; its reader (`reportread`) checks
it as untrusted input, and the two round-trip.  File names that are not valid UTF-8 are
kept as Python's surrogateescape strings: JSON escapes them (`\\udcxx`) and `os.fsencode(path)`
restores the exact bytes; the byte-oriented formats (fdupes, CSV) write the original bytes.
"""

from __future__ import annotations

import csv
import datetime as dt
import enum
import io
import json
import os
from collections.abc import Iterable
from typing import IO, Any

from dedup_engine.model import DuplicateGroup, FindResult
from dedup_engine.options import ScanOptions
from dedup_engine.report.read import SCHEMA, TOOL


class Format(str, enum.Enum):
    TEXT = "text"
    FDUPES = "fdupes"
    JSON = "json"
    CSV = "csv"


def to_json_dict(result: FindResult, options: ScanOptions, version: str) -> dict[str, Any]:
    created = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    return {
        "schema": SCHEMA,
        "tool": TOOL,
        "version": version,
        "created": created.isoformat().replace("+00:00", "Z"),
        "roots": list(result.roots),
        "options": options.as_dict(),
        "stats": result.stats.as_dict(),
        "groups": [
            {
                "size": g.size,
                "digest": g.digest,
                "files": [
                    {
                        "path": f.path,
                        "dev": f.dev,
                        "ino": f.ino,
                        "mtime_ns": f.mtime_ns,
                        "ctime_ns": f.ctime_ns,
                        "uid": f.uid,
                        "gid": f.gid,
                        "mode": f.mode,
                    }
                    for f in g.files
                ],
            }
            for g in result.groups
        ],
        "issues": [
            {"path": i.path, "stage": i.stage.value, "message": i.message} for i in result.issues
        ],
    }


def write_json(result: FindResult, options: ScanOptions, version: str, out: IO[str]) -> None:
    # ensure_ascii keeps surrogate-escaped names representable: they become \\udcxx escapes.
    json.dump(to_json_dict(result, options, version), out, indent=1, ensure_ascii=True)
    out.write("\n")


def write_fdupes(groups: Iterable[DuplicateGroup], out: IO[bytes], *, null: bool = False) -> int:
    """fdupes' own format: one path per line, a blank line after each group, raw name bytes.

    With `null` (`-0`, as `jdupes -0` and `rmlint -0`), a NUL ends each path and one more each
    group: exact for any name.  Without it, a name holding a newline would read as two paths (a
    directory `x\\n` holding `etc/passwd` would give a line `/etc/passwd`), so such paths are left
    out, with a group left with no copy.  Returns the number of paths left out so.
    """
    end = b"\0" if null else b"\n"
    left_out = 0
    for group in groups:
        files = group.files
        if not null and any("\n" in f.path for f in files):
            files = tuple(f for f in files if "\n" not in f.path)
            left_out += len(group.files) - len(files)
            # What is left must still be a group: two paths, and two files if it had two.
            if len(files) < 2 or len({(f.dev, f.ino) for f in files}) < min(2, group.inodes):
                continue
        out.write(b"".join(os.fsencode(f.path) + end for f in files))
        out.write(end)
    return left_out


def write_csv(groups: Iterable[DuplicateGroup], out: IO[bytes]) -> None:
    """One row per path with a group id; names keep their bytes (quoted where needed)."""
    text = io.TextIOWrapper(out, encoding="utf-8", errors="surrogateescape", newline="")
    writer = csv.writer(text)
    writer.writerow(["group", "size", "digest", "path", "dev", "ino", "mtime_ns", "ctime_ns"])
    for number, group in enumerate(groups, 1):
        for f in group.files:
            writer.writerow(
                [number, group.size, group.digest, f.path, f.dev, f.ino, f.mtime_ns, f.ctime_ns]
            )
    text.flush()
    text.detach()


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


def printable(path: str) -> str:
    """A path safe to print on a terminal, one line, and unambiguous: a backslash is doubled,
    an undecodable byte is `\\xNN` (always 80-ff), an ASCII control character `\\n`, `\\t`, `\\r`
    or `\\xNN` (below 80), any other character that does not print `\\uNNNN` or `\\UNNNNNNNN`.
    So a newline in a name and a backslash followed by `n` print differently."""
    if path.isprintable() and "\\" not in path:
        return path
    out = []
    for ch in path:
        if ch == "\\":
            out.append("\\\\")
        elif ch.isprintable():
            out.append(ch)
        elif "\udc80" <= ch <= "\udcff":
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        elif ch < "\x80":
            out.append(ch.encode("unicode_escape").decode("ascii"))
        elif ch <= "\uffff":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return "".join(out)


def human_size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"
