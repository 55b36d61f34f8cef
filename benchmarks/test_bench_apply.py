"""pytest-benchmark for `apply`: hard-linking a fresh tree's duplicates, journal and all.

    python -m pytest benchmarks/test_bench_apply.py --benchmark-only
    DEDUP_BENCH_FULL=1 python -m pytest benchmarks/test_bench_apply.py --benchmark-only

Each round gets a new tree (apply changes it), built and searched in the setup, so only
`apply_plan` is timed: the checks, the byte comparisons, the renames and links, and the
journal's fsyncs.  `extra_info` holds the operations done and the bytes reclaimed.
"""

from __future__ import annotations

import itertools
import os
import shutil
from pathlib import Path
from typing import Any

from benchmarks.conftest import FULL
from dedup_engine import ScanOptions, find_duplicates
from dedup_engine.apply.journal import FileJournal
from dedup_engine.apply.plan import Action, Plan, Policy, make_plan
from dedup_engine.apply.runner import apply_plan

Bench = Any  # pytest-benchmark's fixture has no public type
GROUPS = 5_000 if FULL else 400
COPIES = 3
SIZE = 8_192


def _tree(root: Path) -> Plan:
    """GROUPS groups of COPIES identical files, spread over a few directories."""
    shutil.rmtree(root, ignore_errors=True)
    for group in range(GROUPS):
        data = group.to_bytes(4, "little") * (SIZE // 4)
        for copy in range(COPIES):
            directory = root / f"c{copy}" / f"d{group % 20:02d}"
            directory.mkdir(parents=True, exist_ok=True)
            (directory / f"f{group}").write_bytes(data)
    found = find_duplicates([str(root)], ScanOptions(workers=0))
    return make_plan(found.groups, found.roots, Policy(Action.HARDLINK))


def test_apply_hardlink(benchmark: Bench, tmp_path: Path) -> None:
    rounds = itertools.count()

    def setup() -> tuple[tuple[Plan, FileJournal], dict[str, Any]]:
        number = next(rounds)
        plan = _tree(tmp_path / "tree")
        journal = FileJournal(str(tmp_path / f"journal-{number}.jsonl"), {"bench": True})
        return (plan, journal), {}

    def act(plan: Plan, journal: FileJournal) -> int:
        try:
            summary = apply_plan(plan, journal=journal)
        finally:
            journal.close()
        benchmark.extra_info["operations"] = len(summary.results)
        benchmark.extra_info["reclaimed"] = summary.reclaimed
        assert summary.clean
        return summary.reclaimed

    benchmark.pedantic(act, setup=setup, rounds=3, iterations=1)
    assert benchmark.extra_info["operations"] == GROUPS * (COPIES - 1)
    assert not any(
        name.startswith(".dedup-") for _, _, names in os.walk(tmp_path) for name in names
    )
