"""The report formats: text, fdupes, CSV and JSON, written from a real run, and the JSON reader."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import random
from typing import Any

import pytest
from treebuilder import OsSpy, Tree, check_invariants, content, groups_of

import dedup_engine.find.fullcompare
import dedup_engine.find.hashtasks
from dedup_engine import (
    DuplicateGroup,
    FileEntry,
    FindResult,
    ScanOptions,
    __version__,
    find_duplicates,
)
from dedup_engine.model import Verified
from dedup_engine.report.display import human_size, printable
from dedup_engine.report.formats.csv import write_csv
from dedup_engine.report.formats.fdupes import write_fdupes
from dedup_engine.report.formats.json import to_json_dict, write_json
from dedup_engine.report.formats.text import write_text
from dedup_engine.report.read import Report, read_json

pytestmark = pytest.mark.usefixtures("deadline")

ODD = b"odd-\xff\xfe-name"  # not UTF-8
NEWLINE = 'new\nline, "quoted"'  # a newline, a comma and quotes: CSV must quote it
OPTIONS = ScanOptions(workers=0)


@pytest.fixture
def found(tree: Tree, monkeypatch: pytest.MonkeyPatch) -> tuple[Tree, FindResult]:
    """A real run: three groups (one with a non-UTF-8 name, one with a newline) and one issue."""
    tree.file(b"a/" + ODD, content(300))
    tree.file(b"b/" + ODD, content(300))
    tree.file("a/" + NEWLINE, content(200))
    tree.file("b/plain", content(200))
    tree.file("c/plain", content(200))
    tree.file("big/1", content(20000))
    tree.file("big/2", content(20000))
    broken = tree.file("big/3-unreadable", content(20000))
    spy = OsSpy()
    spy.eio.add((broken, 1))
    monkeypatch.setattr(dedup_engine.find.hashtasks, "os", spy)
    monkeypatch.setattr(dedup_engine.find.fullcompare, "os", spy)
    result = find_duplicates(tree.root, OPTIONS)
    monkeypatch.undo()
    check_invariants(result)
    assert len(result.groups) == 3
    assert [i.path for i in result.issues] == [broken]
    return tree, result


def _bytes(writer: Any, *args: Any) -> bytes:
    out = io.BytesIO()
    writer(*args, out)
    return out.getvalue()


# --- fdupes ---------------------------------------------------------------------------------------


def test_fdupes_is_paths_and_a_blank_line_per_group(found: tuple[Tree, FindResult]) -> None:
    tree, result = found
    out = io.BytesIO()
    assert write_fdupes(result.groups, out) == 1  # the name with a newline: left out
    data = out.getvalue()
    expected = b"".join(
        b"".join(os.fsencode(f.path) + b"\n" for f in g.files if "\n" not in f.path) + b"\n"
        for g in result.groups
    )
    assert data == expected
    # Raw bytes, not an escape: the non-UTF-8 name is there as on disk.
    assert tree.bpath(b"a/" + ODD) + b"\n" in data
    assert b"\\x" not in data
    # Largest first: the 20000-byte group, then 300, then 200.
    blocks = data.split(b"\n\n")
    assert blocks[0].split(b"\n") == [tree.bpath("big/1"), tree.bpath("big/2")]
    assert blocks[1].split(b"\n") == [tree.bpath(b"a/" + ODD), tree.bpath(b"b/" + ODD)]
    assert blocks[-1] == b""


def test_fdupes_of_no_groups_is_empty() -> None:
    assert _bytes(write_fdupes, ()) == b""


# --- CSV ------------------------------------------------------------------------------------------


def test_csv_is_one_row_per_file_with_group_ids(found: tuple[Tree, FindResult]) -> None:
    tree, result = found
    data = _bytes(write_csv, result.groups)
    text = data.decode("utf-8", "surrogateescape")
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows[0] == ["group", "size", "digest", "path", "dev", "ino", "mtime_ns", "ctime_ns"]
    body = rows[1:]
    assert len(body) == sum(len(g.files) for g in result.groups)
    expected = [
        [
            str(n),
            str(g.size),
            g.digest,
            f.path,
            *(str(v) for v in (f.dev, f.ino, f.mtime_ns, f.ctime_ns)),
        ]
        for n, g in enumerate(result.groups, 1)
        for f in g.files
    ]
    assert body == expected
    paths = {row[3] for row in body}
    assert tree.path("a/" + NEWLINE) in paths
    assert os.fsencode(tree.path(b"a/" + ODD)) in {os.fsencode(p) for p in paths}
    assert tree.bpath(b"a/" + ODD) in data  # raw bytes in the file


def test_csv_of_no_groups_is_the_header() -> None:
    rows = list(csv.reader(io.StringIO(_bytes(write_csv, ()).decode(), newline="")))
    assert rows == [["group", "size", "digest", "path", "dev", "ino", "mtime_ns", "ctime_ns"]]


@pytest.mark.parametrize("verified", [False, True])
def test_csv_rows_are_the_csv_modules_bytes_whatever_the_names(verified: bool) -> None:
    # Rows whose path needs no quoting are formatted by hand; every row must still be the bytes
    # csv.writer writes, for names holding the characters it quotes and every other kind (but
    # NUL, which no name holds, and which csv.writer refuses before Python 3.11).
    alphabet = ["a", ",", '"', "\r", "\n", " ", "\t", "\udcff", "\U0001f600", "\\", "'", ";"]
    rng = random.Random(3)
    groups = [
        DuplicateGroup(
            rng.randrange(2**63),
            f"{number:064x}",
            tuple(
                FileEntry(
                    "/" + "".join(rng.choices(alphabet, k=rng.randint(0, 8))),
                    rng.randrange(2**64),
                    rng.randrange(2**64),
                    9,
                    rng.randrange(-(2**62), 2**62),
                    rng.randrange(2**62),
                    0,
                    0,
                    0o644,
                )
                for _ in range(rng.randint(1, 4))
            ),
            rng.choice(list(Verified)),
        )
        for number in range(2000)
    ]
    expected = io.StringIO(newline="")
    writer = csv.writer(expected)
    writer.writerow(
        ["group", "size", "digest", "path", "dev", "ino", "mtime_ns", "ctime_ns"]
        + (["verified"] if verified else [])
    )
    for number, group in enumerate(groups, 1):
        for f in group.files:
            how = [group.verified.value] if verified else []
            row = [number, group.size, group.digest, f.path, f.dev, f.ino, f.mtime_ns, f.ctime_ns]
            writer.writerow(row + how)
    out = io.BytesIO()
    write_csv(groups, out, verified=verified)
    assert out.getvalue() == expected.getvalue().encode("utf-8", "surrogateescape")


# --- text -----------------------------------------------------------------------------------------


def test_text_lists_paths_groups_summary_and_issues(found: tuple[Tree, FindResult]) -> None:
    tree, result = found
    text = _bytes(write_text, result).decode("utf-8")
    for group in result.groups:
        for f in group.files:
            assert f"  {printable(f.path)}\n" in text
    # Odd names are escaped, one line per path.
    assert printable(tree.path(b"a/" + ODD)).endswith("odd-\\xff\\xfe-name")
    assert printable(tree.path("a/" + NEWLINE)).endswith('new\\nline, "quoted"')
    assert text.count("group ") == 3
    assert "3 groups, 7 files in groups" in text
    assert f"scanned {result.stats.files_scanned} files" in text
    assert "1 files could not be read" in text
    assert f"  {tree.path('big/3-unreadable')}: " in text
    assert "(head)" in text
    assert human_size(20000) in text


def test_text_headers_count_hard_links_once_in_distinct_and_reclaimable(tree: Tree) -> None:
    data = content(3000, seed=7)
    tree.file("a", data)
    tree.hardlink("a-link", "a")
    tree.file("b", data)
    tree.file("c", data)
    result = find_duplicates(tree.root, OPTIONS)
    text = _bytes(write_text, result).decode()
    # Four names, three files: two copies could go.
    expected = f"4 files, 3 distinct, {human_size(3000)} each, {human_size(6000)} reclaimable"
    assert f"group 1: {expected}, blake3 " in text


def test_text_of_nothing_found(tree: Tree) -> None:
    tree.file("only", b"one")
    result = find_duplicates(tree.root, OPTIONS)
    text = _bytes(write_text, result).decode()
    assert text.startswith("0 groups, 0 files in groups")
    assert "could not be read" not in text


def test_printable_and_human_size() -> None:
    assert printable("plain/path ü") == "plain/path ü"
    assert printable("a\nb\tc") == "a\\nb\\tc"
    assert printable(os.fsdecode(b"x\xffy")) == "x\\xffy"
    assert [human_size(n) for n in (0, 1023, 1024, 1536, 1024**2, 5 * 1024**4)] == [
        "0 B",
        "1023 B",
        "1.0 KiB",
        "1.5 KiB",
        "1.0 MiB",
        "5.0 TiB",
    ]


def test_human_size_picks_the_unit_a_division_at_a_time_would() -> None:
    """The unit from the bit length, as dividing by 1024 while the value reaches 1024 finds
    it: the same text at every edge of a unit, and past the last one."""

    def divided(n: int) -> str:
        value, units = float(n), ["B", "KiB", "MiB", "GiB", "TiB"]
        while value >= 1024 and len(units) > 1:
            value, units = value / 1024, units[1:]
        return f"{value:.0f} B" if units[0] == "B" else f"{value:.1f} {units[0]}"

    edges = [1024**k + d for k in range(1, 6) for d in (-52, -1, 0, 1, 51, 52)]
    sizes = [0, 1, 512, 1023, *edges, 1024**5 * 3, 1 << 62, 123_456_789, 53_000]
    assert [human_size(n) for n in sizes] == [divided(n) for n in sizes]


# --- JSON -----------------------------------------------------------------------------------------


def test_json_round_trips(found: tuple[Tree, FindResult]) -> None:
    tree, result = found
    out = io.StringIO()
    write_json(result, OPTIONS, __version__, out)
    text = out.getvalue()
    assert text.isascii()  # surrogate-escaped names travel as \udcxx escapes
    report = read_json(text)
    assert isinstance(report, Report)
    assert report.groups == result.groups
    assert report.issues == result.issues
    assert report.roots == tuple(result.roots) == (tree.root,)
    assert report.version == __version__
    assert dict(report.options) == OPTIONS.as_dict()
    assert report.stats["groups"] == 3
    assert [s["stage"] for s in report.stats["stages"]] == [
        s.stage.value for s in result.stats.stages
    ]
    assert report.created.endswith("Z")
    assert groups_of(report) == groups_of(result)
    # The exact bytes of the odd name survive.
    odd = [f.path for g in report.groups for f in g.files if "odd-" in f.path]
    assert {os.fsencode(p) for p in odd} == {tree.bpath(b"a/" + ODD), tree.bpath(b"b/" + ODD)}
    # And from a file object too.
    assert read_json(io.StringIO(text)).groups == result.groups


def test_json_dict_shape(found: tuple[Tree, FindResult]) -> None:
    _tree, result = found
    data = to_json_dict(result, OPTIONS, __version__)
    assert data["schema"] == 3
    assert data["tool"] == "dedup-engine"
    assert set(data) >= {"version", "created", "roots", "options", "stats", "groups", "issues"}
    assert data["reference_roots"] == []
    assert json.loads(json.dumps(data)) == data
    group = data["groups"][0]
    assert set(group) == {"size", "digest", "verified", "files"}
    assert group["verified"] == "bytes"
    assert set(group["files"][0]) == {
        "path",
        "dev",
        "ino",
        "mtime_ns",
        "ctime_ns",
        "uid",
        "gid",
        "mode",
    }
    assert data["issues"] == [
        {"path": i.path, "stage": i.stage.value, "message": i.message} for i in result.issues
    ]


def test_records_are_frozen(found: tuple[Tree, FindResult]) -> None:
    _tree, result = found
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.groups[0].digest = "0" * 64  # type: ignore[misc]
    with pytest.raises(AttributeError):  # a named tuple's fields cannot be set either
        result.groups[0].files[0].path = "/elsewhere"  # type: ignore[misc]
