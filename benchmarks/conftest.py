"""Benchmark fixtures: synthetic trees made once into a cache outside the repository and reused.

Quick scale by default (the work gate's trees, and a quick backup tree); `DEDUP_BENCH_FULL=1`
switches to the full-scale profiles (200,000 files / 4.5 GB, 200 files / 3 GB, a realistic tree of
20,000 files / about 4.6 GB and a backup tree of 60,000 paths: make sure the cache has room).
The cache is `$DEDUP_BENCH_CACHE`, else `~/.cache/dedup-engine/bench`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dedup_engine.bench import workgate
from dedup_engine.bench.treecache import SynthTree, default_cache, ensure_tree

FULL = os.environ.get("DEDUP_BENCH_FULL") == "1"

FULL_TREES = (
    SynthTree("small-full", "small", 1, 200_000),
    SynthTree("large-full", "large", 1, 200),
    SynthTree("mixed-full", "mixed", 1, 20_000),
    SynthTree("realistic-full", "realistic", 1, 20_000),
    SynthTree("backup-full", "backup", 1, 60_000),
)
QUICK_TREES = (*workgate.QUICK_TREES, SynthTree("backup-quick", "backup", 1, 1200, 1 / 16))
TREES = {t.profile: t for t in (FULL_TREES if FULL else QUICK_TREES)}


@pytest.fixture(scope="session", params=sorted(TREES))
def tree(request: pytest.FixtureRequest) -> tuple[str, Path]:
    """(name, data directory) of each profile's tree."""
    spec = TREES[request.param]
    return spec.name, ensure_tree(spec, default_cache())
