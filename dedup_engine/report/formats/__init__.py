"""The output formats of `dedup find` and the one table that picks a writer for a format.

As in rmlint's lib/formats/, each format is a module of its own (`text`, `fdupes`, `json`, `csv`)
exposing `write`, a `Writer`, and `WRITERS` registers it under its `Format`: a caller looks the
writer up and knows no format by name.  `RENDERINGS` registers the same formats for a caller that
renders each group as soon as it is final (`blocks`) and has the report written around them at
the end; a format's `write` renders its groups the same way, as it goes.  Each module also keeps
the function that takes just what its format reads (`write_fdupes(groups, out)`,
`write_json(..., version, text_out)`, ...), for library callers.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO, Protocol

from dedup_engine.model import Findings
from dedup_engine.options import ScanOptions
from dedup_engine.report.formats import csv, fdupes, json, text
from dedup_engine.report.formats.blocks import Renderer


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


class BlockWriter(Protocol):
    """Writes a search's report to `out` around its groups rendered already (`blocks.Block`'s
    bytes, in report order; `result.groups` is not read) and returns the number of paths the
    report left out apart from the blocks' own."""

    def __call__(
        self,
        result: Findings,
        blocks: Iterable[bytes],
        options: ScanOptions,
        out: IO[bytes],
        *,
        null: bool,
    ) -> int: ...


@dataclass(frozen=True, slots=True)
class Rendering:
    """A format's groups rendered as each is final: `renderer` makes what renders them for a
    run's options (None where a group's rendering needs what only the finished search knows),
    and `write` writes the report around them."""

    renderer: Callable[[ScanOptions, bool], Renderer | None]
    write: BlockWriter


WRITERS: dict[Format, Writer] = {
    Format.TEXT: text.write,
    Format.FDUPES: fdupes.write,
    Format.JSON: json.write,
    Format.CSV: csv.write,
}

RENDERINGS: dict[Format, Rendering] = {
    Format.TEXT: Rendering(text.renderer, text.write_rendered),
    Format.FDUPES: Rendering(fdupes.renderer, fdupes.write_rendered),
    Format.JSON: Rendering(json.renderer, json.write_rendered),
    Format.CSV: Rendering(csv.renderer, csv.write_rendered),
}
