"""Where the report of `dedup find` goes, and what can go wrong there.

`-0` makes the fdupes format exact for any name, and without it no line can read as a path that
is not in a group; the text formats escape names unambiguously.  An output that cannot be written
is one line on stderr and exit 5; `-o FILE` never leaves a half report.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

import pytest
from incli import invoke
from treebuilder import Tree, content

import dedup_engine.report.formats.json
from dedup_engine.report.display import printable

pytestmark = pytest.mark.usefixtures("deadline")


def dedup(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
    kwargs.setdefault("stdout", subprocess.PIPE)
    return subprocess.run(
        [sys.executable, "-m", "dedup_engine", *args],
        stderr=subprocess.PIPE,
        timeout=60,
        check=False,
        **kwargs,
    )


@pytest.fixture
def trap(tree: Tree) -> Tree:
    """A directory named `x<newline>` holding `etc/passwd`, a copy of it, and a plain group."""
    data = content(400)
    tree.file("x\n/etc/passwd", data)
    tree.file("copy/passwd", data)
    tree.file("plain/one", content(300))
    tree.file("plain/two", content(300))
    return tree


def _parse_null(data: bytes) -> list[list[bytes]]:
    assert data.endswith(b"\0\0")
    return [group.split(b"\0") for group in data[:-2].split(b"\0\0")]


# --- -0 and names with a newline ------------------------------------------------------------------


def test_null_separated_fdupes_output_is_exact(trap: Tree) -> None:
    proc = dedup("find", trap.root, "-f", "fdupes", "-0", "-q")
    assert proc.returncode == 0, proc.stderr
    assert _parse_null(proc.stdout) == [
        [trap.bpath("copy/passwd"), trap.bpath("x\n/etc/passwd")],
        [trap.bpath("plain/one"), trap.bpath("plain/two")],
    ]
    assert proc.stderr == b""


def test_fdupes_lines_never_read_as_a_path_outside_the_groups(trap: Tree) -> None:
    """A name holding a newline never prints as two lines: one of them could read `/etc/passwd`,
    and a script deleting the listed copies would delete that."""
    proc = dedup("find", trap.root, "-f", "fdupes", "-q")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split(b"\n")
    assert b"/etc/passwd" not in lines
    assert [line for line in lines if line] == [trap.bpath("plain/one"), trap.bpath("plain/two")]
    assert b"1 paths holding a newline are left out" in proc.stderr
    assert b"-0" in proc.stderr


@pytest.mark.parametrize("fmt", ["text", "csv", "json"])
def test_null_is_for_the_fdupes_format_or_a_file_list_only(trap: Tree, fmt: str) -> None:
    proc = dedup("find", trap.root, "-f", fmt, "-0")
    assert proc.returncode == 2
    assert proc.stdout == b""
    assert proc.stderr == b"dedup: error: -0/--null is for --format fdupes or --files-from\n"


def test_text_report_escapes_names_unambiguously(tree: Tree) -> None:
    """A newline in a name and a backslash followed by `n` print differently."""
    data = content(400)
    tree.file("x\n/y", data)
    tree.file("x\\n/y", data)
    proc = dedup("find", tree.root, "-q")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.decode().splitlines()
    assert f"  {tree.root}/x\\n/y" in lines
    assert f"  {tree.root}/x\\\\n/y" in lines


def test_printable_tells_every_name_apart() -> None:
    names = [
        "a\nb",
        "a\\nb",
        os.fsdecode(b"a\x85b"),  # a byte that is not UTF-8
        "a\x85b",  # the character U+0085 (NEL), which does not print
        "a\\x85b",
        "a\\u0085b",
        "a\x1bb",
        "a\\x1bb",
    ]
    shown = [printable(name) for name in names]
    assert len(set(shown)) == len(names), shown
    assert all(s.isprintable() for s in shown)
    assert printable("plain/é") == "plain/é"
    assert printable("a\\b") == "a\\\\b"


# --- outputs that cannot be written ---------------------------------------------------------------


@pytest.fixture
def dups(tree: Tree) -> Tree:
    tree.file("a/x", content(300))
    tree.file("b/x", content(300))
    return tree


@pytest.mark.parametrize("fmt", ["text", "fdupes", "json", "csv"])
def test_output_to_a_full_device_is_exit_5(dups: Tree, fmt: str) -> None:
    """`-o /dev/full`: one line and exit 5, never a traceback."""
    proc = dedup("find", dups.root, "-f", fmt, "-o", "/dev/full", "--fail-on-duplicates")
    assert proc.returncode == 5
    assert proc.stderr.decode().splitlines() == [
        "dedup: error: cannot write the report to '/dev/full': No space left on device (ENOSPC)"
    ]
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


def test_stdout_on_a_full_device_is_exit_5(dups: Tree) -> None:
    """A report lost to a full stdout is exit 5, however small the report."""
    with open("/dev/full", "wb") as full:
        proc = dedup("find", dups.root, "-f", "fdupes", stdout=full)
    assert proc.returncode == 5
    assert proc.stderr.decode().splitlines() == [
        "dedup: error: cannot write the report to stdout: No space left on device (ENOSPC)"
    ]


def test_a_closed_stdout_is_exit_5_before_the_search(dups: Tree) -> None:
    """A closed stdout is refused before the search starts."""
    proc = dedup("find", dups.root, stdout=None, preexec_fn=lambda: os.close(1))
    assert proc.returncode == 5
    assert proc.stderr == b"dedup: error: cannot write the report: stdout is closed\n"


def test_output_to_dev_null_leaves_it_a_device(dups: Tree) -> None:
    proc = dedup("find", dups.root, "-f", "json", "-o", os.devnull, "-q")
    assert proc.returncode == 0, proc.stderr
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)


# --- -o FILE: complete or not at all -------------------------------------------------------------


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_output_file_replaces_the_old_one_keeping_its_mode(dups: Tree, tmp_path: Path) -> None:
    target = tmp_path / "out" / "report.txt"
    target.parent.mkdir()
    target.write_bytes(b"old report\n")
    target.chmod(0o640)
    proc = dedup("find", dups.root, "-f", "fdupes", "-o", str(target), "-q")
    assert proc.returncode == 0, proc.stderr
    assert target.read_bytes() == f"{dups.path('a/x')}\n{dups.path('b/x')}\n\n".encode()
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert _leftovers(target.parent) == []


def test_output_through_a_symlink_replaces_its_target(dups: Tree, tmp_path: Path) -> None:
    real = tmp_path / "real.json"
    real.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    proc = dedup("find", dups.root, "-f", "json", "-o", str(link), "-q")
    assert proc.returncode == 0, proc.stderr
    assert link.is_symlink()
    assert real.read_text().startswith("{")


@pytest.mark.parametrize(
    ("failure", "code"), [(OSError(errno.ENOSPC, "No space left on device"), 5), (None, 130)]
)
def test_a_failed_write_leaves_the_old_file_and_no_temporary(
    dups: Tree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: OSError | None, code: int
) -> None:
    """A failed write leaves no half report at the path: it is written under another name."""
    target = tmp_path / "out" / "report.json"
    target.parent.mkdir()
    target.write_bytes(b"old report\n")
    # What both of the JSON format's writers end in: `dedup find` renders its groups as they
    # are final and has the report written around them.
    real = dedup_engine.report.formats.json._write_json

    def fail_half_way(*args: Any) -> None:
        out: IO[str] = args[-1]
        real(*args)
        out.flush()
        assert target.read_bytes() == b"old report\n"  # written elsewhere until complete
        raise failure if failure is not None else KeyboardInterrupt

    monkeypatch.setattr(dedup_engine.report.formats.json, "_write_json", fail_half_way)
    exit_code, _out, err = invoke("find", dups.root, "-f", "json", "-o", str(target), "-j", "0")
    assert exit_code == code
    assert target.read_bytes() == b"old report\n"
    assert _leftovers(target.parent) == []
    if code == 5:
        assert err.decode().splitlines() == [
            f"dedup: error: cannot write the report to {str(target)!r}: "
            "No space left on device (ENOSPC)"
        ]
    else:
        assert err == b"dedup: interrupted\n"
