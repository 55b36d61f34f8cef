"""The JSON format: the whole result as one JSON object, the report `dedup apply` acts on.

Its reader (`report.read`) checks it as untrusted input, and the two round-trip.  It is written
as it goes, a group at a time, so a report of millions of files is never whole in memory.  File
names that are not valid UTF-8 are kept as Python's surrogateescape strings: JSON escapes them
(`\\udcxx`) and `os.fsencode(path)` restores the exact bytes.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import operator
from collections.abc import Iterable, Iterator
from json.encoder import encode_basestring_ascii
from typing import IO, Any

from dedup_engine.model import DuplicateGroup, Findings, Issue
from dedup_engine.options import ScanOptions
from dedup_engine.report.formats.blocks import Block, Renderer
from dedup_engine.report.schema import SCHEMA, TOOL
from dedup_engine.version import __version__

#: A file's fields in the report, in order.
FILE_FIELDS = ("path", "dev", "ino", "mtime_ns", "ctime_ns", "uid", "gid", "mode")
_file_values = operator.attrgetter(*FILE_FIELDS)


def to_json_dict(result: Findings, options: ScanOptions, version: str) -> dict[str, Any]:
    """The whole report as one dict, groups included (`write_json` writes the same, streaming)."""
    return {
        **_opening(version),
        "roots": list(result.roots),
        **_head(result, options),
        "groups": [
            {
                "size": g.size,
                "digest": g.digest,
                "verified": g.verified.value,
                "files": [dict(zip(FILE_FIELDS, _file_values(f), strict=True)) for f in g.files],
            }
            for g in result.groups
        ],
        "issues": [_issue(i) for i in result.issues],
    }


def write_json(result: Findings, options: ScanOptions, version: str, out: IO[str]) -> None:
    """The bytes `json.dump(to_json_dict(...), out, indent=1)` would write, plus a newline, each
    group written as it is read from `result.groups` (read once).

    ensure_ascii keeps surrogate-escaped names representable: they become \\udcxx escapes."""
    _write_json(result, options, version, map(_group_json, result.groups), out)


def _write_json(
    result: Findings, options: ScanOptions, version: str, groups: Iterator[str], out: IO[str]
) -> None:
    """`write_json` with each group as it is written already (`_group_json`)."""
    opening = json.dumps(_opening(version), indent=1, ensure_ascii=True)
    out.write(opening.removesuffix("\n}"))
    # The roots one at a time: a list from --files-from may name millions.
    out.write(',\n "roots": ')
    _write_list(out, ("  " + json.dumps(root) for root in result.roots))
    head = json.dumps(_head(result, options), indent=1, ensure_ascii=True)
    out.write(",\n" + head.removeprefix("{\n").removesuffix("\n}"))
    out.write(',\n "groups": ')
    _write_list(out, groups)
    out.write(',\n "issues": ')
    _write_list(out, (_nested(json.dumps(_issue(i), indent=1)) for i in result.issues))
    out.write("\n}\n")


def _opening(version: str) -> dict[str, Any]:
    """What the report says before its roots."""
    created = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    return {
        "schema": SCHEMA,
        "tool": TOOL,
        "version": version,
        "created": created.isoformat().replace("+00:00", "Z"),
    }


def _head(result: Findings, options: ScanOptions) -> dict[str, Any]:
    """What the report says after its roots and before its groups: all known before the first
    group is written."""
    return {
        "reference_roots": list(result.reference_roots),
        "directory_groups": [
            {"paths": list(group.paths), "bytes": group.bytes} for group in result.directory_groups
        ],
        "options": options.as_dict(),
        "stats": result.stats.as_dict(),
    }


def _issue(issue: Issue) -> dict[str, str]:
    return {"path": issue.path, "stage": issue.stage.value, "message": issue.message}


def _write_list(out: IO[str], items: Iterator[str]) -> None:
    """A list that is a value of the report's object: `[]`, or one indented item after another."""
    first = next(items, None)
    if first is None:
        out.write("[]")
        return
    out.write("[\n")
    out.write(first)
    for item in items:
        out.write(",\n")
        out.write(item)
    out.write("\n ]")


def _nested(item: str) -> str:
    """An item of such a list, dumped with indent=1 on its own, indented to its depth (2)."""
    return "  " + item.replace("\n", "\n  ")


# A group and each of its files as `json.dump(..., indent=1)` writes them at their depth: keys
# are plain ASCII, strings go through the encoder's own escaping (`encode_basestring_ascii`,
# what `json.dumps` calls for a string, without its setup for each call) and ints through %d,
# which writes them as json's encoder does.
_GROUP = '  {\n   "size": %d,\n   "digest": %s,\n   "verified": "%s",\n   "files": %s\n  }'
_FILE = (
    "    {\n"
    + ",\n".join(f'     "{name}": {"%s" if name == "path" else "%d"}' for name in FILE_FIELDS)
    + "\n    }"
)


def _group_json(group: DuplicateGroup) -> str:
    files = ",\n".join(
        [
            _FILE % (encode_basestring_ascii(values[0]), *values[1:])
            for values in map(_file_values, group.files)
        ]
    )
    listed = f"[\n{files}\n   ]" if files else "[]"
    return _GROUP % (
        group.size,
        encode_basestring_ascii(group.digest),
        group.verified.value,
        listed,
    )


def renderer(options: ScanOptions, null: bool) -> Renderer:
    """Renders a group as `write_json` writes it (ASCII, as the whole report is)."""
    return _render


def _render(group: DuplicateGroup) -> Block:
    return _group_json(group).encode("ascii"), 0


def write(result: Findings, options: ScanOptions, out: IO[bytes], *, null: bool) -> int:
    """The format's `Writer`: the report of this version, as ASCII bytes; `null` has no use here."""
    text = io.TextIOWrapper(out, encoding="ascii", newline="\n")
    write_json(result, options, __version__, text)
    text.flush()
    text.detach()
    return 0


def write_rendered(
    result: Findings, blocks: Iterable[bytes], options: ScanOptions, out: IO[bytes], *, null: bool
) -> int:
    """The format's `BlockWriter`: `write` with the groups rendered already."""
    text = io.TextIOWrapper(out, encoding="ascii", newline="\n")
    groups = (block.decode("ascii") for block in blocks)
    _write_json(result, options, __version__, groups, text)
    text.flush()
    text.detach()
    return 0
