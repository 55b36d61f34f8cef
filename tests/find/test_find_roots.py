"""What the roots of a search decide about its groups: with `--isolate`, only groups whose
files lie under two roots or more are reported, each file counting under the innermost root
that holds it."""

from __future__ import annotations

import pytest
from incli import invoke
from treebuilder import Runner, Tree, content, expect, groups_of

pytestmark = pytest.mark.usefixtures("deadline")


def _build(tree: Tree) -> None:
    tree.file("a/x1", content(3000, seed="x"))
    tree.file("a/x2", content(3000, seed="x"))  # copies within root a only
    tree.file("a/y", content(3000, seed="y"))
    tree.file("b/y", content(3000, seed="y"))  # across a and b
    tree.file("a/z1", content(300_000, seed="z"))
    tree.file("a/z2", content(300_000, seed="z"))
    tree.file("b/sub/z", content(300_000, seed="z"))  # a group of three, two of them in a


def test_isolate_reports_only_groups_across_roots(tree: Tree, run: Runner) -> None:
    _build(tree)
    roots = [tree.path("a"), tree.path("b")]
    assert groups_of(run(roots)) == expect(
        tree, ["a/x1", "a/x2"], ["a/y", "b/y"], ["a/z1", "a/z2", "b/sub/z"]
    )
    assert groups_of(run(roots, isolate=True)) == expect(
        tree, ["a/y", "b/y"], ["a/z1", "a/z2", "b/sub/z"]
    )


def test_isolate_counts_a_file_under_its_innermost_root(tree: Tree, run: Runner) -> None:
    _build(tree)
    # b/sub is a root of its own inside b: b/sub/z is under it, b/y under b.
    roots = [tree.path("a"), tree.path("b"), tree.path("b/sub")]
    tree.file("b/sub/w", content(4000, seed="w"))
    tree.file("b/w", content(4000, seed="w"))
    assert groups_of(run(roots, isolate=True)) == expect(
        tree, ["a/y", "b/y"], ["a/z1", "a/z2", "b/sub/z"], ["b/w", "b/sub/w"]
    )
    assert groups_of(run([tree.root], isolate=True)) == set()  # one root: nothing across
    assert groups_of(run([tree.root, tree.root], isolate=True)) == set()  # given twice: one


def test_isolate_with_hard_links_across_roots(tree: Tree, run: Runner) -> None:
    tree.file("a/f", content(2000))
    tree.hardlink("b/f", "a/f")
    tree.file("a/g", content(2500))
    tree.hardlink("a/g2", "a/g")
    roots = [tree.path("a"), tree.path("b")]
    assert groups_of(run(roots, isolate=True)) == set()  # one file, two names: not a copy
    assert groups_of(run(roots, isolate=True, hard_links=True)) == expect(tree, ["a/f", "b/f"])


def test_the_cli_takes_isolate(tree: Tree) -> None:
    _build(tree)
    code, out, _ = invoke("find", tree.path("a"), tree.path("b"), "--isolate", "-f", "fdupes")
    assert code == 0
    assert out.decode().split("\n\n")[0].splitlines() == [
        tree.path("a/z1"),
        tree.path("a/z2"),
        tree.path("b/sub/z"),
    ]
