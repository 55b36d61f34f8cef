"""Roots by the million (`--files-from`): kept in a table on disk, numbered in the order given,
each once, and taken by the workers a task at a time."""

from __future__ import annotations

import gc
import io
import json
import os
import tracemalloc
from pathlib import Path

import pytest
from treebuilder import Runner, Tree, content, expect, groups_of

from dedup_engine import ScanOptions, find_duplicates
from dedup_engine.find.filelist import read_paths
from dedup_engine.find.roots import canonical_roots
from dedup_engine.options import OptionsError
from dedup_engine.report.formats.json import to_json_dict, write_json

pytestmark = pytest.mark.usefixtures("deadline")


def _links(tmp_path: Path, directories: int, each: int) -> list[str]:
    """Many distinct paths, cheaply: hard links of one file."""
    first = tmp_path / "first"
    first.write_bytes(b"x")
    paths = []
    for d in range(directories):
        directory = tmp_path / f"directory-{d:03}-with-a-name-of-some-length"
        directory.mkdir()
        for n in range(each):
            path = directory / f"file-{n:05}-with-a-name-of-some-length"
            os.link(first, path)
            paths.append(str(path))
    return paths


def test_a_long_list_of_roots_is_not_held_in_memory(tmp_path: Path) -> None:
    paths = _links(tmp_path, 20, 1500)
    listing = io.BytesIO("".join(p + "\n" for p in paths).encode())
    as_strings = sum(len(p) + 49 + 8 for p in paths)  # what a tuple of them would take
    gc.collect()  # earlier tests' garbage is not this one's to count
    tracemalloc.start()
    try:
        roots = canonical_roots(read_paths(listing, null=False))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert as_strings > 4_000_000
    assert peak < 1_500_000  # a block of roots at a time, whatever the list's length
    assert len(roots) == len(paths)
    assert list(roots) == paths
    assert roots[0] == paths[0] and roots[-1] == paths[-1] and roots[100:102] == paths[100:102]


def test_roots_are_numbered_in_the_order_given_each_once(tree: Tree) -> None:
    a = tree.file("a/f", content(10))
    b = tree.file("b", content(10))
    odd = tree.file(os.fsdecode(b"odd-\xff-name"), content(10))
    given = [a, tree.path("a"), a, tree.path("a") + "/", tree.path("a/../b"), odd]
    tree.dir("ref")
    roots = canonical_roots(given, [tree.path("ref"), tree.path("ref/.")])
    assert list(roots) == [a, tree.path("a"), b, odd, tree.path("ref")]
    assert roots.directories == {1: tree.path("a"), 4: tree.path("ref")}
    assert roots.reference == (tree.path("ref"),)
    assert [roots.is_reference_root(n) for n in range(len(roots))] == [False] * 4 + [True]
    assert list(roots.files(reference=False)) == [(a, 0), (b, 2), (odd, 3)]
    assert roots.under_reference == frozenset({4})
    with pytest.raises(IndexError):
        roots[5]


def test_a_root_given_again_as_a_reference_root_is_fatal(tree: Tree) -> None:
    tree.file("a/f", content(10))
    with pytest.raises(OptionsError, match="both as a root and as a reference root"):
        canonical_roots([tree.path("a/f"), tree.path("a")], [tree.path("a/f")])
    with pytest.raises(OptionsError, match="no root given"):
        canonical_roots([], [tree.path("a")])


def test_listed_files_in_a_reference_root_are_reference_files(tree: Tree) -> None:
    tree.file("archive/x", content(10))
    tree.file("archive/sub/y", content(10))
    tree.file("new/x", content(10))
    roots = canonical_roots(
        [tree.path("new/x"), tree.path("archive/x"), tree.path("archive/sub/y")],
        [tree.path("archive")],
    )
    assert roots.under_reference == frozenset({1, 2, 3})


def test_the_walk_passes_over_the_file_roots_in_a_directory_root(tree: Tree) -> None:
    tree.file("a/f", content(10))
    tree.file("a/sub/g", content(10))
    tree.file("elsewhere/h", content(10))
    roots = canonical_roots(
        [tree.path("a/sub/g"), tree.path("a"), tree.path("elsewhere/h"), tree.path("a/f")]
    )
    assert roots.holding_file_roots() == {tree.path("a"), tree.path("a/sub")}
    assert roots.file_roots_in(tree.path("a")) == [tree.path("a/f")]
    assert roots.file_roots_in(tree.path("elsewhere")) == [tree.path("elsewhere/h")]


def test_the_first_root_under_a_directory_is_found_by_whole_names(tree: Tree) -> None:
    tree.file("cache/f", content(10))
    tree.file("cache-not/g", content(10))
    tree.file("deep/er/h", content(10))
    roots = canonical_roots([tree.path("cache-not/g"), tree.path("deep/er/h")])
    assert roots.first_under(tree.path("cache")) is None
    assert roots.first_under(tree.path("deep")) == tree.path("deep/er/h")
    assert roots.first_under(tree.path("deep/er/h")) == tree.path("deep/er/h")
    assert roots.first_under("/") is not None


def test_a_listed_file_in_the_cache_directory_is_refused(tree: Tree) -> None:
    inside = tree.file("cache/file", content(10))
    with pytest.raises(OptionsError, match="digest cache's directory"):
        find_duplicates([inside], ScanOptions(workers=0, cache_dir=tree.path("cache")))


def test_listed_files_of_one_directory_count_each_under_its_own_root(
    tree: Tree, run: Runner
) -> None:
    """Files of one directory listed one after another share its record in a worker's store,
    each still its own root: numbered in the order given, with a gap where one is left out."""
    data = content(3000, seed="same")
    for name in ("x3", "x1", "x2"):
        tree.file(f"a/{name}", data)
    tree.file("a/small", content(10))
    listed = [tree.path(p) for p in ("a/x3", "a/small", "a/x1", "a/x2")]
    result = run(listed, isolate=True, min_size=100)
    assert groups_of(result) == expect(tree, ["a/x1", "a/x2", "a/x3"])
    (group,) = result.groups
    assert [f.path for f in group.files] == [listed[0], listed[2], listed[3]]  # by root number
    inside = run([*listed, tree.path("a")], isolate=True, min_size=100)
    assert groups_of(inside) == groups_of(result)  # file roots still, inside a directory root


def test_a_report_of_a_long_list_writes_every_root_in_order(tmp_path: Path) -> None:
    paths = _links(tmp_path, 3, 2000)
    result = find_duplicates(paths, ScanOptions(workers=0))
    out = io.StringIO()
    write_json(result, ScanOptions(), "1", out)
    written = json.loads(out.getvalue())
    assert written["roots"] == paths
    expected = to_json_dict(result, ScanOptions(), "1")
    assert {k: v for k, v in written.items() if k != "created"} == {
        k: v for k, v in expected.items() if k != "created"
    }
