"""`apply_plan` on real trees: each action's result on disk, what is reclaimed, group rules.

Every test finds the duplicates of a real tree, plans, applies, and then checks the disk:
which names are links of which inode, that every byte is still there, and that the space
reported as reclaimed is what st_blocks says was freed.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from faultsys import assert_nothing_lost, leftovers, snapshot
from treebuilder import Tree, content

from dedup_engine import ScanOptions, find_duplicates
from dedup_engine.apply.journal import FileJournal, JournalError, boot_id
from dedup_engine.apply.outcome import Outcome
from dedup_engine.apply.plan import Action, Keep, Plan, Policy, make_plan
from dedup_engine.apply.runner import ApplySummary, apply_plan
from dedup_engine.apply.syscalls import fs_type


def plan_for(roots: list[str], action: Action, **policy: object) -> Plan:
    result = find_duplicates(roots, ScanOptions(workers=0))
    return make_plan(result.groups, result.roots, Policy(action, **policy))  # type: ignore[arg-type]


def run(roots: list[str], action: Action, **policy: object) -> ApplySummary:
    return apply_plan(plan_for(roots, action, **policy))


def ino(path: str) -> int:
    return os.lstat(path).st_ino


def outcomes(summary: ApplySummary) -> list[Outcome]:
    return [r.outcome for r in summary.results]


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    t = Tree(tmp_path / "t")
    data = content(50_000, "a")
    t.file("a/x", data)
    t.file("b/x", data)
    t.file("b/deep/x", data)
    t.file("a/y", content(9_000, "y"))
    t.file("b/y", content(9_000, "y"))
    t.file("a/unique", content(9_000, "u"))
    return t


def test_hardlink_makes_every_victim_a_link_of_the_kept_file(tree: Tree) -> None:
    before = snapshot(tree.root)
    summary = run([tree.root], Action.HARDLINK)
    assert outcomes(summary) == [Outcome.DONE] * 3
    kept = ino(tree.path("a/x"))
    assert ino(tree.path("b/x")) == ino(tree.path("b/deep/x")) == kept
    assert ino(tree.path("b/y")) == ino(tree.path("a/y"))
    assert os.lstat(tree.path("a/x")).st_nlink == 3
    assert_nothing_lost(before, tree.root)
    # 50 000 bytes take 13 blocks of 4 KiB; 9 000 take 3.
    assert summary.reclaimed == 2 * 13 * 4096 + 3 * 4096
    assert summary.measured_by == "st_blocks"


def test_delete_leaves_the_kept_copy_only(tree: Tree) -> None:
    before = snapshot(tree.root)
    summary = run([tree.root], Action.DELETE)
    assert outcomes(summary) == [Outcome.DONE] * 3
    assert sorted(snapshot(tree.root)) == sorted(tree.path(p) for p in ("a/x", "a/y", "a/unique"))
    gone = {tree.path(p) for p in ("b/x", "b/deep/x", "b/y")}
    assert_nothing_lost(before, tree.root, gone_ok=gone)


def test_symlink_points_at_the_kept_path(tree: Tree) -> None:
    before = snapshot(tree.root)
    summary = run([tree.root], Action.SYMLINK)
    assert outcomes(summary) == [Outcome.DONE] * 3
    for victim in ("b/x", "b/deep/x"):
        assert stat.S_ISLNK(os.lstat(tree.path(victim)).st_mode)
        assert os.readlink(tree.path(victim)) == tree.path("a/x")
    assert_nothing_lost(before, tree.root)
    # The symlinks' own blocks (a long target takes one on ext4) are not reclaimed.
    links = sum(os.lstat(tree.path(p)).st_blocks * 512 for p in ("b/x", "b/deep/x", "b/y"))
    assert summary.reclaimed == 2 * 13 * 4096 + 3 * 4096 - links


def test_move_keeps_the_path_below_the_root(tree: Tree, tmp_path: Path) -> None:
    before = snapshot(tree.root)
    target = tmp_path / "moved"
    victim_inode = ino(tree.path("b/deep/x"))
    summary = run([tree.root], Action.MOVE, move_to=str(target))
    assert outcomes(summary) == [Outcome.DONE] * 3
    assert ino(str(target / "b/deep/x")) == victim_inode
    moved = {tree.path(p): str(target / p) for p in ("b/x", "b/deep/x", "b/y")}
    assert_nothing_lost(before, tree.root, moved=moved)
    assert summary.reclaimed == 0  # moving frees nothing on this filesystem


def test_reflink_on_a_filesystem_without_it_says_so_and_changes_nothing(tree: Tree) -> None:
    fs = fs_type(tree.root)
    if fs == "unknown":
        pytest.skip("cannot tell the filesystem")
    if fs in ("xfs", "btrfs"):
        pytest.skip(f"{tree.root} is on {fs}, which has reflinks")
    before = snapshot(tree.root)
    inodes = {p: ino(p) for p in before}
    summary = run([tree.root], Action.REFLINK)
    assert outcomes(summary)[0] is Outcome.FAILED
    assert summary.results[0].message == f"reflink not supported on {fs}"
    assert {p: ino(p) for p in before} == inodes
    assert_nothing_lost(before, tree.root)


def test_every_name_of_a_victim_goes_and_its_space_is_counted_once(tmp_path: Path) -> None:
    t = Tree(tmp_path)
    data = content(40_000, 1)
    t.file("a/keep", data)
    t.file("b/victim", data)
    t.hardlink("b/victim-again", "b/victim")
    summary = run([t.root], Action.HARDLINK)
    assert outcomes(summary) == [Outcome.DONE, Outcome.DONE]
    assert ino(t.path("b/victim")) == ino(t.path("b/victim-again")) == ino(t.path("a/keep"))
    assert summary.reclaimed == 10 * 4096  # one inode of 10 blocks, freed once


def test_a_victim_with_a_name_outside_the_roots_frees_nothing(tmp_path: Path) -> None:
    t = Tree(tmp_path)
    data = content(40_000, 2)
    t.file("root/a/keep", data)
    t.file("root/b/victim", data)
    t.hardlink("elsewhere/victim", "root/b/victim")
    summary = run([t.path("root")], Action.DELETE)
    assert outcomes(summary) == [Outcome.DONE]
    assert summary.reclaimed == 0  # the file lives on under its other name
    assert t.read("elsewhere/victim") == data


def test_a_sparse_victim_reclaims_its_blocks_not_its_size(tmp_path: Path) -> None:
    t = Tree(tmp_path)
    writes = {0: b"start", 5_000_000: b"end"}
    t.sparse("a/keep", 8_000_000, writes)
    t.sparse("b/victim", 8_000_000, writes)
    blocks = os.lstat(t.path("b/victim")).st_blocks
    assert blocks * 512 < 100_000
    summary = run([t.root], Action.HARDLINK)
    assert outcomes(summary) == [Outcome.DONE]
    assert summary.reclaimed == blocks * 512


def test_a_group_of_one_file_is_left_alone(tmp_path: Path) -> None:
    t = Tree(tmp_path)
    t.file("a", content(5000, 3))
    t.hardlink("b", "a")
    result = find_duplicates([t.root], ScanOptions(workers=0, hard_links=True))
    plan = make_plan(result.groups, result.roots, Policy(Action.DELETE))
    summary = apply_plan(plan)
    assert summary.results == ()
    assert [s.reason for s in summary.left_alone] == ["all its names are one file (hard links)"]
    assert os.path.exists(t.path("a")) and os.path.exists(t.path("b"))


def test_min_copies_and_keep_policies_on_disk(tmp_path: Path) -> None:
    t = Tree(tmp_path)
    data = content(20_000, 4)
    for name in ("a/1", "b/22", "c/333"):
        t.file(name, data)
    os.utime(t.path("c/333"), ns=(1, 1))  # the oldest
    summary = run([t.root], Action.DELETE, min_copies=2, keep=Keep.OLDEST)
    assert outcomes(summary) == [Outcome.DONE]
    assert sorted(snapshot(t.root)) == [t.path("a/1"), t.path("c/333")]


def test_a_failed_operation_stops_the_rest_of_its_group(tmp_path: Path) -> None:
    t = Tree(tmp_path)
    data = content(20_000, 5)
    t.file("a/k", data)
    t.file("b/ch", data)
    t.file("c/victim-later", data)
    t.file("x/keep", content(20_000, 6))
    t.file("y/victim", content(20_000, 6))
    plan = plan_for([t.root], Action.HARDLINK)
    Path(t.path("b/ch")).write_bytes(data[:-1] + b"!")
    before = snapshot(t.root)
    summary = apply_plan(plan)
    by_path = {r.op.victim.path: r for r in summary.results}
    assert by_path[t.path("b/ch")].outcome is Outcome.SKIPPED
    assert "changed since the report" in by_path[t.path("b/ch")].message
    assert by_path[t.path("c/victim-later")].outcome is Outcome.SKIPPED
    assert by_path[t.path("c/victim-later")].message.startswith("group stopped: ")
    assert by_path[t.path("y/victim")].outcome is Outcome.DONE
    assert ino(t.path("c/victim-later")) != ino(t.path("a/k"))
    assert_nothing_lost(before, t.root)


ODD_NAMES: list[str | bytes] = [b"bad-\xff-utf8", "new\nline", "x" * 255, "sp ace 'quote'"]


@pytest.mark.parametrize("action", [Action.HARDLINK, Action.DELETE, Action.SYMLINK])
def test_odd_names(tmp_path: Path, action: Action) -> None:
    t = Tree(tmp_path)
    data = content(10_000, 7)
    t.file("a/keep", data)
    for name in ODD_NAMES:
        t.file(os.path.join(b"b", os.fsencode(name)), data)
    before = snapshot(t.root)
    summary = run([t.root], action)
    assert outcomes(summary) == [Outcome.DONE] * len(ODD_NAMES)
    gone = set(before) - {t.path("a/keep")} if action is Action.DELETE else set()
    assert_nothing_lost(before, t.root, gone_ok=gone)


def test_without_verify_the_operations_still_check_identity(tree: Tree) -> None:
    before = snapshot(tree.root)
    summary = apply_plan(plan_for([tree.root], Action.HARDLINK), verify=False)
    assert outcomes(summary) == [Outcome.DONE] * 3
    assert_nothing_lost(before, tree.root)


def test_the_journal_records_each_operation_before_and_after(tree: Tree, tmp_path: Path) -> None:
    path = str(tmp_path / "journal.jsonl")
    journal = FileJournal(path, {"action": "hardlink"})
    try:
        apply_plan(plan_for([tree.root], Action.HARDLINK), journal=journal)
    finally:
        journal.close()
    records = [json.loads(line) for line in Path(path).read_text().splitlines()]
    assert records[0] == {"journal": 2, "boot": boot_id(), "action": "hardlink"}
    states = [(r["op"], r["state"]) for r in records[1:]]
    # The batch's begin records first, made durable together, then each outcome.
    assert states == [(0, "begin"), (1, "begin"), (2, "begin"), (0, "start"), (0, "done"),
                      (1, "start"), (1, "done"), (2, "start"), (2, "done")]  # fmt: skip
    assert all(r["aside"].startswith(os.path.dirname(r["path"]) + "/.dedup-")
               for r in records[1:4])  # fmt: skip
    assert leftovers(tree.root) == []


def _other_filesystem(near: str) -> str | None:
    for candidate in ("/dev/shm", "/run"):
        usable = os.path.isdir(candidate) and os.access(candidate, os.W_OK)
        if usable and os.stat(candidate).st_dev != os.stat(near).st_dev:
            return candidate
    return None


@pytest.mark.parametrize("action", [Action.HARDLINK, Action.MOVE])
def test_across_filesystems_is_refused_without_fallback(tmp_path: Path, action: Action) -> None:
    other = _other_filesystem(str(tmp_path))
    if other is None:
        pytest.skip("no second writable filesystem (/dev/shm, /run) here")
    far = Tree(Path(other) / f"dedup-test-{os.getpid()}-{action.value}")
    try:
        near = Tree(tmp_path / "near")
        data = content(10_000, 8)
        keep_root = far.root if action is Action.HARDLINK else near.root
        Tree(keep_root).file("keep", data)
        near.file("victim", data)
        move_to = os.path.join(far.root, "moved") if action is Action.MOVE else None
        roots = [keep_root, near.root] if action is Action.HARDLINK else [near.root]
        before = snapshot(near.root)
        summary = run(roots, action, move_to=move_to)
        assert outcomes(summary) == [Outcome.SKIPPED]
        assert "filesystem" in summary.results[0].message
        assert snapshot(near.root) == before
        assert not os.path.exists(os.path.join(far.root, "moved"))
    finally:
        shutil.rmtree(far.root, ignore_errors=True)


def test_a_path_through_a_symlinked_directory_is_not_acted_on(tmp_path: Path) -> None:
    """A report made with -L names files outside the roots: acting through the link is refused."""
    t = Tree(tmp_path)
    data = content(10_000, 9)
    t.file("outside/x", data)
    t.file("top/a/x", data)
    t.symlink("top/link", "../outside")
    result = find_duplicates([t.path("top")], ScanOptions(workers=0, follow_links=True))
    plan = make_plan(result.groups, result.roots, Policy(Action.DELETE))
    assert [op.victim.path for op in plan.operations] == [t.path("top/link/x")]
    summary = apply_plan(plan)
    assert outcomes(summary) == [Outcome.SKIPPED]
    assert "reached through a symlink: 'link' is a symlink (ELOOP)" in summary.results[0].message
    assert t.read("outside/x") == data


def test_a_journal_path_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(JournalError, match="is a directory"):
        FileJournal(str(tmp_path), {})
