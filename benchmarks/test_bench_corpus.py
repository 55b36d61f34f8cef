"""Real data no one here wrote: `dedup find` timed on the machine's own system files, and its
groups checked against every installed peer's, since no manifest says what they are.

    python -m pytest benchmarks/test_bench_corpus.py --benchmark-only    # /usr/share/doc
    DEDUP_BENCH_FULL=1 python -m pytest benchmarks/test_bench_corpus.py --benchmark-only  # /usr

`DEDUP_BENCH_CORPUS=DIR` searches another tree.  The corpus is only read: `find` never writes,
and the peers run in their report-only modes (`dedup_engine.bench.compare`).  The machine's own
files differ from one machine to the next, so its figures compare tools on one machine, never
runs on two.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

from dedup_engine import ScanOptions, find_duplicates
from dedup_engine.bench.compare import REFERENCE, available_tools, differences, groups_of

Bench = Any  # pytest-benchmark's fixture has no public type
FULL = os.environ.get("DEDUP_BENCH_FULL") == "1"
#: The quick corpus: a few thousand small files, licences and changelogs copied package by
#: package; the full one, every system file.
CORPUS = Path(os.environ.get("DEDUP_BENCH_CORPUS") or ("/usr" if FULL else "/usr/share/doc"))
PEERS = ("jdupes", "rdfind", "fdupes", "rmlint")


def test_find_on_the_system_corpus_agrees_with_every_peer(benchmark: Bench) -> None:
    if not CORPUS.is_dir():
        pytest.skip(f"no corpus at {CORPUS}")
    root = os.path.realpath(CORPUS)
    result = benchmark.pedantic(
        lambda: find_duplicates(root, ScanOptions()), rounds=1 if not FULL else 3, iterations=1
    )
    ours = frozenset(frozenset(f.path for f in g.files) for g in result.groups)
    tools, skipped = available_tools(PEERS)
    peers = [t for t in tools if t.name != REFERENCE]
    if not peers:
        pytest.skip(f"no peer installed ({'; '.join(why for _, why in skipped)})")
    disagree: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="dedup-corpus-") as work:
        for tool in peers:
            theirs = groups_of(tool, root, work)
            if theirs != ours:
                disagree[tool.name] = differences(ours, theirs, tool.name, root)
    benchmark.extra_info.update(
        corpus=root,
        files_scanned=result.stats.files_scanned,
        groups=len(result.groups),
        files_in_groups=result.stats.files_in_groups,
        peers_agreeing=sorted(t.name for t in peers if t.name not in disagree),
        issues=len(result.issues),
    )
    assert not disagree, disagree
    assert result.stats.files_scanned > 100  # a corpus, not an empty directory
