"""Measure the peak memory of a command's whole process tree, and what it spends per file.

While the command runs, a thread walks its process tree every `SAMPLE_S` (the command, its
children and theirs, from /proc/PID/task/TID/children) and reads each member's
/proc/PID/status.  Two views of the peak come out:

- `peak_rss`: the largest sum of the members' RSS at one sample, what the machine held at once;
- `sum_hwm`: the sum, over every process seen, of its own high-water mark (VmHWM, the kernel's
  exact peak, kept per process across samples), which also counts workers that started and
  exited between two moments of high use.

Both count a page shared between processes (fork's copy-on-write) once per process.  A third
view counts it once in all:

- `peak_pss`: the largest sum of the members' PSS (proportional set size: a page shared by n
  processes counts 1/n in each, from /proc/PID/smaps_rollup) at one sample.  Reading it costs the
  kernel a walk of the process's pages (milliseconds for a large one), so it is read only every
  `PSS_EVERY_S`, and at each sample where the sum of RSS has risen `PSS_STEP` or more above its
  sum at the last reading.  The RSS alone would not do as the trigger: a page a worker writes
  stops being shared, which grows the PSS and not the RSS.  0 where the system does not tell.

The PSS is not exact either: a library's pages that processes outside the tree map too (the
measuring process's interpreter among them) count in part only.  A process that lives less than
one interval may be missed, and so may its growth in the last interval before it exits (wait4's
ru_maxrss is no help: the kernel carries the forked image's peak across exec, so it counts the
measuring process).  Off Linux, psutil finds the members and their RSS, and a process's peak is
the largest RSS sampled.

Per file: (peak on a tree - peak of the same command on empty directories) / files, which leaves
out the interpreter and the imports.  Also a script:

    python -m dedup_engine.bench.memory --files 1000000 --root TREE \
        dedup find {root} -f json -o /dev/null
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import psutil

from dedup_engine.find.cache import environment_without

SAMPLE_S = 0.01
#: How far the sum of RSS must rise above its sum at the last PSS reading for PSS to be read
#: again before `PSS_EVERY_S`: a reading per MiB of growth, about a hundred on a run of 1M files.
PSS_STEP = 1 << 20
#: The longest between two PSS readings, whatever the RSS does.
PSS_EVERY_S = 0.1
#: How often an empty run is sampled.  It lasts a fraction of a second and a worker of it a few
#: milliseconds: `dedup find` on an empty directory, sampled every 10 ms, showed all three of
#: its processes in 3 runs of 8 (69 MiB) and its parent alone in 4 (28 MiB), which would count
#: 41 bytes a file more at 1M files; every 1 ms, all three in 8 of 8 (68.5-69.4 MiB).
EMPTY_SAMPLE_S = 0.001
ROOT = "{root}"  #: in a command given to `per_file`: replaced by the roots, one argument each
_KIB = 1024


@dataclass(frozen=True, slots=True)
class TreePeak:
    """One run of a command: its wall time and the peak memory of its process tree, in bytes.

    `root_hwm` is the command's own process's peak (its share of `sum_hwm`).  A command that
    exits before the first sample shows 0.
    """

    argv: tuple[str, ...]
    returncode: int
    wall_s: float
    peak_rss: int
    sum_hwm: int
    root_hwm: int
    processes: int
    samples: int
    peak_pss: int = 0


@dataclass(frozen=True, slots=True)
class PerFile:
    """A command's memory per file: its run on a tree of `files` files against an empty run."""

    files: int
    run: TreePeak
    empty: TreePeak

    @property
    def rss_per_file(self) -> float:
        return (self.run.peak_rss - self.empty.peak_rss) / self.files

    @property
    def hwm_per_file(self) -> float:
        return (self.run.sum_hwm - self.empty.sum_hwm) / self.files

    @property
    def pss_per_file(self) -> float | None:
        """The growth of the largest sum of PSS per file; None where PSS is not told."""
        if not (self.run.peak_pss and self.empty.peak_pss):
            return None
        return (self.run.peak_pss - self.empty.peak_pss) / self.files

    @property
    def root_share(self) -> float:
        """The command's own process's part of the tree's growth (sum of peaks) over empty."""
        grown = self.run.sum_hwm - self.empty.sum_hwm
        return (self.run.root_hwm - self.empty.root_hwm) / grown if grown > 0 else 0.0

    def to_json(self) -> dict[str, object]:
        pss = self.pss_per_file
        return {
            "files": self.files,
            "rss_per_file": round(self.rss_per_file, 1),
            "hwm_per_file": round(self.hwm_per_file, 1),
            "pss_per_file": None if pss is None else round(pss, 1),
            "root_share": round(self.root_share, 3),
            "run": asdict(self.run),
            "empty": asdict(self.empty),
        }


@dataclass(frozen=True, slots=True)
class _Reading:
    """One process at one sample: identity (pid and start time), RSS and VmHWM in bytes."""

    key: tuple[int, float]
    rss: int
    hwm: int


def _members(pid: int) -> list[int]:
    """`pid` and all its descendants alive now (vanished ones are skipped)."""
    if not os.path.exists(f"/proc/{pid}/task/{pid}/children"):
        with contextlib.suppress(psutil.Error):
            return [pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))]
        return []
    found, todo = [], [pid]
    while todo:
        member = todo.pop()
        found.append(member)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{member}/task"):
                with open(f"/proc/{member}/task/{task}/children", "rb") as f:
                    todo.extend(int(c) for c in f.read().split())
    return found


def _read(pid: int) -> _Reading | None:
    """The process's memory now; None where it is gone or a zombie (its memory already freed)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            # Field 22 (start time), counted after the command name, which may hold spaces.
            started = float(f.read().rsplit(b")", 1)[1].split()[19])
        with open(f"/proc/{pid}/status", "rb") as f:
            fields = dict(line.split(b":", 1) for line in f.read().splitlines() if b":" in line)
    except FileNotFoundError:
        return _read_psutil(pid) if not os.path.exists("/proc/self/status") else None
    except (OSError, ValueError, IndexError):
        return None
    if b"VmRSS" not in fields:
        return None
    rss, hwm = (int(fields[k].split()[0]) * _KIB for k in (b"VmRSS", b"VmHWM"))
    return _Reading((pid, started), rss, hwm)


def _pss(pid: int) -> int | None:
    """The process's PSS now, in bytes; None where it is gone or the system does not tell."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * _KIB
    except (OSError, ValueError, IndexError):
        return None
    return None


def _read_psutil(pid: int) -> _Reading | None:
    with contextlib.suppress(psutil.Error):
        proc = psutil.Process(pid)
        rss = proc.memory_info().rss
        return _Reading((pid, proc.create_time()), rss, rss)
    return None


class _Sampler:
    """Samples a process tree every `interval` seconds, in a thread, until it is stopped."""

    def __init__(self, pid: int, interval: float) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_rss = 0
        self.peak_pss = 0
        self.samples = 0
        self._rss_at_pss = -PSS_STEP  # the sum of RSS at the last PSS reading: none yet
        self._pss_due = 0.0  # when PSS is to be read again, whatever the RSS
        self.hwm: dict[tuple[int, float], int] = {}
        self.root_key: tuple[int, float] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        total = 0
        alive = []
        for pid in _members(self.pid):
            reading = _read(pid)
            if reading is None:
                continue
            alive.append(pid)
            total += reading.rss
            self.hwm[reading.key] = max(self.hwm.get(reading.key, 0), reading.hwm)
            if pid == self.pid:
                self.root_key = reading.key
        self.peak_rss = max(self.peak_rss, total)
        self.samples += 1
        now = time.monotonic()
        if alive and (total >= self._rss_at_pss + PSS_STEP or now >= self._pss_due):
            self._rss_at_pss, self._pss_due = total, now + PSS_EVERY_S
            self._sample_pss(alive)

    def _sample_pss(self, pids: list[int]) -> None:
        readings = [_pss(pid) for pid in pids]
        # A member gone since its RSS was read leaves the sum short: it is not a peak.
        if all(reading is not None for reading in readings):
            self.peak_pss = max(self.peak_pss, sum(r for r in readings if r is not None))

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def measure(
    argv: Sequence[str], *, cwd: Path | None = None, sample_s: float = SAMPLE_S
) -> TreePeak:
    """Run `argv` (stdin and stdout to /dev/null, stderr kept) and measure its process tree.

    OSError where it cannot start; RuntimeError, with the end of its stderr, where a signal kills
    it; any exit status is returned for the caller to judge.
    """
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        child = subprocess.Popen(
            list(argv),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=environment_without(),  # reads measured, not a cache's answers
        )
        sampler = _Sampler(child.pid, sample_s)
        sampler.start()
        try:
            # Not reaped yet, so the sampler can never read a reused pid as the command.
            os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
        except BaseException:  # Ctrl-C: no command left running behind us
            child.kill()
            raise
        finally:
            wall = time.perf_counter() - start
            sampler.stop()
            child.wait()
        if child.returncode < 0:
            err.seek(0)
            tail = err.read()[-2000:].decode(errors="replace")
            raise RuntimeError(f"{argv[0]} killed by signal {-child.returncode}: {tail}")
    return TreePeak(
        argv=tuple(argv),
        returncode=child.returncode,
        wall_s=wall,
        peak_rss=sampler.peak_rss,
        sum_hwm=sum(sampler.hwm.values()),
        root_hwm=sampler.hwm.get(sampler.root_key, 0) if sampler.root_key else 0,
        processes=len(sampler.hwm),
        samples=sampler.samples,
        peak_pss=sampler.peak_pss,
    )


def expand(command: Sequence[str], roots: Sequence[Path | str]) -> list[str]:
    """The command with each ROOT argument replaced by the roots, one argument each."""
    out: list[str] = []
    for arg in command:
        out.extend([os.fspath(r) for r in roots] if arg == ROOT else [arg])
    return out


def empty_run(
    command: Sequence[str], roots: int, *, sample_s: float = EMPTY_SAMPLE_S, runs: int = 3
) -> TreePeak:
    """The command on `roots` new empty directories: what it costs before any file.

    The run of median peak out of `runs`, each sampled every `EMPTY_SAMPLE_S` unless told: a
    process missed there would count its memory as the files' (at 1M files, every 10 MiB missed
    is 10 bytes a file).  Its `peak_pss` is the largest of the runs': where the workers end
    before PSS is read with them alive, a run's PSS leaves them out.
    """
    with tempfile.TemporaryDirectory(prefix="dedup-empty-") as tmp:
        empties = [Path(tmp, f"root{i}") for i in range(roots)]
        for path in empties:
            path.mkdir()
        done = [measure(expand(command, empties), sample_s=sample_s) for _ in range(runs)]
    median = sorted(done, key=lambda run: run.peak_rss)[len(done) // 2]
    return replace(median, peak_pss=max(run.peak_pss for run in done))


def per_file(
    command: Sequence[str],
    roots: Sequence[Path | str],
    files: int,
    *,
    ok: Sequence[int] = (0,),
    sample_s: float = SAMPLE_S,
) -> PerFile:
    """Memory per file of `command` on `roots` (`files` files in all; ROOT marks where the roots
    go), against the same command on as many empty directories, run first (and sampled at
    least every `EMPTY_SAMPLE_S`).

    RuntimeError where either run exits with a status not in `ok`.
    """
    if files <= 0:
        raise ValueError(f"files must be positive, not {files}")
    empty = empty_run(command, len(roots), sample_s=min(sample_s, EMPTY_SAMPLE_S))
    run = measure(expand(command, roots), sample_s=sample_s)
    for result in (empty, run):
        if result.returncode not in ok:
            raise RuntimeError(f"exit {result.returncode}: {' '.join(result.argv)}")
    return PerFile(files, run, empty)


def main(args: Sequence[str] | None = None) -> int:
    """The script: print `per_file` of a command on roots as JSON."""
    parser = argparse.ArgumentParser(
        prog="python -m dedup_engine.bench.memory",
        description="Peak memory of a command's process tree per file, over an empty run.",
    )
    parser.add_argument("--files", type=int, required=True, help="files under the roots")
    parser.add_argument("--ok", default="0", help="exit statuses that count as success: 0,1")
    parser.add_argument("--sample-ms", type=float, default=SAMPLE_S * 1000)
    parser.add_argument("--root", action="append", type=Path, required=True, help="repeatable")
    parser.add_argument("command", nargs=argparse.REMAINDER, help=f"the command, with {ROOT}")
    ns = parser.parse_args(args)
    command = ns.command[1:] if ns.command[:1] == ["--"] else ns.command
    if ROOT not in command:
        parser.error(f"the command needs {ROOT} where the roots go")
    ok = [int(code) for code in ns.ok.split(",")]
    result = per_file(command, ns.root, ns.files, ok=ok, sample_s=ns.sample_ms / 1000)
    print(json.dumps(result.to_json(), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
