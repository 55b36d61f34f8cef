"""Duplicate directories (`--dirs`): whole trees of the same relative names, types and bytes,
from the file groups, without a second read; every clause of the rule on a tree built for it,
every format, and `apply` leaving directory groups to the file groups inside them."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from incli import invoke
from treebuilder import Runner, Tree, content

from dedup_engine import ScanOptions, find_duplicates
from dedup_engine.model import FindResult
from dedup_engine.report.read import ReportError, read_json

pytestmark = pytest.mark.usefixtures("deadline")

DEDUP = [sys.executable, "-m", "dedup_engine"]


def _project(tree: Tree, top: str) -> None:
    """A small tree: files at two depths, an empty file, an empty subdirectory, a symlink."""
    tree.file(f"{top}/readme", content(3000, seed="readme"))
    tree.file(f"{top}/lib/core.py", content(5000, seed="core"))
    tree.file(f"{top}/lib/util.py", content(700, seed="util"))
    tree.file(f"{top}/lib/__init__.py", b"")
    tree.dir(f"{top}/lib/cache")
    tree.symlink(f"{top}/latest", "lib/core.py")


def _dirs(tree: Tree, result: FindResult) -> set[frozenset[str]]:
    """Each directory group as the set of its paths relative to the tree."""
    cut = len(tree.root) + 1
    return {frozenset(path[cut:] for path in group.paths) for group in result.directory_groups}


def _run(run: Runner, tree: Tree, *roots: str, **options: object) -> FindResult:
    return run([tree.path(r) for r in roots] or [tree.root], dirs=True, **options)


def test_two_copies_of_a_tree_are_one_group_and_their_subtrees_are_implied(
    tree: Tree, run: Runner
) -> None:
    _project(tree, "a")
    _project(tree, "backup/a")
    result = _run(run, tree)
    assert _dirs(tree, result) == {frozenset({"a", "backup/a"})}  # a/lib and backup/a/lib implied
    (group,) = result.directory_groups
    assert group.bytes == 3000 + 5000 + 700


@pytest.mark.parametrize(
    "change",
    [
        "one byte changed",
        "an extra file",
        "a missing empty subdirectory",
        "a missing empty file",
        "a renamed file",
        "a symlink to elsewhere",
        "a file made a symlink",
        "a FIFO more",
    ],
)
def test_a_near_copy_is_not_a_duplicate(tree: Tree, run: Runner, change: str) -> None:
    _project(tree, "a")
    _project(tree, "b")
    if change == "one byte changed":
        data = bytearray(content(5000, seed="core"))
        data[2500] ^= 1
        tree.file("b/lib/core.py", bytes(data))
    elif change == "an extra file":
        tree.file("b/lib/extra", content(10, seed="extra"))
    elif change == "a missing empty subdirectory":
        os.rmdir(tree.path("b/lib/cache"))
    elif change == "a missing empty file":
        os.unlink(tree.path("b/lib/__init__.py"))
    elif change == "a renamed file":
        os.rename(tree.path("b/lib/util.py"), tree.path("b/lib/utils.py"))
    elif change == "a symlink to elsewhere":
        os.unlink(tree.path("b/latest"))
        tree.symlink("b/latest", "lib/util.py")
    elif change == "a file made a symlink":
        os.unlink(tree.path("b/readme"))
        tree.symlink("b/readme", "a/readme")
    else:
        tree.fifo("b/lib/pipe")
    result = _run(run, tree)
    found = _dirs(tree, result)
    assert frozenset({"a", "b"}) not in found
    if change in ("one byte changed", "an extra file", "a missing empty subdirectory",
                  "a missing empty file", "a renamed file", "a FIFO more"):  # fmt: skip
        assert frozenset({"a/lib", "b/lib"}) not in found
    else:  # only the top differs: the lib directories are copies, reported on their own
        assert found == {frozenset({"a/lib", "b/lib"})}


def test_a_group_of_three_and_a_lone_copy_of_a_subtree(tree: Tree, run: Runner) -> None:
    """Three copies of a project form one group; a copy of its lib/ alone elsewhere is
    reported with the three lib/s, which are otherwise implied."""
    for top in ("p1", "p2", "p3"):
        _project(tree, top)
    tree.file("vendor/lib/core.py", content(5000, seed="core"))
    tree.file("vendor/lib/util.py", content(700, seed="util"))
    tree.file("vendor/lib/__init__.py", b"")
    tree.dir("vendor/lib/cache")
    tree.file("vendor/other", content(100, seed="other"))
    assert _dirs(tree, _run(run, tree)) == {
        frozenset({"p1", "p2", "p3"}),
        frozenset({"p1/lib", "p2/lib", "p3/lib", "vendor/lib"}),
    }
    assert _dirs(tree, _run(run, tree, "p1", "p2")) == {frozenset({"p1", "p2"})}


def test_nested_implied_groups_are_not_reported(tree: Tree, run: Runner) -> None:
    """x/a/b/c copied to y/a/b/c: only the topmost pair is reported."""
    for top in ("x", "y"):
        tree.file(f"{top}/a/b/c/f", content(4000, seed="f"))
        tree.file(f"{top}/a/b/g", content(4000, seed="g"))
    tree.file("x/mine", content(10, seed="x"))
    tree.file("y/mine", content(10, seed="y"))
    assert _dirs(tree, _run(run, tree)) == {frozenset({"x/a", "y/a"})}


def test_directories_without_a_byte_are_not_reported(tree: Tree, run: Runner) -> None:
    for top in ("a", "b"):
        tree.dir(f"{top}/empty/deeper")
        tree.file(f"{top}/zero", b"")
    tree.file("c/f", content(10, seed="c"))
    assert _dirs(tree, _run(run, tree)) == set()


def test_a_directory_with_an_unreadable_file_is_not_reported_and_the_issue_says_why(
    world_tree: Tree, unprivileged: list[str]
) -> None:
    tree = world_tree
    _project(tree, "a")
    _project(tree, "b")
    tree.file("a/secret", content(900, seed="s"), mode=0)
    tree.file("b/secret", content(900, seed="s"), mode=0)
    proc = subprocess.run(
        [*unprivileged, "-m", "dedup_engine", "find", tree.root, "--dirs", "-f", "json"],
        capture_output=True,
        timeout=120,
        check=False,
        cwd="/",
    )
    assert proc.returncode == 1, proc.stderr
    data = json.loads(proc.stdout)
    groups = [frozenset(g["paths"]) for g in data["directory_groups"]]
    assert groups == [tree.paths("a/lib", "b/lib")]  # a and b hold an unread file each
    assert {issue["path"] for issue in data["issues"]} == tree.paths("a/secret", "b/secret")


def test_a_subtree_not_walked_leaves_its_directory_unreported(tree: Tree, run: Runner) -> None:
    _project(tree, "a")
    _project(tree, "b")
    assert _dirs(tree, _run(run, tree, max_depth=1)) == set()  # lib/cache is below the depth
    assert _dirs(tree, _run(run, tree, max_depth=3)) == {frozenset({"a", "b"})}


def test_identical_fifos_and_symlinks_compare_by_type_and_target(tree: Tree, run: Runner) -> None:
    for top in ("a", "b"):
        tree.file(f"{top}/f", content(2000, seed="f"))
        tree.fifo(f"{top}/pipe")
        tree.symlink(f"{top}/link", "/nowhere")
    assert _dirs(tree, _run(run, tree)) == {frozenset({"a", "b"})}


def test_without_dirs_nothing_is_looked_for(tree: Tree, run: Runner) -> None:
    _project(tree, "a")
    _project(tree, "b")
    assert run([tree.root]).directory_groups == ()


def test_every_format_shows_directory_groups_first(tree: Tree, tmp_path: Path) -> None:
    _project(tree, "a")
    _project(tree, "b")
    a, b = tree.path("a"), tree.path("b")
    code, out, _ = invoke("find", tree.root, "--dirs")
    assert code == 0
    text = out.decode().splitlines()
    assert text[:3] == ["directory group 1: 2 directories, 8.5 KiB each", f"  {a}/", f"  {b}/"]
    code, out, _ = invoke("find", tree.root, "--dirs", "-f", "fdupes")
    assert out.decode().split("\n\n")[0].splitlines() == [f"{a}/", f"{b}/"]
    code, out, _ = invoke("find", tree.root, "--dirs", "-f", "fdupes", "-0")
    assert out.split(b"\0\0")[0].split(b"\0") == [os.fsencode(a + "/"), os.fsencode(b + "/")]
    code, out, _ = invoke("find", tree.root, "--dirs", "-f", "csv")
    rows = out.decode().splitlines()
    assert rows[1:3] == [f"d1,8700,,{a}/,,,,", f"d1,8700,,{b}/,,,,"]
    code, out, _ = invoke("find", tree.root, "--dirs", "-f", "json")
    data = json.loads(out)
    assert data["directory_groups"] == [{"paths": [a, b], "bytes": 8700}]
    assert read_json(out).directory_groups[0].paths == (a, b)


def test_apply_leaves_directory_groups_to_the_file_groups_inside(
    tree: Tree, tmp_path: Path
) -> None:
    _project(tree, "a")
    _project(tree, "b")
    report = tmp_path / "report.json"
    code, _, _ = invoke("find", tree.root, "--dirs", "-f", "json", "-o", str(report))
    assert code == 0
    proc = subprocess.run(
        [*DEDUP, "apply", str(report), "--action", "delete", "--journal", str(tmp_path / "j")],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    # The files of b (the copies) are gone, each directory and every empty entry stays.
    for rel in ("readme", "lib/core.py", "lib/util.py"):
        assert os.path.exists(tree.path(f"a/{rel}")) and not os.path.exists(tree.path(f"b/{rel}"))
    assert os.path.isdir(tree.path("b/lib/cache")) and os.path.exists(
        tree.path("b/lib/__init__.py")
    )


def test_a_crafted_directory_group_is_refused(tree: Tree, tmp_path: Path) -> None:
    _project(tree, "a")
    _project(tree, "b")
    found = find_duplicates([tree.root], ScanOptions(workers=0, dirs=True))
    assert found.directory_groups
    _, out, _ = invoke("find", tree.root, "--dirs", "-f", "json")
    pair = [tree.path("a"), tree.path("b")]
    crafted = [
        [{"paths": ["/etc", "/usr"], "bytes": 1}],  # outside the roots
        [{"paths": pair[:1], "bytes": 1}],  # one directory
        [{"paths": pair, "bytes": -1}],
        [{"paths": [pair[0], pair[0]], "bytes": 1}],
        "x",
    ]
    for bad in crafted:
        data = json.loads(out)
        data["directory_groups"] = bad
        report = tmp_path / "bad.json"
        report.write_text(json.dumps(data))
        proc = subprocess.run(
            [*DEDUP, "apply", str(report), "--action", "delete"],
            capture_output=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 2 and b"directory_groups" in proc.stderr
        assert b"Traceback" not in proc.stderr


def test_listings_handed_over_a_few_files_at_a_time_give_the_same_groups(
    tree: Tree, run: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dedup_engine.find import dirgroups

    for top in ("p1", "p2", "p3"):
        _project(tree, top)
    whole = _dirs(tree, _run(run, tree))
    monkeypatch.setattr(dirgroups, "FILES_PER_TASK", 1)
    assert _dirs(tree, _run(run, tree)) == whole == {frozenset({"p1", "p2", "p3"})}


def test_directories_whose_files_are_hard_links_of_each_other_are_copies(
    tree: Tree, run: Runner
) -> None:
    """Hard links of one file are one file, in no group: the same bytes under the same name."""
    tree.file("a/x", content(3000, seed="only"))
    tree.hardlink("b/x", "a/x")
    tree.file("a/y", content(3000, seed="y"))
    tree.file("b/y", content(3000, seed="y"))
    tree.file("c/x", content(3000, seed="other"))  # same name, other bytes
    tree.file("c/y", content(3000, seed="y"))
    assert _dirs(tree, _run(run, tree)) == {frozenset({"a", "b"})}


def test_a_directory_whose_file_vanished_before_its_read_is_not_reported(
    tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    """a/f and b/f are one file; it goes from a after the listing: the issue list names it,
    and a is no longer known whole."""
    from dedup_engine.find import readers

    tree.file("a/f", content(3000, seed="f"))
    tree.hardlink("b/f", "a/f")
    tree.file("c/g", content(3000, seed="f"))
    real = readers.hash_batch  # type: ignore[attr-defined]

    def remove_then_hash(*args: Any) -> Any:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tree.path("a/f"))
        return real(*args)

    monkeypatch.setattr(readers, "hash_batch", remove_then_hash)
    result = find_duplicates([tree.root], ScanOptions(workers=0, dirs=True))
    assert result.issues
    assert result.directory_groups == ()


def test_a_group_the_roots_rule_drops_implies_nothing(tree: Tree, run: Runner) -> None:
    """{a, b} lies in one root and is dropped by --isolate; {a/s, b/s} spans two roots."""
    tree.file("t/a/s/f", content(3000, seed="f"))
    tree.file("t/b/s/f", content(3000, seed="f"))
    roots = [tree.path("t"), tree.path("t/a/s")]
    found = run(roots, dirs=True, isolate=True)
    cut = len(tree.root) + 1
    assert {frozenset(p[cut:] for p in g.paths) for g in found.directory_groups} == {
        frozenset({"t/a/s", "t/b/s"})
    }


def test_copies_side_by_side_inside_a_copied_directory_are_reported(
    tree: Tree, run: Runner
) -> None:
    """A/s and A/t are copies of each other: {A, B} does not say so."""
    for top in ("A", "B"):
        for sub in ("s", "t"):
            tree.file(f"{top}/{sub}/f", content(3000, seed="f"))
    assert _dirs(tree, _run(run, tree)) == {
        frozenset({"A", "B"}),
        frozenset({"A/s", "A/t", "B/s", "B/t"}),
    }


@pytest.mark.parametrize("option", ["no_hidden", "exclude"])
def test_symlinks_and_fifos_the_options_leave_out_are_not_part_of_the_tree(
    tree: Tree, run: Runner, option: str
) -> None:
    tree.file("a/f", content(3000, seed="f"))
    tree.file("b/f", content(3000, seed="f"))
    tree.symlink("a/.hl", "x")
    tree.fifo("b/.pipe")
    options: dict[str, object] = (
        {"hidden": False} if option == "no_hidden" else {"exclude": (".hl", ".pipe")}
    )
    assert _dirs(tree, _run(run, tree, **options)) == {frozenset({"a", "b"})}


def test_a_result_of_directories_only_fails_the_gate_and_marks_reference_directories(
    tree: Tree,
) -> None:
    """Two trees of hard links of one file: no file group, one directory group."""
    tree.file("a/x", content(3000, seed="x"))
    tree.hardlink("b/x", "a/x")
    code, out, _ = invoke("find", tree.root, "--dirs", "--fail-on-duplicates")
    assert code == 3 and out.startswith(b"directory group 1")
    code, out, _ = invoke("find", tree.path("a"), "--reference", tree.path("b"), "--dirs")
    assert f"  {tree.path('b')}/   (reference)".encode() in out.splitlines()


def test_a_path_in_two_directory_groups_or_in_a_file_group_is_refused(tree: Tree) -> None:
    _project(tree, "a")
    _project(tree, "b")
    _, out, _ = invoke("find", tree.root, "--dirs", "-f", "json")
    data = json.loads(out)
    pair = [tree.path("a"), tree.path("b")]
    a_file = data["groups"][0]["files"][0]["path"]
    for bad in ([{"paths": pair, "bytes": 1}] * 2, [{"paths": [a_file, pair[1]], "bytes": 1}]):
        data["directory_groups"] = bad
        with pytest.raises(ReportError, match="listed twice"):
            read_json(json.dumps(data))


def test_files_listed_as_roots_inside_a_listed_directory_are_part_of_its_tree(
    tree: Tree, run: Runner
) -> None:
    """A list made by `find DIR` names every directory and file: each file is a root of its
    own, taken outside its directory's listing, and its directory is still known whole."""
    _project(tree, "a")
    _project(tree, "backup/a")
    tree.file("backup/a/lib/extra", content(100, seed="extra"))  # backup/a is no copy of a now
    tree.file("backup/b", content(3000, seed="readme"))
    listed = sorted(os.path.join(d, n) for d, ds, fs in os.walk(tree.root) for n in ds + fs)
    everything = [tree.root, *listed]
    by_root = _run(run, tree)
    by_list = run(everything, dirs=True)
    assert _dirs(tree, by_list) == _dirs(tree, by_root) == set()
    tree.file("a/lib/extra", content(100, seed="extra"))
    by_list = run([*everything, tree.path("a/lib/extra")], dirs=True)
    assert _dirs(tree, by_list) == _dirs(tree, _run(run, tree)) == {frozenset({"a", "backup/a"})}
