"""dedup-engine: find duplicate files fast, then act on them safely.

The library API is `find_duplicates(roots, ScanOptions(...))`; the `dedup` command is a thin layer
over it (`dedup_engine.cli.app`), and importing this package never imports the CLI's libraries.
"""

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

__version__ = "0.1.0"

__all__ = [
    "DuplicateGroup",
    "FileEntry",
    "FindResult",
    "Issue",
    "OptionsError",
    "Progress",
    "RunStats",
    "ScanOptions",
    "Stage",
    "StageStats",
    "__version__",
    "find_duplicates",
]
