"""`dedup find` stopped from outside: Ctrl-C, SIGTERM, SIGHUP, and a parent killed outright.

Each test but one runs the real command in a subprocess whose reads of one chosen file never end
(a stand-in for `os` in the hashing module, loaded before the command starts), so the run is
certainly mid-way, with a worker busy reading, when the signal comes; the last runs it in
process, as a program that calls `dedup` from Python would.  What must hold: exit 130
and one line on stderr, no traceback from the parent or a worker, no worker left behind; a
worker never outlives its parent, holds none of its parent's descriptors but its own pipes and
stderr, and does not hold the parent's stdout open.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from incli import invoke
from treebuilder import Tree, content

from dedup_engine.find import pool
from dedup_engine.find.tasks import Result, Task

pytestmark = pytest.mark.usefixtures("deadline")

#: Seconds to wait for something that should happen at once; only a hang exceeds it.
PATIENCE_S = 30

HOLD = '''
"""Loaded before `dedup` (tests/find/test_find_signals.py): the read of one file waits until a file
named by DEDUP_TEST_RELEASE exists (for ever, without it)."""
import os
import time

import dedup_engine.find.hashtasks


class _HeldOs:
    def __getattr__(self, name):
        return getattr(os, name)

    def pread(self, fd, n, offset):
        _hold(fd)
        return os.pread(fd, n, offset)

    def preadv(self, fd, buffers, offset, flags=0):
        _hold(fd)
        return os.preadv(fd, buffers, offset, flags)


def _hold(fd):
    if os.readlink(f"/proc/self/fd/{fd}") == os.environ["DEDUP_TEST_HOLD"]:
        # Made under another name and renamed once closed: a test that sees it may look at this
        # worker's descriptors, which must not still hold it.
        ready = os.environ["DEDUP_TEST_READY"]
        open(ready + ".part", "w").close()
        os.rename(ready + ".part", ready)
        while not os.path.exists(os.environ.get("DEDUP_TEST_RELEASE", "")):
            time.sleep(0.01)


dedup_engine.find.hashtasks.os = _HeldOs()
'''


def _program(ignored: frozenset[int]) -> str:
    """The child's program: its stop signals as a terminal's job has them (`ignored` ones
    ignored, as under nohup), whatever this test run's own are, then the command with its read
    held.  Run in the background or under nohup, this run ignores SIGINT or SIGHUP, and a child
    that inherited that would keep them ignored, as the command is meant to."""
    handlers = "; ".join(
        f"signal.signal({int(number)}, signal.{_start_handler(number, ignored)})"
        for number in pool.STOP_SIGNALS
    )
    return f"import signal; {handlers}; {_COMMAND}"


def _start_handler(number: int, ignored: frozenset[int]) -> str:
    """A stop signal's handler at the start, by its name in `signal`: Python's own for Ctrl-C,
    the system's for the others."""
    if number in ignored:
        return "SIG_IGN"
    return "default_int_handler" if number == signal.SIGINT else "SIG_DFL"


#: The command, its read held (`HOLD`).
_COMMAND = "import dedup_hold; from dedup_engine.cli.app import main; main()"


class Held:
    """A `dedup find` run held mid-way; every process it started is killed when the test ends.
    `ignored`: stop signals it starts with ignored (by default none, as a terminal's job)."""

    def __init__(
        self,
        tree: Tree,
        tmp_path: Path,
        workers: int,
        stdout: int | None,
        ignored: frozenset[int] = frozenset(),
    ) -> None:
        hook = tmp_path / "hook"
        hook.mkdir()
        (hook / "dedup_hold.py").write_text(HOLD)
        data = content(1000)
        self.held = tree.file("a/held", data)
        tree.file("b/copy", data)
        for n in range(200):  # other work about: more tasks, more pipes in use
            tree.file(f"c/{n:03d}", content(1000 + n % 7, seed=n))
        self.ready = tmp_path / "ready"
        self.release = tmp_path / "release"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hook), env.get("PYTHONPATH")]))
        env["DEDUP_TEST_HOLD"] = self.held
        env["DEDUP_TEST_READY"] = str(self.ready)
        env["DEDUP_TEST_RELEASE"] = str(self.release)
        code = _program(ignored)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, "find", tree.root, "-f", "fdupes", "-j", str(workers)],
            stdout=stdout,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,  # a process group of its own, as a terminal's job has
        )
        self.workers: list[int] = []
        until = time.monotonic() + PATIENCE_S
        while not self.ready.exists():
            assert self.proc.poll() is None, self.proc.communicate()[1].decode()
            assert time.monotonic() < until, "the held read never started"
            time.sleep(0.01)
        self.workers = children(self.proc.pid)
        assert len(self.workers) == workers

    def finish(self) -> tuple[int, bytes]:
        """The exit code and stderr, once the command has exited."""
        _out, err = self.proc.communicate(timeout=PATIENCE_S)
        return self.proc.returncode, err

    def kill_all(self) -> None:
        for pid in [self.proc.pid, *self.workers]:
            if running(pid):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=PATIENCE_S)


@pytest.fixture
def held(tree: Tree, tmp_path: Path) -> Iterator[list[Held]]:
    runs: list[Held] = []
    yield runs
    for run in runs:
        run.kill_all()


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        out += [int(p) for p in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    return out


def running(pid: int) -> bool:
    """Alive and not a zombie (a zombie runs nothing; its parent or init reaps it)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z"


def assert_all_gone(pids: list[int]) -> None:
    until = time.monotonic() + PATIENCE_S
    while any(map(running, pids)):
        assert time.monotonic() < until, f"still running: {[p for p in pids if running(p)]}"
        time.sleep(0.01)


@pytest.mark.parametrize(
    ("number", "to_group", "workers"),
    [
        (signal.SIGINT, True, 2),  # Ctrl-C: the terminal signals the whole process group
        (signal.SIGINT, True, 0),
        (signal.SIGTERM, False, 2),
        (signal.SIGHUP, False, 2),
    ],
    ids=["ctrl-c", "ctrl-c-inline", "sigterm", "sighup"],
)
def test_a_stop_signal_ends_the_run_with_130_and_no_traceback(
    tree: Tree, tmp_path: Path, held: list[Held], number: int, to_group: bool, workers: int
) -> None:
    """Ctrl-C prints no worker traceback, and SIGTERM leaves no worker running."""
    run = Held(tree, tmp_path, workers, subprocess.DEVNULL)
    held.append(run)
    if to_group:
        os.killpg(run.proc.pid, number)
    else:
        os.kill(run.proc.pid, number)
    code, err = run.finish()
    assert code == 130, err.decode()
    assert err == b"dedup: interrupted\n"
    assert_all_gone(run.workers)


def test_workers_die_with_their_parent_and_release_its_stdout(
    tree: Tree, tmp_path: Path, held: list[Held]
) -> None:
    """`dedup find X | cat` ends once dedup alone is killed: no worker lives on holding the
    pipe."""
    run = Held(tree, tmp_path, 3, subprocess.PIPE)
    held.append(run)
    os.kill(run.proc.pid, signal.SIGKILL)
    assert run.proc.stdout is not None
    out = run.proc.stdout.fileno()
    seen = b""
    until = time.monotonic() + PATIENCE_S
    while True:  # read to the end of the pipe: no writer may be left
        assert time.monotonic() < until, "the output pipe is still held open"
        if select.select([out], [], [], 0.1)[0]:
            more = os.read(out, 65536)
            if not more:
                break
            seen += more
    assert seen == b""  # killed before it wrote anything
    assert_all_gone(run.workers)
    run.proc.wait(timeout=PATIENCE_S)


def _fd_table(pid: int) -> dict[int, tuple[str, int]]:
    """Each descriptor of a process: what it points to, and its access mode (O_RDONLY...)."""
    table: dict[int, tuple[str, int]] = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        fd = int(name)
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        flags = next(int(line.split()[1], 8) for line in info.splitlines() if line[:6] == "flags:")
        table[fd] = (target, flags & 3)
    return table


def test_workers_hold_only_their_own_pipes(tree: Tree, tmp_path: Path, held: list[Held]) -> None:
    """A forked worker holds none of its parent's descriptors: not the parent's stdout, not the
    write end of its own task pipe (else it would never see its parent go)."""
    run = Held(tree, tmp_path, 3, subprocess.PIPE)
    held.append(run)
    tables = {pid: _fd_table(pid) for pid in run.workers}
    stderr = {table[2][0] for table in tables.values()}  # the one pipe all of them may share
    pipes_of: dict[int, set[str]] = {}
    for pid, table in tables.items():
        assert table[0][0] == table[1][0] == os.devnull, table
        pipes = {(target, mode) for fd, (target, mode) in table.items() if fd > 2}
        read = {t for t, mode in pipes if mode == os.O_RDONLY and t.startswith("pipe:")}
        written = {t for t, mode in pipes if mode == os.O_WRONLY and t.startswith("pipe:")}
        assert not read & written, f"worker {pid} holds both ends of {read & written}"
        others = {t for t, _mode in pipes if not t.startswith("pipe:")}
        # Besides its pipes, only files of the tree it is reading (its reader threads may be
        # at several at once) and its spinning disks' lock directory.
        reading = {t for t in others if t == run.held or t.startswith(f"{tree.root}/")}
        assert others <= reading, f"worker {pid} holds {others - reading}"
        pipes_of[pid] = (read | written) - stderr
    for pid, mine in pipes_of.items():
        for other, theirs in pipes_of.items():
            assert other == pid or not mine & theirs, f"workers {pid}, {other} share a pipe"


def test_a_parent_without_stdin_and_stdout_still_has_workers(tree: Tree) -> None:
    """With fds 0 and 1 closed, a worker's own pipe may land on fd 0 or 1: the worker must not
    put /dev/null over it (the run would die with a WorkerError)."""
    data = content(500)
    tree.file("a", data)
    tree.file("b", data)
    code = (
        "import os, sys\n"
        "os.close(0); os.close(1)\n"
        "from dedup_engine import ScanOptions, find_duplicates\n"
        "result = find_duplicates(sys.argv[1], ScanOptions(workers=2))\n"
        "os.write(2, repr(sorted(f.path for g in result.groups for f in g.files)).encode())\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, tree.root],
        capture_output=True,
        timeout=PATIENCE_S,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stderr.decode() == repr(sorted(tree.paths("a", "b")))


def test_a_signal_ignored_at_start_stays_ignored(
    tree: Tree, tmp_path: Path, held: list[Held]
) -> None:
    """Under `nohup` (SIGHUP ignored), a hangup neither stops `dedup` nor kills its workers."""
    run = Held(tree, tmp_path, 2, subprocess.PIPE, ignored=frozenset({signal.SIGHUP}))
    held.append(run)
    os.killpg(run.proc.pid, signal.SIGHUP)
    run.release.touch()
    out, err = run.proc.communicate(timeout=PATIENCE_S)
    assert run.proc.returncode == 0, err.decode()
    assert out.startswith(f"{run.held}\n".encode())


def test_a_run_stopped_from_python_puts_its_callers_handlers_back(
    tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Called from Python, with the caller's own handlers set: a run stopped by SIGTERM exits
    130, and leaves those handlers as they were, so the caller's next Ctrl-C is its own."""
    for n in range(40):
        tree.file(f"a/{n:02}", content(3000, seed=n % 20))
    real = pool.run_task

    def stopped(task: Task, state: pool.WorkerState) -> Result:
        os.kill(os.getpid(), signal.SIGTERM)
        return real(task, state)

    monkeypatch.setattr(pool, "run_task", stopped)
    caught: list[int] = []

    def callers(number: int, frame: object) -> None:
        caught.append(number)

    before = {number: signal.signal(number, callers) for number in pool.STOP_SIGNALS}
    try:
        code, _, err = invoke("find", tree.root, "-j", "0", "-q")
        after = {number: signal.getsignal(number) for number in pool.STOP_SIGNALS}
    finally:
        for number, handler in before.items():
            signal.signal(number, handler)
    assert code == 130, err
    assert b"interrupted" in err
    assert after == dict.fromkeys(pool.STOP_SIGNALS, callers)
    assert not caught  # the stop was the command's
