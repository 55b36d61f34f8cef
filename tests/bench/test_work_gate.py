"""The work gate: the engine does no more work than the committed baseline, and a degraded engine
is caught with the stage named."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dedup_engine import ScanOptions
from dedup_engine.bench import workgate
from dedup_engine.bench.baseline import load_baseline

REPO = Path(__file__).resolve().parents[2]
BASELINE = REPO / "benchmarks" / "work_baseline.json"


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gate-trees")


@pytest.fixture(scope="module")
def current(cache: Path) -> dict[str, Any]:
    return workgate.measure(cache)


def test_the_engine_passes_the_committed_baseline(current: dict[str, Any]) -> None:
    failures, _notes = workgate.compare(load_baseline(BASELINE), current)
    assert failures == []


def test_counts_do_not_depend_on_the_pool(cache: Path, current: dict[str, Any]) -> None:
    inline = workgate.measure(cache, ScanOptions(workers=0))
    assert inline == current


def test_an_engine_without_its_head_stage_fails_naming_the_stage(
    cache: Path, current: dict[str, Any]
) -> None:
    degraded = workgate.measure(cache, ScanOptions(stages=("tail",)))
    failures, _notes = workgate.compare(current, degraded)
    assert any("small-quick: stage full: files_opened grew" in f for f in failures), failures
    assert any("stage tail: bytes_read grew" in f for f in failures), failures


@pytest.mark.parametrize(
    ("degraded", "stage"),
    [
        (ScanOptions(head_window=64), "full"),
        (ScanOptions(stages=("head",)), "full"),
        (ScanOptions(whole_threshold=4096), "full"),
    ],
    ids=["head window cut to 64 B", "tail stage dropped", "whole-file threshold at 4 KiB"],
)
def test_the_realistic_tree_catches_worse_windows_and_thresholds(
    cache: Path, current: dict[str, Any], degraded: ScanOptions, stage: str
) -> None:
    """Files of one format share their header and boilerplate, as on a disk: a shorter head
    window, no tail stage or a lower whole-file threshold let more candidates through to the
    full stage, which the gate sees."""
    realistic = tuple(t for t in workgate.QUICK_TREES if t.profile == "realistic")
    worse = workgate.measure(cache, degraded, realistic)
    failures, _notes = workgate.compare(current, worse)
    assert any(f.startswith(f"realistic-quick: stage {stage}: ") for f in failures), failures


def test_more_work_fails_less_work_is_a_note(current: dict[str, Any]) -> None:
    more = copy.deepcopy(current)
    more["trees"]["large-quick"]["stages"]["tail"]["bytes_read"] += 1
    failures, notes = workgate.compare(current, more)
    assert len(failures) == 1
    assert failures[0].startswith("large-quick: stage tail: bytes_read grew")
    assert notes == []
    failures, notes = workgate.compare(more, current)
    assert failures == []
    assert len(notes) == 1 and "stage tail: bytes_read fell" in notes[0]


def test_other_groups_fail(current: dict[str, Any]) -> None:
    other = copy.deepcopy(current)
    other["trees"]["mixed-quick"]["groups_fingerprint"] = "0" * 64
    failures, _notes = workgate.compare(current, other)
    assert failures and failures[0].startswith("mixed-quick: groups_fingerprint changed")


def test_the_command_fails_with_exit_1_on_a_degraded_engine(cache: Path) -> None:
    def gate(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "dedup_engine",
                "bench",
                "work-gate",
                "--cache",
                str(cache),
                "--baseline",
                str(BASELINE),
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    passed = gate()
    assert passed.returncode == 0, passed.stderr
    assert "work gate passed" in passed.stderr
    failed = gate("--partial-stages", "tail")
    assert failed.returncode == 1
    assert "FAIL: small-quick: stage full: files_opened grew" in failed.stderr
