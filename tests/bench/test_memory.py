"""Peak memory of a process tree: children count, processes that never overlap count in the sum
of peaks, and memory per file is measured over an empty run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from dedup_engine.bench import memory
from dedup_engine.bench.memory import ROOT, empty_run, main, measure, per_file

MIB = 1024 * 1024
#: A Python interpreter's own RSS is well under this.
BASELINE = 40 * MIB

#: Allocates argv[1] MiB of touched memory and holds it a while (long against the sampling).
HOLD = "import sys, time; x = b'1' * (int(sys.argv[1]) << 20); time.sleep(0.5)"
#: 512 KiB per entry of the directories in argv[1:], on top of a fixed 30 MiB that every run
#: pays: more than the interpreter's start-up peak, which the empty run's peak would otherwise be.
PER_ENTRY = (
    "import os, sys, time; base = b'1' * (30 << 20); "
    "n = sum(len(os.listdir(r)) for r in sys.argv[1:]); "
    "x = b'1' * (n << 19); time.sleep(0.5)"
)


def _python(code: str, *args: str) -> list[str]:
    return [sys.executable, "-c", code, *args]


def test_children_alive_at_once_add_up_in_the_peak() -> None:
    parent = (
        "import subprocess, sys; x = b'1' * (40 << 20); "
        f"subprocess.run([sys.executable, '-c', {HOLD!r}, '80'], check=True)"
    )
    peak = measure(_python(parent))
    assert peak.returncode == 0
    assert peak.processes == 2
    assert 120 * MIB <= peak.peak_rss < 120 * MIB + 2 * BASELINE
    assert 120 * MIB <= peak.sum_hwm < 120 * MIB + 2 * BASELINE
    assert 40 * MIB <= peak.root_hwm < 40 * MIB + BASELINE


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="no PSS to read")
def test_pages_shared_by_a_fork_count_once_in_the_pss_and_in_each_rss() -> None:
    # A forked child that only reads the parent's 80 MiB shares every page of it.
    code = (
        "import os, sys, time; x = b'1' * (80 << 20); pid = os.fork()\n"
        "if pid == 0:\n"
        "    time.sleep(0.5); os._exit(0)\n"
        "os.waitpid(pid, 0)\n"
    )
    peak = measure(_python(code))
    assert peak.processes == 2
    assert 160 * MIB <= peak.peak_rss < 160 * MIB + 2 * BASELINE
    assert 80 * MIB <= peak.peak_pss < 80 * MIB + BASELINE


def test_workers_that_never_overlap_count_in_the_sum_of_peaks_only() -> None:
    parent = (
        "import subprocess, sys\n"
        "for _ in range(3):\n"
        f"    subprocess.run([sys.executable, '-c', {HOLD!r}, '60'], check=True)\n"
    )
    peak = measure(_python(parent))
    assert peak.processes == 4
    assert peak.sum_hwm >= 180 * MIB
    assert 60 * MIB <= peak.peak_rss < 60 * MIB + 2 * BASELINE


def test_memory_per_file_leaves_out_the_empty_run(tmp_path: Path) -> None:
    roots = [tmp_path / "a", tmp_path / "b"]
    for i, root in enumerate(roots):
        root.mkdir()
        for j in range(60 + 40 * i):
            (root / f"f{j}").write_bytes(b"")
    result = per_file(_python(PER_ENTRY, ROOT), roots, 160)
    assert result.run.argv[-2:] == tuple(str(r) for r in roots)
    assert result.empty.peak_rss >= 30 * MIB
    assert result.rss_per_file == pytest.approx(512 * 1024, rel=0.05)
    assert result.hwm_per_file == pytest.approx(512 * 1024, rel=0.05)
    if result.pss_per_file is not None:  # one process: nothing shared with another
        assert result.pss_per_file == pytest.approx(512 * 1024, rel=0.05)
    assert result.root_share == pytest.approx(1.0, abs=0.01)


def test_the_empty_run_is_the_median_of_three(tmp_path: Path) -> None:
    # Each run holds 40 MiB more than the one before: 70, 110, 150 MiB.
    counter = tmp_path / "runs"
    counter.write_text("0")
    code = (
        "import sys, time; from pathlib import Path; c = Path(sys.argv[1]); "
        "k = int(c.read_text()) + 1; c.write_text(str(k)); "
        "x = b'1' * ((30 + 40 * k) << 20); time.sleep(0.3)"
    )
    run = empty_run(_python(code, str(counter), ROOT), 1)
    assert counter.read_text() == "3"
    assert 110 * MIB <= run.peak_rss < 150 * MIB
    if Path("/proc/self/smaps_rollup").exists():  # its PSS: the largest of the three runs'
        assert run.peak_pss >= 150 * MIB


def test_the_empty_run_is_sampled_often_enough_to_see_short_lived_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The workers of a command on an empty directory live a few milliseconds: sampled as
    # seldom as a long run, they are missed and their memory is counted as the files'.
    intervals: list[float] = []
    real = memory.measure

    def recorded(argv: list[str], *, sample_s: float) -> memory.TreePeak:
        intervals.append(sample_s)
        return real(argv, sample_s=sample_s)

    monkeypatch.setattr(memory, "measure", recorded)
    per_file(_python("pass", ROOT), [tmp_path], 1)
    *empty, run = intervals
    assert len(empty) == 3
    assert all(interval <= 0.001 for interval in empty)
    assert run == memory.SAMPLE_S


def test_a_failed_run_is_an_error_unless_its_status_is_accepted(tmp_path: Path) -> None:
    command = _python("import sys; sys.exit(3)", ROOT)
    with pytest.raises(RuntimeError, match="exit 3"):
        per_file(command, [tmp_path], 1)
    assert per_file(command, [tmp_path], 1, ok=(3,)).run.returncode == 3


def test_the_script_prints_memory_per_file_as_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for j in range(50):
        (tmp_path / f"f{j}").write_bytes(b"")
    assert main(["--files", "50", "--root", str(tmp_path), *_python(PER_ENTRY, ROOT)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["files"] == 50
    assert out["rss_per_file"] == pytest.approx(512 * 1024, rel=0.05)
    assert out["run"]["processes"] == 1
