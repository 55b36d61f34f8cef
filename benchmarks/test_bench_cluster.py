"""pytest-benchmark: the search on a Dask `LocalCluster` (`--cluster local:2`) against the local
pool of as many workers, per profile (issue 13).

    python -m pytest benchmarks/test_bench_cluster.py --benchmark-only
    DEDUP_BENCH_FULL=1 python -m pytest benchmarks/test_bench_cluster.py --benchmark-only

The cluster's run is benchmarked (its LocalCluster started and stopped inside each round, as
`dedup find --cluster local:2` does); `extra_info` holds the local pool's time and the ratio,
the tasks sent and their rate, and the bytes of the tasks and results carried per file scanned
(their pickles, as Dask sends them, less Dask's own framing): counts, where times are noisy.
The groups must be the local pool's.
"""

from __future__ import annotations

import pickle
import statistics
import time
from pathlib import Path
from typing import Any

import pytest

from dedup_engine import ScanOptions, find_duplicates
from dedup_engine.find.cluster import ClusterPool

Bench = Any  # pytest-benchmark's fixture has no public type
WORKERS = 2

pytest.importorskip("distributed")


class _Carried:
    """The tasks a ClusterPool sends and the bytes of their pickles and of their results'."""

    def __init__(self) -> None:
        self.tasks = 0
        self.bytes = 0

    def wrap(self, submit: Any) -> Any:
        def counting(
            pool: ClusterPool, task: Any, on_done: Any, worker: Any = None, among: Any = None
        ) -> int:
            self.tasks += 1
            self.bytes += len(pickle.dumps(task))

            def done(result: Any) -> None:
                self.bytes += len(pickle.dumps(result))
                on_done(result)

            return int(submit(pool, task, done, worker, among))

        return counting


def test_find_on_a_local_cluster(
    benchmark: Bench, tree: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    name, root = tree
    started = time.perf_counter()
    local = find_duplicates(root, ScanOptions(workers=WORKERS))
    local_s = time.perf_counter() - started
    carried = _Carried()
    monkeypatch.setattr(ClusterPool, "submit", carried.wrap(ClusterPool.submit))
    options = ScanOptions(cluster=f"local:{WORKERS}")
    on_cluster = benchmark.pedantic(find_duplicates, args=(root, options), rounds=2, iterations=1)
    assert on_cluster.groups == local.groups
    rounds = 2 if benchmark.stats else 1
    cluster_s = statistics.median(benchmark.stats.stats.data) if benchmark.stats else 0.0
    files = local.stats.files_scanned
    benchmark.extra_info.update(
        tree=name,
        files=files,
        local_s=round(local_s, 3),
        cluster_to_local=round(cluster_s / local_s, 3) if cluster_s else None,
        tasks=carried.tasks // rounds,
        tasks_per_s=round(carried.tasks / rounds / cluster_s, 1) if cluster_s else None,
        bytes_per_file=round(carried.bytes / rounds / max(1, files), 1),
    )
