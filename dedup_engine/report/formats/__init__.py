"""The output formats of `dedup find` and the one table that picks a writer for a format.

As in rmlint's lib/formats/, each format is a module of its own (`text`, `fdupes`, `json`, `csv`)
exposing `write`, a `Writer`, and `WRITERS` registers it under its `Format`: a caller looks the
writer up and knows no format by name.  Each module also keeps the function that takes just what
its format reads (`write_fdupes(groups, out)`, `write_json(..., version, text_out)`, ...), for
library callers.
"""

from __future__ import annotations

import enum
from typing import IO, Protocol

from dedup_engine.model import Findings
from dedup_engine.options import ScanOptions
from dedup_engine.report.formats import csv, fdupes, json, text


class Format(str, enum.Enum):
    TEXT = "text"
    FDUPES = "fdupes"
    JSON = "json"
    CSV = "csv"


class Writer(Protocol):
    """Writes a search's report to `out` and returns the number of paths it had to leave out.

    `result` is a `FindResult`, or any `Findings`: the groups are read once, in the order given,
    and written as they come (a `report.spool.GroupSpool` gives them in report order from disk).

    `null` asks for NUL-ended paths (`-0`); only fdupes has them, and only fdupes without them
    leaves paths out (names holding a newline).  The others ignore it and return 0.
    """

    def __call__(
        self, result: Findings, options: ScanOptions, out: IO[bytes], *, null: bool
    ) -> int: ...


WRITERS: dict[Format, Writer] = {
    Format.TEXT: text.write,
    Format.FDUPES: fdupes.write,
    Format.JSON: json.write,
    Format.CSV: csv.write,
}
