"""The engine's shared OS rules: one set of open flags, one errno text, one root prefix."""

from __future__ import annotations

import errno
import os

import pytest

from dedup_engine.openflags import GUARDS, OPEN_DIR, OPEN_READ, dir_flags, read_flags
from dedup_engine.oserror import describe_error
from dedup_engine.paths import RootIndex, below, is_under


def test_every_read_only_open_refuses_symlinks_fifos_and_terminals_and_leaks_nothing() -> None:
    for flag in (os.O_NOFOLLOW, os.O_NONBLOCK, os.O_NOCTTY, os.O_CLOEXEC):
        assert OPEN_READ & flag and GUARDS & flag
    assert OPEN_READ & os.O_ACCMODE == os.O_RDONLY
    assert OPEN_DIR & os.O_DIRECTORY and OPEN_DIR & os.O_NOFOLLOW


def test_following_links_drops_only_o_nofollow() -> None:
    assert read_flags(True) == OPEN_READ & ~os.O_NOFOLLOW
    assert dir_flags(True) == OPEN_DIR & ~os.O_NOFOLLOW
    assert read_flags() == OPEN_READ and dir_flags() == OPEN_DIR


def test_an_os_error_reads_as_its_message_then_its_errno_name(tmp_path: str) -> None:
    with pytest.raises(OSError) as caught:
        os.open(os.path.join(tmp_path, "missing"), OPEN_READ)
    assert describe_error(caught.value) == "No such file or directory (ENOENT)"
    assert describe_error(OSError(errno.ELOOP, "'a' is a symlink")) == "'a' is a symlink (ELOOP)"
    assert describe_error(OSError(errno.EIO, "")) == f"{os.strerror(errno.EIO)} (EIO)"
    assert describe_error(OSError("no errno")) == "no errno"


@pytest.mark.parametrize(
    ("path", "root", "part"),
    [
        ("/a/b", "/a/b", ""),
        ("/a/b/c", "/a/b", "c"),
        ("/a/bc", "/a/b", None),  # whole components only
        ("/a", "/a/b", None),
        ("/x/y", "/", "x/y"),
    ],
)
def test_a_path_is_below_a_root_by_whole_components(path: str, root: str, part: str | None) -> None:
    assert below(path, root) == part
    assert is_under(path, root) is (part is not None)


def test_the_first_root_that_holds_a_path_is_its_root() -> None:
    roots = RootIndex(["/m/a", "/m/b", "/m"])
    assert roots.first("/m/b/x") == 1
    assert roots.holding("/m/b/x") == [1, 2]  # innermost first
    assert roots.first("/m/bb") == 2  # whole components only
    assert roots.first("/m") == 2
    assert RootIndex(["/m/a", "/m/b"]).first("/n/x") is None
    assert RootIndex(["/"]).holding("/x/y") == [0]
    assert RootIndex(["/m", "/m/b/x"]).holding("/m/b/x") == [1, 0]  # a file root: itself


def test_a_path_under_a_reference_root_is_a_reference_whatever_root_inside_holds_it() -> None:
    roots = RootIndex(["/new", "/archive/old", "/archive", "/data"], reference=["/archive"])
    assert roots.is_reference("/archive/x")
    assert roots.is_reference("/archive/old/x")  # a root inside the reference root
    assert not roots.is_reference("/new/x") and not roots.is_reference("/data/archive/x")
    inner = RootIndex(["/data", "/data/archive"], reference=["/data/archive"])
    assert inner.is_reference("/data/archive/x") and not inner.is_reference("/data/x")
