"""pytest-benchmark: a rerun with the digest cache (`--cache`) on an unchanged tree, per profile.

    python -m pytest benchmarks/test_bench_cache.py --benchmark-only
    DEDUP_BENCH_FULL=1 python -m pytest benchmarks/test_bench_cache.py --benchmark-only

The rest of the suite runs without the cache.  Here each tree is searched once into an empty
cache (timed: `first_s`), once without a cache (`uncached_s`), then the rerun is benchmarked.
`extra_info` holds both times, the rerun's ratio to each, the files the rerun opened (0 on an
unchanged tree: asserted, a count and not a time) and the cache's bytes per row.  A tree made
just now (a fresh machine's first run) is waited on until its last file is `RACY_NS` old, so
that every file read is cacheable.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import pytest

from dedup_engine import ScanOptions, find_duplicates
from dedup_engine.bench.synth import MANIFEST_NAME
from dedup_engine.find.cache import RACY_NS, DigestCache
from dedup_engine.find.fsidentity import filesystem_id
from dedup_engine.model import FindResult, Stage

Bench = Any  # pytest-benchmark's fixture has no public type
READ_STAGES = (Stage.HEAD, Stage.TAIL, Stage.FULL)


def _timed(root: Path, options: ScanOptions) -> tuple[float, FindResult]:
    started = time.perf_counter()
    result = find_duplicates(root, options)
    return time.perf_counter() - started, result


def test_find_cached_rerun(benchmark: Bench, tree: tuple[str, Path], tmp_path: Path) -> None:
    name, root = tree
    if filesystem_id(str(root), root.stat().st_dev) is None:
        pytest.skip("the tree is on a filesystem the digest cache does not trust")
    # The manifest is written after the tree's last file.
    young = (root.parent / MANIFEST_NAME).stat().st_ctime_ns + RACY_NS - time.time_ns()
    if young > 0:
        time.sleep(young / 1e9 + 0.1)
    cached = ScanOptions(cache_dir=str(tmp_path / "cache"))
    first_s, first = _timed(root, cached)
    uncached_s, _ = _timed(root, ScanOptions())
    rerun = benchmark.pedantic(find_duplicates, args=(root, cached), rounds=3, iterations=1)
    opened = sum(rerun.stats.stage(stage).files_opened for stage in READ_STAGES)
    assert opened == 0 and rerun.groups == first.groups
    opened_cache = DigestCache.open(str(tmp_path / "cache")).cache
    assert opened_cache is not None
    summary = opened_cache.summary()
    opened_cache.close()
    rerun_s = statistics.median(benchmark.stats.stats.data) if benchmark.stats else 0.0
    benchmark.extra_info.update(
        tree=name,
        first_s=round(first_s, 3),
        uncached_s=round(uncached_s, 3),
        rerun_to_first=round(rerun_s / first_s, 3) if rerun_s else None,
        rerun_to_uncached=round(rerun_s / uncached_s, 3) if rerun_s else None,
        files_opened=opened,
        cache_rows=summary.rows,
        cache_bytes_per_row=round(summary.bytes / max(1, summary.rows), 1),
        files_scanned=rerun.stats.files_scanned,
    )
