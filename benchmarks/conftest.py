"""Benchmark fixtures: synthetic trees made once into a cache outside the repository and reused.

Quick scale by default (the work gate's trees); `DEDUP_BENCH_FULL=1` switches to the engine issue's
full-scale profiles (200,000 files / 4.5 GB, and 200 files / 3 GB: make sure the cache has room).
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
)
TREES = {t.profile: t for t in (FULL_TREES if FULL else workgate.QUICK_TREES)}


@pytest.fixture(scope="session", params=sorted(TREES))
def tree(request: pytest.FixtureRequest) -> tuple[str, Path]:
    """(name, data directory) of each profile's tree."""
    spec = TREES[request.param]
    return spec.name, ensure_tree(spec, default_cache())
