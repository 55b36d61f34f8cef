"""Fixtures shared by the engine, report and CLI tests.

`workers` runs a test twice, in process (0) and with two worker processes; `run` is
`find_duplicates` with those workers plus the invariant checks of `treebuilder.check_invariants`.
`deadline` fails a test that hangs (pytest-timeout may not be installed); `at_once` lets the
digest cache keep the digests of files the test has just made.  `unprivileged` is the
command prefix that runs a child without the power to read other people's files, for the
unreadable-file tests, which are skipped with the reason when that cannot be done.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from treebuilder import Runner, Tree, find_checked

import dedup_engine.find.cache
from dedup_engine import FindResult, ScanOptions

#: Seconds a test may take before `deadline` fails it; generous, it only has to catch a hang.
DEADLINE_S = 60


@pytest.fixture
def deadline() -> Iterator[None]:
    """SIGALRM after DEADLINE_S: a hang (a FIFO opened, a loop followed) fails, not stalls."""

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError(f"test still running after {DEADLINE_S} s: a hang?")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(DEADLINE_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(params=[0, 2], ids=["inline", "2workers"])
def workers(request: pytest.FixtureRequest) -> int:
    count: int = request.param
    return count


@pytest.fixture
def at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files made by the test are cached by the digest cache at once, rather than two seconds
    after their last change (the workers are forked after this, so they see it too)."""
    monkeypatch.setattr(dedup_engine.find.cache, "RACY_NS", 0)


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    return Tree(tmp_path / "tree")


@pytest.fixture
def run(workers: int) -> Runner:
    def _run(
        roots: Sequence[str | os.PathLike[str]] | str | os.PathLike[str], **options: Any
    ) -> FindResult:
        options.setdefault("workers", workers)
        return find_checked(roots, ScanOptions(**options))

    return _run


# --- dropping privileges -------------------------------------------------------------------------

_PROBE = """
import sys
import blake3, typer, rich, dedup_engine
try:
    open(sys.argv[1], "rb").close()
except PermissionError:
    sys.exit(0)
sys.exit(1)
"""

#: Two ways to lose the power to read a mode-000 file.  The first really becomes `nobody`; it works
#: where the interpreter and its packages are readable by everyone (a venv in a readable checkout).
#: The second stays uid 0 but drops the capabilities that bypass file permissions, for the case
#: where the interpreter lives somewhere only root can read (e.g. /root/.pyenv).
_DROPS = (
    ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"],
    [
        "setpriv",
        "--inh-caps=-dac_override,-dac_read_search",
        "--bounding-set=-dac_override,-dac_read_search",
    ],
)


@pytest.fixture(scope="session")
def unprivileged() -> list[str]:
    """A command prefix running `python` without the power to read a mode-000 file."""
    if os.geteuid() != 0:
        pytest.skip("needs root, to drop privileges for real (a mode-000 file is readable by root)")
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux) to drop privileges")
    top = Path(tempfile.mkdtemp(prefix="dedup-probe-"))
    try:
        top.chmod(0o755)
        secret = top / "secret"
        secret.write_bytes(b"x")
        secret.chmod(0)
        reasons = []
        for drop in _DROPS:
            cmd = [*drop, sys.executable, "-c", _PROBE, str(secret)]
            proc = subprocess.run(cmd, cwd=top, capture_output=True, timeout=60, check=False)
            if proc.returncode == 0:
                return [*drop, sys.executable]
            reasons.append(f"{' '.join(drop)}: {proc.stderr.decode(errors='replace')[-200:]}")
        pytest.skip("cannot drop privileges here: " + " | ".join(reasons))
    finally:
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def world_tree() -> Iterator[Tree]:
    """A tree in a fresh directory every user can enter (tmp_path may sit under a 0700 dir)."""
    top = Path(tempfile.mkdtemp(prefix="dedup-test-"))
    try:
        top.chmod(0o755)
        yield Tree(top / "tree")
    finally:
        for dirpath, dirs, _names in os.walk(top):
            for name in dirs:
                Path(dirpath, name).chmod(0o755)
        shutil.rmtree(top, ignore_errors=True)
