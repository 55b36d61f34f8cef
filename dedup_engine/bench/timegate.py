"""The time gate's machine-independent figure: each stage's time over a reference time, same run.

A stage's seconds differ between machines; the ratio of those seconds to a reference measured in
the same run, on the same tree, mostly does not.  The reference is the plainest way to do the
engine's job: one process walks the tree and reads and BLAKE3-hashes every regular file in full.
A baseline of ratios saved on one machine can then gate a run on another, within a tolerance.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from statistics import median
from typing import Any

from blake3 import blake3

from dedup_engine.find.pipeline import find_duplicates
from dedup_engine.openflags import OPEN_READ
from dedup_engine.options import ScanOptions

SCHEMA = 1
#: Stages whose time is gated; the others take microseconds and are all noise.
TIMED_STAGES = ("scan", "head", "tail", "full")


def reference_seconds(root: Path, chunk: int = 128 * 1024) -> tuple[float, int]:
    """(seconds, bytes) for one process to walk `root` and BLAKE3 every regular file in full."""
    buf = bytearray(chunk)
    view = memoryview(buf)
    total = 0
    started = time.perf_counter()
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            try:
                fd = os.open(path, OPEN_READ)
            except OSError:
                continue  # symlinks and unreadable files: the engine skips them too
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    continue
                hasher = blake3()
                while n := os.readv(fd, [buf]):
                    hasher.update(view[:n])
                    total += n
                hasher.digest()
            finally:
                os.close(fd)
    return time.perf_counter() - started, total


def measure(root: Path, options: ScanOptions | None = None, rounds: int = 3) -> dict[str, Any]:
    """Median over `rounds` of each stage's seconds and its ratio to the reference."""
    reference: list[float] = []
    stages: dict[str, list[float]] = {name: [] for name in TIMED_STAGES}
    for _ in range(rounds):
        seconds, _bytes = reference_seconds(root)
        reference.append(seconds)
        result = find_duplicates(root, options or ScanOptions(workers=0))
        for row in result.stats.stages:
            if row.stage.value in stages:
                stages[row.stage.value].append(row.seconds)
    ref = median(reference)
    return {
        "schema": SCHEMA,
        "reference_seconds": ref,
        "stages": {
            name: {"seconds": median(times), "ratio": median(times) / ref if ref else 0.0}
            for name, times in stages.items()
        },
    }


#: Stages faster than this in both runs are not gated: at that scale scheduling noise is larger
#: than any tolerance worth setting.  Gate on a tree where the stages that matter take longer.
MIN_SECONDS = 0.05


def compare(
    baseline: Mapping[str, Any], current: Mapping[str, Any], tolerance: float = 0.25
) -> list[str]:
    """Stages whose ratio grew by more than `tolerance` (0.25: 25%) over the baseline's."""
    failures: list[str] = []
    for name, row in current["stages"].items():
        before = baseline["stages"].get(name, {})
        was = before.get("ratio", 0.0)
        now = row["ratio"]
        if max(before.get("seconds", 0.0), row["seconds"]) < MIN_SECONDS:
            continue
        floor = 0.01  # a stage that took almost nothing cannot grow by a fraction of it
        if now > max(was, floor) * (1 + tolerance):
            failures.append(
                f"stage {name}: time ratio {now:.3f} vs baseline {was:.3f} "
                f"(+{now / max(was, floor) - 1:.0%}, tolerance {tolerance:.0%})"
            )
    return failures
