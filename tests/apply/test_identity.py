"""The one identity check an operation and `--resume` share: is it the file, our link, unwritten?

Each question is asked here of real files: a name that holds the kept file or something else,
a file changed in each of the ways the report's stamps can tell, two open files compared while
another process writes to one of them.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from faultsys import Faulty, entry_of, wait_past
from treebuilder import Tree, content

from dedup_engine.apply.identity import (
    Opened,
    Refused,
    changed_since,
    compare,
    is_only_name,
    is_our_link,
    links_to_kept,
    open_read,
    same_file,
    take_lease,
    written,
)
from dedup_engine.apply.plan import Action
from dedup_engine.apply.syscalls import REAL

DATA = content(10_000, "identity")


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    tree = Tree(tmp_path / "t")
    tree.file("k", DATA)
    tree.file("v", DATA)
    return tree


@pytest.fixture
def directory(tree: Tree) -> Iterator[int]:
    fd = REAL.open_dir(None, tree.root)
    yield fd
    os.close(fd)


def identity(path: str) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_dev, st.st_ino


# -- names ----------------------------------------------------------------------------------


def test_same_file_is_decided_by_dev_and_ino_alone(tree: Tree) -> None:
    kept = os.lstat(tree.path("k"))
    assert same_file(kept, kept) and same_file(kept, identity(tree.path("k")))
    assert same_file(os.lstat(tree.hardlink("k2", "k")), kept)  # another name, one file
    assert not same_file(os.lstat(tree.path("v")), kept)  # the same bytes, another file
    assert not same_file(None, kept)  # nothing there


def test_an_unchanged_file_matches_its_report_entry(tree: Tree) -> None:
    entry = entry_of(tree.path("v"))
    assert changed_since(os.lstat(tree.path("v")), entry, {}) is None


def test_each_change_the_stamps_can_tell_is_named(tree: Tree, tmp_path: Path) -> None:
    path = tree.path("v")
    entry = entry_of(path)
    assert changed_since(os.lstat(tree.path("k")), entry, {}) == (
        "it is another file now (dev, ino differ)"
    )
    os.truncate(path, 10)
    assert changed_since(os.lstat(path), entry, {}) == f"size {len(DATA)} -> 10"
    entry = entry_of(path)
    os.utime(path, ns=(0, 1))
    assert changed_since(os.lstat(path), entry, {}) == "modified (mtime differs)"
    entry = entry_of(path)
    os.chmod(path, entry.mode ^ 0o004)
    assert changed_since(os.lstat(path), entry, {}) == (
        f"owner or mode {entry.owner} -> {entry.owner._replace(mode=entry.mode ^ 0o004)}"
    )
    entry = entry_of(path)
    wait_past(entry.ctime_ns, tmp_path / "clock")
    os.link(path, tree.path("v2"))  # a new name: only the ctime tells
    assert changed_since(os.lstat(path), entry, {}) == (
        "its metadata or links changed (ctime differs)"
    )


def test_what_our_own_operation_left_is_expected_instead_of_the_report(tree: Tree) -> None:
    path = tree.path("v")
    entry = entry_of(path)
    os.link(path, tree.path("v2"))
    st = os.lstat(path)
    seen = {(st.st_dev, st.st_ino): (st.st_size, st.st_mtime_ns, st.st_ctime_ns)}
    entry = entry._replace(ctime_ns=0)  # the report's, before our link
    assert changed_since(st, entry, {}) == "its metadata or links changed (ctime differs)"
    assert changed_since(st, entry, seen) is None


def test_a_symlink_in_a_files_place_is_no_longer_a_regular_file(tree: Tree) -> None:
    entry = entry_of(tree.path("v"))
    os.unlink(tree.path("v"))
    os.symlink(tree.path("k"), tree.path("v"))
    assert changed_since(os.lstat(tree.path("v")), entry, {}) == (
        "it is no longer a regular file (symlink)"
    )


def test_our_hard_link_is_a_regular_file_that_is_the_kept_inode(tree: Tree, directory: int) -> None:
    kept, keep_path = identity(tree.path("k")), tree.path("k")
    tree.hardlink("ours", "k")
    tree.symlink("sym", "k")

    def ours(name: str) -> bool:
        st = os.lstat(tree.path(name))
        return is_our_link(Action.HARDLINK, directory, name, st, kept, keep_path)

    assert ours("ours")
    assert not ours("v")  # a copy with the same bytes is another file
    assert not ours("sym")  # a symlink is not a hard link, wherever it points


def test_a_hard_link_to_what_replaced_the_kept_file_is_not_the_kept_files(
    tree: Tree, directory: int
) -> None:
    """The check knows one kept inode: the one the journal (or the report) names."""
    kept = identity(tree.path("k"))
    os.rename(tree.path("k"), tree.path("k.old"))
    tree.file("k", b"an impostor")
    st = os.lstat(tree.hardlink("ours", "k"))
    assert not is_our_link(Action.HARDLINK, directory, "ours", st, kept, tree.path("k"))


def test_our_symlink_names_the_kept_path_exactly(tree: Tree, directory: int) -> None:
    kept, keep_path = identity(tree.path("k")), tree.path("k")
    os.symlink(keep_path, tree.path("ours"))
    os.symlink(keep_path + "/", tree.path("slash"))
    os.symlink("k", tree.path("relative"))  # lands on the kept file, but not our target

    def ours(name: str) -> bool:
        st = os.lstat(tree.path(name))
        return is_our_link(Action.SYMLINK, directory, name, st, kept, keep_path)

    assert ours("ours")
    assert not ours("slash") and not ours("relative")
    assert not ours("v")  # a regular file is no symlink


@pytest.mark.parametrize("action", [Action.DELETE, Action.MOVE, Action.REFLINK])
def test_an_action_that_makes_no_link_owns_no_name(
    tree: Tree, directory: int, action: Action
) -> None:
    kept, keep_path = identity(tree.path("k")), tree.path("k")
    tree.hardlink("k2", "k")
    st = os.lstat(tree.path("k2"))
    assert not is_our_link(action, directory, "k2", st, kept, keep_path)


def test_a_link_reaches_the_kept_file_only_while_the_kept_path_is_it(
    tree: Tree, directory: int
) -> None:
    kept, keep_path = os.lstat(tree.path("k")), tree.path("k")
    tree.hardlink("hard", "k")
    os.symlink(keep_path, tree.path("soft"))
    assert links_to_kept(Action.HARDLINK, directory, "hard", kept, keep_path)
    assert links_to_kept(Action.SYMLINK, directory, "soft", kept, keep_path)
    assert not links_to_kept(Action.SYMLINK, directory, "missing", kept, keep_path)
    os.rename(keep_path, keep_path + ".old")
    tree.file("k", DATA)  # the same bytes, another file: the symlink lands on it now
    assert not links_to_kept(Action.SYMLINK, directory, "soft", kept, keep_path)
    assert links_to_kept(Action.HARDLINK, directory, "hard", kept, keep_path)


def test_the_kept_files_last_name_is_one_link_left(tree: Tree) -> None:
    alone = os.lstat(tree.path("v"))
    tree.hardlink("k2", "k")
    shared = os.lstat(tree.path("k"))
    symlink = os.lstat(tree.symlink("sym", "k"))
    assert is_only_name(Action.SYMLINK, alone) and is_only_name(Action.HARDLINK, alone)
    assert not is_only_name(Action.HARDLINK, shared)
    assert not is_only_name(Action.HARDLINK, None)
    # A symlink holds no file's bytes, unless a hard link made it (the kept path was one).
    assert not is_only_name(Action.SYMLINK, symlink)
    assert is_only_name(Action.HARDLINK, symlink)


# -- open files -----------------------------------------------------------------------------


def test_a_file_is_opened_read_only_and_never_through_a_symlink(tree: Tree, directory: int) -> None:
    opened = open_read(REAL, directory, "k")
    try:
        assert same_file(opened.st, identity(tree.path("k"))) and not opened.leased
        with pytest.raises(OSError):
            os.write(opened.fd, b"x")
    finally:
        os.close(opened.fd)
    tree.symlink("sym", "k")
    with pytest.raises(OSError) as caught:
        open_read(REAL, directory, "sym")
    assert caught.value.errno == errno.ELOOP


@pytest.fixture
def pair(tree: Tree, directory: int) -> Iterator[tuple[Opened, Opened]]:
    kept, victim = open_read(REAL, directory, "k"), open_read(REAL, directory, "v")
    yield kept, victim
    os.close(kept.fd)
    os.close(victim.fd)


def test_a_lease_is_taken_where_the_system_gives_one(pair: tuple[Opened, Opened]) -> None:
    leased, unavailable = take_lease(REAL, pair[0], "kept file")
    assert leased.leased and unavailable is None and leased.fd == pair[0].fd


def test_where_no_lease_can_be_had_the_file_goes_on_without_one(
    pair: tuple[Opened, Opened],
) -> None:
    opened, unavailable = take_lease(Faulty(no_lease=True), pair[0], "kept file")
    assert not opened.leased and unavailable is not None and unavailable.errno == errno.EINVAL


def test_a_file_held_open_for_writing_is_refused(tree: Tree, pair: tuple[Opened, Opened]) -> None:
    writer = os.open(tree.path("v"), os.O_WRONLY)
    try:
        with pytest.raises(Refused, match=r"^victim 'v' is open for writing by another process$"):
            take_lease(REAL, pair[1], "victim 'v'")
    finally:
        os.close(writer)


def test_a_lease_that_fails_otherwise_is_refused(pair: tuple[Opened, Opened]) -> None:
    failing = Faulty(1, errno.EIO)
    with pytest.raises(Refused, match=r"^victim: cannot take a lease: .*EIO"):
        take_lease(failing, pair[1], "victim")


def test_two_copies_compare_equal_and_unwritten(pair: tuple[Opened, Opened]) -> None:
    kept, victim = pair
    assert compare(REAL, kept, victim, len(DATA), verify=True) is None
    assert written(("kept file", kept), ("victim", victim)) is None


def test_different_bytes_are_not_copies_unless_not_verified(
    tree: Tree, directory: int, pair: tuple[Opened, Opened]
) -> None:
    kept = pair[0]
    tree.file("other", DATA[:-1] + b"!")
    other = open_read(REAL, directory, "other")
    try:
        assert compare(REAL, kept, other, len(DATA), verify=True) == (
            "content differs from the kept file"
        )
        assert compare(REAL, kept, other, len(DATA), verify=False) is None
    finally:
        os.close(other.fd)


def test_a_longer_file_is_not_a_copy(
    tree: Tree, directory: int, pair: tuple[Opened, Opened]
) -> None:
    tree.file("longer", DATA + b"more")
    longer = open_read(REAL, directory, "longer")
    try:
        assert compare(REAL, pair[0], longer, len(DATA), verify=True) == (
            "content differs from the kept file"
        )
    finally:
        os.close(longer.fd)


def test_a_write_since_the_open_is_named_with_its_role(
    tree: Tree, pair: tuple[Opened, Opened]
) -> None:
    kept, victim = pair
    Path(tree.path("v")).write_bytes(DATA + b"grown")
    files = (("kept file", kept), ("victim", victim))
    assert written(*files) == "the victim was written to during the operation"
    assert compare(REAL, kept, victim, len(DATA), verify=True) == (
        "the victim was written to during the operation"
    )


def test_a_broken_lease_is_a_write_to_come_unless_its_role_may_break_it(
    tree: Tree, pair: tuple[Opened, Opened]
) -> None:
    kept, _ = take_lease(REAL, pair[0], "kept file")
    # O_NONBLOCK: the open breaks the lease and fails at once rather than waiting it out.
    with pytest.raises(BlockingIOError):
        os.open(tree.path("k"), os.O_WRONLY | os.O_NONBLOCK)
    assert written(("kept file", kept)) == (
        "the kept file was opened for writing by another process (lease broken)"
    )
    assert written(("kept file", kept), ok=("kept file",)) is None
