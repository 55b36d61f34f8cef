"""The `dedup apply` command end to end: a real pipe from `dedup find`, dry runs, scripts run by
sh, usage errors, exit codes, the journal and `--resume`, moves and the keep options, each checked
against the files on disk.

Most checks run the real command (`python -m dedup_engine`) in a subprocess; usage errors and the
one failure that must be injected run in process through typer's CliRunner.  Every test points
XDG_STATE_HOME at its own directory, so a default journal never lands in the real home.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
from blake3 import blake3
from incli import invoke
from treebuilder import Name, Tree, content

from dedup_engine.apply import syscalls as fsops
from dedup_engine.apply.plan import Action, Policy, make_plan
from dedup_engine.report.read import read_json

pytestmark = pytest.mark.usefixtures("deadline")

DEDUP = [sys.executable, "-m", "dedup_engine"]
Completed = subprocess.CompletedProcess[bytes]
#: Every path below a top: (kind, ino, size, mtime_ns, bytes of a file or text of a link).
Snapshot = dict[bytes, tuple[str, int, int, int, bytes]]
#: In `dups`: each victim of the default plan and the copy it keeps, in report order.
KEPT = {"b/v1": "a/k", "b/sub/v2": "a/k", "b/x": "a/x"}


@pytest.fixture(autouse=True)
def state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """XDG_STATE_HOME of this test, inherited by the commands it runs."""
    home = tmp_path / "state"
    monkeypatch.setenv("XDG_STATE_HOME", str(home))
    return home


def run(*cmd: str | os.PathLike[str], stdin: IO[bytes] | None = None) -> Completed:
    return subprocess.run(
        list(map(str, cmd)), stdin=stdin, capture_output=True, timeout=60, check=False
    )


def dedup(*args: str | os.PathLike[str]) -> Completed:
    return run(*DEDUP, *args)


def find_report(tmp_path: Path, *roots: str, name: str = "report.json") -> Path:
    out = tmp_path / name
    proc = dedup("find", "-j", "0", "-q", "-f", "json", "-o", out, *roots)
    assert proc.returncode == 0, proc.stderr
    return out


def snapshot(top: str | os.PathLike[str]) -> Snapshot:
    out: Snapshot = {}
    for dirpath, dirs, files in os.walk(os.fsencode(top)):
        for name in (*dirs, *files):
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                kind, data = "link", os.readlink(full)
            elif stat.S_ISDIR(st.st_mode):
                kind, data = "dir", b""
            else:
                kind, data = "file", Path(os.fsdecode(full)).read_bytes()
            out[full] = (kind, st.st_ino, st.st_size, st.st_mtime_ns, data)
    return out


def shape(top: Path) -> list[tuple[bytes, str, bytes, int]]:
    """What two runs on equal trees must agree on: names and bytes, `top` cut from names and
    link texts, and files numbered by inode (names of one inode share a number)."""
    base = os.fsencode(top)
    inodes: dict[int, int] = {}
    out = []
    for full, (kind, ino, _size, _mtime, data) in sorted(snapshot(top).items()):
        number = inodes.setdefault(ino, len(inodes)) if kind == "file" else -1
        out.append((full[len(base) :], kind, data.replace(base, b"TOP"), number))
    return out


def same_inode(tree: Tree, a: Name, b: Name) -> bool:
    x, y = os.lstat(tree.path(a)), os.lstat(tree.path(b))
    return stat.S_ISREG(x.st_mode) and (x.st_dev, x.st_ino) == (y.st_dev, y.st_ino)


def leftovers(top: str | Path) -> list[bytes]:
    """Temporary names of `apply` (and of its scripts) left below `top`."""
    return [path for path in snapshot(top) if os.path.basename(path).startswith(b".dedup-")]


@pytest.fixture
def dups(tree: Tree) -> Tree:
    """Group 1: a/k (kept by default), b/v1, b/sub/v2; group 2: a/x (kept), b/x; one unique file.
    Times are set: a/k and a/x oldest, b/v1 newest."""
    for rel, seed in (("a/k", 1), ("b/v1", 1), ("b/sub/v2", 1), ("c/unique", 3)):
        tree.file(rel, content(3000, seed))
    tree.file("a/x", content(2000, 2))
    tree.file("b/x", content(2000, 2))
    times = {"a/k": 1000, "b/v1": 3000, "b/sub/v2": 2000, "a/x": 1000, "b/x": 2000}
    for rel, seconds in times.items():
        os.utime(tree.path(rel), ns=(seconds * 10**9, seconds * 10**9))
    return tree


# --- the pipe, dry runs, exit codes 0 and 1 -------------------------------------------------------


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_find_piped_into_apply_hardlinks_the_copies(dups: Tree, fmt: str) -> None:
    unique = snapshot(dups.p("c"))
    find_cmd = [*DEDUP, "find", "-j", "0", "-q", "-f", "json", dups.root]
    find = subprocess.Popen(find_cmd, stdout=subprocess.PIPE)
    assert find.stdout is not None
    with find.stdout:
        proc = run(*DEDUP, "apply", "-", "--action", "hardlink", "-f", fmt, stdin=find.stdout)
    assert find.wait(timeout=60) == 0
    assert proc.returncode == 0, proc.stderr  # all done
    summary = (proc.stdout if fmt == "text" else proc.stderr).decode()  # JSON owns stdout
    assert "hardlink: 3 done, 0 skipped, 0 failed;" in summary and "reclaimed" in summary
    for victim, kept in KEPT.items():
        assert same_inode(dups, victim, kept), victim
    assert dups.read("a/k") == dups.read("b/v1") == dups.read("b/sub/v2") == content(3000, 1)
    assert dups.read("a/x") == dups.read("b/x") == content(2000, 2)
    assert os.lstat(dups.path("a/k")).st_nlink == 3
    assert snapshot(dups.p("c")) == unique
    assert leftovers(dups.root) == []
    if fmt == "json":
        data = json.loads(proc.stdout)
        assert data["counts"] == {
            "done": 3,
            "skipped": 0,
            "failed": 0,
            "rollback-failed": 0,
            "kept": 0,
        }
        assert [(o["path"], o["keep"], o["outcome"]) for o in data["operations"]] == [
            (dups.path(v), dups.path(k), "done") for v, k in KEPT.items()
        ]
        assert data["reclaimed"] == sum(o["reclaimed"] for o in data["operations"]) >= 9000


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_dry_run_prints_the_plan_and_changes_nothing(
    dups: Tree, tmp_path: Path, state_home: Path, fmt: str
) -> None:
    report = find_report(tmp_path, dups.root)
    moved = tmp_path / "moved"
    before = snapshot(tmp_path)
    if fmt == "text":
        policy = Policy(Action.HARDLINK)
        proc = dedup("apply", report, "--action", "hardlink", "--dry-run")
    else:  # a move, so that targets and a group left alone are shown too
        policy = Policy(Action.MOVE, min_copies=2, move_to=os.path.realpath(moved))
        options = ["--action", "move", "--min-copies", "2", "-n", "--format", "json"]
        proc = dedup("apply", report, *options, "--to", moved)
    assert proc.returncode == 0, proc.stderr
    source = read_json(report.read_text())
    plan = make_plan(source.groups, source.roots, policy)
    if fmt == "text":
        lines = proc.stdout.decode().splitlines()
        ops = [line.split(None, 1)[1].split("   => ") for line in lines[:-1]]
        assert ops == [[op.victim.path, op.keep.path] for op in plan.operations]
        assert [path for path, _ in ops] == [dups.path(v) for v in KEPT]
        assert lines[-1].startswith("dry run: 3 operations in 2 groups would be done")
    else:
        data = json.loads(proc.stdout)
        assert data["dry_run"] is True and data["action"] == "move"
        fields = ("group", "action", "path", "keep", "target", "size")
        assert [tuple(o[f] for f in fields) for o in data["operations"]] == [
            (op.group + 1, "move", op.victim.path, op.keep.path, op.target, op.victim.size)
            for op in plan.operations
        ]
        target = os.path.join(os.path.realpath(moved), "b/sub/v2")
        assert [(o["path"], o["target"]) for o in data["operations"]] == [
            (dups.path("b/sub/v2"), target)
        ]
        assert [g["group"] for g in data["left_alone"]] == [2]
    assert snapshot(tmp_path) == before
    assert not state_home.exists()  # no journal


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_exit_1_when_a_file_changed_after_the_report(dups: Tree, tmp_path: Path, fmt: str) -> None:
    report = find_report(tmp_path, dups.root)
    dups.file("b/v1", content(3000, 9))  # same size, other bytes
    changed = os.lstat(dups.path("b/v1"))
    proc = dedup("apply", report, "--action", "hardlink", "--format", fmt)
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr.decode()
    assert f"skipped: {dups.path('b/v1')}: " in err and "changed since the report" in err
    assert os.lstat(dups.path("b/v1")).st_ino == changed.st_ino
    assert dups.read("b/v1") == content(3000, 9)
    assert not same_inode(dups, "b/sub/v2", "a/k")  # the rest of that group is left as it is
    assert same_inode(dups, "b/x", "a/x")  # other groups go on
    if fmt == "text":
        summary = proc.stdout.decode()
        assert "hardlink: 1 done, 2 skipped, 0 failed;" in summary and "reclaimed" in summary
    else:
        data = json.loads(proc.stdout)
        assert data["counts"] == {
            "done": 1,
            "skipped": 2,
            "failed": 0,
            "rollback-failed": 0,
            "kept": 0,
        }
        outcome = {o["path"]: (o["outcome"], o["message"]) for o in data["operations"]}
        assert outcome[dups.path("b/v1")][0] == "skipped"
        assert "changed since the report" in outcome[dups.path("b/v1")][1]
        assert outcome[dups.path("b/sub/v2")][1].startswith("group stopped")
        assert outcome[dups.path("b/x")] == ("done", "")


# --- usage errors ---------------------------------------------------------------------------------

USAGE_ERRORS = {
    "missing-action": "{report}",
    "unknown-action": "{report} --action shred",
    "to-without-move": "{report} --action delete --to {dir}",
    "move-without-to": "{report} --action move",
    "to-a-file": "{report} --action move --to {file}",
    "min-copies-0": "{report} --action delete --min-copies 0",
    "not-json": "{junk} --action delete",
    "not-a-report": "{other} --action delete",
    "dry-run-and-script": "{report} --action delete --dry-run --script {dir}/s.sh",
    "existing-journal": "{report} --action delete --journal {journal}",
    "resume-with-a-report": "{report} --resume {journal}",
    "bad-format": "{report} --action delete --format csv",
}


@pytest.mark.parametrize("args", USAGE_ERRORS.values(), ids=USAGE_ERRORS.keys())
def test_exit_2_on_usage_errors_touches_nothing(
    dups: Tree, tmp_path: Path, state_home: Path, args: str
) -> None:
    names = {
        "report": str(find_report(tmp_path, dups.root)),
        "dir": str(tmp_path / "dest"),
        "file": dups.path("c/unique"),
        "junk": str(tmp_path / "junk.json"),
        "other": str(tmp_path / "other.json"),
        "journal": str(tmp_path / "old.jsonl"),
    }
    Path(names["dir"]).mkdir()
    Path(names["junk"]).write_text("group 1: 2 files\n")
    Path(names["other"]).write_text('{"tool": "fdupes", "groups": []}\n')
    Path(names["journal"]).write_text("an old run's journal\n")
    before = snapshot(tmp_path)
    code, out, err = invoke("apply", *(a.format(**names) for a in args.split()))
    assert code == 2, (out, err)
    assert err.startswith(b"dedup: error: ") or b"Error" in err
    assert out == b""
    assert snapshot(tmp_path) == before
    assert not state_home.exists()


# --- scripts --------------------------------------------------------------------------------------

#: Victim -> kept copy in `odd_tree`: names a shell could trip on, and names that are not UTF-8.
ODD: dict[Name, Name] = {
    "b/with space": "a/k",
    "b/it's": "a/k",
    "b/new\nline": "a/k",
    b"b/\xff-raw": "a/k",
    b"b/\xfe 'q\n copy": b"a/\xfe 'q\n",
}


def odd_tree(top: Path) -> Tree:
    tree = Tree(top / "tree")
    for victim, kept in ODD.items():
        data = content(1000, str(kept))
        tree.file(kept, data)
        tree.file(victim, data)
    return tree


def assert_done(tree: Tree, action: str, moved: Path) -> None:
    for victim, kept in ODD.items():
        path = tree.path(victim)
        if action == "hardlink":
            assert same_inode(tree, victim, kept), path
        elif action == "symlink":
            assert os.readlink(path) == tree.path(kept) and tree.read(victim) == tree.read(kept)
        else:
            assert not os.path.lexists(path), path
        if action == "move":
            assert Path(moved, os.path.relpath(path, tree.root)).read_bytes() == tree.read(kept)


@pytest.mark.parametrize("action", ["delete", "hardlink", "symlink", "move"])
def test_script_does_what_apply_does(tmp_path: Path, action: str) -> None:
    by_apply, by_script = odd_tree(tmp_path / "A"), odd_tree(tmp_path / "B")
    script = tmp_path / "plan.sh"

    def args(top: Path) -> list[str]:
        return ["--action", action, *(["--to", str(top / "moved")] if action == "move" else [])]

    report = find_report(tmp_path, by_script.root, name="b.json")
    before = snapshot(tmp_path / "B")
    proc = dedup("apply", report, *args(tmp_path / "B"), "--script", script)
    assert proc.returncode == 0, proc.stderr
    assert (
        stat.S_IMODE(script.stat().st_mode) == 0o700
    )  # the plan lists every path: its owner's alone
    assert snapshot(tmp_path / "B") == before  # writing the script changes nothing
    ran = run("sh", script)
    assert ran.returncode == 0, ran.stderr
    assert_done(by_script, action, tmp_path / "B" / "moved")

    proc = dedup(
        "apply", find_report(tmp_path, by_apply.root, name="a.json"), *args(tmp_path / "A")
    )
    assert proc.returncode == 0, proc.stderr
    assert shape(tmp_path / "B") == shape(tmp_path / "A")
    assert leftovers(tmp_path / "B") == []


def test_script_skips_a_file_changed_after_the_report(dups: Tree, tmp_path: Path) -> None:
    script = tmp_path / "plan.sh"
    report = find_report(tmp_path, dups.root)
    assert dedup("apply", report, "--action", "hardlink", "--script", script).returncode == 0
    dups.file("b/v1", content(3000, 9))  # same size, other bytes
    changed = snapshot(dups.root)[dups.bpath("b/v1")]
    ran = run("sh", script)
    assert ran.returncode == 1
    assert b"skipped" in ran.stderr and dups.bpath("b/v1") in ran.stderr
    assert snapshot(dups.root)[dups.bpath("b/v1")] == changed
    assert same_inode(dups, "b/sub/v2", "a/k") and same_inode(dups, "b/x", "a/x")
    assert leftovers(dups.root) == []


# --- the journal, --resume, exit code 4 -----------------------------------------------------------


def test_default_journal_is_in_the_state_directory(
    dups: Tree, tmp_path: Path, state_home: Path
) -> None:
    proc = dedup("apply", find_report(tmp_path, dups.root), "--action", "delete")
    assert proc.returncode == 0, proc.stderr
    named = [ln for ln in proc.stderr.decode().splitlines() if ln.startswith("journal: ")]
    assert len(named) == 1
    journal = Path(named[0].removeprefix("journal: "))
    assert journal.parent == state_home / "dedup-engine" / "journals"
    records = [json.loads(line) for line in journal.read_text().splitlines()]
    header = records[0]
    assert header["journal"] == 2 and header["tool"] == "dedup-engine"
    assert (header["policy"]["action"], header["operations"]) == ("delete", 3)
    # What --resume needs to make the same plan again.
    report = tmp_path / "report.json"
    assert header["report"] == str(report) and header["report_saved"] is False
    assert header["report_blake3"] == blake3(report.read_bytes()).hexdigest()
    # A batch's begin records go first (one fsync), then each operation's start and outcome.
    assert [(r["op"], r["state"]) for r in records[1:]] == [
        *((n, "begin") for n in range(3)),
        *((n, state) for n in range(3) for state in ("start", "done")),
    ]
    begun = [r for r in records[1:] if r["state"] == "begin"]
    assert [(r["path"], r["keep"]) for r in begun] == [
        (dups.path(v), dups.path(k)) for v, k in KEPT.items()
    ]
    assert all(os.path.basename(r["aside"]).startswith(".dedup-") for r in begun)


#: Runs `dedup` with one system call of `apply` replaced by an instant death (as by SIGKILL).
KILLED_AT = """
import os, sys
from dedup_engine.apply.syscalls import REAL
setattr(REAL, sys.argv.pop(1), lambda *args: os._exit(137))
from dedup_engine.cli.app import main
main()
"""


def killed_run(dups: Tree, tmp_path: Path, call: str) -> Path:
    """A hardlink run of `dups` killed at its first `call`; returns its journal."""
    report, journal = find_report(tmp_path, dups.root), tmp_path / "run.jsonl"
    args: list[str | os.PathLike[str]] = [
        "apply",
        report,
        "--action",
        "hardlink",
        "--journal",
        journal,
    ]
    killed = run(sys.executable, "-c", KILLED_AT, call, *args)
    assert killed.returncode == 137, killed.stderr
    assert len(leftovers(dups.root)) == 1  # our link, or the victim, under the temporary name
    return journal


@pytest.mark.parametrize(("call", "word"), [("exchange", "untouched"), ("unlink", "completed")])
def test_resume_settles_a_run_that_was_killed_and_finishes_it(
    dups: Tree, tmp_path: Path, call: str, word: str
) -> None:
    journal = killed_run(dups, tmp_path, call)
    proc = dedup("apply", "--resume", journal)
    assert proc.returncode == 0, proc.stderr
    # The run's three operations were journaled as begun together: the one killed is
    # settled, then every operation not yet done is carried out (the one put back too), and
    # the summary covers the whole run.  None is called rolled back.
    out = proc.stdout.decode().splitlines()
    assert out[0] == "resume: 1 interrupted operations settled, 0 need you"
    assert out[1].startswith("hardlink: 3 done, 0 skipped, 0 failed;")
    assert proc.stderr.decode().startswith(f"{word}: ")
    assert b"rolled back" not in proc.stderr and b"never started" not in proc.stderr
    assert leftovers(dups.root) == []
    assert dups.read("b/v1") == content(3000, 1)
    assert all(same_inode(dups, victim, kept) for victim, kept in KEPT.items())
    records = [json.loads(line) for line in journal.read_text().splitlines()]
    assert sorted(r["op"] for r in records if r.get("state") == "done") == [0, 1, 2]
    again = dedup("apply", "--resume", journal)
    assert again.stdout.startswith(b"resume: 0 interrupted")
    assert b"hardlink: 3 done" in again.stdout


def test_exit_4_when_a_rollback_fails_and_resume_puts_the_file_back(
    dups: Tree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report, journal = find_report(tmp_path, dups.root), tmp_path / "run.jsonl"
    swaps: list[str] = []
    exchange = fsops.REAL.exchange

    def exchange_once(a_at: int, a: str, b_at: int, b: str) -> None:
        swaps.append(a)  # swaps the link in, then cannot swap it back
        if len(swaps) > 1:
            raise OSError(errno.EIO, "injected", a)
        exchange(a_at, a, b_at, b)

    unlinks: list[str] = []
    unlink = fsops.REAL.unlink

    def unlink_fails_once(at: int, name: str) -> None:  # the first commit fails: undone
        unlinks.append(name)
        if len(unlinks) == 1:
            raise OSError(errno.EIO, "injected", name)
        unlink(at, name)

    monkeypatch.setattr(fsops.REAL, "exchange", exchange_once)
    monkeypatch.setattr(fsops.REAL, "unlink", unlink_fails_once)
    code, out, err = invoke("apply", report, "--action", "hardlink", "--journal", journal)
    monkeypatch.undo()
    assert code == 4, (out, err)
    assert b"ROLLBACK FAILED" in err and dups.bpath("b/v1") in err
    assert same_inode(dups, "b/v1", "a/k")  # our link is in place, the copy under its temp name
    (aside,) = leftovers(dups.root)
    assert Path(os.fsdecode(aside)).read_bytes() == content(3000, 1)
    assert aside in err and f"dedup apply --resume {journal}".encode() in err
    proc = dedup("apply", "--resume", journal)
    assert proc.returncode == 0, proc.stderr
    assert leftovers(dups.root) == []
    # Compared again and completed, then the rest of its group, which had stopped at it.
    assert proc.stderr.decode().startswith("completed: ")
    assert dups.read("b/v1") == content(3000, 1)
    assert all(same_inode(dups, victim, kept) for victim, kept in KEPT.items())


# --- where moves go, which copy is kept -----------------------------------------------------------


def test_move_keeps_the_path_below_the_root(tmp_path: Path) -> None:
    one, two = Tree(tmp_path / "r1"), Tree(tmp_path / "r2")
    one.file("k", content(500))
    two.file("sub/deeper/x", content(500))
    one.file("sub/x", content(500))
    ino = os.lstat(two.path("sub/deeper/x")).st_ino
    dest = tmp_path / "dest"  # created by the move
    report = find_report(tmp_path, one.root, two.root)
    proc = dedup("apply", report, "--action", "move", "--to", dest)
    assert proc.returncode == 0, proc.stderr
    moved = ("sub", "sub/deeper", "sub/deeper/x", "sub/x")
    assert sorted(snapshot(dest)) == [os.fsencode(dest / p) for p in moved]
    assert os.lstat(dest / "sub/deeper/x").st_ino == ino
    assert (dest / "sub/x").read_bytes() == one.read("k") == content(500)
    assert not os.path.lexists(two.path("sub/deeper/x")) and not os.path.lexists(one.path("sub/x"))


@pytest.mark.parametrize(
    ("args", "gone"),
    [
        ([], {"b/v1", "b/sub/v2", "b/x"}),
        (["--keep-path", "*/sub/*"], {"a/k", "b/v1", "b/x"}),
        (["--keep", "newest"], {"a/k", "b/sub/v2", "a/x"}),
        (["--protect", "v1"], {"b/sub/v2", "b/x"}),
        (["--protect", "*/b/*"], set()),  # every copy but one protected: a/k and a/x are kept
        (["--min-copies", "2"], {"b/sub/v2"}),
        (["--keep-path", "v2", "--protect", "k"], {"b/v1", "b/x"}),  # both kept: a/k and v2
    ],
)
def test_keep_options_decide_what_goes(
    dups: Tree, tmp_path: Path, args: list[str], gone: set[str]
) -> None:
    report = find_report(tmp_path, dups.root)
    before = snapshot(dups.root)
    proc = dedup("apply", report, "--action", "delete", *args)
    assert proc.returncode == 0, proc.stderr
    after = snapshot(dups.root)
    assert {os.path.relpath(os.fsdecode(p), dups.root) for p in set(before) - set(after)} == gone
    assert all(after[p] == before[p] for p in after if not os.path.isdir(p))  # the rest as it was


# --- option clashes, pipes, move targets, signals ------------------------------------------------


# --resume with --dry-run or --script would act while the user asked for a preview.
@pytest.mark.parametrize("flag", ["--dry-run", "--script"])
def test_resume_with_dry_run_or_script_is_a_usage_error(
    dups: Tree, tmp_path: Path, flag: str
) -> None:
    journal = killed_run(dups, tmp_path, "exchange")
    before = snapshot(dups.root)
    script = [tmp_path / "plan.sh"] if flag == "--script" else []
    proc = dedup("apply", "--resume", journal, flag, *script)
    assert (proc.returncode, snapshot(dups.root)) == (2, before)


# A reader that leaves early is not an error; click's own EPIPE handler would exit 1.
@pytest.mark.parametrize("flags", [["--dry-run"], []], ids=["dry-run", "run"])
def test_json_reader_closing_the_pipe_early_keeps_exit_0(tmp_path: Path, flags: list[str]) -> None:
    tree = Tree(tmp_path / "tree")
    deep = "/".join(["d" * 240] * 3)  # ~1.7 KB of JSON per operation: far more than a pipe holds
    for number in range(100):
        tree.file(f"a/{deep}/{number:03d}", content(50, number))
        tree.file(f"b/{deep}/{number:03d}", content(50, number))
    report = find_report(tmp_path, tree.root)
    cmd = [*DEDUP, "apply", str(report), "--action", "hardlink", "-f", "json", *flags]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline() == b"{\n"
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 0, err


@pytest.mark.parametrize("module", ["apply", "find", "synth", "common", "exitcode"])
def test_each_command_module_imports_on_its_own(module: str) -> None:
    """`app` attaches the commands; none of them imports it or another command."""
    proc = run(sys.executable, "-c", f"import dedup_engine.cli.{module}")
    assert proc.returncode == 0, proc.stderr.decode()[-300:]


# sub/x under two roots would both map to DEST/sub/x.
def test_move_never_plans_two_files_to_one_target(tmp_path: Path) -> None:
    one, two = Tree(tmp_path / "r1"), Tree(tmp_path / "r2")
    for tree, rel in ((one, "k"), (one, "sub/x"), (two, "sub/x")):
        tree.file(rel, content(500))
    report = find_report(tmp_path, one.root, two.root)
    proc = dedup("apply", report, "--action", "move", "--to", tmp_path / "dest", "-n", "-f", "json")
    plan = json.loads(proc.stdout)
    assert proc.returncode == 0 and plan["operations"] == []  # the group is left alone
    [alone] = plan["left_alone"]
    assert alone["reason"].startswith(f"two files would move to {str(tmp_path / 'dest/sub/x')!r}")


# A signal mid-operation must not leave the victim under its temporary name.
def test_sigterm_stops_between_operations(tmp_path: Path) -> None:
    tree = Tree(tmp_path / "tree")
    for number in range(300):
        for side in ("a", "b"):
            tree.file(f"{side}/{number:03d}", content(3000, number))
    report = find_report(tmp_path, tree.root)
    journal = tmp_path / "j.jsonl"
    cmd = [*DEDUP, "apply", str(report), "--action", "hardlink", "--journal", str(journal)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    while proc.poll() is None and records_in(journal) < 50:
        pass
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert b"interrupted: stopped between operations" in err
    assert leftovers(tree.root) == []
    records = [json.loads(line) for line in journal.read_bytes().splitlines()[1:]]
    begun = {r["op"] for r in records if r["state"] == "begin"}
    assert begun and begun == {r["op"] for r in records if r["state"] != "begin"}  # none open
    assert len(begun) < 300  # it did stop early
    for number in range(300):  # every name holds its bytes, linked or not
        for side in ("a", "b"):
            assert Path(tree.path(f"{side}/{number:03d}")).read_bytes() == content(3000, number)


def records_in(journal: Path) -> int:
    try:
        return journal.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def test_a_protect_pattern_that_matches_nothing_is_warned_about(tmp_path: Path) -> None:
    tree = Tree(tmp_path / "tree")
    tree.file("a/x", content(500))
    tree.file("b/x", content(500))
    report = find_report(tmp_path, tree.root)
    proc = dedup("apply", report, "--action", "delete", "-n", "--protect", tree.path("b"))
    assert proc.returncode == 0
    assert b"warning: --protect" in proc.stderr and b"DIR/*" in proc.stderr


def test_a_name_pattern_that_matches_nothing_is_warned_about_as_a_name(tmp_path: Path) -> None:
    tree = Tree(tmp_path / "tree")
    tree.file("a/x", content(500))
    tree.file("b/x", content(500))
    report = find_report(tmp_path, tree.root)
    proc = dedup("apply", report, "--action", "delete", "-n", "--protect", "b")
    assert proc.returncode == 0
    assert b"--protect 'b' matches no file" in proc.stderr
    assert b"matches a file's name" in proc.stderr and b"DIR/*" not in proc.stderr


def test_the_progress_bar_is_on_stderr_not_stdout(tmp_path: Path) -> None:
    """`--progress` draws on stderr, a terminal here, while the results go to stdout, a pipe."""
    _, report = _pairs_report(tmp_path, 40)
    with _on_a_terminal(*DEDUP, "apply", report, "--action", "hardlink", "--progress") as (
        proc,
        terminal,
    ):
        drawn = bytearray()
        while chunk := _read_terminal(terminal):
            drawn += chunk
        assert proc.stdout is not None
        results = proc.stdout.read()
    assert proc.returncode == 0, bytes(drawn)
    assert b"/40" in drawn  # the bar's count of operations done
    assert b"\x1b" not in results
    assert results.startswith(b"hardlink: 40 done")


def _pairs_report(tmp_path: Path, count: int) -> tuple[Tree, Path]:
    """A tree of `count` pairs of copies, `a/fNN` and `b/fNN`, and its report."""
    tree = Tree(tmp_path / "t")
    for n in range(count):
        for side in "ab":
            tree.file(f"{side}/f{n:02}", content(3000, seed=n))
    return tree, find_report(tmp_path, tree.root)


@contextlib.contextmanager
def _on_a_terminal(
    *cmd: str | os.PathLike[str],
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """The command run with stderr on a pseudo-terminal and stdout on a pipe: the process, and
    the terminal's side to read (closed afterwards, if the test has not)."""
    terminal, stderr = os.openpty()
    try:
        with subprocess.Popen(
            list(map(str, cmd)), stdout=subprocess.PIPE, stderr=stderr, start_new_session=True
        ) as proc:
            os.close(stderr)
            yield proc, terminal
    finally:
        with contextlib.suppress(OSError):
            os.close(terminal)


def _read_terminal(fd: int) -> bytes:
    """What a terminal shows next; nothing once the other side is closed (EIO on Linux)."""
    try:
        return os.read(fd, 1 << 16)
    except OSError:
        return b""


HELD_LINKS = """
import os, time
from dedup_engine.apply.syscalls import REAL
link = REAL.link
def held_link(*args):
    while not os.path.exists(os.environ["DEDUP_TEST_RELEASE"]):
        time.sleep(0.01)
    link(*args)
REAL.link = held_link
from dedup_engine.cli.app import main
main()
"""


def test_a_terminal_hung_up_under_the_bar_does_not_fail_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The terminal that shows `--progress` goes away mid-run (as a run left under nohup after
    a logout): the bar has nowhere to go, and the run still does every operation and reports
    on stdout, exit 0.  The first link waits until the terminal is gone."""
    tree, report = _pairs_report(tmp_path, 60)
    release = tmp_path / "release"
    monkeypatch.setenv("DEDUP_TEST_RELEASE", str(release))
    cmd = (sys.executable, "-c", HELD_LINKS, "apply", report, "--action", "hardlink", "--progress")
    with _on_a_terminal(*cmd) as (proc, terminal):
        drawn = b""
        while b"/60" not in drawn:  # the bar is up
            chunk = _read_terminal(terminal)
            assert chunk, drawn
            drawn += chunk
        os.close(terminal)  # the hangup
        release.touch()
        assert proc.stdout is not None
        results = proc.stdout.read()
    assert proc.returncode == 0
    assert results.startswith(b"hardlink: 60 done")
    assert all(
        os.path.samefile(tree.path(f"a/f{n:02}"), tree.path(f"b/f{n:02}")) for n in range(60)
    )


SIGTERM_AT_READ = """
import os, signal
import dedup_engine.cli.apply as command
read = command.read_json
def read_then_stop(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    return read(*args, **kwargs)
command.read_json = read_then_stop
from dedup_engine.cli.app import main
main()
"""


def test_a_stop_before_any_operation_is_one_line_and_130(tmp_path: Path, dups: Tree) -> None:
    """A stop signal while the report is read, before the operations (which stop between
    two), ends the run as `find`'s does: one line, exit 130, and nothing touched."""
    report = find_report(tmp_path, dups.root)
    before = snapshot(dups.root)
    proc = run(sys.executable, "-c", SIGTERM_AT_READ, "apply", report, "--action", "hardlink")
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr == b"dedup: interrupted\n"
    assert snapshot(dups.root) == before
