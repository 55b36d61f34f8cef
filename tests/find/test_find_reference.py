"""Reference roots (`--reference DIR`): searched like roots, and a group is reported only if it
holds a file under a reference root and a file under none; with `--isolate` as well, both rules
hold.  The report names them (`reference_roots`, schema 3) and the text format marks their
files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest
from incli import invoke
from treebuilder import Runner, Tree, content, expect, groups_of

from dedup_engine import OptionsError, ScanOptions, find_duplicates
from dedup_engine.report.read import read_json

pytestmark = pytest.mark.usefixtures("deadline")


def _build(tree: Tree) -> None:
    tree.file("new/a", content(3000, seed="a"))
    tree.file("archive/a", content(3000, seed="a"))  # new and archive: reported
    tree.file("new/b1", content(3000, seed="b"))
    tree.file("new/b2", content(3000, seed="b"))  # within new only: not reported
    tree.file("archive/c1", content(3000, seed="c"))
    tree.file("archive/c2", content(3000, seed="c"))  # within the archive only: not reported
    tree.file("new/d", content(200_000, seed="d"))
    tree.file("archive/d1", content(200_000, seed="d"))
    tree.file("archive/old/d2", content(200_000, seed="d"))  # a group of three, listed whole


def test_only_groups_with_a_reference_file_and_another_are_reported(
    tree: Tree, run: Runner
) -> None:
    _build(tree)
    result = run([tree.path("new")], reference=(tree.path("archive"),))
    assert groups_of(result) == expect(
        tree, ["new/a", "archive/a"], ["new/d", "archive/d1", "archive/old/d2"]
    )
    assert tuple(result.roots) == (tree.path("new"), tree.path("archive"))
    assert result.reference_roots == (tree.path("archive"),)
    # Without the reference root the archive is not searched at all.
    assert groups_of(run([tree.path("new")])) == expect(tree, ["new/b1", "new/b2"])


def test_a_reference_root_inside_a_root_holds_its_files(tree: Tree, run: Runner) -> None:
    """The archive inside the searched tree is the reference."""
    _build(tree)
    result = run([tree.root], reference=(tree.path("archive"),))
    assert groups_of(result) == expect(
        tree, ["new/a", "archive/a"], ["new/d", "archive/d1", "archive/old/d2"]
    )


def test_a_root_inside_a_reference_root_holds_reference_files(tree: Tree, run: Runner) -> None:
    """A file under a reference root is a reference file whatever root inside it names it: a
    list of files (--files-from) that names some of the archive's files as roots of their own
    does not take them out of it."""
    _build(tree)
    result = run([tree.path("archive/old")], reference=(tree.path("archive"),))
    assert groups_of(result) == set()  # archive/d1 and archive/old/d2: both reference files
    listed = [tree.path("new/a"), tree.path("archive/a"), tree.path("archive/c1")]
    result = run(listed, reference=(tree.path("archive"),))
    assert groups_of(result) == expect(tree, ["new/a", "archive/a"])
    assert set(result.reference_roots) == {tree.path("archive")}


def test_reference_with_isolate_needs_both(tree: Tree, run: Runner) -> None:
    _build(tree)
    tree.file("other/a", content(3000, seed="a"))
    roots = [tree.path("new"), tree.path("other")]
    found = run(roots, reference=(tree.path("archive"),), isolate=True)
    assert groups_of(found) == expect(
        tree, ["new/a", "other/a", "archive/a"], ["new/d", "archive/d1", "archive/old/d2"]
    )
    found = run([tree.path("new")], reference=(tree.path("archive"),), isolate=True)
    assert groups_of(found) == expect(
        tree, ["new/a", "archive/a"], ["new/d", "archive/d1", "archive/old/d2"]
    )


def test_a_path_given_as_root_and_reference_is_refused(tree: Tree) -> None:
    _build(tree)
    with pytest.raises(OptionsError, match="both as a root and as a reference root"):
        find_duplicates([tree.path("new")], ScanOptions(reference=(tree.path("new"),)))
    code, _, err = invoke("find", tree.path("new"), "--reference", tree.path("new"))
    assert code == 2 and b"both as a root and as a reference root" in err
    code, _, err = invoke("find", tree.path("new"), "--reference", tree.path("missing"))
    assert code == 2 and b"missing" in err


def test_the_reports_name_reference_roots_and_mark_their_files(tree: Tree) -> None:
    _build(tree)
    args = ("find", tree.path("new"), "--reference", tree.path("archive"))
    code, out, _ = invoke(*args, "-f", "json")
    assert code == 0
    data = json.loads(out)
    assert data["schema"] == 3
    assert data["roots"] == [tree.path("new"), tree.path("archive")]
    assert data["reference_roots"] == [tree.path("archive")]
    assert read_json(out).reference_roots == (tree.path("archive"),)
    code, out, _ = invoke(*args)
    lines = out.decode().splitlines()
    assert f"  {tree.path('archive/a')}   (reference)" in lines
    assert f"  {tree.path('new/a')}" in lines


@pytest.fixture
def bound(tree: Tree) -> Iterator[str]:
    """archive/sub bind-mounted at new/bm: one directory reached from a root and from the
    reference root."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root and mount(8) to bind-mount a directory")
    tree.file("archive/sub/f", content(3000, seed="f"))
    tree.file("archive/r", content(3000, seed="f"))
    tree.file("new/z", content(3000, seed="f"))
    target = tree.dir("new/bm")
    mounted = subprocess.run(
        ["mount", "--bind", tree.path("archive/sub"), target], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"bind mount refused here: {mounted.stderr.decode().strip()}")
    try:
        yield target
    finally:
        subprocess.run(["umount", target], check=False)


def test_a_directory_reached_from_a_root_and_a_reference_root_is_a_reference(
    tree: Tree, bound: str, run: Runner
) -> None:
    """Reference roots are walked first: the bind-mounted directory is listed under the
    archive, and its file is never offered to apply as a copy under the root."""
    result = run([tree.path("new")], reference=(tree.path("archive"),))
    (group,) = result.groups
    assert {f.path for f in group.files} == tree.paths("archive/r", "archive/sub/f", "new/z")


def test_reference_with_links_followed_is_refused(tree: Tree) -> None:
    _build(tree)
    code, _, err = invoke("find", tree.path("new"), "--reference", tree.path("archive"), "-L")
    assert code == 2 and b"--reference with -L" in err
