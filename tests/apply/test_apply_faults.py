"""Fault injection for `apply`: every system call of an operation fails in turn, with each errno.

For each action, a clean run records the calls one operation makes (opening a directory, open,
the lease, the reads of the comparison, rename, link, symlink, unlink, mkdir, the dedupe ioctl).
Then each of those calls is made to fail, with EACCES, EXDEV, ENOSPC, ENAMETOOLONG and EIO, on a
fresh tree; afterwards the disk must be exactly as before (no byte lost, no inode changed, no
temporary name left) and the outcome must name the error.  A lease refused with EACCES is the
exception: it means "no lease for this file", and the operation goes on with a notice.
With the fault persisting (so the rollback fails too), the outcome is a loud ROLLBACK_FAILED
naming both paths, the original survives under its temporary name, and `resume` puts it back.
Files changed while an operation is under way are caught and put back as well.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from faultsys import Faulty, assert_nothing_lost, leftovers, snapshot
from treebuilder import Tree, content

from dedup_engine import ScanOptions, find_duplicates
from dedup_engine.apply.journal import FileJournal
from dedup_engine.apply.outcome import Outcome
from dedup_engine.apply.plan import Action, Plan, Policy, make_plan
from dedup_engine.apply.resume import resume
from dedup_engine.apply.runner import ApplySummary, apply_plan
from dedup_engine.apply.settle import Settlement
from dedup_engine.apply.syscalls import fs_type

ERRNOS = [errno.EACCES, errno.EXDEV, errno.ENOSPC, errno.ENAMETOOLONG, errno.EIO]
ACTIONS = [Action.DELETE, Action.HARDLINK, Action.SYMLINK, Action.MOVE, Action.REFLINK]
DATA = content(30_000, "fault")


def make(tmp_path: Path, case: str, action: Action) -> tuple[Tree, Plan, str]:
    tree = Tree(tmp_path / case / "t")
    tree.file("k", DATA)
    tree.file("sub/victim", DATA)
    move_to = str(tmp_path / case / "moved")
    result = find_duplicates([tree.root], ScanOptions(workers=0))
    policy = Policy(action, move_to=move_to if action is Action.MOVE else None)
    plan = make_plan(result.groups, result.roots, policy)
    assert len(plan.operations) == 1
    return tree, plan, move_to


def clean_calls(tmp_path: Path, action: Action) -> list[str]:
    """The calls one operation makes when nothing fails (a reflink on ext4 fails anyway)."""
    _, plan, _ = make(tmp_path, "probe", action)
    spy = Faulty()
    summary = apply_plan(plan, syscalls=spy)
    expected = Outcome.FAILED if action is Action.REFLINK else Outcome.DONE
    assert summary.results[0].outcome is expected, summary.results[0].message
    return spy.calls


def state(root: str) -> dict[str, tuple[int, int, bytes]]:
    """Inode, mtime and bytes of every file: "nothing changed" means all three."""
    return {
        path: (os.lstat(path).st_ino, os.lstat(path).st_mtime_ns, data)
        for path, data in snapshot(root).items()
    }


@pytest.mark.parametrize("action", ACTIONS, ids=[a.value for a in ACTIONS])
@pytest.mark.parametrize("err", ERRNOS, ids=[errno.errorcode[e] for e in ERRNOS])
def test_any_call_failing_leaves_the_tree_as_it_was(
    tmp_path: Path, action: Action, err: int
) -> None:
    calls = clean_calls(tmp_path, action)
    assert "open" in calls
    for nth, name in enumerate(calls, 1):
        tree, plan, move_to = make(tmp_path, f"{name}-{nth}", action)
        before = state(tree.root)
        summary = apply_plan(plan, syscalls=Faulty(nth, err))
        result = summary.results[0]
        where = f"{action.value}: call {nth} ({name}) failing with {errno.errorcode[err]}"
        assert leftovers(tree.root) == [], where
        if name == "lease" and action is Action.REFLINK:
            # A reflink needs no lease (the kernel compares under its own locks): without one
            # it only keeps the timestamps the dedupe may have changed.  Here, on ext4, the
            # dedupe itself fails after it.
            assert result.message == f"reflink not supported on {fs_type(tree.root)}", where
            assert state(tree.root) == before, where
            continue
        if name == "lease" and err == errno.EACCES:
            # No lease for this file (not ours, no CAP_LEASE): the operation goes on, checked
            # by size and mtime instead, and the run says so once.
            assert result.outcome is Outcome.DONE, f"{where}: {result.message}"
            assert [n for n in summary.notices if "EACCES" in n], where
            continue
        assert result.outcome in (Outcome.SKIPPED, Outcome.FAILED), where
        assert errno.errorcode[err] in result.message, f"{where}: {result.message}"
        assert state(tree.root) == before, where
        assert leftovers(tree.root) == [], where
        assert not os.path.exists(os.path.join(move_to, "sub", "victim")), where


def _journal(tmp_path: Path, name: str) -> FileJournal:
    return FileJournal(str(tmp_path / f"{name}.jsonl"), {"test": name})


@pytest.mark.parametrize("action", [Action.DELETE, Action.HARDLINK, Action.SYMLINK, Action.MOVE])
def test_a_failed_rollback_is_loud_and_resume_puts_the_file_back(
    tmp_path: Path, action: Action
) -> None:
    calls = clean_calls(tmp_path, action)
    loud = 0
    for nth, name in enumerate(calls, 1):
        if name == "open":
            continue
        tree, plan, move_to = make(tmp_path, f"{name}-{nth}", action)
        before = snapshot(tree.root)
        journal = _journal(tmp_path, f"{name}-{nth}")
        try:
            summary = apply_plan(
                plan, syscalls=Faulty(nth, errno.EIO, persist=True), journal=journal
            )
        finally:
            journal.close()
        result = summary.results[0]
        where = f"{action.value}: calls {nth} ({name}) on failing"
        stranded = leftovers(tree.root)
        if result.outcome is Outcome.ROLLBACK_FAILED:
            loud += 1
            victim = tree.path("sub/victim")
            assert "ROLLBACK FAILED" in result.message and repr(victim) in result.message, where
            assert len(stranded) == 1 and repr(stranded[0]) in result.message, where
            assert_nothing_lost(before, tree.root, stranded={victim: stranded[0]})
        else:
            assert result.outcome in (Outcome.SKIPPED, Outcome.FAILED), where
            assert stranded == [], where
        settled = resume(journal.path).settled
        assert all(s.settlement is not Settlement.NEEDS_YOU for s in settled), where
        assert leftovers(tree.root) == [], where
        assert_nothing_lost(before, tree.root)
        assert not os.path.lexists(os.path.join(move_to, "sub", "victim")), where
    if action is not Action.MOVE:  # a move's only change is one rename: nothing to roll back
        assert loud, "no case made the rollback fail"


@pytest.mark.parametrize(
    ("action", "when"), [(Action.HARDLINK, "link"), (Action.DELETE, "rename_noreplace")]
)
def test_bytes_changed_with_the_mtime_put_back_are_caught(
    tmp_path: Path, action: Action, when: str
) -> None:
    """A change that keeps size and mtime: for hardlink (compared before the swap) made just
    after the comparison, caught by the ctime; for delete (compared once set aside) made as
    it is set aside, caught by the comparison."""
    tree, plan, _ = make(tmp_path, f"late-{action.value}", action)
    victim = tree.path("sub/victim")
    # Without leases: this process's own write would wait for its own lease to break.
    spy = Faulty(no_lease=True)

    def change(name: str, number: int) -> None:
        if name == when and name not in spy.calls[: number - 1]:  # the first such call only
            st = os.stat(victim)
            with open(victim, "r+b") as f:
                f.seek(100)
                f.write(b"X")
            os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))

    spy.hook = change
    before = snapshot(tree.root)
    result = apply_plan(plan, syscalls=spy).results[0]
    assert result.outcome is Outcome.SKIPPED
    expected = "the victim changed while it was compared (ctime)"
    assert (
        result.message == expected
        if action is Action.HARDLINK
        else "content differs" in (result.message)
    )
    assert os.lstat(victim).st_ino != os.lstat(tree.path("k")).st_ino
    assert Path(victim).read_bytes()[100:101] == b"X"  # the change kept, at its name
    assert snapshot(tree.root)[tree.path("k")] == before[tree.path("k")]
    assert leftovers(tree.root) == []


def test_a_kept_file_swapped_before_the_link_is_caught(tmp_path: Path) -> None:
    tree, plan, _ = make(tmp_path, "swap", Action.HARDLINK)
    keep, victim = tree.path("k"), tree.path("sub/victim")
    spy = Faulty()

    def swap(name: str, number: int) -> None:
        if name == "link":
            os.rename(keep, keep + ".old")
            Path(keep).write_bytes(b"an impostor")

    spy.hook = swap
    result = apply_plan(plan, syscalls=spy).results[0]
    assert result.outcome is Outcome.SKIPPED
    assert "not the kept file" in result.message
    assert Path(victim).read_bytes() == DATA  # the victim is back, with its bytes
    assert Path(keep).read_bytes() == b"an impostor"  # and the new file was not touched
    assert leftovers(tree.root) == []


def test_the_kept_file_deleted_before_the_commit_is_caught(tmp_path: Path) -> None:
    tree, plan, _ = make(tmp_path, "gone", Action.DELETE)
    keep, victim = tree.path("k"), tree.path("sub/victim")
    spy = Faulty()

    def remove_keep(name: str, number: int) -> None:
        if name == "rename_noreplace" and os.path.exists(keep):
            os.unlink(keep)

    spy.hook = remove_keep
    result = apply_plan(plan, syscalls=spy).results[0]
    assert result.outcome is Outcome.SKIPPED
    assert "kept file" in result.message
    assert Path(victim).read_bytes() == DATA  # the last copy survives
    assert leftovers(tree.root) == []


def test_summary_counts(tmp_path: Path) -> None:
    _, plan, _ = make(tmp_path, "count", Action.HARDLINK)
    swap = clean_calls(tmp_path, Action.HARDLINK).index("exchange") + 1
    summary: ApplySummary = apply_plan(plan, syscalls=Faulty(swap, errno.ENOSPC))
    assert (summary.count(Outcome.DONE), summary.count(Outcome.FAILED)) == (0, 1)
    assert not summary.clean and summary.reclaimed == 0


# -- changes caught at the last moment ---------------------------------------------------------


@pytest.mark.parametrize("action", [Action.HARDLINK, Action.SYMLINK])
@pytest.mark.parametrize("written", ["k", "sub/victim"])
def test_a_write_after_the_comparison_is_caught_before_the_commit(
    tmp_path: Path, action: Action, written: str
) -> None:
    """A file edited in place between the byte comparison and the final unlink.  Without
    leases (as on NFS), so the size and mtime checks are what catch it."""
    tree, plan, _ = make(tmp_path, f"{action.value}-{written.replace('/', '-')}", action)
    spy = Faulty(no_lease=True)

    def edit(name: str, number: int) -> None:
        # The comparison's last read (the end-of-file check): after the bytes were compared,
        # before the commit.
        if name == "pread" and spy.calls.count("pread") == 4:
            target = tree.path(written)  # a hardlink compares the copy at its own name
            with open(target, "r+b") as f:
                f.write(b"EDITED")

    spy.hook = edit
    result = apply_plan(plan, syscalls=spy).results[0]
    assert result.outcome is Outcome.SKIPPED
    assert "written to" in result.message
    assert leftovers(tree.root) == []
    # Both files are back as they were, the edit included: no content was lost.
    victim, keep = Path(tree.path("sub/victim")), Path(tree.path("k"))
    assert not victim.is_symlink() and os.lstat(victim).st_ino != os.lstat(keep).st_ino
    edited = b"EDITED" + DATA[6:]
    assert (keep.read_bytes(), victim.read_bytes()) == (
        (edited, DATA) if written == "k" else (DATA, edited)
    )


def test_min_copies_are_rechecked_before_acting(tmp_path: Path) -> None:
    """Every kept file is re-checked, not only the first: a changed second copy would leave
    fewer than --min-copies copies."""
    tree = Tree(tmp_path / "t")
    for name in ("a", "bb", "ccc"):
        tree.file(name, DATA)
    result = find_duplicates([tree.root], ScanOptions(workers=0))
    plan = make_plan(result.groups, result.roots, Policy(Action.DELETE, min_copies=2))
    assert [op.victim.path for op in plan.operations] == [tree.path("ccc")]
    assert [k.path for k in plan.operations[0].also_kept] == [tree.path("bb")]
    Path(tree.path("bb")).write_bytes(b"changed")
    summary = apply_plan(plan)
    assert summary.results[0].outcome is Outcome.SKIPPED
    assert "kept copy" in summary.results[0].message
    assert Path(tree.path("ccc")).read_bytes() == DATA
