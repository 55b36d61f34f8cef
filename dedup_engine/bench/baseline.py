"""A gate's baseline file: the figures a run is compared with, read, written and checked.

Both gates keep theirs as one JSON object with a `schema` number (the work gate's counts in
`benchmarks/work_baseline.json`, the time gate's ratios wherever `--baseline` says).  Written with
sorted keys and one-space indents, so a deliberate update shows as a readable diff.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: The work gate's baseline, committed with the project, relative to the repository root.
DEFAULT_BASELINE = Path("benchmarks") / "work_baseline.json"


def load_baseline(path: Path = DEFAULT_BASELINE) -> dict[str, Any]:
    """The saved figures; OSError if unreadable, ValueError if not JSON or not a JSON object."""
    with path.open(encoding="utf-8") as handle:
        data = json.load(handle)
    if not isinstance(data, dict):
        raise ValueError("it does not hold a JSON object")
    return data


def save_baseline(data: Mapping[str, Any], path: Path = DEFAULT_BASELINE) -> None:
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def schema_mismatch(baseline: Mapping[str, Any], schema: int) -> str | None:
    """Why the baseline cannot be compared with figures of `schema`, or None when it can."""
    found = baseline.get("schema")
    return None if found == schema else f"baseline schema {found!r} is not {schema}"
