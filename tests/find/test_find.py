"""`find_duplicates` on real trees: exact groups, the traps of real disks, and exact stage counts.

Every run goes through `treebuilder.check_invariants` (no path twice, no file its own duplicate,
every group's files byte-for-byte equal with the digest it claims), so each test also checks those.
Most tests run twice: in process and with two worker processes (the `workers` fixture).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from treebuilder import (
    OsSpy,
    Runner,
    Tree,
    append,
    brute_groups,
    check_invariants,
    content,
    expect,
    find_checked,
    flip,
    groups_of,
    issues_of,
)

import dedup_engine.find.fullcompare
import dedup_engine.find.hashtasks
from dedup_engine import FindResult, Progress, ScanOptions, Stage, find_duplicates
from dedup_engine.report.read import Report, read_json

pytestmark = pytest.mark.usefixtures("deadline")

HEAD = 4096
TAIL = 4096
WHOLE = 16384
#: Files smaller than this skip the tail stage (0: no such rule in this version of the engine).
TAIL_MIN: int = ScanOptions().tail_min_size


# --- plain duplicates ---------------------------------------------------------------------------


def test_groups_of_two_to_five_across_directories(tree: Tree, run: Runner) -> None:
    expected = set()
    for n in range(2, 6):
        data = content(1000 + n, seed="group")  # a different size for each group
        paths = [tree.file(f"d{i}/sub{n}/g{n}-{i}.bin", data) for i in range(n)]
        expected.add(frozenset(paths))
    # Same content as the group of 3 but one byte longer: a different size, no match.
    tree.file("other/longer.bin", content(1003, seed="group") + b"\0")
    tree.file("other/unique.bin", content(1003, seed="unique"))
    result = run(tree.root)
    assert groups_of(result) == expected
    assert result.issues == ()
    assert groups_of(result) == brute_groups(tree.root)
    by_size = {g.size: g for g in result.groups}
    for n in range(2, 6):
        group = by_size[1000 + n]
        assert group.inodes == n
        assert group.reclaimable == (1000 + n) * (n - 1)


def test_same_size_but_one_byte_differs_is_no_group(tree: Tree, run: Runner) -> None:
    base = content(3000, seed="base")
    tree.file("a/base", base)
    tree.file("b/first", flip(base, 0))
    tree.file("c/last", flip(base, len(base) - 1))
    tree.file("d/middle", flip(base, len(base) // 2))
    result = run(tree.root)
    assert groups_of(result) == set()
    assert result.issues == ()


def _variants(size: int) -> dict[str, int]:
    """Near-copy name -> the one offset where it differs from the original."""
    offsets = {"first": 0, "last": size - 1, "middle": size // 2}
    if size > HEAD:
        offsets["head_end"] = HEAD - 1  # last byte of the head window
        offsets["at_4096"] = HEAD  # first byte past the head window
    if size > TAIL:
        offsets["tail_start"] = size - TAIL  # first byte of the tail window
        offsets["before_tail"] = size - TAIL - 1  # last byte before it
    return offsets


BOUNDARY_SIZES = [
    1,
    2,
    4095,
    4096,
    4097,
    8191,
    8192,
    8193,
    16383,
    16384,
    16385,
    WHOLE + TAIL,
    WHOLE + TAIL + 1,
    65535,
    65536,
    65537,
    300_001,  # more than one 256 KiB read chunk in the full stage
]


@pytest.mark.parametrize("size", BOUNDARY_SIZES)
def test_window_boundaries(tree: Tree, run: Runner, size: int) -> None:
    """At and around each window edge: true copies group, near-copies (one byte off) never do."""
    original = content(size, seed="orig")
    tree.file("orig/file", original)
    tree.file("copy/file", original)
    expected = expect(tree, ["orig/file", "copy/file"])
    distinct = {offset: name for name, offset in reversed(_variants(size).items())}
    for offset, name in distinct.items():
        near = flip(original, offset)
        # Each near-copy has its own true copy, so both kinds of answer are tested per offset.
        tree.file(f"near/{name}", near)
        tree.file(f"near-copy/{name}", near)
        expected |= expect(tree, [f"near/{name}", f"near-copy/{name}"])
    result = run(tree.root)
    assert groups_of(result) == expected
    assert result.issues == ()


@pytest.mark.parametrize("size", [s for s in BOUNDARY_SIZES if s > WHOLE])
@pytest.mark.parametrize("where", ["at_4096", "middle", "before_tail"])
def test_only_the_full_hash_can_tell(tree: Tree, run: Runner, size: int, where: str) -> None:
    """Head and tail windows equal: the pair reaches the full stage, which must separate it."""
    original = content(size, seed="orig")
    tree.file("a", original)
    tree.file("b", flip(original, _variants(size)[where]))
    result = run(tree.root)
    assert groups_of(result) == set()
    full = result.stats.stage(Stage.FULL)
    # The full stage reads the pair side by side and stops at the chunk holding the difference.
    chunk = ScanOptions().chunk_size
    offset = _variants(size)[where]
    read_each = min(size, (offset // chunk + 1) * chunk)
    counts = (full.files_in, full.files_opened, full.bytes_read, full.files_out)
    assert counts == (2, 2, 2 * read_each, 0)


@pytest.mark.parametrize("size", [WHOLE + 1, WHOLE + TAIL + 1, max(WHOLE + TAIL, TAIL_MIN) + 1])
@pytest.mark.parametrize("where", ["first", "last"])
def test_a_partial_window_separates_early(tree: Tree, run: Runner, size: int, where: str) -> None:
    original = content(size, seed="orig")
    tree.file("a", original)
    tree.file("b", flip(original, _variants(size)[where]))
    result = run(tree.root)
    assert groups_of(result) == set()
    if where == "first" or size >= TAIL_MIN:
        stopped_at = Stage.HEAD if where == "first" else Stage.TAIL
        assert result.stats.stage(stopped_at).files_out == 0
        assert result.stats.stage(Stage.FULL).files_in == 0
    else:  # too small for the tail stage: the full hash separates them
        assert result.stats.stage(Stage.TAIL).files_opened == 0
        assert result.stats.stage(Stage.FULL).files_in == 2
        assert result.stats.stage(Stage.FULL).files_out == 0


# --- hard links -----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [100, WHOLE + TAIL + 1])
def test_hard_links_alone_are_no_group(tree: Tree, run: Runner, size: int) -> None:
    tree.file("a/orig", content(size))
    tree.hardlink("b/link", "a/orig")
    tree.hardlink("b/link2", "a/orig")
    assert groups_of(run(tree.root)) == set()


@pytest.mark.parametrize("size", [100, WHOLE + TAIL + 1])
def test_hard_links_alone_with_hard_links_option(tree: Tree, run: Runner, size: int) -> None:
    tree.file("a/orig", content(size))
    tree.hardlink("b/link", "a/orig")
    result = run(tree.root, hard_links=True)
    assert groups_of(result) == expect(tree, ["a/orig", "b/link"])
    (group,) = result.groups
    assert group.inodes == 1
    assert group.reclaimable == 0


@pytest.mark.parametrize("hard_links", [False, True])
@pytest.mark.parametrize("size", [100, WHOLE + TAIL + 1])
def test_hard_link_plus_a_real_copy(tree: Tree, run: Runner, size: int, hard_links: bool) -> None:
    data = content(size)
    tree.file("a/orig", data)
    tree.hardlink("b/link", "a/orig")
    tree.file("c/copy", data)
    result = run(tree.root, hard_links=hard_links)
    assert groups_of(result) == expect(tree, ["a/orig", "b/link", "c/copy"])
    (group,) = result.groups
    assert group.inodes == 2
    assert group.reclaimable == size


def test_hard_links_split_a_group_larger_than_a_task(tree: Tree, run: Runner) -> None:
    # With hard_links each file of the full stage is hashed on its own, yet its group is split
    # as a whole: 600 files (more than one task holds) that differ only in the middle.
    size = WHOLE + TAIL + 1
    data = content(size)
    other = flip(data, size // 2)
    for index in range(600):
        tree.file(f"d{index % 3}/f{index}", other if index % 2 else data)
    tree.hardlink("d0/link", "d0/f0")
    result = run(tree.root, hard_links=True)
    assert sorted(len(group.files) for group in result.groups) == [300, 301]
    assert sorted(group.inodes for group in result.groups) == [300, 300]
    full = result.stats.stage(Stage.FULL)
    assert (full.files_in, full.files_opened, full.files_out) == (600, 600, 600)
    assert full.bytes_read == 600 * size


# --- symbolic links -------------------------------------------------------------------------------


def test_symlinks_are_not_followed_by_default(tree: Tree, run: Runner, tmp_path: Path) -> None:
    data = content(500)
    tree.file("a", data)
    tree.file("sub/b", data)
    outside = Tree(tmp_path / "outside")
    outside.file("x", data)
    outside.file("dir/y", data)
    tree.symlink("link-to-a", "a")
    tree.symlink("link-to-outside-file", outside.path("x"))
    tree.symlink("link-to-outside-dir", outside.path("dir"))
    tree.symlink("link-to-sub", "sub")
    result = run(tree.root)
    assert groups_of(result) == expect(tree, ["a", "sub/b"])
    assert result.stats.skipped_symlinks == 4


def test_followed_symlinks_count_their_targets(tree: Tree, run: Runner, tmp_path: Path) -> None:
    data = content(500)
    tree.file("a", data)
    outside = Tree(tmp_path / "outside")
    outside.file("x", data)
    outside.file("dir/y", data)
    tree.symlink("lf", outside.path("x"))
    tree.symlink("ld", outside.path("dir"))
    result = run(tree.root, follow_links=True)
    # Paths are reported as found (through the link), not resolved.
    assert groups_of(result) == expect(tree, ["a", "lf", "ld/y"])


def test_followed_symlink_to_a_file_with_a_copy(tree: Tree, run: Runner) -> None:
    data = content(500)
    tree.file("a", data)
    tree.file("b", data)
    tree.symlink("link", "a")
    result = run(tree.root, follow_links=True)
    (group,) = result.groups
    a, b = tree.p("a").stat(), tree.p("b").stat()
    assert {(f.dev, f.ino) for f in group.files} == {(a.st_dev, a.st_ino), (b.st_dev, b.st_ino)}
    assert tree.paths("a", "b") <= {f.path for f in group.files} <= tree.paths("a", "b", "link")
    assert group.inodes == 2


@pytest.mark.parametrize("links", [["link"], ["l1", "l2"]])
def test_followed_symlink_is_never_its_targets_duplicate(
    tree: Tree, run: Runner, tmp_path: Path, links: list[str]
) -> None:
    """One inode reached by two paths (target and link, or two links) with st_nlink 1."""
    if links == ["link"]:
        tree.file("a", content(500))
        tree.symlink("link", "a")
    else:  # two links to one file outside the root: one inode reached twice
        target = Tree(tmp_path / "outside").file("x", content(500))
        for name in links:
            tree.symlink(name, target)
    result = run(tree.root, follow_links=True)
    assert groups_of(result) == set()


def test_followed_symlink_is_not_a_hard_link(tree: Tree, run: Runner) -> None:
    tree.file("a", content(500))
    tree.symlink("link", "a")
    assert groups_of(run(tree.root, follow_links=True, hard_links=True)) == set()


def test_followed_dir_symlink_reaches_each_dir_once(tree: Tree, run: Runner) -> None:
    tree.file("sub/x", content(500))
    tree.file("sub/deeper/y", content(600))
    tree.symlink("alias", "sub")
    tree.symlink("sub/deeper/alias2", "..")
    result = run(tree.root, follow_links=True)
    assert groups_of(result) == set()
    assert result.stats.files_scanned == 2
    assert result.stats.dirs_revisited >= 1


def test_dangling_symlink(tree: Tree, run: Runner) -> None:
    data = content(500)
    tree.file("a", data)
    tree.file("b", data)
    tree.symlink("dangling", "no-such-file")
    tree.symlink("dangling-abs", "/no/such/dir/at/all")
    for follow in (False, True):
        result = run(tree.root, follow_links=follow)
        assert groups_of(result) == expect(tree, ["a", "b"])
        assert tree.path("dangling") not in issues_of(result)


def test_symlink_loop_is_followed_once(tree: Tree, run: Runner) -> None:
    data = content(500)
    tree.file("a", data)
    tree.file("sub/b", data)
    tree.symlink("sub/up", "..")  # a directory link to its parent
    tree.symlink("sub/self", ".")
    tree.symlink("loop1", "loop2")  # a symlink loop: ELOOP
    tree.symlink("loop2", "loop1")
    result = run(tree.root, follow_links=True)
    assert groups_of(result) == expect(tree, ["a", "sub/b"])
    assert result.stats.files_scanned == 2
    assert result.stats.dirs_revisited >= 2


# --- special files --------------------------------------------------------------------------------


@pytest.mark.parametrize("follow", [False, True])
def test_fifo_and_socket_are_skipped_unopened(
    tree: Tree, monkeypatch: pytest.MonkeyPatch, follow: bool
) -> None:
    spy = OsSpy()
    monkeypatch.setattr(dedup_engine.find.hashtasks, "os", spy)
    monkeypatch.setattr(dedup_engine.find.fullcompare, "os", spy)
    tree.file("a", b"")
    tree.file("b", b"")
    tree.file("c", b"data")
    tree.file("d", b"data")
    fifo = tree.fifo("fifo")
    sock = tree.unix_socket("sock")
    tree.symlink("link-to-fifo", "fifo")
    specials = [fifo, sock, tree.path("link-to-fifo")]
    try:
        os.mknod(tree.bpath("zero"), stat.S_IFCHR | 0o600, os.makedev(1, 5))  # like /dev/zero
        specials.append(tree.path("zero"))
    except OSError:
        pass  # no CAP_MKNOD here; the FIFO and the socket still count
    # empty=True: a FIFO's size is 0, like the empty files it must not be grouped with.
    result = find_duplicates(tree.root, ScanOptions(workers=0, empty=True, follow_links=follow))
    assert groups_of(result) == expect(tree, ["a", "b"], ["c", "d"])
    assert not set(spy.opened) & set(specials)
    assert result.issues == ()
    assert result.stats.skipped_special == len(specials) - (0 if follow else 1)


@pytest.mark.parametrize("follow", [False, True])
def test_fifo_and_socket_with_workers(tree: Tree, run: Runner, follow: bool) -> None:
    tree.file("a", b"data")
    tree.file("b", b"data")
    tree.fifo("fifo")
    tree.unix_socket("sock")
    tree.symlink("link-to-fifo", "fifo")
    result = run(tree.root, empty=True, follow_links=follow)
    assert groups_of(result) == expect(tree, ["a", "b"])
    assert result.issues == ()


# --- empty files ----------------------------------------------------------------------------------


def test_empty_files(tree: Tree, run: Runner) -> None:
    tree.file("e1")
    tree.file("sub/e2")
    tree.file("sub/e3")
    tree.file("x", b"x")
    tree.file("y", b"x")
    assert groups_of(run(tree.root)) == expect(tree, ["x", "y"])
    assert groups_of(run(tree.root, empty=True)) == expect(
        tree, ["e1", "sub/e2", "sub/e3"], ["x", "y"]
    )
    # --empty wins over --min-size: empty files are their own switch.
    assert groups_of(run(tree.root, empty=True, min_size=2)) == expect(
        tree, ["e1", "sub/e2", "sub/e3"]
    )


# --- names ----------------------------------------------------------------------------------------

ODD_NAMES: list[str | bytes] = [
    b"latin1-\xe9t\xe9",  # not UTF-8
    b"\xff\xfe-invalid-\x80",
    "new\nline",
    "tab\tand\rreturn",
    "\x01control\x7f",
    "unicode-ünïcødé-日本語-😀",
    " leading and trailing ",
    "n" * 255,  # the longest name
    "é" * 127 + "x",  # 255 bytes of UTF-8
    "-dash-first",
    "back\\slash",
    "quote\"'",
]


def test_odd_names_round_trip(tree: Tree, run: Runner) -> None:
    created: dict[bytes, str] = {}
    expected = set()
    for i, name in enumerate(ODD_NAMES):
        assert len(os.fsencode(name)) <= 255
        data = content(100 + i, seed="names")
        one = tree.file(b"one/" + os.fsencode(name), data)
        two = tree.file(b"two/" + os.fsencode(name), data)
        created[os.fsencode(one)] = one
        created[os.fsencode(two)] = two
        expected.add(frozenset({one, two}))
    result = run(tree.root)
    assert groups_of(result) == expected
    found = {os.fsencode(f.path) for g in result.groups for f in g.files}
    assert found == set(created)
    assert result.issues == ()


# --- deep trees -----------------------------------------------------------------------------------


def _build_deep(root: str, levels: int, name: str, data: bytes) -> str:
    """`levels` nested dirs named `name`, `data` at the bottom; built by dir fd, no long paths."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(levels):
            os.mkdir(name, dir_fd=fd)
            inner = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
        out = os.open("bottom.bin", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        try:
            os.write(out, data)
        finally:
            os.close(out)
    finally:
        os.close(fd)
    return root + f"/{name}" * levels + "/bottom.bin"


def test_deep_nesting(tree: Tree, run: Runner) -> None:
    data = content(2000)
    levels, name = 130, "d" * 24
    bottom = _build_deep(tree.root, levels, name, data)
    assert 3000 < len(os.fsencode(bottom)) < 4096
    top = tree.file("top.bin", data)
    result = run(tree.root)
    assert groups_of(result) == {frozenset({top, bottom})}
    assert result.stats.dirs_scanned == levels + 1
    # And max_depth cuts it: the bottom file sits at depth `levels`.
    assert groups_of(run(tree.root, max_depth=levels - 1)) == set()
    assert groups_of(run(tree.root, max_depth=levels)) == {frozenset({top, bottom})}


# --- sparse files ---------------------------------------------------------------------------------

SPARSE = 10 * 1024 * 1024


def test_sparse_files(tree: Tree, run: Runner) -> None:
    writes = {0: b"head", SPARSE // 2: b"middle", SPARSE - 4: b"tail"}
    tree.sparse("s1", SPARSE, writes)
    tree.sparse("sub/s2", SPARSE, writes)
    tree.sparse("s3", SPARSE, {**writes, SPARSE // 2: b"MIDDLE"})  # differs in the middle only
    tree.sparse("s4", SPARSE, {**writes, HEAD: b"!"})  # differs at offset 4096 only
    result = run(tree.root)
    assert groups_of(result) == expect(tree, ["s1", "sub/s2"])
    assert result.stats.stage(Stage.FULL).files_in == 4


# --- unreadable files and directories, with privileges really dropped ----------------------------


def _open_up(tree: Tree) -> None:
    """Everything readable by everyone, whatever the umask, before chmod'ing some of it away."""
    for dirpath, dirs, names in os.walk(tree.root):
        Path(dirpath).chmod(0o755)
        for name in dirs:
            Path(dirpath, name).chmod(0o755)
        for name in names:
            Path(dirpath, name).chmod(0o644)


def _find_as(prefix: list[str], tree: Tree, workers: int) -> tuple[int, Report, str]:
    """`dedup find ROOT -f json` run after the prefix (privileges dropped): exit, report, stderr."""
    cmd = [*prefix, "-m", "dedup_engine", "find", tree.root, "-f", "json", "-j", str(workers)]
    proc = subprocess.run(
        cmd, cwd=Path(tree.root).parent, capture_output=True, timeout=60, check=False
    )
    stderr = proc.stderr.decode(errors="replace")
    assert proc.stdout, stderr
    return proc.returncode, read_json(proc.stdout.decode("ascii")), stderr


@pytest.mark.parametrize("size", [100, WHOLE + TAIL + 1])
def test_unreadable_file(
    world_tree: Tree, unprivileged: list[str], workers: int, size: int
) -> None:
    tree = world_tree
    data = content(size)
    tree.file("a/x", data)
    tree.file("b/x", data)
    tree.file("c/x", data)
    tree.file("c/other", content(size, seed="other"))
    _open_up(tree)
    tree.p("c/x").chmod(0)
    code, result, stderr = _find_as(unprivileged, tree, workers)
    assert code == 1, stderr
    assert groups_of(result) == expect(tree, ["a/x", "b/x"])
    assert set(issues_of(result)) == {tree.path("c/x")}
    assert issues_of(result)[tree.path("c/x")] <= {"head", "scan"}
    assert "1 files could not be read" in stderr


def test_unreadable_directory(world_tree: Tree, unprivileged: list[str], workers: int) -> None:
    tree = world_tree
    data = content(100)
    tree.file("a/x", data)
    tree.file("b/x", data)
    tree.file("locked/x", data)
    tree.file("locked/inner/y", data)
    _open_up(tree)
    tree.p("locked").chmod(0)
    code, result, stderr = _find_as(unprivileged, tree, workers)
    assert code == 1, stderr
    assert groups_of(result) == expect(tree, ["a/x", "b/x"])
    assert issues_of(result) == {tree.path("locked"): {"scan"}}


# --- overlapping roots ----------------------------------------------------------------------------


def _overlap_tree(tree: Tree) -> None:
    data = content(700)
    tree.file("a", data)
    tree.file("sub/b", data)
    tree.file("sub/deeper/c", data)
    tree.file("sub/d", content(800))
    tree.file("sub/deeper/e", content(800))


def test_same_root_twice(tree: Tree, run: Runner) -> None:
    _overlap_tree(tree)
    once = run(tree.root)
    twice = run([tree.root, tree.root, tree.root + "/", tree.root + "/./sub/.."])
    assert groups_of(twice) == groups_of(once) == brute_groups(tree.root)
    assert tuple(twice.roots) == (tree.root,)
    assert twice.stats.files_scanned == once.stats.files_scanned == 5


def test_root_and_its_subdirectory(tree: Tree, run: Runner) -> None:
    _overlap_tree(tree)
    expected = brute_groups(tree.root)
    for roots in ([tree.root, tree.path("sub")], [tree.path("sub"), tree.root]):
        result = run(roots)
        assert groups_of(result) == expected
        assert result.stats.files_scanned == 5


def test_root_through_a_symlink_alias(tree: Tree, run: Runner, tmp_path: Path) -> None:
    _overlap_tree(tree)
    alias = tmp_path / "alias"
    alias.symlink_to(tree.root)
    result = run([alias, tree.root])
    assert tuple(result.roots) == (tree.root,)
    assert groups_of(result) == brute_groups(tree.root)


def test_files_given_as_roots(tree: Tree, run: Runner) -> None:
    _overlap_tree(tree)
    assert groups_of(run([tree.path("a"), tree.path("sub/b")])) == expect(tree, ["a", "sub/b"])
    assert groups_of(run([tree.path("a"), tree.path("a")])) == set()
    assert groups_of(run(tree.path("a"))) == set()
    result = run([tree.path("sub/d"), tree.path("sub/deeper")])
    assert groups_of(result) == expect(tree, ["sub/d", "sub/deeper/e"])


def test_file_root_inside_a_dir_root_alone(tree: Tree, run: Runner) -> None:
    tree.file("a", content(700))
    assert groups_of(run([tree.root, tree.path("a")])) == set()


def test_file_root_inside_a_dir_root_with_a_copy(tree: Tree, run: Runner) -> None:
    _overlap_tree(tree)
    result = run([tree.path("a"), tree.root])
    assert groups_of(result) == brute_groups(tree.root)


@pytest.mark.parametrize(
    ("rel", "options"),
    [
        ("sub/a", {"max_depth": 0}),
        (".hidden/a", {"hidden": False}),
        ("a.log", {"exclude": ("*.log",)}),
        ("sub/a", {"exclude": ("sub",)}),
    ],
)
def test_a_file_root_is_examined_whatever_else_is_a_root(
    tree: Tree, run: Runner, rel: str, options: dict[str, Any]
) -> None:
    data = content(700)
    tree.file("b", data)
    named = tree.file(rel, data)
    alone = run([named, tree.path("b")], **options)
    nested = run([tree.root, named], **options)
    assert groups_of(alone) == expect(tree, ["b", rel])  # a file root passes the filters
    assert groups_of(nested) == groups_of(alone)


# --- files that change under the engine (in process, so the stand-in `os` sees every call) --------

SMALL = 1000  # read whole at the head stage
MID = WHOLE + TAIL + 1  # head, (tail where it applies to this size), full
BIG = max(WHOLE + TAIL, TAIL_MIN) + 1  # head, tail, full


def _stages_of(size: int) -> list[str]:
    """The stages that open a file of this size when it keeps matching, in order."""
    if size <= WHOLE:
        return ["head"]
    return ["head", "tail", "full"] if size >= TAIL_MIN else ["head", "full"]


#: (size, stage): each stage that opens a file of each kind of size.
EVERY_OPEN = [(size, stage) for size in (SMALL, MID, BIG) for stage in _stages_of(size)]


def _three_copies(tree: Tree, size: int) -> str:
    data = content(size)
    tree.file("keep1", data)
    tree.file("keep2", data)
    return tree.file("victim", data)


def _run_spied(tree: Tree, spy: OsSpy, monkeypatch: pytest.MonkeyPatch) -> FindResult:
    monkeypatch.setattr(dedup_engine.find.hashtasks, "os", spy)
    monkeypatch.setattr(dedup_engine.find.fullcompare, "os", spy)
    result = find_duplicates(tree.root, ScanOptions(workers=0))
    monkeypatch.undo()
    check_invariants(result)
    return result


def _assert_excluded(tree: Tree, result: FindResult, victim: str, stage: str) -> None:
    assert groups_of(result) == expect(tree, ["keep1", "keep2"])
    assert issues_of(result) == {victim: {stage}}
    assert all(i.message for i in result.issues)


@pytest.mark.parametrize(("size", "stage"), EVERY_OPEN)
def test_file_grows_after_the_scan(
    tree: Tree, monkeypatch: pytest.MonkeyPatch, size: int, stage: str
) -> None:
    """Grown just before a stage opens it: the stage that reads it whole must notice."""
    victim = _three_copies(tree, size)
    nth = _stages_of(size).index(stage) + 1
    spy = OsSpy()

    def grow(path: str, n: int) -> None:
        if path == victim and n == nth:
            append(path)

    spy.on_open = grow
    # A big file grown before its head or tail read still has the same windows at the scanned
    # offsets; the full stage, which reads it whole, is where the size gives it away.
    caught = "head" if size <= WHOLE else "full"
    _assert_excluded(tree, _run_spied(tree, spy, monkeypatch), victim, caught)


@pytest.mark.parametrize("change", ["grow", "shrink"])
@pytest.mark.parametrize("size", [SMALL, WHOLE, MID, BIG])
def test_file_changes_size_while_read(
    tree: Tree, monkeypatch: pytest.MonkeyPatch, size: int, change: str
) -> None:
    """Resized after it was opened for its whole read (past any size check on the open file)."""
    victim = _three_copies(tree, size)
    last = len(_stages_of(size))
    spy = OsSpy()

    def resize(path: str, n: int) -> None:
        if path == victim and n == last:
            if change == "grow":
                append(path, b"more")
            else:
                os.truncate(path, size - 1)

    spy.on_read = resize
    _assert_excluded(tree, _run_spied(tree, spy, monkeypatch), victim, _stages_of(size)[-1])


@pytest.mark.parametrize(("size", "stage"), EVERY_OPEN)
def test_file_vanishes_after_the_scan(
    tree: Tree, monkeypatch: pytest.MonkeyPatch, size: int, stage: str
) -> None:
    victim = _three_copies(tree, size)
    nth = _stages_of(size).index(stage) + 1
    spy = OsSpy()

    def vanish(path: str, n: int) -> None:
        if path == victim and n == nth:
            Path(path).unlink()

    spy.on_open = vanish
    _assert_excluded(tree, _run_spied(tree, spy, monkeypatch), victim, stage)


@pytest.mark.parametrize("replacement", ["fifo", "symlink"])
@pytest.mark.parametrize(("size", "stage"), EVERY_OPEN)
def test_file_replaced_after_the_scan(
    tree: Tree, monkeypatch: pytest.MonkeyPatch, size: int, stage: str, replacement: str
) -> None:
    """Swapped for a FIFO (must not hang) or a symlink to a copy (must not be followed)."""
    victim = _three_copies(tree, size)
    nth = _stages_of(size).index(stage) + 1
    spy = OsSpy()

    def swap(path: str, n: int) -> None:
        if path == victim and n == nth:
            Path(path).unlink()
            if replacement == "fifo":
                os.mkfifo(path)
            else:
                Path(path).symlink_to("keep1")

    spy.on_open = swap
    _assert_excluded(tree, _run_spied(tree, spy, monkeypatch), victim, stage)


@pytest.mark.parametrize(("size", "stage"), EVERY_OPEN)
def test_read_error(tree: Tree, monkeypatch: pytest.MonkeyPatch, size: int, stage: str) -> None:
    victim = _three_copies(tree, size)
    spy = OsSpy()
    spy.eio.add((victim, _stages_of(size).index(stage) + 1))
    result = _run_spied(tree, spy, monkeypatch)
    _assert_excluded(tree, result, victim, stage)
    assert "EIO" in result.issues[0].message
    # Every opened file was closed again, the failed one included.
    assert spy.fd_paths == {}


def test_several_failures_in_one_group_are_not_a_group(
    tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Copies that all fail must not match each other: they have no digest, not an equal one."""
    for size in (SMALL, BIG):
        data = content(size)
        for name in ("keep1", "keep2", "bad1", "bad2"):
            tree.file(f"{size}/{name}", data)
        tree.file(f"{size}/bad3", data)
        tree.file(f"{size}/bad4", data)
    spy = OsSpy()
    for size in (SMALL, BIG):
        spy.eio.add((tree.path(f"{size}/bad1"), 1))
        spy.eio.add((tree.path(f"{size}/bad2"), 1))
        last = len(_stages_of(size))
        spy.eio.add((tree.path(f"{size}/bad3"), last))
        spy.eio.add((tree.path(f"{size}/bad4"), last))
    result = _run_spied(tree, spy, monkeypatch)
    assert groups_of(result) == {tree.paths(f"{s}/keep1", f"{s}/keep2") for s in (SMALL, BIG)}
    assert set(issues_of(result)) == {
        tree.path(f"{s}/bad{n}") for s in (SMALL, BIG) for n in range(1, 5)
    }


def test_every_copy_failing_leaves_no_group(tree: Tree, monkeypatch: pytest.MonkeyPatch) -> None:
    spy = OsSpy()
    for name in ("x", "y"):
        spy.eio.add((tree.file(name, content(SMALL)), 1))
    result = _run_spied(tree, spy, monkeypatch)
    assert result.groups == ()
    assert set(issues_of(result)) == tree.paths("x", "y")


def test_directory_swapped_for_a_symlink_is_not_followed(
    tree: Tree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = content(SMALL)
    tree.file("a", data)
    tree.file("sub/other", content(5))
    outside = Tree(tmp_path / "outside")
    outside.file("x", data)
    real = os.open

    def swap_then_list(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        # The walk opens each directory before listing it: swap this one just before.
        if (
            flags & os.O_DIRECTORY
            and os.fspath(path) == tree.path("sub")
            and not Path(path).is_symlink()
        ):
            tree.p("sub").rename(tree.p("moved"))
            tree.symlink("sub", outside.root)
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", swap_then_list)
    result = find_duplicates(tree.root, ScanOptions(workers=0))
    monkeypatch.undo()
    assert groups_of(result) == set()


@pytest.mark.parametrize("hard_links", [False, True])
def test_hard_linked_file_resized_between_its_paths(
    tree: Tree, monkeypatch: pytest.MonkeyPatch, hard_links: bool
) -> None:
    tree.file("d1/a", content(SMALL))
    tree.hardlink("d2/b", "d1/a")
    tree.file("d3/c", content(SMALL))
    listed: list[str] = []
    real = os.open

    def grow_between(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & os.O_DIRECTORY and os.fspath(path) in tree.paths("d1", "d2"):
            listed.append(os.fspath(path))
            if len(listed) == 2:  # one path of the inode stat'ed, the other not yet
                append(tree.path("d1/a"))
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", grow_between)
    result = find_duplicates(tree.root, ScanOptions(workers=0, hard_links=hard_links))
    monkeypatch.undo()
    in_groups = {f.path for g in result.groups for f in g.files}
    assert not in_groups & tree.paths("d1/a", "d2/b", "d3/c")


# --- exact work per stage -------------------------------------------------------------------------


def test_stage_counts_are_exact(tree: Tree, run: Runner, workers: int) -> None:
    big_size = 100_000  # above the head's whole-file limit and the tail stage's minimum size
    assert big_size > max(WHOLE, TAIL_MIN)
    small = content(100)
    tree.file("a1", small)
    tree.file("x/a2", small)
    tree.file("x/b1", content(100, seed="b"))  # same size as a*, other content
    big = content(big_size)
    tree.file("c1", big)
    tree.file("y/c2", big)
    tree.file("y/c3", flip(big, HEAD))  # same head and tail as c*, other content
    tree.file("y/d1", flip(big, 0))  # other head
    tree.file("e1", content(5000))  # a size of its own: never opened
    tree.file("h1", content(300))
    tree.hardlink("x/h2", "h1")
    tree.copy("h1", "y/h3")
    tree.symlink("link", "a1")
    tree.fifo("fifo")
    result = run(tree.root)
    assert groups_of(result) == expect(tree, ["a1", "x/a2"], ["c1", "y/c2"], ["h1", "x/h2", "y/h3"])

    stats = result.stats
    assert [row.stage for row in stats.stages] == list(Stage)
    rows = {
        row.stage.value: (row.files_in, row.files_out, row.files_opened, row.bytes_read)
        for row in stats.stages
    }
    # 11 paths scanned; sizes 100 (3 paths), 100000 (4 paths) and 300 (3 paths, 2 inodes) count.
    # Head: 9 inodes; the 100- and 300-byte files are read whole, the big ones 4096 bytes each.
    # Tail: c1, c2, c3 (d1 fell out at the head); full: the same three, read whole.
    assert rows == {
        "scan": (0, 11, 0, 0),
        "size": (11, 10, 0, 0),
        "hardlink": (10, 9, 0, 0),
        "head": (9, 7, 9, 3 * 100 + 2 * 300 + 4 * HEAD),
        "tail": (3, 3, 3, 3 * TAIL),
        "full": (3, 2, 3, 3 * big_size),
    }
    assert stats.dirs_scanned == 3
    assert stats.files_scanned == 11
    assert stats.bytes_scanned == 3 * 100 + 4 * big_size + 5000 + 3 * 300
    assert stats.skipped_special == 1
    assert stats.skipped_symlinks == 1
    assert stats.dirs_revisited == 0
    assert stats.groups == 3
    assert stats.files_in_groups == 7
    assert stats.bytes_reclaimable == 100 + big_size + 300
    assert stats.workers == workers
    # Every kind of task the run had counts its CPU time, and no other kind appears.
    assert set(stats.task_cpu) == {"scan", "head", "tail", "full", "describe"}
    assert all(seconds >= 0 for seconds in stats.task_cpu.values())
    data = json.loads(json.dumps(stats.as_dict()))
    assert [s["stage"] for s in data["stages"]] == [s.value for s in Stage]
    assert "task_cpu" not in data  # it differs every run: a report holds what does not


def _model(sizes: list[int], opts: ScanOptions) -> dict[str, tuple[int, int]]:
    """(files opened, bytes read) per hashing stage, by hand, for the tree of
    `test_stage_counts_with_other_windows`: per size, copies a and b plus c differing at offset
    `head_window` (or 0 when the file is no bigger than the head window)."""
    head, tail, whole = opts.head_window, opts.tail_window, opts.whole_threshold
    tail_min = getattr(opts, "tail_min_size", 0)
    out = {"head": [0, 0], "tail": [0, 0], "full": [0, 0]}
    for size in sizes:
        if size <= max(head, whole):
            out["head"][0] += 3
            out["head"][1] += 3 * size
            continue
        out["head"][0] += 3
        out["head"][1] += 3 * head
        alive = 3  # c differs at offset `head`, just past the head window
        if size >= tail_min:
            out["tail"][0] += alive
            out["tail"][1] += alive * min(tail, size)
            if size - tail <= head:  # the tail window covers the differing byte
                alive = 2
        out["full"][0] += alive
        out["full"][1] += alive * size
    return {k: (v[0], v[1]) for k, v in out.items()}


@pytest.mark.parametrize(
    ("head", "tail", "whole"), [(1024, 512, 2048), (8192, 100, 0), (100, 6000, 100)]
)
def test_stage_counts_with_other_windows(
    tree: Tree, workers: int, head: int, tail: int, whole: int
) -> None:
    sizes = [600, 2048, 3000, 9000, 70_000]
    for size in sizes:
        data = content(size)
        tree.file(f"{size}/a", data)
        tree.file(f"{size}/b", data)
        tree.file(f"{size}/c", flip(data, head) if size > head else flip(data, 0))
    opts = ScanOptions(workers=workers, head_window=head, tail_window=tail, whole_threshold=whole)
    result = find_checked(tree.root, opts)
    assert groups_of(result) == {tree.paths(f"{s}/a", f"{s}/b") for s in sizes}
    counts = {
        stage.value: (result.stats.stage(stage).files_opened, result.stats.stage(stage).bytes_read)
        for stage in (Stage.HEAD, Stage.TAIL, Stage.FULL)
    }
    assert counts == _model(sizes, opts)


@pytest.mark.parametrize("stages", [(), ("head",), ("tail",), ("tail", "head")])
def test_partial_stages_do_not_change_the_answer(
    tree: Tree, run: Runner, stages: tuple[str, ...]
) -> None:
    for size in (10, 4096, 16385, 20481, 70001):
        data = content(size)
        tree.file(f"{size}/a", data)
        tree.file(f"{size}/b", data)
        for offset in {0, size // 2, size - 1}:
            tree.file(f"{size}/near{offset}", flip(data, offset))
    result = run(tree.root, stages=stages)
    assert groups_of(result) == brute_groups(tree.root)
    assert len(result.groups) == 5


# --- the result -----------------------------------------------------------------------------------


def test_group_and_file_order(tmp_path: Path, run: Runner) -> None:
    second = Tree(tmp_path / "z-second-root")
    first = Tree(tmp_path / "a-first-root")
    for t in (second, first):
        t.file("small/1", content(10))
        t.file("small/0", content(10))
        t.file("big", content(5000))
    result = run([second.root, first.root])
    assert tuple(result.roots) == (second.root, first.root)
    assert [g.size for g in result.groups] == [5000, 10]
    big, small = ([f.path for f in g.files] for g in result.groups)
    assert big == [second.path("big"), first.path("big")]
    # By root index first (the order roots were given), then by path.
    assert small == [
        second.path("small/0"),
        second.path("small/1"),
        first.path("small/0"),
        first.path("small/1"),
    ]
    for group in result.groups:
        for f in group.files:
            st = Path(f.path).stat()
            assert (f.size, f.mtime_ns, f.ctime_ns) == (st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def test_roots_in_any_form(tree: Tree, run: Runner) -> None:
    tree.file("a", b"same")
    tree.file("b", b"same")
    expected = expect(tree, ["a", "b"])
    assert groups_of(run(tree.root)) == expected
    assert groups_of(run(Path(tree.root))) == expected
    assert groups_of(run((Path(tree.root),))) == expected
    assert groups_of(run([tree.root])) == expected
    rel = os.path.relpath(tree.root)
    assert groups_of(run(rel)) == expected  # relative roots come back absolute


def test_no_files_at_all(tree: Tree, run: Runner) -> None:
    tree.dir("empty/dir")
    result = run(tree.root)
    assert result.groups == ()
    assert result.issues == ()
    assert result.stats.files_scanned == 0


def test_brute_force_agrees_on_a_mixed_tree(tree: Tree, run: Runner) -> None:
    """Many sizes, many near-copies and copies; the engine agrees with hashing everything."""
    for i in range(60):
        size = [1, 7, 4095, 4097, 16384, 16385, 20481, 70000][i % 8]
        data = content(size, seed=i % 5)
        tree.file(f"d{i % 7}/f{i}", data if i % 3 else flip(data, (i * 7919) % size))
    tree.hardlink("d0/link", "d1/f1")
    result = run(tree.root)
    assert groups_of(result) == brute_groups(tree.root)


def test_many_files_and_directories(tree: Tree, run: Runner) -> None:
    """More files than one hash batch and more directories than one scan batch."""
    expected = set()
    for g in range(150):
        data = content(64 + g % 7, seed=g)
        members = [tree.file(f"d{(g + i) % 40}/s{g % 3}/f{g}-{i}", data) for i in range(2 + g % 3)]
        expected.add(frozenset(members))
    for u in range(300):  # same sizes, unique content
        tree.file(f"d{u % 40}/u{u}", content(64 + u % 7, seed=f"u{u}"))
    result = run(tree.root)
    assert groups_of(result) == expected
    assert result.stats.dirs_scanned == 1 + 40 + 40 * 3


def test_the_tree_is_left_untouched(tree: Tree, run: Runner) -> None:
    for i in range(20):
        tree.file(f"d{i % 3}/f{i}", content(10 + i % 4))
        tree.file(f"e{i % 2}/g{i}", content(20000 + i % 2))
    before = {p: (Path(p).stat().st_mtime_ns, Path(p).read_bytes()) for p in _all_paths(tree)}
    run(tree.root)
    after = {p: (Path(p).stat().st_mtime_ns, Path(p).read_bytes()) for p in _all_paths(tree)}
    assert after == before


def _all_paths(tree: Tree) -> list[str]:
    return [str(Path(d, n)) for d, _dirs, names in os.walk(tree.root) for n in names]


def test_progress_callback(tree: Tree, run: Runner, workers: int) -> None:
    for i in range(50):
        tree.file(f"d{i % 5}/f{i}", content(100 + i % 3))
    tree.file("big/a", content(70_000))  # big enough for the tail and full stages
    tree.file("big/b", content(70_000))
    events: list[Progress] = []
    result = find_duplicates(tree.root, ScanOptions(workers=workers), progress=events.append)
    assert groups_of(result) == brute_groups(tree.root)
    assert all(isinstance(e, Progress) and isinstance(e.stage, Stage) for e in events)
    # Every stage that ran ends with a final event, so a display shows it complete.
    finished = [e for e in events if e.finished]
    assert [e.stage for e in finished] == [Stage.SCAN, Stage.HEAD, Stage.TAIL, Stage.FULL]
    assert finished[0].files == finished[0].total == 52
    for event in finished[1:]:
        assert event.files == event.total == result.stats.stage(event.stage).files_in


def test_root_with_a_name_that_is_not_utf8(tmp_path: Path, run: Runner) -> None:
    tree = Tree(os.fsdecode(os.fsencode(tmp_path) + b"/root-\xff\xfe"))
    a = tree.file("a", b"same")
    b = tree.file(b"sub-\x80/b", b"same")
    result = run(tree.root)
    assert tuple(result.roots) == (tree.root,)
    assert groups_of(result) == {frozenset({a, b})}
    assert {os.fsencode(f.path) for f in result.groups[0].files} == {
        os.fsencode(tmp_path) + b"/root-\xff\xfe/a",
        os.fsencode(tmp_path) + b"/root-\xff\xfe/sub-\x80/b",
    }
