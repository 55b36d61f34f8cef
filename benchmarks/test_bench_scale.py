"""pytest-benchmark: memory per file of `dedup find` on the scale profile, whole process tree.

    python -m pytest benchmarks/test_bench_scale.py --benchmark-only      # 20,000 files, seconds
    DEDUP_BENCH_FULL=1 python -m pytest benchmarks/test_bench_scale.py --benchmark-only

Each case runs `dedup find ROOTS -f json -o /dev/null` as a command, measured by
`dedup_engine.bench.memory`: the peak of its process tree's summed RSS and the sum of each
process's own peak, minus the same command on empty directories, per file, with the parent's
share and the wall time, all in `extra_info`.  Full scale: 1M and 2M files (the trees issue 10
measures) and 4M files as the 2M trees of seeds 1 and 2 given as two roots.  Real files, not
synthetic rows, so the scan and every stage are measured as they run; one 4M tree would need
35 GB of disk beside the 2M one, where a second 2M tree needs 17.5 GB (about 45 GB for all three
cases; 1.9 inodes per KB of it).
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Any

import pytest

from dedup_engine.bench.memory import ROOT, PerFile, TreePeak, empty_run, expand, measure
from dedup_engine.bench.synth import load_manifest
from dedup_engine.bench.treecache import SynthTree, default_cache, ensure_tree

Bench = Any  # pytest-benchmark's fixture has no public type

FULL = os.environ.get("DEDUP_BENCH_FULL") == "1"

_2M = (SynthTree("scale-2m", "scale", 1, 2_000_000), SynthTree("scale-2m", "scale", 2, 2_000_000))
CASES: dict[str, tuple[SynthTree, ...]] = (
    {"1m": (SynthTree("scale-1m", "scale", 1, 1_000_000),), "2m": _2M[:1], "4m": _2M}
    if FULL
    else {"20k": (SynthTree("scale-quick", "scale", 1, 20_000),)}
)
COMMAND = (sys.executable, "-m", "dedup_engine", "find", ROOT, "-f", "json", "-o", os.devnull)


@functools.cache
def _empty(roots: int) -> TreePeak:
    """The command on as many empty directories: what every run pays before any file."""
    return empty_run(COMMAND, roots)


@pytest.mark.parametrize("case", list(CASES))
def test_find_memory_per_file(benchmark: Bench, case: str) -> None:
    trees = CASES[case]
    roots = [ensure_tree(t, default_cache()) for t in trees]
    files = sum(load_manifest(root.parent).files for root in roots)
    empty = _empty(len(roots))
    run = benchmark.pedantic(
        measure, args=(expand(COMMAND, roots),), rounds=1 if FULL else 3, iterations=1
    )
    assert run.returncode == 0
    result = PerFile(files, run, empty)
    benchmark.extra_info.update(
        case=case,
        files=files,
        roots=len(roots),
        rss_per_file=round(result.rss_per_file, 1),
        hwm_per_file=round(result.hwm_per_file, 1),
        pss_per_file=None if result.pss_per_file is None else round(result.pss_per_file, 1),
        parent_share=round(result.root_share, 3),
        peak_rss=run.peak_rss,
        sum_hwm=run.sum_hwm,
        peak_pss=run.peak_pss,
        parent_hwm=run.root_hwm,
        empty_peak_rss=empty.peak_rss,
        empty_sum_hwm=empty.sum_hwm,
        wall_s=round(run.wall_s, 3),
        processes=run.processes,
        cpus=os.cpu_count(),
    )
