"""The journal and `--resume`: a run that dies at any step is completed or rolled back.

A simulated crash (before and after every system call of an operation) leaves the disk as a
SIGKILL would; `resume` must then leave every path holding its original bytes (as the original
file or a correct link), nothing under a temporary name, and no content lost.  Then the real
thing: `dedup apply` is killed with SIGKILL in the middle of a large run, and
`dedup apply --resume` settles it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from faultsys import Crash, Faulty, assert_nothing_lost, leftovers, snapshot
from treebuilder import Tree, content

from dedup_engine import ScanOptions, find_duplicates
from dedup_engine.apply.journal import FileJournal, JournalError, read
from dedup_engine.apply.plan import Action, Operation, Plan, Policy, make_plan
from dedup_engine.apply.resume import resume
from dedup_engine.apply.runner import apply_plan
from dedup_engine.apply.settle import Settlement
from dedup_engine.model import FileEntry

DATA = content(30_000, "journal")
ACTIONS = [Action.DELETE, Action.HARDLINK, Action.SYMLINK, Action.MOVE, Action.REFLINK]


def make(root: Path, action: Action) -> tuple[Tree, Plan, str]:
    tree = Tree(root / "t")
    tree.file("k", DATA)
    tree.file("sub/victim", DATA)
    tree.hardlink("sub/victim-link", "sub/victim")
    move_to = str(root / "moved")
    result = find_duplicates([tree.root], ScanOptions(workers=0))
    policy = Policy(action, move_to=move_to if action is Action.MOVE else None)
    return tree, make_plan(result.groups, result.roots, policy), move_to


def crashed(plan: Plan, tmp_path: Path, syscalls: Faulty) -> FileJournal:
    """Apply `plan` with a journal at tmp_path/j.jsonl until `syscalls` crashes it; the
    journal."""
    journal = FileJournal(str(tmp_path / "j.jsonl"), {})
    with pytest.raises(Crash):
        apply_plan(plan, syscalls=syscalls, journal=journal)
    journal.close()
    return journal


def calls_of(root: Path, action: Action) -> list[str]:
    _, plan, _ = make(root, action)
    spy = Faulty()
    apply_plan(plan, syscalls=spy)
    return spy.calls


def first(name: str, action: Action, root: Path) -> int:
    """The number of the first call of `name` an operation of `action` makes (from 1)."""
    return calls_of(root / f"probe-{name}", action).index(name) + 1


def settlements(path: str) -> list[Settlement]:
    return [s.settlement for s in resume(path).settled]


@pytest.mark.parametrize("action", ACTIONS, ids=[a.value for a in ACTIONS])
@pytest.mark.parametrize("when", ["before", "after"])
def test_resume_after_a_crash_at_any_step(tmp_path: Path, action: Action, when: str) -> None:
    calls = calls_of(tmp_path / "probe", action)
    for nth, name in enumerate(calls, 1):
        if name == "ioctl" and when == "after":
            continue  # the dedupe fails on this filesystem: there is no "after" to crash in
        root = tmp_path / f"{name}-{nth}"
        tree, plan, move_to = make(root, action)
        before = snapshot(tree.root)
        journal = FileJournal(str(root / "journal.jsonl"), {"test": True})
        with pytest.raises(Crash):
            apply_plan(plan, syscalls=Faulty(nth, crash=when), journal=journal)
        journal.close()
        settled = settlements(journal.path)
        where = f"{action.value}: crash {when} call {nth} ({name})"
        assert Settlement.NEEDS_YOU not in settled, where
        assert leftovers(tree.root) == [], where
        victims = {op.victim.path for op in plan.operations}
        moved = {op.victim.path: op.target for op in plan.operations if op.target}
        gone = victims if action is Action.DELETE else set()
        assert_nothing_lost(before, tree.root, gone_ok=gone, moved=moved)
        # A second resume has nothing left to do.
        assert resume(journal.path).settled == (), where
        if action is not Action.MOVE:
            assert not os.path.exists(move_to), where


def test_a_torn_last_record_is_ignored_and_a_damaged_one_is_refused(tmp_path: Path) -> None:
    tree, plan, _ = make(tmp_path, Action.HARDLINK)
    swap = first("exchange", Action.HARDLINK, tmp_path)  # our link swapped in, not committed
    journal = crashed(plan, tmp_path, Faulty(swap, crash="after"))
    with open(journal.path, "ab") as f:
        f.write(b'{"op": 0, "sta')  # killed in the middle of writing the end record
    pending = read(journal.path).pending
    assert [p.index for p in pending] == [0, 1]  # the second was begun with it, never started
    assert [p.started for p in pending] == [True, False]
    # The second never started: nothing to settle (no library journal names a report to
    # carry it out from, so it stays begun).
    assert settlements(journal.path) == [Settlement.COMPLETED]
    assert leftovers(tree.root) == []
    lines = Path(journal.path).read_bytes().split(b"\n")
    lines.insert(1, b"{not json")
    Path(journal.path).write_bytes(b"\n".join(lines))
    with pytest.raises(JournalError, match="line 2: damaged"):
        read(journal.path)


def test_a_journal_in_use_cannot_be_resumed(tmp_path: Path) -> None:
    journal = FileJournal(str(tmp_path / "live.jsonl"), {})
    try:
        with pytest.raises(JournalError, match="still going"):
            resume(journal.path)
    finally:
        journal.close()
    assert resume(journal.path).settled == ()


def test_not_a_journal(tmp_path: Path) -> None:
    other = tmp_path / "other.jsonl"
    other.write_text('{"hello": 1}\n')
    with pytest.raises(JournalError, match="not a dedup-engine journal"):
        resume(str(other))
    with pytest.raises(JournalError, match="exists"):
        FileJournal(str(other), {})


# -- SIGKILL in the middle of a real run ------------------------------------------------------


def _large_tree(root: Path, groups: int) -> Tree:
    tree = Tree(root)
    for number in range(groups):
        data = content(6_000 + number, number)
        for copy in range(3):
            tree.file(f"d{copy}/g{number // 50}/f{number}", data)
    return tree


def _dedup(*args: str) -> subprocess.CompletedProcess[bytes]:
    command = [sys.executable, "-m", "dedup_engine", *args]
    return subprocess.run(command, capture_output=True, timeout=300, check=False)


def _in_operation(path: Path, after: int) -> bool:
    try:
        lines = path.read_bytes().splitlines()
    except FileNotFoundError:
        return False
    return len(lines) >= after and b'"state": "start"' in lines[-1]


@pytest.mark.parametrize(
    ("action", "fraction"),
    [(Action.HARDLINK, 0.1), (Action.HARDLINK, 0.5), (Action.SYMLINK, 0.3), (Action.DELETE, 0.6)],
)
def test_sigkill_in_the_middle_then_resume(
    tmp_path: Path, action: Action, fraction: float, deadline: None
) -> None:
    tree = _large_tree(tmp_path / "t", 400)
    before = snapshot(tree.root)
    report = tmp_path / "report.json"
    found = _dedup("find", tree.root, "--format", "json", "--output", str(report), "-q")
    assert found.returncode == 0, found.stderr
    journal = tmp_path / "journal.jsonl"
    total = 2 * 400  # operations: two victims per group
    stop_at = 1 + int(3 * total * fraction)  # header + begin, start and end records
    proc = subprocess.Popen(
        [sys.executable, "-m", "dedup_engine", "apply", str(report), "--action", action.value,
         "--journal", str(journal), "-q"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    # Killed while an operation is under way: its start record is the last one written.
    while proc.poll() is None and not _in_operation(journal, stop_at):
        time.sleep(0.0002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    records = [json.loads(line) for line in journal.read_bytes().splitlines()[:-1]]
    assert sum(r.get("state") == "begin" for r in records) < total  # killed mid-run
    started = [p for p in read(str(journal)).pending if p.started]
    # The one under way (unless the kill landed just after it ended); the rest of its batch
    # never started.
    assert len(started) <= 1
    resumed = _dedup("apply", "--resume", str(journal))
    assert resumed.returncode == 0, resumed.stderr
    out = resumed.stdout.decode()
    assert f"resume: {len(started)} interrupted operations settled, 0 need you" in out
    # "Resume" finishes the job: the summary covers the whole run, and nothing that never
    # started is called rolled back.
    assert f"{action.value}: {total} done, 0 skipped, 0 failed" in out
    assert "rolled back" not in out + resumed.stderr.decode()
    assert leftovers(tree.root) == []
    ended = [r for r in map(json.loads, journal.read_bytes().splitlines()) if "op" in r]
    ends = {r["op"] for r in ended if r["state"] not in ("begin", "start")}
    assert ends == set(range(total))
    gone = set(before) if action is Action.DELETE else set()
    assert_nothing_lost(before, tree.root, gone_ok=gone)
    if action is Action.HARDLINK:
        assert len({os.lstat(p).st_ino for p in before}) == 400
    if action is Action.SYMLINK:
        assert sum(os.path.islink(p) for p in before) == 800
    if action is Action.DELETE:
        assert sum(os.path.lexists(p) for p in before) == 400
    again = _dedup("apply", "--resume", str(journal))
    assert again.returncode == 0, again.stderr
    assert b"resume: 0 interrupted operations settled" in again.stdout


def test_a_journal_that_cannot_be_written_stops_the_run_before_the_next_operation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree, plan, _ = make(tmp_path, Action.HARDLINK)
    before = snapshot(tree.root)
    journal = FileJournal(str(tmp_path / "j.jsonl"), {})
    monkeypatch.setattr("dedup_engine.apply.runner.BATCH", 1)  # one operation per batch
    commits = 0
    real_commit = journal.commit

    def failing_commit() -> None:
        nonlocal commits
        commits += 1
        if commits == 3:  # the second batch's begin record: the disk is full
            raise JournalError("cannot write journal: No space left on device")
        real_commit()

    monkeypatch.setattr(journal, "commit", failing_commit)
    with pytest.raises(JournalError, match="No space left"):
        apply_plan(plan, journal=journal)
    monkeypatch.undo()
    journal.close()
    first, second = (op.victim.path for op in plan.operations)
    assert os.lstat(first).st_ino == os.lstat(tree.path("k")).st_ino  # done
    assert os.lstat(second).st_ino != os.lstat(tree.path("k")).st_ino  # never started
    assert leftovers(tree.root) == []
    assert_nothing_lost(before, tree.root)


def test_resume_does_not_call_a_delete_done_when_its_directory_is_missing(tmp_path: Path) -> None:
    """Both names missing (an unmounted volume, a renamed directory) is no completed delete:
    the file may be waiting under its temporary name."""
    tree, plan, _ = make(tmp_path, Action.DELETE)
    aside = first("rename_noreplace", Action.DELETE, tmp_path)
    journal = crashed(plan, tmp_path, Faulty(aside, crash="after"))
    os.rename(tree.path("sub"), tree.path("sub-elsewhere"))
    # The second operation never started (no start record, same boot): nothing to look for.
    assert settlements(journal.path) == [Settlement.NEEDS_YOU]
    assert leftovers(tree.path("sub-elsewhere"))  # still there for a person, not forgotten
    os.rename(tree.path("sub-elsewhere"), tree.path("sub"))
    # Still open in the journal: settled once the directory is back.
    assert settlements(journal.path) == [Settlement.PUT_BACK]
    assert Path(tree.path("sub/victim")).read_bytes() == DATA and leftovers(tree.root) == []


def test_resume_after_a_torn_record_leaves_a_readable_journal(tmp_path: Path) -> None:
    """Resume's record must not be glued to the torn one, or the journal becomes unreadable."""
    tree, plan, _ = make(tmp_path, Action.HARDLINK)
    aside = first("exchange", Action.HARDLINK, tmp_path)  # the copy under its temporary name
    journal = crashed(plan, tmp_path, Faulty(aside, crash="after"))
    with open(journal.path, "ab") as f:
        f.write(b'{"op": 7, "sta')
    resume(journal.path)
    pending = read(journal.path).pending  # no "damaged" line
    assert [p.started for p in pending] == [False] and leftovers(tree.root) == []


def test_resume_removes_a_second_name_left_by_a_link_and_unlink_rename(tmp_path: Path) -> None:
    """Where renameat2 is missing the set-aside is a link then an unlink; stopped between the
    two, both names are the victim, and that is ours, not a foreign file."""
    tree, plan, _ = make(tmp_path, Action.HARDLINK)
    op = plan.operations[0]
    aside = os.path.join(os.path.dirname(op.victim.path), ".dedup-00000000.tmp")
    journal = FileJournal(str(tmp_path / "j.jsonl"), {})
    journal.begin(0, op, aside)
    journal.start(0, op.keep)
    journal.close()
    os.link(op.victim.path, aside)
    assert settlements(journal.path) == [Settlement.UNTOUCHED]
    assert leftovers(tree.root) == [] and Path(op.victim.path).read_bytes() == DATA


@pytest.mark.parametrize("boot", ["same", "other"])
def test_resume_leaves_a_begun_but_unstarted_operation_alone_when_its_file_changed(
    tmp_path: Path, boot: str
) -> None:
    """A batch's operations are journaled as begun together; one that never started may find
    its victim replaced by someone else since.  In the same boot the journal says it never
    started (no start record); after a reboot (unsynced records may be lost) the disk says
    nothing of ours is there.  Either way it is not a person's job."""
    tree, plan, _ = make(tmp_path, Action.HARDLINK)
    journal = crashed(plan, tmp_path, Faulty(1, crash="before"))  # before any call
    if boot == "other":
        text = Path(journal.path).read_text()
        header = json.loads(text.splitlines()[0])
        Path(journal.path).write_text(text.replace(header["boot"], "another-boot", 1))
    victim = tree.path("sub/victim-link")
    os.unlink(victim)
    Path(victim).write_bytes(b"someone else's new file")
    settled = resume(journal.path).settled
    if boot == "same":
        assert settled == ()  # the journal says neither started: nothing to look at
    else:
        assert [s.settlement for s in settled] == [Settlement.UNTOUCHED, Settlement.LEFT_ALONE]
        assert "changed by someone else" in settled[1].message
    assert Path(victim).read_bytes() == b"someone else's new file"
    assert leftovers(tree.root) == []


def test_a_directory_renamed_and_made_anew_keeps_the_operation_open(tmp_path: Path) -> None:
    """A new directory under the old name passes a device check: the operation stays open,
    since the file may wait under its temporary name in the renamed one."""
    tree, plan, _ = make(tmp_path, Action.HARDLINK)
    aside = first("exchange", Action.HARDLINK, tmp_path)  # the copy under its temporary name
    journal = crashed(plan, tmp_path, Faulty(aside, crash="after"))
    os.rename(tree.path("sub"), tree.path("sub-old"))
    os.mkdir(tree.path("sub"))
    assert settlements(journal.path) == [Settlement.NEEDS_YOU]
    # Still open for a person (and the second, never started, still to do).
    assert [p.index for p in read(journal.path).pending] == [0, 1]
    assert leftovers(tree.path("sub-old"))


def test_lines_of_zeros_left_by_writeback_are_lost_end_records(tmp_path: Path) -> None:
    tree, plan, _ = make(tmp_path, Action.HARDLINK)
    journal = FileJournal(str(tmp_path / "j.jsonl"), {})
    apply_plan(plan, journal=journal)
    journal.close()
    lines = Path(journal.path).read_bytes().split(b"\n")
    lines[-4] = b"\0" * len(lines[-4])  # op 0's end record, mid-file, never reached the disk
    Path(journal.path).write_bytes(b"\n".join(lines))
    # Worked out from the disk: it had been completed.
    assert settlements(journal.path) == [Settlement.COMPLETED]
    assert leftovers(tree.root) == []


def test_temporary_names_in_a_batch_are_distinct(monkeypatch: pytest.MonkeyPatch) -> None:
    from dedup_engine.apply import runner as apply_module

    names = iter(["/d/.dedup-same.tmp", "/d/.dedup-same.tmp", "/d/.dedup-other.tmp"])
    monkeypatch.setattr(apply_module, "aside_name", lambda path: next(names))
    keep = FileEntry("/k", 1, 9, 1, 0, 0, 0, 0, 0o644)
    ops = [
        Operation(0, Action.HARDLINK, FileEntry(f"/d/{n}", 1, n, 1, 0, 0, 0, 0, 0o644), keep)
        for n in (1, 2)
    ]
    assert apply_module._asides(ops) == ["/d/.dedup-same.tmp", "/d/.dedup-other.tmp"]


@pytest.mark.parametrize("field", ["target", "aside", "kept"])
@pytest.mark.parametrize("action", [Action.HARDLINK, Action.MOVE], ids=["hardlink", "move"])
def test_a_begin_record_missing_a_field_is_refused_in_one_line(
    tmp_path: Path, action: Action, field: str
) -> None:
    _, plan, _ = make(tmp_path, action)
    step = first("rename_noreplace" if action is Action.MOVE else "exchange", action, tmp_path)
    journal = crashed(plan, tmp_path, Faulty(step, crash="after"))
    lines = Path(journal.path).read_bytes().split(b"\n")
    begin = next(i for i, line in enumerate(lines) if b'"state": "begin"' in line)
    record = json.loads(lines[begin])
    del record[field]
    lines[begin] = json.dumps(record).encode()
    Path(journal.path).write_bytes(b"\n".join(lines))
    with pytest.raises(JournalError, match=f"line {begin + 1}: a begin record without {field}"):
        read(journal.path)
    proc = _dedup("apply", "--resume", journal.path)
    assert proc.returncode == 2
    assert proc.stderr.count(b"\n") == 1 and b"Traceback" not in proc.stderr
