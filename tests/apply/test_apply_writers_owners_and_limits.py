"""`apply` against writers, other owners, planted symlinks, crafted journals, long paths, full
link counts and interruptions, with the state on disk after each.

Writers: a program that holds a file open for writing is not replaced (a read lease cannot be
taken); one that opens it during the byte comparison breaks the lease and the operation is
rolled back, its write landing in the file it opened; without leases (NFS, another owner's file)
a write during the comparison is caught by size and mtime, checked again after the link.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from faultsys import (
    Faulty,
    assert_nothing_lost,
    entry_of,
    lease_breaking,
    leftovers,
    snapshot,
    wait_past,
)
from treebuilder import Tree, content

from dedup_engine import ScanOptions, __version__, find_duplicates
from dedup_engine.apply.journal import FileJournal
from dedup_engine.apply.outcome import Outcome
from dedup_engine.apply.plan import Action, Keep, LeftAloneKind, Operation, Plan, Policy, make_plan
from dedup_engine.apply.runner import ApplySummary, apply_plan
from dedup_engine.report.formats.json import to_json_dict

pytestmark = pytest.mark.usefixtures("deadline")

DEDUP = [sys.executable, "-m", "dedup_engine"]
DATA = content(3 << 20, "hardening")  # three compare chunks: a pause fits between them
EDIT = b"EDITED"


def dedup(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[bytes]:
    command = [*DEDUP, *map(str, args)]
    return subprocess.run(command, capture_output=True, timeout=120, check=False)


def pair(tmp_path: Path, action: Action = Action.HARDLINK, data: bytes = DATA) -> tuple[Tree, Plan]:
    """k (kept) and sub/victim, equal; the plan of `action` for them."""
    tree = Tree(tmp_path / "t")
    tree.file("k", data)
    tree.file("sub/victim", data)
    wait_past(os.lstat(tree.path("sub/victim")).st_mtime_ns, tmp_path / "probe")
    found = find_duplicates([tree.root], ScanOptions(workers=0))
    return tree, make_plan(found.groups, found.roots, Policy(action))


def compared(tree: Tree, written: str, action: Action) -> str:
    """Where the file `written` is while it is compared: a delete compares the copy under its
    temporary name, a hardlink at its own name (before the link is swapped in)."""
    if written == "k":
        return tree.path("k")
    if action is Action.DELETE:
        return os.fsdecode(leftovers(tree.root)[0])
    return tree.path("sub/victim")


WRITER = "import os, sys; fd = os.open(sys.argv[1], os.O_WRONLY); os.pwrite(fd, b'EDITED', 0)"


# -- 1. a write is never lost ---------------------------------------------------------------


@pytest.mark.parametrize("action", [Action.HARDLINK, Action.DELETE])
@pytest.mark.parametrize("written", ["k", "sub/victim"])
def test_a_file_held_open_for_writing_is_not_replaced(
    tmp_path: Path, action: Action, written: str
) -> None:
    tree, plan = pair(tmp_path, action)
    fd = os.open(tree.path(written), os.O_WRONLY)  # a log writer, an editor, a download
    try:
        result = apply_plan(plan).results[0]
        # The writer writes after the run: its bytes must still have a name.
        os.pwrite(fd, EDIT, 0)
    finally:
        os.close(fd)
    role = "kept file" if written == "k" else "victim"
    assert result.outcome is Outcome.SKIPPED
    assert result.message == f"{role} {tree.path(written)!r} is open for writing by another process"
    assert tree.read(written) == EDIT + DATA[len(EDIT) :]
    other = "sub/victim" if written == "k" else "k"
    assert tree.read(other) == DATA
    assert os.lstat(tree.path("k")).st_ino != os.lstat(tree.path("sub/victim")).st_ino
    assert leftovers(tree.root) == []


@pytest.mark.parametrize("action", [Action.HARDLINK, Action.DELETE])
@pytest.mark.parametrize("written", ["k", "victim"])
def test_a_writer_opening_a_file_during_the_comparison_breaks_the_lease_and_the_run_rolls_back(
    tmp_path: Path, action: Action, written: str
) -> None:
    tree, plan = pair(tmp_path, action)
    spy = Faulty()
    writers: list[subprocess.Popen[bytes]] = []

    def pause_in_the_comparison(name: str, number: int) -> None:
        if name != "pread" or writers:
            return
        target = compared(tree, written, action)
        writers.append(subprocess.Popen([sys.executable, "-c", WRITER, target]))
        give_up = time.monotonic() + 30
        while not lease_breaking():  # the writer waits in open() for our lease to go
            assert time.monotonic() < give_up, "the writer's open never broke the lease"
            assert writers[0].poll() is None, "the writer got in without breaking the lease"
            time.sleep(0.005)

    spy.hook = pause_in_the_comparison
    result = apply_plan(plan, syscalls=spy).results[0]
    assert writers[0].wait(timeout=30) == 0
    role = "kept file" if written == "k" else "victim"
    assert result.outcome is Outcome.SKIPPED, result.message
    assert result.message == f"the {role} was opened for writing by another process (lease broken)"
    assert leftovers(tree.root) == []
    # The write landed in the file it opened, now back under its own name; nothing was lost.
    edited = EDIT + DATA[len(EDIT) :]
    expected = (edited, DATA) if written == "k" else (DATA, edited)
    assert (tree.read("k"), tree.read("sub/victim")) == expected
    assert os.lstat(tree.path("k")).st_ino != os.lstat(tree.path("sub/victim")).st_ino


@pytest.mark.parametrize("action", [Action.HARDLINK, Action.DELETE])
@pytest.mark.parametrize("written", ["k", "victim"])
def test_without_leases_a_write_during_the_comparison_is_caught_and_kept(
    tmp_path: Path, action: Action, written: str
) -> None:
    """The "written since" stamp is taken before the comparison: taken after, a write during it
    would go unseen, the run say done, and the new bytes have no name left."""
    tree, plan = pair(tmp_path, action)
    spy = Faulty(no_lease=True)  # as on NFS, or another owner's file without CAP_LEASE

    def write_in_the_comparison(name: str, number: int) -> None:
        if name == "pread" and spy.calls.count("pread") == 3:  # after the first chunk
            with open(compared(tree, written, action), "r+b") as f:
                f.write(EDIT)

    spy.hook = write_in_the_comparison
    summary = apply_plan(plan, syscalls=spy)
    result = summary.results[0]
    role = "kept file" if written == "k" else "victim"
    assert result.outcome is Outcome.SKIPPED, result.message
    assert result.message == f"the {role} was written to during the operation"
    assert any("read leases are unavailable" in n for n in summary.notices)
    edited = EDIT + DATA[len(EDIT) :]
    expected = (edited, DATA) if written == "k" else (DATA, edited)
    assert (tree.read("k"), tree.read("sub/victim")) == expected
    assert leftovers(tree.root) == []


def test_where_leases_are_unavailable_the_run_says_so_once(nobody_dir: Path) -> None:
    """As an ordinary user, acting on root's files in the user's own directory: no lease (no
    CAP_LEASE), so each operation is guarded by size and mtime, and the run says so once."""
    tree = Tree(nobody_dir / "t")
    for name in ("a", "b", "c", "d"):
        tree.file(f"{name}/x", content(5000, 1))
        tree.file(f"{name}/y", content(7000, 2))
    report = nobody_dir / "report.json"
    found = find_duplicates([tree.root], ScanOptions(workers=0))
    report.write_text(json.dumps(to_json_dict(found, ScanOptions(workers=0), __version__)))
    for path in Path(tree.root).rglob("*"):
        os.chown(path, 65534, 65534) if path.is_dir() else None
    proc = subprocess.run(
        [*NOBODY, *DEDUP, "apply", report, "--action", "delete", "--journal", nobody_dir / "j"],
        capture_output=True, timeout=120, check=False, env={**os.environ, "HOME": str(nobody_dir)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    notes = [ln for ln in proc.stderr.decode().splitlines() if "read leases are unavailable" in ln]
    assert len(notes) == 1 and "(EACCES)" in notes[0], proc.stderr
    assert b"delete: 6 done" in proc.stdout
    assert sorted(os.listdir(tree.root)) == ["a", "b", "c", "d"]
    assert sorted(p.name for p in Path(tree.root).rglob("*") if p.is_file()) == ["x", "y"]


NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


@pytest.fixture
def nobody_dir() -> Iterator[Path]:
    """A directory the user `nobody` owns and can reach (pytest's own is root's alone)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run a command as the user nobody")
    top = Path(tempfile.mkdtemp(prefix="dedup-nobody-"))
    top.chmod(0o755)
    os.chown(top, 65534, 65534)
    try:
        yield top
    finally:
        shutil.rmtree(top, ignore_errors=True)


# -- 2. owner, group and mode --------------------------------------------------------------------


def owners_tree(tmp_path: Path) -> Tree:
    """root's private file, and a copy owned by nobody that anyone may write, made older so
    that --keep oldest would choose it."""
    tree = Tree(tmp_path / "t")
    tree.file("root/secret", content(6000, "s"), mode=0o600)
    tree.file("nobody/copy", content(6000, "s"), mode=0o666)
    os.chown(tree.path("nobody/copy"), 65534, 65534)
    os.utime(tree.path("nobody/copy"), ns=(10**9, 10**9))
    return tree


@pytest.mark.parametrize("action", [Action.HARDLINK, Action.SYMLINK, Action.DELETE, Action.MOVE])
@pytest.mark.parametrize("keep", [Keep.OLDEST, Keep.NEWEST])
def test_files_of_different_owners_are_left_alone(
    tmp_path: Path, action: Action, keep: Keep
) -> None:
    """Root's 0600 file must not become a link to a world-writable file of nobody's (who could
    then rewrite root's "copy"), nor --keep let that user choose which copy wins."""
    tree = owners_tree(tmp_path)
    before = {p: entry_of(p) for p in (tree.path("root/secret"), tree.path("nobody/copy"))}
    found = find_duplicates([tree.root], ScanOptions(workers=0))
    move_to = str(tmp_path / "moved") if action is Action.MOVE else None
    plan = make_plan(found.groups, found.roots, Policy(action, keep=keep, move_to=move_to))
    assert plan.operations == ()
    assert {s.kind for s in plan.left_alone} == {LeftAloneKind.OWNER}
    assert len(plan.left_alone) == 2 and "--across-owners" in plan.left_alone[0].reason
    apply_plan(plan)
    assert {p: entry_of(p) for p in before} == before


def test_across_owners_acts_when_asked(tmp_path: Path) -> None:
    tree = owners_tree(tmp_path)
    found = find_duplicates([tree.root], ScanOptions(workers=0))
    policy = Policy(Action.HARDLINK, keep=Keep.NEWEST, across_owners=True)
    summary = apply_plan(make_plan(found.groups, found.roots, policy))
    assert [r.outcome for r in summary.results] == [Outcome.DONE]
    assert os.path.samefile(tree.path("root/secret"), tree.path("nobody/copy"))


def test_a_group_splits_into_sets_of_equal_owner_and_mode(tmp_path: Path) -> None:
    tree = Tree(tmp_path / "t")
    data = content(6000, "m")
    for name, mode in (("a1", 0o644), ("a2", 0o644), ("b1", 0o600), ("b2", 0o600), ("c", 0o640)):
        tree.file(name, data, mode=mode)
    found = find_duplicates([tree.root], ScanOptions(workers=0))
    plan = make_plan(found.groups, found.roots, Policy(Action.HARDLINK))
    pairs = {
        (os.path.basename(op.keep.path), os.path.basename(op.victim.path)) for op in plan.operations
    }
    assert pairs == {("a1", "a2"), ("b1", "b2")}
    assert [(s.kind, tree.path("c") in s.reason) for s in plan.left_alone] == [
        (LeftAloneKind.OWNER, True)
    ]
    summary = apply_plan(plan)
    assert summary.clean
    assert os.path.samefile(tree.path("a1"), tree.path("a2"))
    assert os.path.samefile(tree.path("b1"), tree.path("b2"))
    assert stat.S_IMODE(os.lstat(tree.path("c")).st_mode) == 0o640


def test_the_actor_refuses_a_kept_file_of_another_owner_whatever_the_plan(tmp_path: Path) -> None:
    """A hand-made plan (or a report that lies about owners) still meets the check at act time."""
    tree = owners_tree(tmp_path)
    victim, keep = entry_of(tree.path("root/secret")), entry_of(tree.path("nobody/copy"))
    summary = apply_plan(Plan((Operation(0, Action.HARDLINK, victim, keep),), ()))
    assert summary.results[0].outcome is Outcome.SKIPPED
    assert "differs in owner, group or mode (uid 0, gid 0, mode 0600) from the kept file (uid " in (
        summary.results[0].message
    )
    assert stat.S_IMODE(os.lstat(tree.path("root/secret")).st_mode) == 0o600
    assert not os.path.samefile(tree.path("root/secret"), tree.path("nobody/copy"))


def test_the_dry_run_says_which_files_are_left_alone_and_why(tmp_path: Path) -> None:
    tree = owners_tree(tmp_path)
    report = tmp_path / "report.json"
    assert dedup("find", tree.root, "-f", "json", "-o", report, "-q").returncode == 0
    proc = dedup("apply", report, "--action", "hardlink", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.decode().splitlines()
    assert sum("has no copy of the same owner, group and mode" in ln for ln in lines) == 2
    assert lines[-1].startswith("dry run: 0 operations")
    run = dedup("apply", report, "--action", "hardlink", "--journal", tmp_path / "j")
    assert run.returncode == 0, run.stderr
    assert run.stdout.decode().endswith("; 1 groups left alone\n")  # one group, in two sets
    assert b"left alone (2): no copy of the same owner, group and mode" in run.stderr


# -- 3. move --to never follows a symlink ------------------------------------------------------


def planted(tmp_path: Path) -> tuple[Tree, Path, Path]:
    tree = Tree(tmp_path / "data")
    tree.file("k", content(5000, "p"))
    tree.file("sub/x", content(5000, "p"))
    dest, secret = tmp_path / "dest", tmp_path / "root-only"
    dest.mkdir()
    secret.mkdir(mode=0o700)
    os.symlink(secret, dest / "sub")  # planted by another user who may write into dest
    return tree, dest, secret


def test_move_refuses_a_symlink_planted_inside_the_destination(tmp_path: Path) -> None:
    """Followed, dest/sub -> root-only would put the file there."""
    tree, dest, secret = planted(tmp_path)
    found = find_duplicates([tree.root], ScanOptions(workers=0))
    plan = make_plan(found.groups, found.roots, Policy(Action.MOVE, move_to=str(dest)))
    assert [op.target for op in plan.operations] == [str(dest / "sub/x")]
    result = apply_plan(plan).results[0]
    assert result.outcome is Outcome.SKIPPED
    assert "'sub' is a symlink" in result.message
    assert os.listdir(secret) == []
    assert tree.read("sub/x") == content(5000, "p")


def test_the_script_refuses_a_symlink_planted_inside_the_destination(tmp_path: Path) -> None:
    tree, dest, secret = planted(tmp_path)
    report, script = tmp_path / "report.json", tmp_path / "move.sh"
    assert dedup("find", tree.root, "-f", "json", "-o", report, "-q").returncode == 0
    made = dedup("apply", report, "--action", "move", "--to", dest, "--script", script)
    assert made.returncode == 0, made.stderr
    ran = subprocess.run(["sh", script], capture_output=True, timeout=60, check=False)
    assert ran.returncode == 1
    assert b"is a symlink" in ran.stderr
    assert os.listdir(secret) == []
    assert tree.read("sub/x") == content(5000, "p")


# -- 4. the journal is not trusted --------------------------------------------------------------


def journal_with(tmp_path: Path, tree: Tree, **change: object) -> Path:
    """A journal of a run that died in its only operation, with one field of the begin record
    changed."""
    found = find_duplicates([tree.root], ScanOptions(workers=0))
    plan = make_plan(found.groups, found.roots, Policy(Action.HARDLINK))
    op = plan.operations[0]
    journal = FileJournal(str(tmp_path / "j.jsonl"), {})
    journal.begin(0, op, os.path.join(os.path.dirname(op.victim.path), ".dedup-0123abcd.tmp"))
    journal.start(0, op.keep)
    journal.close()
    lines = Path(journal.path).read_text().splitlines()
    record = json.loads(lines[1])
    record.update(change)
    lines[1] = json.dumps(record)
    Path(journal.path).write_text("\n".join(lines) + "\n")
    return Path(journal.path)


def test_a_crafted_temporary_name_is_refused(tmp_path: Path) -> None:
    """`--resume` renames what the journal's "aside" names onto the victim's path: anything but
    a name of apply's own shape, in the victim's directory, could be any file anywhere."""
    tree = Tree(tmp_path / "t")
    tree.file("k", content(4000, 1))
    tree.file("v", content(4000, 1))
    elsewhere = Tree(tmp_path / "other").file("important", b"not yours to move")
    for aside in (elsewhere, tree.path("not-ours.tmp"), tree.path("sub/.dedup-0123abcd.tmp")):
        journal = journal_with(tmp_path, tree, aside=aside)
        before = snapshot(str(tmp_path))
        proc = dedup("apply", "--resume", journal)
        assert proc.returncode == 2, proc.stderr
        assert b"is not a temporary name apply makes" in proc.stderr
        assert proc.stderr.count(b"\n") == 1 and b"Traceback" not in proc.stderr
        assert snapshot(str(tmp_path)) == before
        journal.unlink()


@pytest.mark.parametrize("how", ["other owner", "group-writable", "world-writable", "symlink"])
def test_a_journal_someone_else_could_have_written_is_refused(tmp_path: Path, how: str) -> None:
    tree = Tree(tmp_path / "t")
    tree.file("k", content(4000, 1))
    tree.file("v", content(4000, 1))
    journal = journal_with(tmp_path, tree)
    if how == "other owner":
        os.chown(journal, 65534, 65534)
    elif how == "group-writable":
        journal.chmod(0o620)
    elif how == "world-writable":
        journal.chmod(0o602)
    else:
        link = tmp_path / "link.jsonl"
        link.symlink_to(journal)
        journal = link
    proc = dedup("apply", "--resume", journal)
    assert proc.returncode == 2
    assert proc.stderr.count(b"\n") == 1 and b"Traceback" not in proc.stderr
    assert (b"refused" in proc.stderr) or (b"symlink" in proc.stderr)


@pytest.mark.parametrize(
    "line",
    [
        b"[]",
        b'{"op": -1, "state": "begin"}',
        b'{"op": 0, "state": "exploded"}',
        b'{"op": 0, "state": "done"}',
        b'{"op": 0, "state": "begin", "action": "shred"}',
        b'{"op": 0, "state": "begin", "action": "delete", "group": 0, "path": "rel", "keep": "/k"}',
        b'{"op": 1e400, "state": "begin"}',
    ],
)
def test_a_malformed_journal_is_one_line_and_exit_2(tmp_path: Path, line: bytes) -> None:
    journal = tmp_path / "j.jsonl"
    FileJournal(str(journal), {}).close()
    with journal.open("ab") as f:
        f.write(line + b"\n" + b'{"op": 0, "state": "start"}\n')
    proc = dedup("apply", "--resume", journal)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count(b"\n") == 1 and b"Traceback" not in proc.stderr


# -- 7. Ctrl-C during the last operation ---------------------------------------------------------


def test_a_signal_during_the_last_operation_is_still_an_interruption(tmp_path: Path) -> None:
    """Ctrl-C during the last operation is seen after it: the run does not say 0."""
    _, hardlink = pair(tmp_path, data=content(5000, "c"))
    caught: list[int] = []
    spy = Faulty()
    spy.hook = lambda name, number: caught.append(1) if name == "link" else None
    summary = apply_plan(hardlink, syscalls=spy, should_stop=lambda: bool(caught))
    assert [r.outcome for r in summary.results] == [Outcome.DONE]  # never cut in the middle
    assert summary.interrupted and not summary.clean


SIGNAL_AT_LINK = """
import os, signal, sys
# As a terminal's job has it, whatever the test run's own (a background run ignores SIGINT), or
# ignored from the start, as under nohup.
signal.signal({number}, {handler})
from dedup_engine.apply.syscalls import REAL
link = REAL.link
def link_then_signal(*args):
    os.kill(os.getpid(), {number})
    link(*args)
REAL.link = link_then_signal
from dedup_engine.cli.app import main
main()
"""


def _apply_signalled_at_link(
    tmp_path: Path, number: int, handler: str
) -> tuple[Tree, subprocess.CompletedProcess[bytes]]:
    """`dedup apply --action hardlink` of one pair, sent `number` as it links, the signal set to
    `handler` (a name in `signal`) when the command starts."""
    tree, _ = pair(tmp_path, data=content(5000, "c"))
    report = tmp_path / "report.json"
    assert dedup("find", tree.root, "-f", "json", "-o", report, "-q").returncode == 0
    program = SIGNAL_AT_LINK.format(number=int(number), handler=f"signal.{handler}")
    proc = subprocess.run(
        [sys.executable, "-c", program, "apply", report, "--action", "hardlink",
         "--journal", tmp_path / "j"],
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    return tree, proc


def test_ctrl_c_during_the_last_operation_exits_130(tmp_path: Path) -> None:
    tree, proc = _apply_signalled_at_link(tmp_path, signal.SIGINT, "default_int_handler")
    assert proc.returncode == 130, proc.stderr
    assert b"Traceback" not in proc.stderr
    assert os.path.samefile(tree.path("k"), tree.path("sub/victim"))  # done whole, not cut


def test_a_hangup_ignored_at_start_does_not_stop_the_run(tmp_path: Path) -> None:
    """Under `nohup` (SIGHUP ignored), a hangup is no stop: the run goes on to its end."""
    tree, proc = _apply_signalled_at_link(tmp_path, signal.SIGHUP, "SIG_IGN")
    assert proc.returncode == 0, proc.stderr
    assert b"interrupted" not in proc.stderr
    assert os.path.samefile(tree.path("k"), tree.path("sub/victim"))


# -- 12. --resume finishes the job ---------------------------------------------------------


def many(tmp_path: Path, groups: int) -> Tree:
    tree = Tree(tmp_path / "t")
    for number in range(groups):
        for copy in range(2):
            tree.file(f"d{copy}/g{number // 100}/f{number}", content(2000 + number, number))
    return tree


def kill_when(journal: Path, proc: subprocess.Popen[bytes], records: int) -> None:
    while proc.poll() is None:
        try:
            lines = journal.read_bytes().splitlines()
        except FileNotFoundError:
            lines = []
        if len(lines) >= records and b'"state": "start"' in lines[-1]:
            break
        time.sleep(0.0002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"


def test_resume_of_a_run_fed_from_stdin_finishes_from_its_saved_report(tmp_path: Path) -> None:
    """SIGKILL at 20% of a run whose report came through a pipe: --resume finishes it."""
    tree = many(tmp_path, 600)
    before = snapshot(tree.root)
    report = dedup("find", tree.root, "-f", "json", "-q").stdout
    journal = tmp_path / "j.jsonl"
    proc = subprocess.Popen(
        [*DEDUP, "apply", "-", "--action", "hardlink", "--journal", str(journal), "-q"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdin is not None
    proc.stdin.write(report)
    proc.stdin.close()
    kill_when(journal, proc, 1 + int(3 * 600 * 0.2))
    saved = Path(str(journal) + ".report.json")
    assert saved.read_bytes() == report and stat.S_IMODE(saved.stat().st_mode) == 0o600
    resumed = dedup("apply", "--resume", journal)
    assert resumed.returncode == 0, resumed.stderr
    assert b"hardlink: 600 done, 0 skipped, 0 failed" in resumed.stdout
    assert len({os.lstat(p).st_ino for p in before}) == 600
    assert leftovers(tree.root) == []
    assert_nothing_lost(before, tree.root)


def test_resume_settles_but_does_not_go_on_when_the_report_changed(tmp_path: Path) -> None:
    tree = many(tmp_path, 300)
    report = tmp_path / "report.json"
    assert dedup("find", tree.root, "-f", "json", "-o", report, "-q").returncode == 0
    journal = tmp_path / "j.jsonl"
    proc = subprocess.Popen(
        [*DEDUP, "apply", str(report), "--action", "delete", "--journal", str(journal), "-q"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    kill_when(journal, proc, 1 + int(3 * 300 * 0.3))
    report.write_bytes(report.read_bytes().replace(b'"created"', b'"created" ', 1))
    resumed = dedup("apply", "--resume", journal)
    assert resumed.returncode == 1
    assert b"cannot be carried out: the report" in resumed.stderr
    assert b"changed since the run began" in resumed.stderr
    assert leftovers(tree.root) == []


# -- 13. directory descriptors, EMLINK, reflink said once ----------------------------------


def test_paths_near_path_max_are_acted_on(tmp_path: Path) -> None:
    """A path find could report (under 4096 bytes) whose temporary name alone would pass
    PATH_MAX: acted on through its directory, relative names only."""
    tree = Tree(tmp_path / "t")
    deep = tree.root
    while 4088 - len(deep) > 251:
        deep = os.path.join(deep, "d" * 250)
    deep = os.path.join(deep, "d" * (4088 - len(deep) - 1))
    os.makedirs(deep)
    victim = os.path.join(deep, "v")
    assert len(victim) == 4090  # its temporary name, .dedup-XXXXXXXX.tmp, would not fit
    Path(victim).write_bytes(content(5000, "long"))  # within PATH_MAX, so open() works
    tree.file("k", content(5000, "long"))
    found = find_duplicates([tree.root], ScanOptions(workers=0))
    plan = make_plan(found.groups, found.roots, Policy(Action.HARDLINK))
    assert [op.victim.path for op in plan.operations] == [victim]
    journal = FileJournal(str(tmp_path / "j.jsonl"), {})
    summary = apply_plan(plan, journal=journal)
    journal.close()
    assert [r.outcome for r in summary.results] == [Outcome.DONE], summary.results
    assert os.path.samefile(victim, tree.path("k"))


def test_emlink_makes_the_victim_the_kept_copy_for_the_rest_of_the_group(tmp_path: Path) -> None:
    tree = Tree(tmp_path / "t")
    for name in ("a/k", "b/v1", "b/v2", "b/v3"):
        tree.file(name, content(5000, "e"))
    found = find_duplicates([tree.path("a"), tree.path("b")], ScanOptions(workers=0))
    plan = make_plan(found.groups, found.roots, Policy(Action.HARDLINK))
    assert [os.path.basename(op.victim.path) for op in plan.operations] == ["v1", "v2", "v3"]
    spy = Faulty()
    first_link = [True]

    def full(name: str, number: int) -> None:
        if name == "link" and first_link.pop() if first_link else False:
            raise OSError(errno.EMLINK, "Too many links", tree.path("b/v1"))

    spy.hook = full
    summary: ApplySummary = apply_plan(plan, syscalls=spy)
    assert [r.outcome for r in summary.results] == [Outcome.KEPT, Outcome.DONE, Outcome.DONE]
    assert "can take no more links (EMLINK)" in summary.results[0].message
    assert summary.clean
    assert os.path.samefile(tree.path("b/v1"), tree.path("b/v2"))
    assert os.path.samefile(tree.path("b/v1"), tree.path("b/v3"))
    assert not os.path.samefile(tree.path("a/k"), tree.path("b/v1"))
    assert leftovers(tree.root) == []


def test_emlink_for_real_at_the_filesystems_link_limit(tmp_path: Path) -> None:
    limit = os.pathconf(tmp_path, "PC_LINK_MAX")
    if limit > 70_000:
        pytest.skip(f"this filesystem allows {limit} links: no limit to reach in a test")
    tree = Tree(tmp_path / "t")
    kept = tree.file("a/k", content(5000, "e"))
    spare = tmp_path / "links"  # outside the roots
    spare.mkdir()
    for number in range(limit - 1):
        os.link(kept, spare / str(number))
    for name in ("b/v1", "b/v2"):
        tree.file(name, content(5000, "e"))
    found = find_duplicates([tree.path("a"), tree.path("b")], ScanOptions(workers=0))
    plan = make_plan(found.groups, found.roots, Policy(Action.HARDLINK))
    summary = apply_plan(plan)
    assert [r.outcome for r in summary.results] == [Outcome.KEPT, Outcome.DONE]
    assert os.path.samefile(tree.path("b/v1"), tree.path("b/v2"))
    shutil.rmtree(spare)


def test_reflink_not_supported_is_said_once_per_filesystem(tmp_path: Path) -> None:
    tree = Tree(tmp_path / "t")
    for number in range(3):
        tree.file(f"a/{number}", content(5000, number))
        tree.file(f"b/{number}", content(5000, number))
    report = tmp_path / "report.json"
    assert dedup("find", tree.root, "-f", "json", "-o", report, "-q").returncode == 0
    proc = dedup("apply", report, "--action", "reflink", "--journal", tmp_path / "j")
    fs = subprocess.run(["stat", "-f", "-c", "%T", tree.root], capture_output=True, check=False)
    if b"xfs" in fs.stdout or b"btrfs" in fs.stdout:
        pytest.skip("this filesystem supports reflinks")
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.decode().splitlines() if "not supported" in ln]
    assert len(lines) == 1 and lines[0].endswith("(3 files)"), proc.stderr


# -- 10. outputs that cannot be written ---------------------------------------------------------


def _to_full(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[bytes]:
    with open("/dev/full", "wb") as full:
        return subprocess.run(
            [*DEDUP, *map(str, args)], stdout=full, stderr=subprocess.PIPE, timeout=60, check=False
        )


def test_a_dry_run_that_cannot_be_written_is_exit_5(tmp_path: Path) -> None:
    tree, _ = pair(tmp_path, data=content(5000, "o"))
    report = tmp_path / "report.json"
    assert dedup("find", tree.root, "-f", "json", "-o", report, "-q").returncode == 0
    for form in ("text", "json"):
        proc = _to_full("apply", report, "--action", "delete", "--dry-run", "-f", form)
        assert proc.returncode == 5, proc.stderr
        assert proc.stderr.count(b"\n") == 1 and b"Traceback" not in proc.stderr


def test_results_that_cannot_be_written_are_exit_5_and_the_journal_has_them(
    tmp_path: Path,
) -> None:
    tree, _ = pair(tmp_path, data=content(5000, "o"))
    report, journal = tmp_path / "report.json", tmp_path / "j.jsonl"
    assert dedup("find", tree.root, "-f", "json", "-o", report, "-q").returncode == 0
    proc = _to_full("apply", report, "--action", "hardlink", "--journal", journal)
    assert proc.returncode == 5, proc.stderr
    assert (
        b"Traceback" not in proc.stderr
        and f"journal holds every outcome: {journal}".encode() in (proc.stderr)
    )
    assert os.path.samefile(tree.path("k"), tree.path("sub/victim"))  # done, and journaled
    assert json.loads(journal.read_text().splitlines()[-1])["state"] == "done"


def test_a_closed_stdout_is_refused_before_anything_is_touched(tmp_path: Path) -> None:
    tree, _ = pair(tmp_path, data=content(5000, "o"))
    report = tmp_path / "report.json"
    assert dedup("find", tree.root, "-f", "json", "-o", report, "-q").returncode == 0
    proc = subprocess.run(
        f'{sys.executable} -m dedup_engine apply "{report}" --action delete >&-',
        shell=True, capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 5 and b"stdout is closed; nothing was touched" in proc.stderr
    assert Path(tree.path("sub/victim")).exists()
