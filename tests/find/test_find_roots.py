"""The roots of a search: with `--isolate`, only groups whose files lie under two roots or more
are reported, each file counting under the innermost root that holds it; `--files-from` takes
each path of a list (a file or stdin, newline- or NUL-separated) as a root."""

from __future__ import annotations

import errno
import io
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import pytest
from incli import invoke
from treebuilder import Runner, Tree, content, expect, groups_of

from dedup_engine.find.filelist import read_paths
from dedup_engine.find.roots import Roots, _realpath, canonical_roots
from dedup_engine.find.tasks import DirJob

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


# --- --files-from ---------------------------------------------------------------------------


def _list(tmp_path: Path, paths: list[str], null: bool = False, name: str = "list") -> Path:
    listed = tmp_path / name
    separator = b"\0" if null else b"\n"
    listed.write_bytes(b"".join(os.fsencode(p) + separator for p in paths))
    return listed


def _fdupes(out: bytes) -> list[list[str]]:
    return [g.splitlines() for g in out.decode().split("\n\n") if g.strip()]


def test_files_from_takes_each_listed_path_as_a_root(tree: Tree, tmp_path: Path) -> None:
    _build(tree)
    listed = _list(tmp_path, [tree.path("a/y"), tree.path("b"), tree.path("a/y"), ""])
    code, out, _ = invoke("find", "--files-from", listed, "-f", "fdupes")
    assert code == 0
    # b/y and a/y (listed twice: one root), b/sub/z alone in b: a/z1 and a/z2 are not listed.
    assert _fdupes(out) == [[tree.path("a/y"), tree.path("b/y")]]
    code, out, _ = invoke("find", tree.path("a"), "--files-from", listed, "-f", "fdupes")
    assert len(_fdupes(out)) == 3  # roots given and listed, together


def test_files_from_with_nul_separators_takes_any_name(tree: Tree, tmp_path: Path) -> None:
    odd = tree.file("odd/new\nline", content(1000))
    plain = tree.file("odd/plain", content(1000))
    listed = _list(tmp_path, [odd, plain], null=True)
    code, out, _ = invoke("find", "--files-from", listed, "-0", "-f", "json")
    assert code == 0
    report = json.loads(out)
    assert [sorted(f["path"] for f in g["files"]) for g in report["groups"]] == [[odd, plain]]
    assert sorted(report["roots"]) == [odd, plain]


def test_files_from_reads_standard_input(tree: Tree) -> None:
    _build(tree)
    listing = "\n".join([tree.path("a/y"), tree.path("b/y")]) + "\n"
    done = subprocess.run(
        [sys.executable, "-m", "dedup_engine", "find", "--files-from", "-", "-f", "fdupes"],
        input=listing.encode(),
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0
    assert _fdupes(done.stdout) == [[tree.path("a/y"), tree.path("b/y")]]


@pytest.mark.parametrize(
    "problem",
    [
        "missing list",
        "missing path",
        "empty list",
        "blank list",
        "a NUL-separated list without -0",
        "a newline list with -0",
        "separators only, with -0",
        "a file named as a directory",
        "a file named as a directory, with a dot",
        "a file named as a directory, with two dots",
    ],
)
def test_a_bad_file_list_is_one_line_and_exit_2(tree: Tree, tmp_path: Path, problem: str) -> None:
    tree.file("f", b"x")
    nul_list = tmp_path / "nul list"
    nul_list.write_bytes(os.fsencode(tree.path("f")) + b"\0" + os.fsencode(tree.path("f")))
    long_list = tmp_path / "long list"
    long_list.write_bytes(b"".join(os.fsencode(tree.path("f")) + b"\n" for _ in range(500)))
    zeros = tmp_path / "zeros"
    zeros.write_bytes(bytes(2 << 20))
    listed, null = {
        "missing list": (tmp_path / "no such list", False),
        "missing path": (
            _list(tmp_path, [tree.path("f"), str(tmp_path / "gone")], name="list1"),
            False,
        ),
        "empty list": (_list(tmp_path, [], name="list2"), False),
        "blank list": (_list(tmp_path, ["", ""], name="list3"), False),
        "a NUL-separated list without -0": (nul_list, False),
        "a newline list with -0": (long_list, True),
        "separators only, with -0": (zeros, True),
        "a file named as a directory": (
            _list(tmp_path, [tree.path("f") + "/"], name="list4"),
            False,
        ),
        "a file named as a directory, with a dot": (
            _list(tmp_path, [tree.path("f") + "/."], name="list5"),
            False,
        ),
        "a file named as a directory, with two dots": (
            _list(tmp_path, [tree.path("f") + "/../f"], name="list6"),
            False,
        ),
    }[problem]
    code, out, err = invoke("find", "--files-from", listed, *(["-0"] if null else []))
    assert (code, out) == (2, b"")
    assert err.decode().count("\n") == 1 and err.decode().startswith("dedup: error: ")


def test_files_from_a_closed_standard_input_is_a_usage_error() -> None:
    command = f"exec {sys.executable} -m dedup_engine find --files-from - <&-"
    done = subprocess.run(["sh", "-c", command], capture_output=True, check=False, timeout=60)
    assert done.returncode == 2
    assert done.stderr == b"dedup: error: --files-from -: standard input is closed\n"


def test_read_paths_streams_blocks_and_splits_across_them() -> None:
    names = [f"/data/{'x' * (n % 300)}{n}" for n in range(5000)]
    data = b"".join(os.fsencode(n) + b"\0" for n in names)
    assert list(read_paths(io.BytesIO(data), null=True)) == names
    assert list(read_paths(io.BytesIO(b"/a\n/b"), null=False)) == ["/a", "/b"]
    assert list(read_paths(io.BytesIO(b"/caf\xe9\n"), null=False)) == [os.fsdecode(b"/caf\xe9")]


def test_roots_resolve_as_realpath_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Parent directories are resolved once for a long list; every answer is still realpath's."""
    (tmp_path / "real" / "sub").mkdir(parents=True)
    (tmp_path / "real" / "sub" / "f").write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "real" / "sub" / "flink").symlink_to(tmp_path / "real" / "sub" / "f")
    (tmp_path / "real" / "up").symlink_to(tmp_path / "real" / "sub")
    monkeypatch.chdir(tmp_path)
    cases = [
        f"{tmp_path}/link/sub/f",
        "link/sub/f",
        "link/sub/flink",
        "link/../link/sub/f",
        "real/up/../sub/f",  # "..", after a symlink: the symlink's parent, not the lexical one
        "link/./sub/f",
        "./link/sub/f",
        "././real/up/f",
        f"{tmp_path}//link//sub/",
        "/",
    ]
    parents: dict[str, str] = {}
    for case in cases:
        real, st = _realpath(case, parents)
        assert real == os.path.realpath(case), case
        assert (st.st_dev, st.st_ino) == (os.stat(real).st_dev, os.stat(real).st_ino), case
    with pytest.raises(FileNotFoundError):
        _realpath("missing/x", parents)


# --- a symlink put on a root's path after it was resolved ------------------------------------


def _swap_for_link(directory: str, target: str) -> None:
    """`directory` moved aside and a symlink to `target` put in its place."""
    os.rename(directory, directory + ".moved")
    os.symlink(target, directory)


def _elsewhere(tree: Tree) -> str:
    """Copies outside every root, in the shape the roots have: what a swapped link reaches."""
    tree.file("elsewhere/in/root/s1", content(2000, seed="secret"))
    tree.file("elsewhere/in/root/s2", content(2000, seed="secret"))
    tree.file("elsewhere/in/root/sub/t1", content(2000, seed="t"))
    tree.file("elsewhere/in/root/sub/t2", content(2000, seed="t"))
    return tree.path("elsewhere/in")


@pytest.mark.parametrize("root_kind", ["directory", "file"])
def test_a_symlink_put_above_a_root_after_resolution_is_not_followed(
    tree: Tree, monkeypatch: pytest.MonkeyPatch, root_kind: str
) -> None:
    from dedup_engine import ScanOptions, find_duplicates
    from dedup_engine.find import pipeline

    elsewhere = _elsewhere(tree)
    tree.file("base/in/root/s1", content(2000, seed="mine"))
    tree.file("base/in/root/s2", content(2000, seed="mine"))
    real = canonical_roots

    def resolve_then_swap(roots: object, reference: object) -> Roots:
        resolved = real(roots, reference)  # type: ignore[arg-type]
        _swap_for_link(tree.path("base/in"), elsewhere)
        return resolved

    monkeypatch.setattr(pipeline, "canonical_roots", resolve_then_swap)
    roots = (
        [tree.path("base/in/root")]
        if root_kind == "directory"
        else [tree.path("base/in/root/s1"), tree.path("base/in/root/s2")]
    )
    result = find_duplicates(roots, ScanOptions(workers=0))
    assert result.groups == ()
    assert result.issues and all("symlink" in issue.message for issue in result.issues)


def test_a_symlink_put_above_a_directory_during_the_walk_is_not_followed(
    tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dedup_engine import ScanOptions, find_duplicates
    from dedup_engine.find import walk

    elsewhere = _elsewhere(tree)
    tree.file("root/in/keep", content(10))
    tree.file("root/in/root/sub/t1", content(2000, seed="mine"))
    real = walk._Listing.list_dir
    swapped: list[str] = []

    def list_dir(listing: walk._Listing, job: DirJob) -> None:
        if job.path.endswith("/root/sub") and not swapped:
            # root/in was listed, then root/in/root; root/in/root/sub is next: its parent
            # becomes a link to a directory with a sub of its own.
            _swap_for_link(tree.path("root/in"), elsewhere)
            swapped.append(job.path)
        real(listing, job)

    monkeypatch.setattr(walk._Listing, "list_dir", list_dir)
    result = find_duplicates([tree.path("root")], ScanOptions(workers=0))
    assert swapped
    assert result.groups == ()
    (issue,) = result.issues
    assert issue.path == tree.path("root/in/root/sub")
    assert "replaced or moved during the scan" in issue.message


def test_isolate_with_links_followed_counts_a_file_under_the_root_that_holds_it(
    tree: Tree, run: Runner
) -> None:
    """A link in root a to a directory of root b: with -L the files below it are names of b's
    files, not copies in a; copies within b alone stay unreported."""
    tree.file("b/d/x1", content(3000, seed="x"))
    tree.file("b/d/x2", content(3000, seed="x"))
    tree.file("a/own", content(10))
    tree.symlink("a/link", tree.path("b/d"))
    roots = [tree.path("a"), tree.path("b")]
    assert groups_of(run(roots, isolate=True, follow_links=True)) == set()
    tree.file("a/x3", content(3000, seed="x"))  # a copy in a: now across roots
    found = groups_of(run(roots, isolate=True, follow_links=True))
    assert len(found) == 1 and tree.path("a/x3") in next(iter(found))


def test_isolate_with_links_followed_counts_a_linked_file_under_its_target_root(
    tree: Tree, run: Runner
) -> None:
    """A link in root a to a file of root b names b's file: two copies in b alone stay
    unreported."""
    tree.file("b/x1", content(3000, seed="x"))
    tree.file("b/x2", content(3000, seed="x"))
    tree.symlink("a/x", tree.path("b/x1"))
    roots = [tree.path("a"), tree.path("b")]
    assert groups_of(run(roots, isolate=True, follow_links=True)) == set()


def test_a_directory_swapped_for_a_symlink_before_its_files_are_read_is_not_followed(
    tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the scan, root/d becomes a link to a directory outside whose f has g's bytes: the
    head stage opens root/d/f by its path, and must find it is not the file the scan saw
    (else root/d/f and root/g would be a false group)."""
    from dedup_engine import ScanOptions, find_duplicates
    from dedup_engine.find import readers

    tree.file("root/d/f", content(3000, seed="mine"))
    tree.file("root/g", content(3000, seed="theirs"))
    tree.file("out/d/f", content(3000, seed="theirs"))
    real = readers.hash_batch  # type: ignore[attr-defined]
    swapped: list[bool] = []

    def swap_then_hash(*args: Any) -> Any:
        if swapped:
            return real(*args)
        # Swapped for the read, and back before the re-check looks at the path again.
        _swap_for_link(tree.path("root/d"), tree.path("out/d"))
        swapped.append(True)
        try:
            return real(*args)
        finally:
            os.unlink(tree.path("root/d"))
            os.rename(tree.path("root/d") + ".moved", tree.path("root/d"))

    monkeypatch.setattr(readers, "hash_batch", swap_then_hash)
    result = find_duplicates([tree.path("root")], ScanOptions(workers=0))
    assert swapped
    assert result.groups == ()
    (issue,) = result.issues
    assert issue.path == tree.path("root/d/f") and "replaced since the scan" in issue.message


def test_isolate_with_links_followed_counts_a_linked_file_under_its_target_root_alone(
    tree: Tree, run: Runner
) -> None:
    """The link's target's own name is left out (--exclude): the link is then the file's only
    name, and it still counts under the root that holds the file."""
    tree.file("r2/x", content(3000, seed="x"))
    tree.file("r2/y", content(3000, seed="x"))
    tree.symlink("r1/fl", tree.path("r2/x"))
    roots = [tree.path("r1"), tree.path("r2")]
    found = run(roots, isolate=True, follow_links=True, exclude=("x",))
    assert groups_of(found) == set()
    tree.file("r1/z", content(3000, seed="x"))  # a real copy in r1: now across the roots
    found = run(roots, isolate=True, follow_links=True, exclude=("x",))
    assert groups_of(found) == expect(tree, ["r1/fl", "r1/z", "r2/y"])


def test_every_list_given_is_read_in_turn(tree: Tree, tmp_path: Path) -> None:
    _build(tree)
    first = _list(tmp_path, [tree.path("a/y")])
    (tmp_path / "second").mkdir()
    second = _list(tmp_path / "second", [tree.path("b/y")])
    code, out, _ = invoke("find", "--files-from", first, "--files-from", second, "-f", "json")
    assert code == 0
    assert json.loads(out)["roots"] == [tree.path("a/y"), tree.path("b/y")]


def test_a_list_on_a_pipe_that_has_nothing_yet_is_waited_for(tree: Tree) -> None:
    """A non-blocking pipe answers a read with nothing yet: not the end of the list."""
    _build(tree)
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    command = [sys.executable, "-m", "dedup_engine", "find", "--files-from", "-", "-f", "fdupes"]
    with subprocess.Popen(command, stdin=read_end, stdout=subprocess.PIPE) as proc:
        os.close(read_end)
        os.write(write_end, os.fsencode(tree.path("a/y")) + b"\n")
        time.sleep(0.5)
        os.write(write_end, os.fsencode(tree.path("b/y")) + b"\n")
        os.close(write_end)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert _fdupes(out) == [[tree.path("a/y"), tree.path("b/y")]]


def test_a_roots_table_that_cannot_be_written_is_one_line_and_exit_2(
    tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dedup_engine.find import roots

    def full(self: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    tree.file("f", b"x")
    monkeypatch.setattr(roots._Table, "flush", full)
    code, out, err = invoke("find", tree.path("f"))
    assert (code, out) == (2, b"")
    assert err.decode() == (
        "dedup: error: cannot keep the roots in a temporary file"
        " ($SQLITE_TMPDIR, $TMPDIR or /var/tmp): database or disk is full\n"
    )


def test_a_temporary_directory_that_cannot_be_used_is_one_line(tree: Tree) -> None:
    tree.file("f", b"x")
    command = [sys.executable, "-m", "dedup_engine", "find", tree.root]
    env = {**os.environ, "TMPDIR": str(Path(tree.root) / "no such directory")}
    done = subprocess.run(command, capture_output=True, env=env, check=False, timeout=60)
    assert done.returncode == 2
    assert done.stderr.decode().count("\n") == 1
    assert done.stderr.startswith(b"dedup: error: cannot make a temporary file in ")


# The spool writes groups many at a time: the last of them go to disk once the search is done,
# and a full disk then is the spool's, not the report destination's.
@pytest.mark.parametrize("failing", ["add", "flush"])
@pytest.mark.parametrize("reference", [False, True], ids=["rendered", "groups"])
def test_groups_that_cannot_be_kept_for_the_report_are_one_line_and_exit_5(
    tree: Tree, monkeypatch: pytest.MonkeyPatch, failing: str, reference: bool
) -> None:
    from dedup_engine.report.spool import BlockSpool, GroupSpool

    def full(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    _build(tree)
    # Groups are kept rendered in the text format, or as groups where they cannot be rendered
    # before the search is done (files marked under reference roots).
    monkeypatch.setattr(BlockSpool, failing, full)
    monkeypatch.setattr(GroupSpool, failing, full)
    roots = [tree.path("a"), "--reference", tree.path("b")] if reference else [tree.root]
    code, out, err = invoke("find", *roots, "--workers", "0")
    assert (code, out) == (5, b"")
    assert err.decode().startswith("dedup: error: cannot keep the groups for the report in ")
    assert err.decode().endswith("No space left on device (ENOSPC)\n")
    assert err.decode().count("\n") == 1


def test_a_full_disk_under_the_spool_is_one_line_and_exit_5(
    tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The spool's own file on a full device (/dev/full: every write is ENOSPC): the groups
    # waiting to be written fail once the search is done, and again as the spool is closed,
    # which must not turn the one line into a traceback.
    import tempfile

    from dedup_engine.report import spool

    def on_a_full_device(**kwargs: object) -> IO[bytes]:
        return open("/dev/full", "w+b")  # the spool closes it

    monkeypatch.setattr(spool, "FLUSH_BYTES", 1 << 30)  # every record waits for the end
    monkeypatch.setattr(tempfile, "TemporaryFile", on_a_full_device)
    _build(tree)
    code, out, err = invoke("find", tree.root, "--workers", "0")
    assert (code, out) == (5, b"")
    assert err.decode().startswith("dedup: error: cannot keep the groups for the report in ")
    assert err.decode().count("\n") == 1


def test_a_file_root_replaced_by_a_fifo_before_its_scan_is_an_issue(
    tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dedup_engine import ScanOptions, find_duplicates
    from dedup_engine.find import walk

    data = content(2000, seed="f")
    first, second = tree.file("f1", data), tree.file("f2", data)
    real = walk._Listing.add_file_roots

    def swap_then_take(self: walk._Listing, files: Any) -> None:
        os.unlink(second)
        os.mkfifo(second)
        real(self, files)

    monkeypatch.setattr(walk._Listing, "add_file_roots", swap_then_take)
    result = find_duplicates([first, second], ScanOptions(workers=0))
    assert result.groups == ()
    assert [(i.path, i.message) for i in result.issues] == [
        (second, "cannot take root: it is no longer a regular file")
    ]


def test_roots_found_by_a_clusters_workers_that_cannot_be_kept_are_a_usage_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`--root-on`'s roots go into the same table, with the same one line when it fails."""
    from dedup_engine.find import roots
    from dedup_engine.options import OptionsError

    def full(self: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(roots._Table, "flush", full)
    with pytest.raises(OptionsError, match=r"cannot keep the roots .* database or disk is full"):
        roots.known_roots(["/srv/disk"])
