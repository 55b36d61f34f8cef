"""The JSON format: the whole result as one JSON object, the report `dedup apply` acts on.

Its reader (`report.read`) checks it as untrusted input, and the two round-trip.  File names that
are not valid UTF-8 are kept as Python's surrogateescape strings: JSON escapes them (`\\udcxx`) and
`os.fsencode(path)` restores the exact bytes.
"""

from __future__ import annotations

import datetime as dt
import io
import json
from typing import IO, Any

from dedup_engine.model import FindResult
from dedup_engine.options import ScanOptions
from dedup_engine.report.schema import SCHEMA, TOOL
from dedup_engine.version import __version__


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


def write(result: FindResult, options: ScanOptions, out: IO[bytes], *, null: bool) -> int:
    """The format's `Writer`: the report of this version, as ASCII bytes; `null` has no use here."""
    text = io.TextIOWrapper(out, encoding="ascii", newline="\n")
    write_json(result, options, __version__, text)
    text.flush()
    text.detach()
    return 0
