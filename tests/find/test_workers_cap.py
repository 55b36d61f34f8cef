"""`--workers` is bounded: by the CPUs, and by the open-file limit the worker pipes must fit in.

A number above the bound is a usage error, refused before any work starts; the default stays
within it.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from collections.abc import Callable

import pytest
from treebuilder import Tree, content

from dedup_engine import ScanOptions
from dedup_engine.options import (
    FDS_PER_WORKER,
    RESERVED_FDS,
    WORKERS_PER_CPU,
    OptionsError,
    cpu_count,
    open_file_limit,
    worker_limit,
)

pytestmark = pytest.mark.usefixtures("deadline")


def test_the_limit_is_per_cpu_and_within_the_open_file_limit() -> None:
    assert worker_limit(2, None) == (16, "8 per usable CPU (2)")
    assert worker_limit(2, 1024)[0] == 16
    assert worker_limit(64, 1024)[0] == (1024 - 32) // 4 == 248
    limit, why = worker_limit(2, 64)
    assert limit == (64 - RESERVED_FDS) // FDS_PER_WORKER == 8
    assert "open-file limit of 64" in why and "ulimit -n" in why
    assert worker_limit(2, 20)[0] == 0  # not even one: only in process


def test_too_many_workers_is_an_options_error() -> None:
    """The worker count has a ceiling: -j 10000 would fork for minutes."""
    most, _why = worker_limit(cpu_count(), open_file_limit())
    assert most <= WORKERS_PER_CPU * cpu_count()
    assert ScanOptions(workers=most).worker_count() == most
    with pytest.raises(OptionsError, match=rf"--workers {most + 1} is above the limit of {most}"):
        ScanOptions(workers=most + 1)
    with pytest.raises(OptionsError, match="above the limit"):
        ScanOptions(workers=10_000)


def _dedup(
    tree: Tree, *args: str, open_files: int | None = None
) -> subprocess.CompletedProcess[bytes]:
    limit: Callable[[], None] | None = None
    if open_files is not None:
        soft = open_files

        def limit() -> None:
            _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return subprocess.run(
        [sys.executable, "-m", "dedup_engine", "find", tree.root, *args],
        capture_output=True,
        timeout=60,
        check=False,
        preexec_fn=limit,
    )


@pytest.fixture
def dups(tree: Tree) -> Tree:
    tree.file("a/x", content(300))
    tree.file("b/x", content(300))
    return tree


def test_too_many_workers_is_refused_before_any_work(dups: Tree) -> None:
    proc = _dedup(dups, "-j", "10000")
    assert proc.returncode == 2
    assert proc.stdout == b""
    lines = proc.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("dedup: error: --workers 10000 is above the limit of ")


def test_the_open_file_limit_bounds_the_workers(dups: Tree) -> None:
    """Too many workers for the descriptor limit: one line and exit 2, not EMFILE in a fork."""
    refused = _dedup(dups, "-j", "9", open_files=64)
    assert refused.returncode == 2
    assert b"Traceback" not in refused.stderr
    assert refused.stderr.startswith(b"dedup: error: --workers 9 is above the limit of 8: ")
    assert b"open-file limit of 64" in refused.stderr
    taken = _dedup(dups, "-j", "8", "-f", "fdupes", "-q", open_files=64)
    assert taken.returncode == 0, taken.stderr
    assert taken.stdout == f"{dups.path('a/x')}\n{dups.path('b/x')}\n\n".encode()


def test_the_default_stays_within_the_open_file_limit(dups: Tree) -> None:
    proc = _dedup(dups, "-f", "json", open_files=RESERVED_FDS + FDS_PER_WORKER)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["stats"]["workers"] == 1
