"""One glob dialect for find's --include/--exclude and apply's --keep-path/--protect."""

from __future__ import annotations

import pytest
from treebuilder import Tree, content

from dedup_engine import ScanOptions, find_duplicates
from dedup_engine.apply.plan import Action, Keep, Policy, make_plan
from dedup_engine.globs import Globs, pattern_problem
from dedup_engine.options import OptionsError
from dedup_engine.paths import RootIndex

ROOT = "/srv/data"


@pytest.mark.parametrize(
    ("pattern", "path", "is_dir", "expected"),
    [
        ("*.jpg", "/srv/data/a/b/x.jpg", False, True),  # a name, at any depth
        ("*.jpg", "/srv/data/a/b/x.png", False, False),
        ("*.JPG", "/srv/data/x.jpg", False, False),  # case matters
        ("a/*", "/srv/data/a/b/x.jpg", False, True),  # a path below the root; * crosses "/"
        ("/a/*", "/srv/data/a/x.jpg", False, True),  # a leading "/" anchors at the root
        ("b/*", "/srv/data/a/b/x.jpg", False, False),  # a path pattern is anchored
        ("/srv/data/a/*", "/srv/data/a/x.jpg", False, True),  # or the whole absolute path
        ("*/b/*", "/srv/data/a/b/x.jpg", False, True),
        ("cache/", "/srv/data/a/cache", True, True),  # a trailing "/": directories only
        ("cache/", "/srv/data/a/cache", False, False),
        ("a/cache/", "/srv/data/a/cache", True, True),
        ("a/cache/", "/srv/data/a/cache", False, False),
        ("a/cache", "/srv/data/a/cache", True, True),  # without it, both
        ("cache", "/srv/data/a/cache", True, True),
    ],
)
def test_a_pattern_matches_as_the_dialect_says(
    pattern: str, path: str, is_dir: bool, expected: bool
) -> None:
    name = path.rsplit("/", 1)[1]
    assert Globs([pattern]).match(name, path, ROOT, is_dir) is expected


def test_a_file_is_matched_below_the_root_that_holds_it() -> None:
    globs = Globs(["photos/*"])
    roots = RootIndex(["/mnt/a", "/mnt/b"])
    assert globs.match_file("/mnt/b/photos/x.jpg", roots)
    assert not globs.match_file("/mnt/b/old/photos/x.jpg", roots)
    assert not globs.match_file("/mnt/bb/photos/x.jpg", roots)


@pytest.mark.parametrize("pattern", ["", "/", "//"])
def test_an_empty_pattern_is_refused(pattern: str) -> None:
    problem = pattern_problem(pattern, files_only=False)
    assert problem and ("empty" in problem if not pattern else "names no file" in problem)


def test_options_that_choose_files_refuse_a_directory_pattern() -> None:
    with pytest.raises(OptionsError, match="--include: 'photos/' matches directories only"):
        ScanOptions(include=("photos/",))
    with pytest.raises(ValueError, match="--protect: 'photos/' matches directories only"):
        Policy(Action.DELETE, protect=("photos/",))
    with pytest.raises(ValueError, match=r"--keep-path: .*'photos/\*' matches the files below"):
        Policy(Action.DELETE, keep_paths=("photos/",))
    ScanOptions(exclude=("photos/",))  # --exclude meets directories


def test_include_and_keep_path_choose_the_same_files(tmp_path: str) -> None:
    tree = Tree(tmp_path)
    for name in ("new/photos/x.jpg", "new/photos/2019/x.jpg", "old/x.jpg"):
        tree.file(name, content(900))
    everything = find_duplicates(tree.root, ScanOptions(workers=0))
    for pattern in ("new/*", "/new/*", f"{tree.root}/new/*", "*/new/photos/*"):
        found = find_duplicates(tree.root, ScanOptions(workers=0, include=(pattern,)))
        included = {f.path for g in found.groups for f in g.files}
        assert included == tree.paths("new/photos/x.jpg", "new/photos/2019/x.jpg"), pattern
        # The shortest path would be old/x.jpg; the pattern makes a file it chose the kept one.
        policy = Policy(Action.DELETE, Keep.SHORTEST_PATH, keep_paths=(pattern,))
        plan = make_plan(everything.groups, [tree.root], policy)
        assert {op.keep.path for op in plan.operations} == tree.paths("new/photos/x.jpg"), pattern
