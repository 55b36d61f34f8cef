#!/usr/bin/env python3
"""Measure `dedup find` against `jdupes -r -q -Q` on synthetic trees: the engine issue's speed gate.

For each profile (default: small and large) it makes the tree once with `dedup synth` in a cache
directory, checks that both tools find the same groups, then times interleaved runs (A B A B ...)
and reports medians and the ratio of medians.  Peak RSS is measured in separate runs, because
sampling the process tree costs CPU on a 2-core machine: the largest sum of the resident sets of
the whole process tree (for dedup-engine the main process plus its workers), sampled every 5 ms.

    python benchmarks/compare_jdupes.py [--profiles small,large] [--runs 7] [--cache DIR]

jdupes is installed with apt-get when it is missing and this runs as root.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil

DEFAULT_CACHE = Path(os.environ.get("DEDUP_BENCH_CACHE", "/var/tmp/dedup-bench"))


def ensure_jdupes() -> str:
    found = shutil.which("jdupes")
    if found:
        return found
    if os.geteuid() != 0:
        sys.exit("jdupes is not installed; run: sudo apt-get install -y jdupes")
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "jdupes"], check=True)
    found = shutil.which("jdupes")
    if not found:
        sys.exit("apt-get did not install jdupes")
    return found


def ensure_tree(cache: Path, profile: str, seed: int) -> Path:
    dest = cache / f"{profile}-seed{seed}"
    if not (dest / "manifest.json").exists():
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "dedup_engine",
                "synth",
                str(dest),
                "--profile",
                profile,
                "--seed",
                str(seed),
            ],
            check=True,
        )
    return dest / "data"


def groups_of(fdupes_output: bytes) -> set[frozenset[bytes]]:
    groups: set[frozenset[bytes]] = set()
    current: list[bytes] = []
    for line in fdupes_output.split(b"\n"):
        if line:
            current.append(line)
        elif current:
            groups.add(frozenset(current))
            current = []
    if current:
        groups.add(frozenset(current))
    return groups


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc.wait()
    elapsed = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{cmd[0]} exited {proc.returncode}")
    return elapsed


def peak_tree_rss(cmd: list[str]) -> int:
    """Largest sum of RSS over the process and all its descendants, sampled every 5 ms."""
    proc = psutil.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0
    while proc.poll() is None:
        total = 0
        try:
            members = [proc, *proc.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for member in members:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += member.memory_info().rss
        peak = max(peak, total)
        time.sleep(0.005)
    return peak


def _default_dedup() -> str:
    beside = Path(sys.executable).with_name("dedup")
    return str(beside) if beside.exists() else shutil.which("dedup") or "dedup"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", default="small,large")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument(
        "--dedup",
        default=_default_dedup(),
        help="the dedup command (default: the one installed beside this Python, so no shell "
        "wrapper such as a version manager's shim is timed with it)",
    )
    args = parser.parse_args()
    jdupes = ensure_jdupes()
    probe = subprocess.run([jdupes, "-v"], capture_output=True, text=True, check=False)
    version = probe.stdout.split("\n")[0]
    print(f"# {version}; {psutil.cpu_count()} CPUs; {args.runs} interleaved runs after 1 warm-up")
    rows = []
    for profile in args.profiles.split(","):
        # Canonical, so both tools print the same paths for the same files.
        root = os.path.realpath(ensure_tree(args.cache, profile, args.seed))
        ours = [args.dedup, "find", root, "--format", "fdupes", "--quiet"]
        theirs = [jdupes, "-r", "-q", "-Q", root]
        a = subprocess.run(ours, capture_output=True, check=False).stdout
        b = subprocess.run(theirs, capture_output=True, check=False).stdout
        agree = groups_of(a) == groups_of(b)
        ours_t: list[float] = []
        theirs_t: list[float] = []
        for _ in range(args.runs):
            ours_t.append(timed(ours))
            theirs_t.append(timed(theirs))
        # Both sampled the same way.  (A child's ru_maxrss would not do: Linux carries the
        # peak of the process that forked it across exec, so jdupes would report this script's.)
        ours_rss = max(peak_tree_rss(ours) for _ in range(2))
        theirs_rss = max(peak_tree_rss(theirs) for _ in range(2))
        rows.append((profile, ours_t, theirs_t, ours_rss, theirs_rss, len(groups_of(a)), agree))
    print()
    print(
        "| tree | dedup find median (min-max) | jdupes -Q median (min-max) | ratio of medians "
        "| dedup peak RSS (tree) | jdupes peak RSS | groups | same groups |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for profile, ours_t, theirs_t, ours_rss, theirs_rss, groups, agree in rows:
        mo, mt = statistics.median(ours_t), statistics.median(theirs_t)
        print(
            f"| {profile} | {mo:.3f} s ({min(ours_t):.3f}-{max(ours_t):.3f}) "
            f"| {mt:.3f} s ({min(theirs_t):.3f}-{max(theirs_t):.3f}) | {mo / mt:.2f}x "
            f"| {ours_rss / 2**20:.0f} MiB | {theirs_rss / 2**20:.1f} MiB | {groups} "
            f"| {'yes' if agree else 'NO'} |"
        )
    if not all(row[-1] for row in rows):
        sys.exit("the tools disagree on the groups")


if __name__ == "__main__":
    main()
