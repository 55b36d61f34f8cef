"""Time dedup-engine against the peer duplicate finders on one tree, and check they agree.

Every tool runs read-only, reporting with our default semantics: regular files only, symlinks not
followed, hidden files included, empty files not duplicates, recursive, and hard links of one inode
not duplicates of each other (a group needs two inodes; it lists every path of its inodes).  No
peer has that last rule as a flag: jdupes' default drops hard-linked paths pairwise (of five paths
to two inodes it printed four), fdupes' default and rmlint's
`--no-hardlinked` keep one path per inode, and rdfind's default drops all but one.  So each peer
runs with hard links counted (jdupes/fdupes -H, rmlint's default, rdfind -removeidentinode false)
and groups of a single inode are dropped from its answer (`Tool.hard_link_groups`).

Runs are interleaved (warm-up runs of each tool, then run i of every tool, ...); each timed run
records wall time, CPU time of the child and its reaped children (wait4), and the peak of the summed
RSS of its process tree, sampled every 5 ms.  The groups come from one extra untimed run per tool,
which also leaves dedup's bytecode where the timed runs find it (`_environment`).
`jdupes-Q` is jdupes trusting its hashes (`-Q`: no byte-by-byte check before it reports a
group), the mode the README's speed figures are measured against.  This module imports neither
typer nor rich: `compare_report` writes the `Comparison` to files and the CLI prints it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import shutil
import stat
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import psutil

from dedup_engine.find.cache import environment_without
from dedup_engine.openflags import OPEN_READ

ROOT = "{root}"  #: in `Tool.command`: replaced by the tree's canonical path
OUT = "{out}"  #: in `Tool.command`: replaced by the results file of tools that write one
SAMPLE_S = 0.005
PAGE = os.sysconf("SC_PAGE_SIZE")
REFERENCE = "dedup"
DROP_CACHES = "/proc/sys/vm/drop_caches"  #: the kernel's knob: writing 1 drops the page cache
ProgressFn = Callable[[str, int, int, float], None]
GroupSet = frozenset[frozenset[str]]


@dataclass(frozen=True, slots=True)
class Tool:
    """A duplicate finder: its argv (with ROOT/OUT placeholders) and how to read its groups."""

    name: str
    command: tuple[str, ...]
    version: str
    output: str = "fdupes"  #: "fdupes" (groups on stdout, blank line after each) or "rdfind" (OUT)
    hard_link_groups: bool = False  #: it reports single-inode groups: drop them on reading
    note: str = ""  #: why these flags


@dataclass(frozen=True, slots=True)
class RunSample:
    tool: str
    wall: float  #: seconds
    cpu: float  #: user + system seconds of the child and the children it reaped
    peak_rss: int  #: bytes; largest sum over the process tree (0: it ended before one sample)


@dataclass(frozen=True, slots=True)
class ToolSummary:
    name: str
    version: str
    runs: tuple[RunSample, ...]
    median_wall: float
    min_wall: float
    max_wall: float
    median_cpu: float
    peak_rss: int
    groups: int
    files_in_groups: int
    agrees: bool
    relative: float  #: median wall / dedup's median wall
    differences: tuple[str, ...]
    command: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Comparison:
    root: str
    runs: int
    warmup: int
    cold: str | None  #: the eviction method used before each run, or None (warm cache)
    tools: tuple[ToolSummary, ...]
    skipped: tuple[tuple[str, str], ...]
    created: str
    cpus: int | None = None  #: os.cpu_count() of the machine that ran it


@dataclass(frozen=True, slots=True)
class _Peer:
    """How to run one peer with our semantics: its executable, flags and output, and why."""

    executable: str
    flags: tuple[str, ...]  #: ROOT goes last unless they hold it
    version_flag: str
    output: str
    note: str


_JDUPES_NOTE = (
    "-H: without it hard-linked paths are dropped pairwise, some at random; -z (empties), "
    "-A (no hidden), -s (follow) are off as ours"
)
_PEERS = {
    "jdupes": _Peer("jdupes", ("-r", "-q", "-H"), "-v", "fdupes", _JDUPES_NOTE),
    "jdupes-Q": _Peer("jdupes", ("-r", "-q", "-H", "-Q"), "-v", "fdupes",
        "-Q: trusts its hashes, no byte-by-byte check before reporting a group; " + _JDUPES_NOTE),
    "fdupes": _Peer("fdupes", ("-r", "-q", "-n", "-H"), "--version", "fdupes", "-n: empty files "
        "are duplicates by default; -H: by default it keeps one path per inode"),
    "rmlint": _Peer("rmlint", ("-T", "df", "--hidden", "-F", "-o", "fdupes"), "--version",
        "fdupes", "-T df: duplicate files only (no empties); --hidden: off by default; -F: "
        "ignore symlinks (the default -@ reads them as files); -o fdupes: groups on stdout, no "
        "rmlint.sh/.json written"),
    "rdfind": _Peer("rdfind", ("-dryrun", "true", "-removeidentinode", "false", "-outputname",
        OUT, ROOT), "-v", "rdfind", "-removeidentinode false: by default all but one path per "
        "inode go; empty files and symlinks are ignored by default; groups read from the "
        "results file"),
}  # fmt: skip
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_NUMBER = re.compile(r"\d+(?:\.\d+)+")


def _version(label: str, argv: Sequence[str]) -> str:
    """`label X.Y.Z` from the first version number the tool prints; else its first line."""
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    text = _ANSI.sub("", (proc.stdout + proc.stderr).decode(errors="replace")).strip()
    first = text.splitlines()[0].strip() if text else "unknown"
    number = _NUMBER.search(first)
    return f"{label} {number.group()}" if number else first


def available_tools(
    names: Sequence[str], dedup_command: Sequence[str] | None = None
) -> tuple[list[Tool], list[tuple[str, str]]]:
    """The tools found, dedup first (always: it is the reference), and (name, reason) skipped.

    `dedup_command` is the argv that runs dedup (default: this Python's `-m dedup_engine`);
    `find ROOT -f fdupes -q` is appended to it.
    """
    prefix = tuple(dedup_command or (sys.executable, "-m", "dedup_engine"))
    found = [
        Tool(
            REFERENCE,
            (*prefix, "find", ROOT, "-f", "fdupes", "-q"),
            _version("dedup-engine", [*prefix, "--version"]),
            note="the reference",
        )
    ]
    skipped: list[tuple[str, str]] = []
    for name in dict.fromkeys(n.strip() for n in names if n.strip()):
        if name == REFERENCE:
            continue
        peer = _PEERS.get(name)
        exe = shutil.which(peer.executable) if peer is not None else None
        if peer is None:
            skipped.append((name, f"unknown tool (known: {', '.join([REFERENCE, *_PEERS])})"))
        elif exe is None:
            skipped.append((name, f"not installed: apt-get install {peer.executable}"))
        else:
            found.append(_peer_tool(name, peer, exe))
    return found, skipped


def _peer_tool(name: str, peer: _Peer, exe: str) -> Tool:
    command = (exe, *peer.flags) if ROOT in peer.flags else (exe, *peer.flags, ROOT)
    version = _version(peer.executable, [exe, peer.version_flag])
    return Tool(name, command, version, peer.output, hard_link_groups=True, note=peer.note)


# --- running -----------------------------------------------------------------------------------


def _argv(tool: Tool, root: str, out: str) -> list[str]:
    return [root if a == ROOT else out if a == OUT else a for a in tool.command]


def _environment(workdir: str) -> dict[str, str]:
    """Every tool's environment: without the digest cache, and with a bytecode cache of the
    run's own (`PYTHONPYCACHEPREFIX`), which the untimed run that reads the groups fills.  An
    installed package has its bytecode; a `PYTHONDONTWRITEBYTECODE` set here would have every
    timed run of dedup compile the package first (0.1 s a run on the quick small tree), which
    an installed package never does."""
    env = environment_without()
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = os.path.join(workdir, "bytecode")
    return env


def _tree_rss_psutil(pid: int) -> int:
    total = 0
    with contextlib.suppress(psutil.Error):
        proc = psutil.Process(pid)
        for member in [proc, *proc.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += member.memory_info().rss
    return total


def _tree_rss(pid: int) -> int:
    """Summed RSS of `pid` and its descendants, from /proc/PID/statm and .../task/*/children.

    About 0.05 ms a sample, where psutil's `children()` reads every process's stat (~2 ms: a
    quarter of a core at 5 ms, taken from the tool being timed).  psutil where the kernel has no
    `children` files (CONFIG_PROC_CHILDREN).
    """
    if not os.path.exists(f"/proc/{pid}/task/{pid}/children"):
        return _tree_rss_psutil(pid)
    total, todo = 0, [str(pid)]
    while todo:
        member = todo.pop()
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(f"/proc/{member}/statm", "rb") as f:
                total += int(f.read().split()[1]) * PAGE
            for task in os.listdir(f"/proc/{member}/task"):
                with open(f"/proc/{member}/task/{task}/children", "rb") as f:
                    todo += f.read().decode().split()
    return total


class _PeakSampler:
    """Samples the summed RSS of a process tree every SAMPLE_S, in a thread, until it is left."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _tree_rss(self.pid))
            self._stop.wait(SAMPLE_S)

    def __enter__(self) -> _PeakSampler:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()


def _wait_unreaped(child: subprocess.Popen[bytes]) -> None:
    """Wait for the exit without reaping, so the sampler never reads a reused pid."""
    try:
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
    except BaseException:  # Ctrl-C: no tool left running behind us
        child.kill()
        child.wait()
        raise


def _timed(tool: Tool, root: str, workdir: str) -> RunSample:
    """One run, output discarded: wall, CPU (wait4 rusage) and sampled peak RSS of the tree."""
    out = os.path.join(workdir, "results.txt")
    argv = _argv(tool, root, out)
    start = time.perf_counter()
    child = subprocess.Popen(
        argv,
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_environment(workdir),
    )
    with _PeakSampler(child.pid) as sampler:
        try:
            _wait_unreaped(child)
        finally:
            wall = time.perf_counter() - start
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(out)
    if child.returncode not in (0, 1):
        raise RuntimeError(f"{tool.name} exited {child.returncode}: {' '.join(argv)}")
    return RunSample(tool.name, wall, usage.ru_utime + usage.ru_stime, sampler.peak)


def parse_fdupes(data: bytes) -> list[list[str]]:
    """fdupes format: one path per line, a blank line after each group (or before, as rmlint)."""
    groups: list[list[str]] = []
    current: list[str] = []
    for line in [*data.split(b"\n"), b""]:
        if line:
            current.append(os.fsdecode(line))
        elif current:
            groups.append(current)
            current = []
    return groups


def parse_rdfind(data: bytes) -> list[list[str]]:
    """rdfind's results.txt: `duptype id depth size device inode priority name`, by |id|."""
    groups: dict[int, list[str]] = {}
    for line in data.split(b"\n"):
        fields = line.split(b" ", 7)
        if line.startswith(b"#") or len(fields) < 8:
            continue
        groups.setdefault(abs(int(fields[1])), []).append(os.fsdecode(fields[7]))
    return list(groups.values())


def _inodes(paths: Iterable[str]) -> int:
    seen: set[tuple[int, int] | str] = set()
    for path in paths:
        try:
            st = os.lstat(path)
        except OSError:
            seen.add(path)
        else:
            seen.add((st.st_dev, st.st_ino))
    return len(seen)


def _normalise(groups: list[list[str]], hard_link_groups: bool) -> GroupSet:
    out = {frozenset(os.path.abspath(p) for p in g) for g in groups}
    return frozenset(g for g in out if len(g) >= 2 and not (hard_link_groups and _inodes(g) < 2))


def groups_of(tool: Tool, root: str, workdir: str) -> GroupSet:
    """Run the tool once, untimed, and read its groups as sets of absolute paths."""
    out = os.path.join(workdir, "results.txt")
    proc = subprocess.run(
        _argv(tool, root, out),
        cwd=workdir,
        capture_output=True,
        check=False,
        env=_environment(workdir),
    )
    if proc.returncode not in (0, 1):
        tail = proc.stderr.decode(errors="replace")[-500:]
        raise RuntimeError(f"{tool.name} exited {proc.returncode}: {tail}")
    if tool.output == "rdfind":
        data = Path(out).read_bytes()
        os.unlink(out)
        return _normalise(parse_rdfind(data), tool.hard_link_groups)
    return _normalise(parse_fdupes(proc.stdout), tool.hard_link_groups)


def differences(
    ours: GroupSet, theirs: GroupSet, name: str, root: str, limit: int = 5
) -> list[str]:
    """Up to `limit` groups found by only one side, paths shown relative to the root."""

    def show(group: frozenset[str]) -> str:
        return ", ".join(sorted(os.path.relpath(p, root) for p in group))

    lines = [f"only {REFERENCE}: {show(g)}" for g in ours - theirs]
    lines += [f"only {name}: {show(g)}" for g in theirs - ours]
    return sorted(lines)[:limit]


def evict(root: Path) -> str:
    """Drop the tree from the page cache: "drop_caches" (as root) or "fadvise" per regular file."""
    os.sync()
    try:
        with open(DROP_CACHES, "w") as knob:
            knob.write("1")
    except OSError:
        pass
    else:
        return "drop_caches"
    for dirpath, _dirs, names in os.walk(root):  # symlinked dirs are listed, not entered
        for name in names:
            with contextlib.suppress(OSError):
                fd = os.open(os.path.join(dirpath, name), OPEN_READ)
                try:
                    if stat.S_ISREG(os.fstat(fd).st_mode):
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)
    return "fadvise"


def _summarise(
    tool: Tool, runs: list[RunSample], got: GroupSet, ours: GroupSet, base: float, root: str
) -> ToolSummary:
    walls = [s.wall for s in runs]
    median = statistics.median(walls)
    return ToolSummary(
        name=tool.name,
        version=tool.version,
        runs=tuple(runs),
        median_wall=median,
        min_wall=min(walls),
        max_wall=max(walls),
        median_cpu=statistics.median(s.cpu for s in runs),
        peak_rss=max(s.peak_rss for s in runs),
        groups=len(got),
        files_in_groups=sum(len(g) for g in got),
        agrees=got == ours,
        relative=1.0 if tool.name == REFERENCE else median / base,
        differences=tuple(differences(ours, got, tool.name, root)),
        command=tool.command,
    )


def compare(
    root: Path,
    tools: Sequence[Tool],
    runs: int = 5,
    warmup: int = 1,
    cold: bool = False,
    progress: ProgressFn | None = None,
    skipped: Sequence[tuple[str, str]] = (),
) -> Comparison:
    """Interleaved timed runs of every tool on `root`; progress(tool, run 1..runs, runs, wall).

    `skipped` (from `available_tools`) is carried into the result for the report.
    """
    real = _checked(root, tools, runs, warmup)
    with tempfile.TemporaryDirectory(prefix="dedup-bench-") as workdir:
        found = {t.name: groups_of(t, real, workdir) for t in tools}
        samples, method = _interleaved(tools, real, workdir, runs, warmup, cold, progress)
    base = statistics.median(s.wall for s in samples[REFERENCE])
    summaries = tuple(
        _summarise(t, samples[t.name], found[t.name], found[REFERENCE], base, real) for t in tools
    )
    created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    return Comparison(
        real, runs, warmup, method, summaries, tuple(skipped), created, os.cpu_count()
    )


def _checked(root: Path, tools: Sequence[Tool], runs: int, warmup: int) -> str:
    """The canonical root, so every tool prints the same paths; ValueError on bad arguments."""
    if runs < 1 or warmup < 0:
        raise ValueError("runs must be at least 1 and warmup at least 0")
    if not any(t.name == REFERENCE for t in tools):
        raise ValueError(f"the tools must include {REFERENCE!r}, the reference")
    real = os.path.realpath(root)
    if not os.path.isdir(real):
        raise ValueError(f"{root} is not a directory")
    return real


def _interleaved(
    tools: Sequence[Tool],
    root: str,
    workdir: str,
    runs: int,
    warmup: int,
    cold: bool,
    progress: ProgressFn | None,
) -> tuple[dict[str, list[RunSample]], str | None]:
    """Warm-up runs of every tool, then run 1 of every tool, run 2, ...; and the eviction used."""
    samples: dict[str, list[RunSample]] = {t.name: [] for t in tools}
    method: str | None = None
    for i in range(-warmup, runs):
        for tool in tools:
            if cold:
                method = evict(Path(root))
            sample = _timed(tool, root, workdir)
            if i >= 0:
                samples[tool.name].append(sample)
                if progress is not None:
                    progress(tool.name, i + 1, runs, sample.wall)
    return samples, method
