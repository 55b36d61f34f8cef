"""The planner: which copy is kept, what is done to the others, and what is left alone."""

from __future__ import annotations

import pytest

from dedup_engine.apply.plan import Action, Keep, Policy, make_plan
from dedup_engine.model import DuplicateGroup, FileEntry

ROOTS = ("/a", "/b")


def entry(
    path: str, ino: int, mtime: int = 0, dev: int = 1, owner: tuple[int, int, int] = (0, 0, 0o644)
) -> FileEntry:
    return FileEntry(path, dev, ino, 10, mtime, mtime, *owner)


def group(*files: FileEntry) -> DuplicateGroup:
    return DuplicateGroup(10, "d" * 64, files)


def victims(groups: list[DuplicateGroup], **policy: object) -> list[str]:
    action = policy.pop("action", Action.DELETE)
    plan = make_plan(groups, ROOTS, Policy(action, **policy))  # type: ignore[arg-type]
    return [op.victim.path for op in plan.operations]


def kept(groups: list[DuplicateGroup], **policy: object) -> set[str]:
    action = policy.pop("action", Action.DELETE)
    plan = make_plan(groups, ROOTS, Policy(action, **policy))  # type: ignore[arg-type]
    return {op.keep.path for op in plan.operations}


def test_first_root_wins_then_the_shortest_path() -> None:
    g = [group(entry("/b/x", 1), entry("/a/deep/er/x", 2), entry("/a/x2", 3))]
    assert kept(g) == {"/a/x2"}
    assert sorted(victims(g)) == ["/a/deep/er/x", "/b/x"]


@pytest.mark.parametrize(
    ("keep", "expected"),
    [
        (Keep.OLDEST, "/b/old"),
        (Keep.NEWEST, "/a/newest-of-all"),
        (Keep.SHORTEST_PATH, "/b/old"),
        (Keep.LONGEST_PATH, "/a/newest-of-all"),
    ],
)
def test_keep_orders(keep: Keep, expected: str) -> None:
    g = [group(entry("/a/newest-of-all", 1, mtime=30), entry("/b/old", 2, mtime=10),
               entry("/a/mid-aged", 3, mtime=20))]  # fmt: skip
    assert kept(g, keep=keep) == {expected}


def test_keep_path_wins_first_and_protect_is_never_touched() -> None:
    g = [group(entry("/a/x", 1), entry("/b/archive/x", 2), entry("/b/photos/x", 3))]
    assert kept(g, keep_paths=("/b/photos/*",)) == {"/b/photos/x"}
    assert victims(g, protect=("*/archive/*",)) == ["/b/photos/x"]
    # A protected file may be the one kept.
    assert kept(g, protect=("x",)) == set()  # every name protected: nothing to do
    plan = make_plan(g, ROOTS, Policy(Action.DELETE, protect=("x",)))
    assert plan.operations == () and plan.left_alone[0].group == 0


def test_min_copies_counts_files_not_names() -> None:
    a = entry("/a/x", 1)
    link = entry("/a/link-to-x", 1)  # a hard link of the kept file: not a second copy
    g = [group(a, link, entry("/b/x", 2), entry("/b/y", 3))]
    assert sorted(victims(g)) == ["/b/x", "/b/y"]
    assert victims(g, min_copies=2) == ["/b/y"]
    assert victims(g, min_copies=3) == []


def test_a_victim_file_loses_all_its_names_but_reflink_needs_one() -> None:
    g = [group(entry("/a/x", 1), entry("/b/x", 2), entry("/b/x-link", 2))]
    assert sorted(victims(g)) == ["/b/x", "/b/x-link"]
    assert victims(g, action=Action.REFLINK) == ["/b/x"]


def test_a_group_of_one_file_is_left_alone() -> None:
    g = [group(entry("/a/x", 1), entry("/a/y", 1))]
    for action in Action:
        move_to = "/dest" if action is Action.MOVE else None
        plan = make_plan(g, ROOTS, Policy(action, move_to=move_to))
        assert plan.operations == ()
        assert "one file" in plan.left_alone[0].reason


def test_the_same_inode_number_on_another_device_is_another_file() -> None:
    g = [group(entry("/a/x", 7, dev=1), entry("/b/x", 7, dev=2))]
    assert victims(g) == ["/b/x"]


def test_move_keeps_the_path_below_its_root() -> None:
    g = [group(entry("/a/x", 1), entry("/b/sub/x", 2))]
    plan = make_plan(g, ROOTS, Policy(Action.MOVE, move_to="/dest"))
    assert [(op.victim.path, op.target) for op in plan.operations] == [("/b/sub/x", "/dest/sub/x")]


def test_every_group_keeps_at_least_one_copy_whatever_the_policy() -> None:
    files = [entry(f"/{r}/f{i}", i) for i, r in enumerate("abab")]
    g = [group(*files)]
    for keep in Keep:
        for action in (Action.DELETE, Action.HARDLINK, Action.SYMLINK):
            plan = make_plan(g, ROOTS, Policy(action, keep=keep))
            touched = {op.victim.path for op in plan.operations}
            assert len({f.path for f in files} - touched) == 1
            assert all(op.keep.path not in touched for op in plan.operations)


def test_bad_policies_are_refused() -> None:
    with pytest.raises(ValueError, match="min-copies"):
        Policy(Action.DELETE, min_copies=0)
    with pytest.raises(ValueError, match="--to"):
        Policy(Action.MOVE)
    with pytest.raises(ValueError, match="--to"):
        Policy(Action.DELETE, move_to="/x")


def test_a_policy_from_a_journal_written_before_trust_sampled_reads_as_without_it() -> None:
    policy = Policy(Action.DELETE, trust_sampled=True)
    written = policy.as_dict()
    assert Policy.from_dict(written) == policy
    del written["trust_sampled"]  # a journal of an earlier version
    assert Policy.from_dict(written) == Policy(Action.DELETE)
    with pytest.raises(ValueError):
        Policy.from_dict({**written, "trust_sampled": "yes"})
    with pytest.raises(ValueError):
        Policy.from_dict({**written, "unknown": 1})
