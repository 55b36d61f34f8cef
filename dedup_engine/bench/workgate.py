"""The work gate: exact counts of the engine's work on fixed synthetic trees, against a baseline.

Times are noisy; counts are not.  For each quick-scale tree (made by `synth` from a fixed seed, so
byte for byte the same on every machine) the gate records, per stage, the files opened and the
bytes read, and the groups found.  A change that opens more files or reads more bytes in any stage,
or finds other groups, fails the gate, naming the tree and the stage.  Less work passes, with a
note that the baseline can be tightened.  A deliberate change updates the baseline with
`dedup bench work-gate --update`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from blake3 import blake3

from dedup_engine.bench.baseline import schema_mismatch
from dedup_engine.bench.treecache import SynthTree, ensure_tree
from dedup_engine.find.pipeline import find_duplicates
from dedup_engine.model import FindResult
from dedup_engine.options import ScanOptions

SCHEMA = 1
#: Counters that must never grow: what a stage costs, whatever the machine.
WORK_COUNTERS = ("files_opened", "bytes_read")

#: Quick-scale trees: small enough for every CI run, with every trap kind.  The realistic one
#: is what makes the windows and the whole-file threshold count: its files share their formats'
#: headers and their kinds' boilerplate, as real files do, where random bytes share nothing.
QUICK_TREES = (
    SynthTree("small-quick", "small", 1, 3000),
    SynthTree("large-quick", "large", 1, 24, 1 / 16),
    SynthTree("mixed-quick", "mixed", 1, 2000, 1 / 4),
    SynthTree("realistic-quick", "realistic", 1, 2000, 1 / 16),
)


def counters(result: FindResult, root: Path) -> dict[str, Any]:
    """The gate's view of a run: work per stage and a fingerprint of the groups."""
    groups = sorted(
        sorted(os.path.relpath(f.path, root) for f in group.files) for group in result.groups
    )
    fingerprint = blake3(json.dumps(groups).encode("utf-8", "surrogateescape")).hexdigest()
    return {
        "groups": len(result.groups),
        "files_in_groups": sum(len(g) for g in groups),
        "groups_fingerprint": fingerprint,
        "stages": {
            row.stage.value: {name: getattr(row, name) for name in ("files_in", *WORK_COUNTERS)}
            for row in result.stats.stages
        },
    }


def measure(
    cache: Path, options: ScanOptions | None = None, trees: tuple[SynthTree, ...] = QUICK_TREES
) -> dict[str, Any]:
    """Run the engine on every gate tree and collect the counters."""
    out: dict[str, Any] = {}
    for tree in trees:
        data = ensure_tree(tree, cache)
        result = find_duplicates(data, options or ScanOptions())
        out[tree.name] = {
            "profile": tree.profile,
            "seed": tree.seed,
            "files": tree.files,
            "size_scale": tree.size_scale,
            **counters(result, data),
        }
    return {"schema": SCHEMA, "trees": out}


def compare(baseline: Mapping[str, Any], current: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(failures, notes): more work or other groups fail; less work is a note."""
    mismatch = schema_mismatch(baseline, SCHEMA)
    if mismatch is not None:
        return [mismatch], []
    failures: list[str] = []
    notes: list[str] = []
    for name, now in current["trees"].items():
        was = baseline["trees"].get(name)
        if was is None:
            failures.append(f"{name}: not in the baseline (run with --update to add it)")
            continue
        failures += _other_groups(name, was, now)
        _compare_work(name, was["stages"], now["stages"], failures, notes)
    return failures, notes


def _other_groups(name: str, was: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    return [
        f"{name}: {key} changed: {was[key]} -> {now[key]}"
        for key in ("groups", "files_in_groups", "groups_fingerprint")
        if was[key] != now[key]
    ]


def _compare_work(
    name: str,
    was: Mapping[str, Any],
    now: Mapping[str, Any],
    failures: list[str],
    notes: list[str],
) -> None:
    """Each stage's counters: growth is a failure, a fall a note."""
    for stage, row in now.items():
        before = was.get(stage, {})
        for counter in WORK_COUNTERS:
            old, new = before.get(counter, 0), row[counter]
            if new > old:
                failures.append(
                    f"{name}: stage {stage}: {counter} grew {old} -> {new} "
                    f"(+{(new - old) / max(old, 1):.1%})"
                )
            elif new < old:
                notes.append(f"{name}: stage {stage}: {counter} fell {old} -> {new}")
