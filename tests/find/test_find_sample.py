"""`--sample N`: files above `--sample-above` compared on N spread windows, never in full; their
groups marked sampled in every format, never cached as whole-file digests, and left alone by
`apply` unless `--trust-sampled`, which still compares every byte first."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cachetrust import need_trusted
from incli import invoke
from treebuilder import Runner, Tree, content

from dedup_engine import ScanOptions, find_duplicates
from dedup_engine.model import Verified
from dedup_engine.report.read import read_json

pytestmark = pytest.mark.usefixtures("deadline")

DEDUP = [sys.executable, "-m", "dedup_engine"]
SIZE = 3 << 20
SAMPLE = ("--sample", "4", "--sample-above", "1M")


def _build(tree: Tree) -> None:
    """a and b equal; c differs from them in one byte between the windows, d in its last byte
    (always in a window); small1 and small2 equal and below the threshold."""
    data = bytearray(content(SIZE, seed="big"))
    tree.file("a", bytes(data))
    tree.file("b", bytes(data))
    data[SIZE // 2 - 1000] ^= 1
    tree.file("c", bytes(data))
    data[SIZE // 2 - 1000] ^= 1
    data[-1] ^= 1
    tree.file("d", bytes(data))
    tree.file("small1", content(5000, seed="s"))
    tree.file("small2", content(5000, seed="s"))


def test_big_files_are_compared_on_windows_and_their_groups_marked_sampled(
    tree: Tree, run: Runner, workers: int
) -> None:
    _build(tree)
    # Not `run`, which checks that each group's files are equal: a sampled one's need not be.
    options = ScanOptions(workers=workers, sample=4, sample_above=1 << 20)
    result = find_duplicates([tree.root], options)
    found = {frozenset(f.path for f in g.files): g.verified for g in result.groups}
    assert found == {
        tree.paths("a", "b", "c"): Verified.SAMPLED,  # c differs only between the windows
        tree.paths("small1", "small2"): Verified.BYTES,
    }
    read = sum(row.bytes_read for row in result.stats.stages)
    assert read < 4 * SIZE  # the big files were not read whole
    full = run([tree.root])
    assert {frozenset(f.path for f in g.files) for g in full.groups} == {
        tree.paths("a", "b"),
        tree.paths("small1", "small2"),
    }
    assert all(g.verified is Verified.BYTES for g in full.groups)


def test_every_format_marks_sampled_groups(tree: Tree) -> None:
    _build(tree)
    code, out, _ = invoke("find", tree.root, *SAMPLE)
    assert code == 0 and b"SAMPLED, NOT VERIFIED" in out
    code, out, _ = invoke("find", tree.root, *SAMPLE, "-f", "json")
    data = json.loads(out)
    assert sorted(g["verified"] for g in data["groups"]) == ["bytes", "sampled"]
    assert [g.verified for g in read_json(out).groups] == [Verified.SAMPLED, Verified.BYTES]
    code, out, _ = invoke("find", tree.root, *SAMPLE, "-f", "csv")
    rows = out.decode().splitlines()
    assert rows[0].endswith(",verified") and rows[1].endswith(",sampled")
    code, _, err = invoke("find", tree.root, *SAMPLE, "-f", "fdupes")
    assert code == 2 and b"cannot mark a group as sampled" in err
    code, _, err = invoke("find", tree.root, "--sample", "1")
    assert code == 2 and b"--sample must be" in err


@pytest.mark.usefixtures("at_once")
def test_a_sampled_run_never_caches_a_window_digest_as_the_whole_file(
    tree: Tree, tmp_path: Path, workers: int
) -> None:
    need_trusted(tree.root)
    _build(tree)
    cache = str(tmp_path / "cache")
    sampled = ScanOptions(workers=workers, sample=4, sample_above=1 << 20, cache_dir=cache)
    assert len(find_duplicates([tree.root], sampled).groups) == 2
    full = find_duplicates([tree.root], ScanOptions(workers=workers, cache_dir=cache))
    assert {frozenset(f.path for f in g.files) for g in full.groups} == {
        tree.paths("a", "b"),
        tree.paths("small1", "small2"),
    }


@pytest.mark.usefixtures("at_once")
def test_whole_file_digests_in_the_cache_leave_a_sampled_group_sampled(
    tree: Tree, tmp_path: Path, workers: int
) -> None:
    """A run without `--sample` caches the big files' whole-file digests; a sampled run after
    it still compares them on windows, as asked, and says so: c, which differs only between
    the windows, is in the group, as it is without a cache."""
    need_trusted(tree.root)
    _build(tree)
    os.unlink(tree.path("d"))  # which the tail would tell apart: a, b and c reach the full stage
    cache = str(tmp_path / "cache")
    find_duplicates([tree.root], ScanOptions(workers=workers, cache_dir=cache))
    sampled = ScanOptions(workers=workers, sample=4, sample_above=1 << 20, cache_dir=cache)
    verified = {
        frozenset(Path(f.path).name for f in g.files): g.verified
        for g in find_duplicates([tree.root], sampled).groups
    }
    assert verified == {
        frozenset({"a", "b", "c"}): Verified.SAMPLED,
        frozenset({"small1", "small2"}): Verified.BYTES,
    }


def _report(tree: Tree, tmp_path: Path) -> Path:
    path = tmp_path / "report.json"
    code, _, _ = invoke("find", tree.root, *SAMPLE, "-f", "json", "-o", str(path))
    assert code == 0
    return path


def _apply(*args: str | Path) -> subprocess.CompletedProcess[bytes]:
    command = [*DEDUP, "apply", *map(str, args)]
    return subprocess.run(command, capture_output=True, timeout=120, check=False)


def test_apply_leaves_sampled_groups_alone_without_trust_sampled(
    tree: Tree, tmp_path: Path
) -> None:
    _build(tree)
    report = _report(tree, tmp_path)
    proc = _apply(report, "--action", "delete", "--dry-run", "-f", "json")
    plan = json.loads(proc.stdout)
    assert [s["kind"] for s in plan["left_alone"]] == ["sampled"]
    assert [op["path"] for op in plan["operations"]] == [tree.path("small2")]
    proc = _apply(report, "--action", "delete", "--journal", tmp_path / "j")
    assert proc.returncode == 0, proc.stderr
    assert all(os.path.exists(tree.path(n)) for n in ("a", "b", "c", "d", "small1"))
    assert not os.path.exists(tree.path("small2"))


def test_trust_sampled_compares_every_byte_even_with_no_verify(tree: Tree, tmp_path: Path) -> None:
    _build(tree)
    report = _report(tree, tmp_path)
    before = tree.read("c")
    proc = _apply(
        report, "--action", "delete", "--trust-sampled", "--no-verify", "--journal", tmp_path / "j"
    )
    assert proc.returncode == 1, proc.stderr  # c was skipped
    assert b"content differs" in proc.stderr
    assert not os.path.exists(tree.path("b"))  # a true copy of a: deleted
    assert tree.read("c") == before and tree.read("a") == content(SIZE, seed="big")


def test_a_report_with_a_bad_verified_field_is_refused(tree: Tree, tmp_path: Path) -> None:
    _build(tree)
    report = _report(tree, tmp_path)
    for bad in ("maybe", None):
        data = json.loads(report.read_bytes())
        if bad is None:
            del data["groups"][0]["verified"]
        else:
            data["groups"][0]["verified"] = bad
        report.write_text(json.dumps(data))
        proc = _apply(report, "--action", "delete")
        assert proc.returncode == 2 and b"verified" in proc.stderr
        assert b"Traceback" not in proc.stderr
    assert all(os.path.exists(tree.path(n)) for n in ("a", "b", "c", "d", "small1", "small2"))


def test_files_the_windows_would_cover_whole_are_compared_in_full(tree: Tree, workers: int) -> None:
    data = bytearray(content(200_000, seed="mid"))
    tree.file("x", bytes(data))
    tree.file("y", bytes(data))
    data[100_000] ^= 1
    tree.file("z", bytes(data))
    options = ScanOptions(workers=workers, sample=2, sample_above=1)  # 2 windows of 128 KiB
    (group,) = find_duplicates([tree.root], options).groups
    assert {f.path for f in group.files} == tree.paths("x", "y")
    assert group.verified is Verified.BYTES


def test_directories_of_sampled_files_are_not_reported_as_copies(tree: Tree, workers: int) -> None:
    data = bytearray(content(SIZE, seed="big"))
    tree.file("d1/f", bytes(data))
    data[SIZE // 2 - 1000] ^= 1  # between the windows
    tree.file("d2/f", bytes(data))
    options = ScanOptions(workers=workers, sample=4, sample_above=1 << 20, dirs=True)
    result = find_duplicates([tree.root], options)
    assert [g.verified for g in result.groups] == [Verified.SAMPLED]
    assert result.directory_groups == ()


def test_trust_sampled_with_more_than_one_copy_kept_leaves_the_group_alone(
    tree: Tree, tmp_path: Path
) -> None:
    """Each victim is compared with the first kept file only: a second kept file would count as
    a copy unverified (here c, which differs)."""
    _build(tree)
    report = _report(tree, tmp_path)
    proc = _apply(report, "--action", "delete", "--trust-sampled", "--min-copies", "2", "-n")
    assert proc.returncode == 0, proc.stderr
    assert b"other kept files would count as copies" in proc.stdout
    lines = proc.stdout.decode().splitlines()
    assert all(line.startswith(("left alone", "dry run")) for line in lines)


def test_the_dry_run_marks_the_operations_of_sampled_groups(tree: Tree, tmp_path: Path) -> None:
    _build(tree)
    report = _report(tree, tmp_path)
    proc = _apply(report, "--action", "delete", "--trust-sampled", "-n")
    lines = proc.stdout.decode().splitlines()
    sampled = f"(kept: {tree.path('a')}, sampled: bytes compared first)"
    assert f"delete    {tree.path('b')}   {sampled}" in lines
    assert f"delete    {tree.path('small2')}   (kept: {tree.path('small1')})" in lines
    proc = _apply(report, "--action", "hardlink", "--trust-sampled", "-n", "-f", "json")
    marks = {op["path"]: op["sampled"] for op in json.loads(proc.stdout)["operations"]}
    assert marks == {tree.path("b"): True, tree.path("c"): True, tree.path("small2"): False}


def test_resume_takes_its_checks_from_the_journal(tree: Tree, tmp_path: Path) -> None:
    for flag in ("--no-verify", "--trust-sampled"):
        proc = _apply("--resume", tmp_path / "journal", flag)
        assert proc.returncode == 2 and b"checks come from the journal" in proc.stderr
