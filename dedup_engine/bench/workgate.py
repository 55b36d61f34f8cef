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
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blake3 import blake3

from dedup_engine.bench.synth import generate, load_manifest
from dedup_engine.find.pipeline import find_duplicates
from dedup_engine.model import FindResult
from dedup_engine.options import ScanOptions

SCHEMA = 1
#: Counters that must never grow: what a stage costs, whatever the machine.
WORK_COUNTERS = ("files_opened", "bytes_read")
#: The baseline committed with the project, relative to the repository root.
DEFAULT_BASELINE = Path("benchmarks") / "work_baseline.json"


@dataclass(frozen=True, slots=True)
class GateTree:
    """A quick-scale synthetic tree: small enough for every CI run, with every trap kind."""

    name: str
    profile: str
    seed: int
    files: int
    size_scale: float = 1.0


QUICK_TREES = (
    GateTree("small-quick", "small", 1, 3000),
    GateTree("large-quick", "large", 1, 24, 1 / 16),
    GateTree("mixed-quick", "mixed", 1, 2000, 1 / 4),
)


def ensure_tree(tree: GateTree, cache: Path) -> Path:
    """The tree's data directory under `cache`, generated on first use and reused after."""
    dest = cache / f"{tree.name}-seed{tree.seed}-n{tree.files}-s{tree.size_scale:g}"
    if (dest / "manifest.json").exists():
        load_manifest(dest)  # refuses a damaged or foreign manifest
    else:
        if dest.exists():
            shutil.rmtree(dest)  # a generation that was interrupted
        dest.mkdir(parents=True)
        generate(dest, tree.profile, tree.seed, tree.files, size_scale=tree.size_scale)
    return dest / "data"


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
    cache: Path, options: ScanOptions | None = None, trees: tuple[GateTree, ...] = QUICK_TREES
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
    failures: list[str] = []
    notes: list[str] = []
    if baseline.get("schema") != SCHEMA:
        return [f"baseline schema {baseline.get('schema')!r} is not {SCHEMA}"], notes
    for name, now in current["trees"].items():
        was = baseline["trees"].get(name)
        if was is None:
            failures.append(f"{name}: not in the baseline (run with --update to add it)")
            continue
        for key in ("groups", "files_in_groups", "groups_fingerprint"):
            if was[key] != now[key]:
                failures.append(f"{name}: {key} changed: {was[key]} -> {now[key]}")
        for stage, row in now["stages"].items():
            before = was["stages"].get(stage, {})
            for counter in WORK_COUNTERS:
                old, new = before.get(counter, 0), row[counter]
                if new > old:
                    failures.append(
                        f"{name}: stage {stage}: {counter} grew {old} -> {new} "
                        f"(+{(new - old) / max(old, 1):.1%})"
                    )
                elif new < old:
                    notes.append(f"{name}: stage {stage}: {counter} fell {old} -> {new}")
    return failures, notes


def load_baseline(path: Path = DEFAULT_BASELINE) -> dict[str, Any]:
    with path.open(encoding="utf-8") as handle:
        data: dict[str, Any] = json.load(handle)
    return data


def save_baseline(data: Mapping[str, Any], path: Path = DEFAULT_BASELINE) -> None:
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def default_cache() -> Path:
    """Outside the repository: $DEDUP_BENCH_CACHE, else the user's cache directory."""
    env = os.environ.get("DEDUP_BENCH_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dedup-engine" / "bench"
