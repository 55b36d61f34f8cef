"""`apply` on a report with reference roots: every file under a reference root is kept, whatever
`--keep` and `--min-copies` say, the others act towards one of them, and the dry run says so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from faultsys import assert_nothing_lost, snapshot
from treebuilder import Tree, content

pytestmark = pytest.mark.usefixtures("deadline")

DEDUP = [sys.executable, "-m", "dedup_engine"]


def dedup(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*DEDUP, *map(str, args)], capture_output=True, timeout=120, check=False)


@pytest.fixture
def report(tmp_path: Path) -> tuple[Tree, Path]:
    """new/ (searched first, so --keep first-root would keep its files) and archive/, the
    reference: a pair, a group of three with two archive copies, and copies within new alone."""
    tree = Tree(tmp_path / "t")
    tree.file("new/a", content(3000, seed="a"))
    tree.file("archive/a", content(3000, seed="a"))
    tree.file("new/d", content(200_000, seed="d"))
    tree.file("archive/d1", content(200_000, seed="d"))
    tree.file("archive/old/d2", content(200_000, seed="d"))
    tree.file("new/b1", content(3000, seed="b"))
    tree.file("new/b2", content(3000, seed="b"))
    os.utime(tree.path("archive/d1"), (1, 1))  # the oldest copy: --keep newest passes it over
    path = tmp_path / "report.json"
    found = dedup("find", tree.path("new"), "--reference", tree.path("archive"), "-f", "json")
    assert found.returncode == 0, found.stderr
    path.write_bytes(found.stdout)
    return tree, path


@pytest.mark.parametrize("keep", ["first-root", "newest", "shortest-path"])
def test_delete_keeps_every_reference_file_whatever_the_policy(
    report: tuple[Tree, Path], tmp_path: Path, keep: str
) -> None:
    tree, path = report
    before = snapshot(tree.root)
    proc = dedup("apply", path, "--action", "delete", "--keep", keep, "--journal", tmp_path / "j")
    assert proc.returncode == 0, proc.stderr
    gone = {tree.path("new/a"), tree.path("new/d")}
    assert_nothing_lost(before, tree.root, gone_ok=gone)
    assert set(snapshot(tree.root)) == set(before) - gone


def test_hardlink_links_the_others_to_a_reference_file(
    report: tuple[Tree, Path], tmp_path: Path
) -> None:
    tree, path = report
    proc = dedup("apply", path, "--action", "hardlink", "--journal", tmp_path / "j")
    assert proc.returncode == 0, proc.stderr
    assert os.path.samefile(tree.path("new/a"), tree.path("archive/a"))
    archive = {os.stat(tree.path(p)).st_ino for p in ("archive/d1", "archive/old/d2")}
    assert len(archive) == 2  # both reference copies untouched, each its own file
    assert os.stat(tree.path("new/d")).st_ino in archive
    assert not os.path.samefile(tree.path("new/b1"), tree.path("new/b2"))  # not in the report


def test_the_dry_run_names_the_reference_file_kept(report: tuple[Tree, Path]) -> None:
    tree, path = report
    before = snapshot(tree.root)
    proc = dedup("apply", path, "--action", "delete", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.decode().splitlines()
    assert f"delete    {tree.path('new/a')}   (kept: {tree.path('archive/a')}, reference)" in lines
    assert sum(line.startswith("delete ") for line in lines) == 2
    proc = dedup("apply", path, "--action", "delete", "--dry-run", "-f", "json")
    operations = json.loads(proc.stdout)["operations"]
    assert {op["path"] for op in operations} == {tree.path("new/a"), tree.path("new/d")}
    assert all(op["keep_is_reference"] for op in operations)
    assert snapshot(tree.root) == before


def test_a_report_whose_reference_root_is_not_a_root_is_refused(
    report: tuple[Tree, Path],
) -> None:
    tree, path = report
    data = json.loads(path.read_bytes())
    data["reference_roots"] = [tree.path("elsewhere")]
    path.write_text(json.dumps(data))
    before = snapshot(tree.root)
    proc = dedup("apply", path, "--action", "delete")
    assert proc.returncode == 2
    assert b"not one of the roots" in proc.stderr and b"Traceback" not in proc.stderr
    assert snapshot(tree.root) == before
