"""The time gate: ratios to a same-run reference, and a failure naming the stage when the engine
is made much slower.  The degradation (a 64-byte read chunk in the full stage) costs ~100x that
stage's time, far beyond run-to-run noise, so this asserts no fine timing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from treebuilder import Tree, content

from dedup_engine import ScanOptions
from dedup_engine.bench import timegate
from dedup_engine.bench.baseline import load_baseline


@pytest.fixture(scope="module")
def big_pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tree = Tree(str(tmp_path_factory.mktemp("timegate") / "tree"))
    for number in range(3):  # 3 groups of 2 x 3 MiB: the full stage reads 18 MiB
        data = content(3 * 1024 * 1024, seed=f"g{number}")
        tree.file(f"a/{number}", data)
        tree.file(f"b/{number}", data)
    return Path(tree.root)


def test_reference_reads_every_byte(big_pairs: Path) -> None:
    seconds, read = timegate.reference_seconds(big_pairs)
    assert read == 6 * 3 * 1024 * 1024
    assert seconds > 0


def test_ratios_are_stage_time_over_reference(big_pairs: Path) -> None:
    data = timegate.measure(big_pairs, rounds=1)
    ref = data["reference_seconds"]
    for row in data["stages"].values():
        assert row["ratio"] == pytest.approx(row["seconds"] / ref)


def test_same_figures_pass_and_short_stages_are_not_gated() -> None:
    base: dict[str, Any] = {
        "reference_seconds": 1.0,
        "stages": {"scan": {"seconds": 0.001, "ratio": 0.001}, "full": {"seconds": 1, "ratio": 1}},
    }
    assert timegate.compare(base, base) == []
    noisy = {**base, "stages": {**base["stages"], "scan": {"seconds": 0.004, "ratio": 0.004}}}
    assert timegate.compare(base, noisy) == []  # 4x, but on a 4 ms stage
    slower = {**base, "stages": {**base["stages"], "full": {"seconds": 1.3, "ratio": 1.3}}}
    failures = timegate.compare(base, slower, tolerance=0.25)
    assert len(failures) == 1 and failures[0].startswith("stage full: time ratio 1.300")


def test_a_slowed_full_stage_fails_the_gate_naming_it(big_pairs: Path) -> None:
    baseline = timegate.measure(big_pairs, rounds=1)
    degraded = timegate.measure(big_pairs, ScanOptions(workers=0, chunk_size=64), rounds=1)
    failures = timegate.compare(baseline, degraded, tolerance=1.0)
    assert any(f.startswith("stage full:") for f in failures), (baseline, degraded)


def test_the_command_writes_a_baseline_then_fails_a_degraded_run(
    big_pairs: Path, tmp_path: Path
) -> None:
    saved = tmp_path / "ratios.json"

    def gate(*extra: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "dedup_engine", "bench", "time-gate", str(big_pairs)]
        return subprocess.run(
            [*cmd, "--baseline", str(saved), "--rounds", "1", *extra],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    assert gate("--update").returncode == 0
    assert load_baseline(saved)["stages"]["full"]["seconds"] > 0
    failed = gate("--chunk-size", "64", "--tolerance", "1.0")
    assert failed.returncode == 1, failed.stderr
    assert "FAIL: stage full: time ratio" in failed.stderr


def test_the_reference_read_skips_a_fifo_without_waiting_on_it(tmp_path: Path) -> None:
    import os

    (tmp_path / "a").write_bytes(b"x" * 1000)
    os.mkfifo(tmp_path / "fifo")  # no writer: a blocking open would wait for ever
    code = (
        "import sys; from pathlib import Path; "
        "from dedup_engine.bench.timegate import reference_seconds; "
        "print(reference_seconds(Path(sys.argv[1]))[1])"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "1000"
