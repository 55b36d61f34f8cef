"""What a run looks at: filesystems, depth, name and path patterns, hidden names, sizes, and the
options and roots refused before any work starts."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from treebuilder import Runner, Tree, brute_groups, content, expect, groups_of

from dedup_engine import OptionsError, ScanOptions, find_duplicates

pytestmark = pytest.mark.usefixtures("deadline")


# --- one filesystem -------------------------------------------------------------------------------


def test_one_file_system_keeps_same_filesystem_files(tree: Tree, run: Runner) -> None:
    data = content(400)
    tree.file("a", data)
    tree.file("sub/b", data)
    tree.file("sub/deeper/c", data)
    tree.file("sub/deeper/d", content(401))
    tree.file("e", content(401))
    expected = brute_groups(tree.root)
    assert len(expected) == 2
    assert groups_of(run(tree.root, one_file_system=True)) == expected
    assert groups_of(run(tree.root, one_file_system=True, follow_links=True)) == expected


@pytest.fixture
def tmpfs_in(tree: Tree) -> Iterator[str]:
    """A tmpfs mounted at tree/mnt (a second filesystem inside the tree), unmounted afterwards."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    mnt = tree.dir("mnt")
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "dedup-test", mnt],
        capture_output=True,
        timeout=30,
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode(errors='replace').strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", mnt], timeout=30, check=False).returncode != 0:
            subprocess.run(["umount", "-l", mnt], timeout=30, check=False)


def test_one_file_system_stays_off_a_mount(tree: Tree, run: Runner, tmpfs_in: str) -> None:
    assert Path(tmpfs_in).stat().st_dev != Path(tree.root).stat().st_dev
    data = content(400)
    tree.file("a", data)
    tree.file("mnt/b", data)
    tree.file("mnt/sub/c", content(500))
    tree.file("d", content(500))
    tree.file("e", content(600))
    tree.file("f", content(600))
    everything = expect(tree, ["a", "mnt/b"], ["mnt/sub/c", "d"], ["e", "f"])
    assert groups_of(run(tree.root)) == everything
    assert groups_of(run(tree.root, one_file_system=True)) == expect(tree, ["e", "f"])
    # The mount point given as a root is that root's own filesystem.
    assert groups_of(run([tree.path("mnt"), tree.path("d")], one_file_system=True)) == expect(
        tree, ["mnt/sub/c", "d"]
    )


@pytest.fixture
def other_fs_dir(tree: Tree) -> Iterator[str]:
    """A directory on another filesystem than the tree (/dev/shm), removed afterwards."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == Path(tree.root).stat().st_dev:
        pytest.skip("no /dev/shm on another filesystem than the test tree")
    try:
        top = tempfile.mkdtemp(prefix="dedup-test-", dir=shm)
    except OSError as exc:
        pytest.skip(f"cannot write to /dev/shm: {exc}")
    try:
        yield top
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_one_file_system_with_a_followed_link(tree: Tree, run: Runner, other_fs_dir: str) -> None:
    data = content(400)
    tree.file("a", data)
    Tree(other_fs_dir).file("b", data)
    tree.symlink("elsewhere", other_fs_dir)
    assert groups_of(run(tree.root, follow_links=True)) == expect(tree, ["a", "elsewhere/b"])
    assert groups_of(run(tree.root, follow_links=True, one_file_system=True)) == set()


# --- depth ----------------------------------------------------------------------------------------


def _depth_tree(tree: Tree) -> None:
    shared = content(300, seed="shared")
    path = ""
    for depth in range(4):
        tree.file(f"{path}p{depth}a", content(100 + depth))
        tree.file(f"{path}p{depth}b", content(100 + depth))
        tree.file(f"{path}x", shared)
        path += f"d{depth + 1}/"


@pytest.mark.parametrize(
    ("max_depth", "expected"),
    [
        (0, [["p0a", "p0b"]]),
        (1, [["p0a", "p0b"], ["d1/p1a", "d1/p1b"], ["x", "d1/x"]]),
        (
            2,
            [
                ["p0a", "p0b"],
                ["d1/p1a", "d1/p1b"],
                ["d1/d2/p2a", "d1/d2/p2b"],
                ["x", "d1/x", "d1/d2/x"],
            ],
        ),
        (
            None,
            [
                ["p0a", "p0b"],
                ["d1/p1a", "d1/p1b"],
                ["d1/d2/p2a", "d1/d2/p2b"],
                ["d1/d2/d3/p3a", "d1/d2/d3/p3b"],
                ["x", "d1/x", "d1/d2/x", "d1/d2/d3/x"],
            ],
        ),
    ],
)
def test_max_depth(
    tree: Tree, run: Runner, max_depth: int | None, expected: list[list[str]]
) -> None:
    _depth_tree(tree)
    result = run(tree.root, max_depth=max_depth)
    assert groups_of(result) == expect(tree, *expected)
    assert result.stats.dirs_scanned == (4 if max_depth is None else max_depth + 1)


def test_max_depth_counts_from_each_root(tree: Tree, run: Runner) -> None:
    _depth_tree(tree)
    result = run([tree.path("d1/d2"), tree.path("d1")], max_depth=0)
    assert groups_of(result) == expect(
        tree, ["d1/p1a", "d1/p1b"], ["d1/d2/p2a", "d1/d2/p2b"], ["d1/x", "d1/d2/x"]
    )


# --- include and exclude --------------------------------------------------------------------------


def _pattern_tree(tree: Tree) -> None:
    txt, log = content(100, seed="txt"), content(100, seed="log")
    for rel in ("a.txt", "sub/b.txt", "sub/b2.txt", "skip/c.txt", "skip/deep/d.txt"):
        tree.file(rel, txt)
    for rel in ("a.log", "sub/b.log", "skip/c.log", "skip/deep/d.log"):
        tree.file(rel, log)


TXT = ["a.txt", "sub/b.txt", "sub/b2.txt", "skip/c.txt", "skip/deep/d.txt"]
LOG = ["a.log", "sub/b.log", "skip/c.log", "skip/deep/d.log"]


@pytest.mark.parametrize(
    ("options", "expected", "dirs"),
    [
        ({}, [TXT, LOG], 4),
        ({"include": ("*.txt",)}, [TXT], 4),
        ({"include": ("*.txt", "*.log")}, [TXT, LOG], 4),
        ({"include": ("*.TXT",)}, [], 4),  # case-sensitive, like the filesystem
        ({"exclude": ("*.log",)}, [TXT], 4),
        ({"exclude": ("skip",)}, [TXT[:3], LOG[:2]], 2),  # a directory by name: pruned
        ({"exclude": ("deep",)}, [TXT[:4], LOG[:3]], 3),
        ({"exclude": ("skip/deep",)}, [TXT[:4], LOG[:3]], 3),  # a directory by path
        ({"exclude": ("skip/deep/",)}, [TXT[:4], LOG[:3]], 3),
        ({"exclude": ("sub/*.txt",)}, [[TXT[0], *TXT[3:]], LOG], 4),  # files by path
        ({"include": ("sub/*",)}, [TXT[1:3]], 4),
        ({"include": ("*.txt",), "exclude": ("b2.*", "skip")}, [TXT[:2]], 2),
        ({"exclude": ("*",)}, [], 1),
        ({"exclude": ("?.*",)}, [], 4),  # all but b2.txt
    ],
)
def test_include_and_exclude(
    tree: Tree, run: Runner, options: dict[str, Any], expected: list[list[str]], dirs: int
) -> None:
    _pattern_tree(tree)
    result = run(tree.root, **options)
    assert groups_of(result) == expect(tree, *[g for g in expected if len(g) >= 2])
    assert result.stats.dirs_scanned == dirs


def test_exclude_does_not_apply_above_the_root(tmp_path: Path, run: Runner) -> None:
    # Patterns see the path below the root: the root's own name or parents never match.
    tree = Tree(tmp_path / "skip" / "root")
    tree.file("a", b"same")
    tree.file("b", b"same")
    assert groups_of(run(tree.root, exclude=("skip", "root"))) == expect(tree, ["a", "b"])
    assert groups_of(run(tree.root, exclude=("skip/*",))) == expect(tree, ["a", "b"])


# --- hidden names ---------------------------------------------------------------------------------


def test_hidden_names(tree: Tree, run: Runner) -> None:
    data = content(100)
    for rel in ("a", ".hidden", ".hdir/plain", "sub/.dot", "sub/plain", ".hdir/.both"):
        tree.file(rel, data)
    every = ["a", ".hidden", ".hdir/plain", "sub/.dot", "sub/plain", ".hdir/.both"]
    assert groups_of(run(tree.root)) == expect(tree, every)
    assert groups_of(run(tree.root, hidden=True)) == expect(tree, every)
    result = run(tree.root, hidden=False)
    assert groups_of(result) == expect(tree, ["a", "sub/plain"])
    assert result.stats.dirs_scanned == 2  # .hdir pruned, not listed


def test_hidden_root_is_still_searched(tmp_path: Path, run: Runner) -> None:
    tree = Tree(tmp_path / ".config")
    tree.file("a", b"same")
    tree.file("b", b"same")
    assert groups_of(run(tree.root, hidden=False)) == expect(tree, ["a", "b"])


# --- sizes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "sizes"),
    [
        ({}, [1, 10, 100, 1000]),
        ({"min_size": 10}, [10, 100, 1000]),
        ({"min_size": 11}, [100, 1000]),
        ({"max_size": 100}, [1, 10, 100]),
        ({"max_size": 99}, [1, 10]),
        ({"min_size": 100, "max_size": 100}, [100]),
        ({"min_size": 0}, [1, 10, 100, 1000]),  # and still no empty files without `empty`
        ({"min_size": 0, "empty": True}, [0, 1, 10, 100, 1000]),
        ({"max_size": 5, "empty": True}, [0, 1]),
    ],
)
def test_min_and_max_size(
    tree: Tree, run: Runner, options: dict[str, Any], sizes: list[int]
) -> None:
    for size in (0, 1, 10, 100, 1000):
        tree.file(f"{size}/a", content(size))
        tree.file(f"{size}/b", content(size))
    result = run(tree.root, **options)
    assert groups_of(result) == expect(tree, *[[f"{s}/a", f"{s}/b"] for s in sizes])


# --- refused options and roots --------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"max_depth": -1},
        {"min_size": -1},
        {"max_size": -1},
        {"min_size": 10, "max_size": 9},
        {"workers": -1},
        {"head_window": 0},
        {"tail_window": 0},
        {"chunk_size": 0},
        {"whole_threshold": -1},
        {"include": ("",)},
        {"exclude": ("*.log", "")},
        {"stages": ("head", "middle")},
    ],
)
def test_bad_options_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(OptionsError):
        ScanOptions(**options)
    assert issubclass(OptionsError, ValueError)


def test_good_edge_options_are_accepted() -> None:
    ScanOptions(max_depth=0, min_size=0, max_size=0, workers=0, whole_threshold=0)
    ScanOptions(min_size=5, max_size=5, stages=())


@pytest.fixture
def no_listing(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every directory listed in this process (use with workers=0)."""
    listed: list[str] = []
    real = os.open

    def spy(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & os.O_DIRECTORY and not flags & os.O_PATH:  # each directory the walk lists
            listed.append(os.fspath(path))
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy)
    return listed


@pytest.mark.parametrize("bad", ["missing", "", "fifo", "dangling"])
def test_bad_root_is_refused_before_any_work(tree: Tree, no_listing: list[str], bad: str) -> None:
    tree.file("a", b"same")
    tree.file("b", b"same")
    tree.fifo("fifo")
    tree.symlink("dangling", "nowhere")
    roots = [tree.root, tree.path(bad) if bad else ""]
    with pytest.raises(OptionsError):
        find_duplicates(roots, ScanOptions(workers=0))
    assert no_listing == []
    # The same run without the bad root works, and lists the directory (the spy sees it).
    assert groups_of(find_duplicates([tree.root], ScanOptions(workers=0))) == expect(
        tree, ["a", "b"]
    )
    assert no_listing == [tree.root]


def test_no_roots_is_refused() -> None:
    with pytest.raises(OptionsError):
        find_duplicates([], ScanOptions(workers=0))


def test_exclude_with_a_trailing_slash_prunes_directories_at_any_depth(tree: Tree) -> None:
    """As in a .gitignore: 'build/' matches a directory 'build' at any depth."""
    same = b"same bytes"
    tree.file("a/build/x", same)
    tree.file("build/y", same)
    tree.file("keep1", same)
    tree.file("build-file/keep2", same)
    tree.file("sub/build", same)  # a file, not a directory: "build/" does not exclude it
    result = find_duplicates(tree.root, ScanOptions(workers=0, exclude=("build/",)))
    assert groups_of(result) == {frozenset(tree.paths("keep1", "build-file/keep2", "sub/build"))}
    anchored = find_duplicates(tree.root, ScanOptions(workers=0, exclude=("/build",)))
    assert tree.path("a/build/x") in next(iter(groups_of(anchored)))
