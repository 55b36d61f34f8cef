"""dedup-engine: find duplicate files fast, then act on them safely.

The public API, in the order of a run:

- search: `find_duplicates(roots, ScanOptions(...))` -> `FindResult` (groups, issues, stats);
- report: `WRITERS[Format.JSON](result, options, out, null=False)` writes a report, and
  `read_report(source)` reads a JSON report back as untrusted input (`ReportError`);
- act: `make_plan(report.groups, report.roots, Policy(Action.HARDLINK))` -> `Plan`, then
  `apply_plan(plan, journal=...)` -> `ApplySummary`; every operation is checked again on disk.

Everything else is internal.  The `dedup` command is a thin layer over this API
(`dedup_engine.cli`), and importing this package never imports the CLI's libraries.
"""

import importlib
from typing import TYPE_CHECKING, Any

from dedup_engine.find.pipeline import Progress, find_duplicates
from dedup_engine.model import (
    DuplicateGroup,
    FileEntry,
    FindResult,
    Issue,
    RunStats,
    Stage,
    StageStats,
)
from dedup_engine.options import OptionsError, ScanOptions
from dedup_engine.version import __version__

if TYPE_CHECKING:
    from dedup_engine.apply.outcome import OpResult, Outcome
    from dedup_engine.apply.plan import Action, Keep, Plan, Policy, make_plan
    from dedup_engine.apply.runner import ApplySummary, apply_plan
    from dedup_engine.report.formats import WRITERS, Format
    from dedup_engine.report.read import Report, ReportError
    from dedup_engine.report.read import read_json as read_report

#: Names imported on first use: a search (and `dedup find`'s start-up) does not pay for the
#: modules that write or act on reports.  name -> (module, attribute)
_LAZY = {
    "OpResult": ("dedup_engine.apply.outcome", "OpResult"),
    "Outcome": ("dedup_engine.apply.outcome", "Outcome"),
    "Action": ("dedup_engine.apply.plan", "Action"),
    "Keep": ("dedup_engine.apply.plan", "Keep"),
    "Plan": ("dedup_engine.apply.plan", "Plan"),
    "Policy": ("dedup_engine.apply.plan", "Policy"),
    "make_plan": ("dedup_engine.apply.plan", "make_plan"),
    "ApplySummary": ("dedup_engine.apply.runner", "ApplySummary"),
    "apply_plan": ("dedup_engine.apply.runner", "apply_plan"),
    "WRITERS": ("dedup_engine.report.formats", "WRITERS"),
    "Format": ("dedup_engine.report.formats", "Format"),
    "Report": ("dedup_engine.report.read", "Report"),
    "ReportError": ("dedup_engine.report.read", "ReportError"),
    "read_report": ("dedup_engine.report.read", "read_json"),
}


def __getattr__(name: str) -> Any:
    try:
        module, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'dedup_engine' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


__all__ = [
    "WRITERS",
    "Action",
    "ApplySummary",
    "DuplicateGroup",
    "FileEntry",
    "FindResult",
    "Format",
    "Issue",
    "Keep",
    "OpResult",
    "OptionsError",
    "Outcome",
    "Plan",
    "Policy",
    "Progress",
    "Report",
    "ReportError",
    "RunStats",
    "ScanOptions",
    "Stage",
    "StageStats",
    "__version__",
    "apply_plan",
    "find_duplicates",
    "make_plan",
    "read_report",
]


def __dir__() -> list[str]:
    return sorted(__all__)
