"""`apply` when the tree changed between `find` and `apply`: every change is caught, nothing lost.

For each action (delete, hardlink, symlink, move --to) and each change to the victim or the kept
file (bytes appended; same size, other bytes, mtime put back so only the ctime tells; mtime
touched; replaced by a symlink; deleted; replaced by a new inode with the same bytes) the changed
group is skipped with a reason naming what changed, every name of it is exactly as the change
left it, the other group of the same run is done, and no temporary `.dedup-*` name is left.
With and without byte verification: `--no-verify` still sees these (identity and timestamps);
what it cannot see, a change that keeps size, mtime, ctime and inode, is pinned down here too.
Last, a victim in a read-only directory, run by `dedup apply` without root's powers: EACCES,
exit 1, nothing changed.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from faultsys import entry_of, leftovers, wait_past
from treebuilder import Tree, append, content, flip

from dedup_engine import ScanOptions, __version__, find_duplicates
from dedup_engine.apply.outcome import OpResult, Outcome
from dedup_engine.apply.plan import Action, Operation, Plan, Policy, make_plan
from dedup_engine.apply.runner import apply_plan
from dedup_engine.report.formats.json import write_json

pytestmark = pytest.mark.usefixtures("deadline")

SIZE, OTHER_SIZE = 5000, 7000
KEEP, VICTIM, SECOND = "a/t", "b/t", "b/u"  # the group that changes: kept, its two victims
OTHER_KEEP, OTHER_VICTIM = "a/o", "b/o"  # a group nobody touches
ACTIONS = [Action.DELETE, Action.HARDLINK, Action.SYMLINK, Action.MOVE]

State = tuple[object, ...] | None


def state(path: str) -> State:
    """What a name is: kind, identity, size, times, and its bytes or its link text."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    body = os.readlink(path) if stat.S_ISLNK(st.st_mode) else Path(path).read_bytes()
    return (stat.S_IFMT(st.st_mode), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, body)


# --- the changes -------------------------------------------------------------------------------
# Each takes the tree and the name to change, changes it, and returns the words that must be in
# the reason the group is skipped.

Change = Callable[[Tree, str], str]


def appended(tree: Tree, rel: str) -> str:
    append(tree.path(rel), b"+")
    return f"size {SIZE} -> {SIZE + 1}"


def rewritten_mtime_restored(tree: Tree, rel: str) -> str:
    path = tree.path(rel)
    before = os.lstat(path)
    data = flip(Path(path).read_bytes(), SIZE // 2)
    with open(path, "r+b") as f:  # in place: the same inode
        f.write(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.lstat(path)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
    )
    assert after.st_ctime_ns != before.st_ctime_ns
    return "ctime differs"


def touched(tree: Tree, rel: str) -> str:
    before = os.lstat(tree.path(rel))
    os.utime(tree.path(rel), ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
    return "mtime differs"


def symlinked(tree: Tree, rel: str) -> str:
    """Replaced by a symlink to the other file of the pair (the victim's to the kept file)."""
    other = KEEP if rel == VICTIM else VICTIM
    os.unlink(tree.path(rel))
    os.symlink(tree.path(other), tree.path(rel))
    return "no longer a regular file (symlink)"


def deleted(tree: Tree, rel: str) -> str:
    os.unlink(tree.path(rel))
    return "No such file or directory (ENOENT)"


def replaced(tree: Tree, rel: str) -> str:
    """A new inode with the same bytes and mtime, renamed over the name (so the ino is new)."""
    path = tree.path(rel)
    before = os.lstat(path)
    fresh = tree.file("b/replacement", Path(path).read_bytes())
    os.utime(fresh, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.rename(fresh, path)
    assert os.lstat(path).st_ino != before.st_ino
    return "another file now (dev, ino differ)"


def _owner_changed(path: str, change: Callable[[], None]) -> str:
    before = entry_of(path).owner
    change()
    return f"owner or mode {before} -> {entry_of(path).owner}"


def chmodded(tree: Tree, rel: str) -> str:
    return _owner_changed(tree.path(rel), lambda: os.chmod(tree.path(rel), 0o600))


def chowned(tree: Tree, rel: str) -> str:
    return _owner_changed(tree.path(rel), lambda: os.chown(tree.path(rel), 65534, 65534))


#: Descriptors a change holds open for writing until the test ends.
_WRITERS: list[int] = []


def held_open_for_writing(tree: Tree, rel: str) -> str:
    """Another program holds the file open for writing (a log, an editor): replacing it would
    send its later writes to a file with no name."""
    _WRITERS.append(os.open(tree.path(rel), os.O_WRONLY | os.O_APPEND))
    return "is open for writing by another process"


CHANGES: dict[str, tuple[str, Change]] = {
    "victim-appended": (VICTIM, appended),
    "victim-rewritten-mtime-restored": (VICTIM, rewritten_mtime_restored),
    "victim-touched": (VICTIM, touched),
    "victim-symlink-to-kept": (VICTIM, symlinked),
    "victim-deleted": (VICTIM, deleted),
    "victim-replaced-same-bytes": (VICTIM, replaced),
    "kept-appended": (KEEP, appended),
    "kept-rewritten-mtime-restored": (KEEP, rewritten_mtime_restored),
    "kept-touched": (KEEP, touched),
    "kept-symlink-to-victim": (KEEP, symlinked),
    "kept-deleted": (KEEP, deleted),
    "kept-replaced-same-bytes": (KEEP, replaced),
    "victim-chmod": (VICTIM, chmodded),
    "victim-chown": (VICTIM, chowned),
    "victim-held-open-for-writing": (VICTIM, held_open_for_writing),
    "kept-chmod": (KEEP, chmodded),
    "kept-chown": (KEEP, chowned),
    "kept-held-open-for-writing": (KEEP, held_open_for_writing),
}


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[Tree]:
    """Two groups under roots a and b: a/t (kept) with b/t and b/u, and a/o (kept) with b/o."""
    tree = Tree(tmp_path / "tree")
    for rel in (KEEP, VICTIM, SECOND):
        tree.file(rel, content(SIZE, "t"))
    for rel in (OTHER_KEEP, OTHER_VICTIM):
        tree.file(rel, content(OTHER_SIZE, "o"))
    yield tree
    while _WRITERS:
        os.close(_WRITERS.pop())
    for dirpath, dirs, _ in os.walk(tmp_path):
        for name in dirs:
            Path(dirpath, name).chmod(0o755)


def plan_for(tree: Tree, action: Action) -> Plan:
    found = find_duplicates([tree.path("a"), tree.path("b")], ScanOptions(workers=0))
    move_to = tree.path("moved") if action is Action.MOVE else None
    plan = make_plan(found.groups, found.roots, Policy(action, move_to=move_to))
    pairs = [(op.keep.path, op.victim.path) for op in plan.operations]
    expected = [(OTHER_KEEP, OTHER_VICTIM), (KEEP, VICTIM), (KEEP, SECOND)]
    assert pairs == [(tree.path(k), tree.path(v)) for k, v in expected]
    return plan


def assert_done(tree: Tree, action: Action, results: list[OpResult]) -> None:
    """The untouched group was done, and its bytes are where the action put them."""
    assert [r.outcome for r in results] == [Outcome.DONE], results
    data = content(OTHER_SIZE, "o")
    keep, victim = tree.path(OTHER_KEEP), tree.path(OTHER_VICTIM)
    assert Path(keep).read_bytes() == data
    if action is Action.HARDLINK:
        assert os.path.samefile(keep, victim) and not os.path.islink(victim)
    elif action is Action.SYMLINK:
        assert os.readlink(victim) == keep and Path(victim).read_bytes() == data
    else:
        assert not os.path.lexists(victim)
    if action is Action.MOVE:
        assert Path(tree.path("moved/o")).read_bytes() == data
        assert os.listdir(tree.path("moved")) == ["o"]
    else:
        assert not os.path.lexists(tree.path("moved"))


@pytest.mark.parametrize("verify", [True, False], ids=["verify", "no-verify"])
@pytest.mark.parametrize("change", list(CHANGES))
@pytest.mark.parametrize("action", ACTIONS, ids=[a.value for a in ACTIONS])
def test_a_change_after_find_skips_the_group(
    tree: Tree, tmp_path: Path, action: Action, change: str, verify: bool
) -> None:
    plan = plan_for(tree, action)
    rel, make_change = CHANGES[change]
    wait_past(os.lstat(tree.path(rel)).st_ctime_ns, tmp_path / "probe")
    reason = make_change(tree, rel)
    names = [tree.path(r) for r in (KEEP, VICTIM, SECOND)]
    before = {name: state(name) for name in names}

    summary = apply_plan(plan, verify=verify)

    other = [r for r in summary.results if r.op.keep.path == tree.path(OTHER_KEEP)]
    changed = [r for r in summary.results if r.op.keep.path == tree.path(KEEP)]
    assert_done(tree, action, other)
    assert [r.outcome for r in changed] == [Outcome.SKIPPED] * 2, changed
    role = "kept file" if rel == KEEP else "victim"
    first, second = changed[0].message, changed[1].message
    assert first.startswith(f"{role} {tree.path(rel)!r}"), first
    assert reason in first
    assert second == f"group stopped: {first}"
    assert {name: state(name) for name in names} == before  # not even the ctime moved
    assert leftovers(tree.root) == []
    assert summary.reclaimed == sum(r.reclaimed for r in other)


# --- what only the bytes show ------------------------------------------------------------------


def stat_perfect_op(tree: Tree, action: Action) -> tuple[Operation, bytes, bytes]:
    """Same size, other bytes, and entries that match every stat of the files as they are now
    (a report that raced a writer): only the bytes can tell."""
    data = content(SIZE, "k")
    keep, victim = tree.file("a/x", data), tree.file("b/x", flip(data, SIZE - 1))
    target = tree.path("moved/x") if action is Action.MOVE else None
    op = Operation(0, action, entry_of(victim), entry_of(keep), target)
    return op, data, flip(data, SIZE - 1)


@pytest.mark.parametrize("action", ACTIONS, ids=[a.value for a in ACTIONS])
def test_verify_catches_what_no_stat_shows_and_puts_the_victim_back(
    tree: Tree, action: Action
) -> None:
    op, data, other = stat_perfect_op(tree, action)
    ino = os.lstat(op.victim.path).st_ino

    summary = apply_plan(Plan((op,), ()), verify=True)

    result = summary.results[0]
    assert result.outcome is Outcome.SKIPPED
    assert "content differs from the kept file" in result.message
    assert Path(op.keep.path).read_bytes() == data
    victim = os.lstat(op.victim.path)
    assert stat.S_ISREG(victim.st_mode) and victim.st_ino == ino
    assert victim.st_mtime_ns == op.victim.mtime_ns
    assert Path(op.victim.path).read_bytes() == other
    assert not os.path.lexists(tree.path("moved"))
    assert leftovers(tree.root) == []


@pytest.mark.parametrize("action", [Action.DELETE, Action.HARDLINK, Action.SYMLINK])
def test_no_verify_cannot_see_a_change_that_keeps_identity_and_timestamps(
    tree: Tree, action: Action
) -> None:
    """Documented risk of --no-verify: size, mtime, ctime and inode all as reported, other
    bytes (a file rewritten while `find` hashed it, or timestamps forged): the victim's bytes
    are lost.  This pins the limit down; it is what the option's help says."""
    op, data, _ = stat_perfect_op(tree, action)

    summary = apply_plan(Plan((op,), ()), verify=False)

    assert summary.results[0].outcome is Outcome.DONE
    if action is Action.DELETE:
        assert not os.path.lexists(op.victim.path)
    else:
        assert Path(op.victim.path).read_bytes() == data  # the other bytes are gone
    assert leftovers(tree.root) == []


# --- a read-only directory, without root's powers ----------------------------------------------


def test_a_read_only_directory_fails_with_eacces_and_changes_nothing(
    world_tree: Tree, unprivileged: list[str]
) -> None:
    tree = world_tree
    data = content(SIZE)
    keep, victim = tree.file("a/x", data, mode=0o644), tree.file("b/x", data, mode=0o644)
    top = Path(tree.root).parent
    for directory in (tree.root, tree.path("a"), tree.path("b")):
        Path(directory).chmod(0o755)
    found = find_duplicates([tree.path("a"), tree.path("b")], ScanOptions(workers=0))
    report = top / "report.json"
    with report.open("w", encoding="ascii") as out:
        write_json(found, ScanOptions(workers=0), __version__, out)
    report.chmod(0o644)
    journals = top / "journals"
    journals.mkdir(mode=0o777)
    journals.chmod(0o777)  # whoever the child runs as may write its journal here
    journal = journals / "apply.jsonl"
    tree.p("b").chmod(0o555)
    before = {p: state(p) for p in (keep, victim)}

    cmd = [*unprivileged, "-m", "dedup_engine", "apply", str(report), "--action", "hardlink"]
    proc = subprocess.run(
        [*cmd, "--journal", str(journal)], cwd=top, capture_output=True, timeout=60, check=False
    )

    stderr = proc.stderr.decode(errors="replace")
    assert proc.returncode == 1, stderr
    # The first change is the link under a temporary name in the read-only directory.
    assert re.search(
        f"failed: {re.escape(victim)}: link: .*\\((EACCES|EPERM)\\); rolled back", stderr
    )
    assert "hardlink: 0 done, 0 skipped, 1 failed" in proc.stdout.decode()
    assert {p: state(p) for p in (keep, victim)} == before
    assert sorted(os.listdir(tree.path("b"))) == ["x"]
    assert leftovers(tree.root) == []
    records = [json.loads(line) for line in journal.read_text().splitlines()]
    assert [r.get("state") for r in records[1:]] == ["begin", "start", "failed"]
    assert re.search("EACCES|EPERM", records[-1]["message"])
