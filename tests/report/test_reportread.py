"""Reading a report back as untrusted input: what is refused (one line naming the field), what
is accepted (a report passed through `jq .`), and that `apply` touches nothing on a bad one.
A crafted report may name a file outside its roots with an identity that matches the disk: it is
refused before `apply` touches anything.
"""

from __future__ import annotations

import copy
import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from treebuilder import Tree, content

from dedup_engine import FindResult, RunStats, ScanOptions, __version__, find_duplicates
from dedup_engine.report.formats.json import to_json_dict
from dedup_engine.report.read import MAX_DEPTH, ReportError, read_json

pytestmark = pytest.mark.usefixtures("deadline")

OPTIONS = ScanOptions(workers=0)
DEDUP = [sys.executable, "-m", "dedup_engine"]


def _valid() -> dict[str, Any]:
    empty = FindResult(("/x",), (), (), RunStats())
    return to_json_dict(empty, OPTIONS, __version__)


def _file(name: str, number: int, **change: object) -> dict[str, object]:
    entry: dict[str, object] = {
        "path": name,
        "dev": 1,
        "ino": number,
        "mtime_ns": 0,
        "ctime_ns": 0,
        "uid": 0,
        "gid": 0,
        "mode": 0o644,
    }
    entry.update(change)
    return entry


def _with_group(*files: dict[str, object], **group: object) -> dict[str, Any]:
    data = _valid()
    data["groups"] = [
        {"size": 10, "digest": "ab" * 32, "verified": "bytes", "files": list(files), **group}
    ]
    return data


GOOD = _with_group(_file("/x/a", 1), _file("/x/b", 2))


def _set(key: str, value: object) -> Callable[[dict[str, Any]], None]:
    return lambda data: data.__setitem__(key, value)


def _drop(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda data: data.__delitem__(key)


def _twice(data: dict[str, Any]) -> None:
    data["roots"] = ["/x", "/y"]
    data["reference_roots"] = ["/y", "/y"]


def _schema_2_verified(data: dict[str, Any]) -> None:
    del data["reference_roots"], data["directory_groups"]
    data["schema"] = 2
    data["groups"] = [
        {"size": 10, "digest": "ab" * 32, "verified": "sampled", "files": [_file("/x/a", 1)] * 2}
    ]


#: Each change that makes the valid base a report of another shape.
BREAK: dict[str, Callable[[dict[str, Any]], None]] = {
    "tool": _set("tool", "fdupes"),
    "no tool": _drop("tool"),
    "schema 1": _set("schema", 1),
    "schema '2'": _set("schema", "2"),
    "schema 2.0": _set("schema", 2.0),
    "no schema": _drop("schema"),
    "no groups": _drop("groups"),
    "groups not a list": _set("groups", 7),
    "file without ino": _set(
        "groups", [{"size": 1, "digest": "ab" * 32, "files": [{"path": "/x", "dev": 1}]}]
    ),
    "size not a number": _set("groups", [{"size": "big", "digest": "ab" * 32, "files": []}]),
    "bad stage": _set("issues", [{"path": "/x", "stage": "middle", "message": "?"}]),
    "no roots": _drop("roots"),
    "no reference roots": _drop("reference_roots"),
    "reference root not a root": _set("reference_roots", ["/y"]),
    "reference root twice": _twice,
    "reference root relative": _set("reference_roots", ["x"]),
    "schema 2 with schema 3's fields": _set("schema", 2),  # the base has reference_roots
    "schema 2 with a verified group": _schema_2_verified,
}
SHAPES = list(BREAK)


def _broken(change: str) -> dict[str, Any]:
    data = _valid()
    BREAK[change](data)
    return data


@pytest.mark.parametrize("text", ["", "{", "not json", "[]", "null", '"dedup-engine"'])
def test_what_is_not_json_of_a_report_is_refused(text: str) -> None:
    with pytest.raises(ReportError):
        read_json(text)
    with pytest.raises(ReportError):
        read_json(io.StringIO(text))


@pytest.mark.parametrize("change", SHAPES)
def test_a_report_of_another_shape_is_refused(change: str) -> None:
    text = json.dumps(_broken(change))
    with pytest.raises(ReportError):
        read_json(text)
    with pytest.raises(ReportError):
        read_json(text.encode())


def test_a_schema_1_report_says_to_run_find_again() -> None:
    with pytest.raises(ReportError, match="run dedup find again"):
        read_json(json.dumps(_broken("schema 1")))


def test_a_schema_2_report_is_read_without_reference_roots() -> None:
    data = copy.deepcopy(GOOD)
    data["schema"] = 2
    del data["reference_roots"], data["directory_groups"]
    for group in data["groups"]:
        del group["verified"]
    report = read_json(json.dumps(data))
    assert report.reference_roots == () and len(report.groups) == 1


def test_reference_roots_are_read() -> None:
    data = _with_group(_file("/x/a", 1), _file("/y/b", 2))
    data["roots"], data["reference_roots"] = ["/x", "/y"], ["/y"]
    assert read_json(json.dumps(data)).reference_roots == ("/y",)


def test_the_valid_base_is_read() -> None:
    report = read_json(json.dumps(GOOD))
    assert report.roots == ("/x",)
    assert [f.path for f in report.groups[0].files] == ["/x/a", "/x/b"]
    assert report.groups[0].files[1].owner == (0, 0, 0o644)
    assert issubclass(ReportError, ValueError)


def _group_changed(**change: object) -> dict[str, Any]:
    return _with_group(_file("/x/a", 1), _file("/x/b", 2, **change))


CRAFTED: dict[str, tuple[dict[str, Any], str]] = {
    "outside the roots": (_group_changed(path="/etc/passwd"), "under none of the report's roots"),
    "a root's sibling": (_group_changed(path="/xy/b"), "under none of the report's roots"),
    "relative": (_group_changed(path="x/b"), "not an absolute path"),
    "dot-dot": (_group_changed(path="/x/../etc/passwd"), "not normalised"),
    "double slash": (_group_changed(path="//x/b"), "not normalised"),
    "trailing slash": (_group_changed(path="/x/b/"), "not normalised"),
    "NUL": (_group_changed(path="/x/b\0/etc"), "NUL"),
    "lone surrogate": (_group_changed(path="/x/\ud800"), "lone surrogate"),
    "escaped ASCII byte": (_group_changed(path="/x/\udc41"), "lone surrogate"),
    "second spelling": (_group_changed(path="/x/caf\udcc3\udca9"), "as find writes it"),
    "path not a string": (_group_changed(path=["/x/b"]), "not a string"),
    "negative ino": (_group_changed(ino=-1), "out of range"),
    "huge dev": (_group_changed(dev=2**64), "out of range"),
    "float mtime": (_group_changed(mtime_ns=1.5), "not an integer"),
    "bool uid": (_group_changed(uid=True), "not an integer"),
    "mode beyond 07777": (_group_changed(mode=0o170644), "out of range"),
    "no gid": (_group_changed(gid=None), "not an integer"),
    "a path twice": (_with_group(_file("/x/a", 1), _file("/x/a", 2)), "listed twice"),
    "one file": (_with_group(_file("/x/a", 1)), "at least two paths"),
    "bad digest": (_with_group(_file("/x/a", 1), _file("/x/b", 2), digest="zz"), "hex"),
    "negative size": (_with_group(_file("/x/a", 1), _file("/x/b", 2), size=-1), "out of range"),
}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_a_crafted_entry_is_refused_naming_the_field(case: str) -> None:
    data, problem = CRAFTED[case]
    with pytest.raises(ReportError, match="groups\\[0\\]") as caught:
        read_json(json.dumps(data))
    assert problem in str(caught.value)
    assert "\n" not in str(caught.value)


def test_one_file_in_two_groups_is_refused() -> None:
    data = copy.deepcopy(GOOD)
    data["groups"].append({"size": 10, "digest": "cd" * 32,
                           "files": [_file("/x/c", 1), _file("/x/d", 3)]})  # fmt: skip
    with pytest.raises(ReportError, match="in two groups"):
        read_json(json.dumps(data))


@pytest.mark.parametrize("root", ["x", "/x/", "/x/../y", "/x\0"])
def test_a_bad_root_is_refused(root: str) -> None:
    data = copy.deepcopy(GOOD)
    data["roots"] = [root]
    with pytest.raises(ReportError, match="roots\\[0\\]"):
        read_json(json.dumps(data))


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_refused(constant: str) -> None:
    text = json.dumps(GOOD).replace('"mtime_ns": 0', f'"mtime_ns": {constant}', 1)
    with pytest.raises(ReportError, match=constant):
        read_json(text)


def test_an_integer_too_long_to_read_is_refused() -> None:
    text = json.dumps(GOOD).replace('"ino": 1', '"ino": ' + "9" * 5000, 1)
    with pytest.raises(ReportError):
        read_json(text)


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 100_000])
def test_deep_nesting_is_refused_without_a_traceback(depth: int) -> None:
    data = copy.deepcopy(GOOD)
    text = json.dumps(data).replace('"options": {', '"options": {"deep": ' + "[" * depth
                                    + "]" * depth + ", ", 1)  # fmt: skip
    with pytest.raises(ReportError, match="nested"):
        read_json(text)


def test_bytes_that_are_not_utf8_are_refused() -> None:
    with pytest.raises(ReportError, match="not UTF-8"):
        read_json(json.dumps(GOOD).encode() + b"\xff")


# -- through the command --------------------------------------------------------------------


def _report(tmp_path: Path) -> tuple[Tree, Path, dict[str, Any]]:
    tree = Tree(tmp_path / "t")
    tree.file("a/k", content(4000, 1))
    tree.file("b/v", content(4000, 1))
    result = find_duplicates([tree.root], OPTIONS)
    data = to_json_dict(result, OPTIONS, __version__)
    report = tmp_path / "report.json"
    report.write_text(json.dumps(data))
    return tree, report, data


def test_a_report_naming_a_file_outside_its_roots_deletes_nothing(tmp_path: Path) -> None:
    """An entry outside the roots, with an identity that matches the disk, is not deleted: the
    report is refused before anything is touched, with one line and exit 2."""
    tree, report, data = _report(tmp_path)
    outside = Tree(tmp_path / "precious")
    victim = outside.file("only-copy", content(4000, 1))
    st = os.lstat(victim)
    data["groups"][0]["files"][1].update(
        path=victim, dev=st.st_dev, ino=st.st_ino, mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns
    )
    report.write_text(json.dumps(data))
    proc = subprocess.run(
        [*DEDUP, "apply", report, "--action", "delete"], capture_output=True, check=False
    )
    assert proc.returncode == 2
    assert proc.stderr.count(b"\n") == 1 and b"under none of the report's roots" in proc.stderr
    assert b"Traceback" not in proc.stderr
    assert Path(victim).read_bytes() == content(4000, 1)
    assert Path(tree.path("b/v")).exists()


@pytest.mark.parametrize("how", ["file", "stdin"])
def test_a_report_rewritten_by_jq_is_read_from_a_file_as_from_stdin(
    tmp_path: Path, how: str
) -> None:
    """`jq .` writes the report back indented, in UTF-8 (not \\u escapes)."""
    tree = Tree(tmp_path / "t")
    tree.file("é/k", content(4000, 1))
    tree.file("ü/v", content(4000, 1))
    result = find_duplicates([tree.root], OPTIONS)
    text = json.dumps(to_json_dict(result, OPTIONS, __version__), indent=2, ensure_ascii=False)
    assert not text.isascii()
    report = tmp_path / "jq.json"
    report.write_bytes(text.encode("utf-8"))
    source = ["-"] if how == "stdin" else [str(report)]
    with report.open("rb") as stdin:
        proc = subprocess.run(
            [*DEDUP, "apply", *source, "--action", "hardlink", "--journal", tmp_path / "j"],
            stdin=stdin,
            capture_output=True,
            check=False,
        )
    assert proc.returncode == 0, proc.stderr
    assert os.lstat(tree.path("é/k")).st_ino == os.lstat(tree.path("ü/v")).st_ino


@pytest.mark.parametrize(
    "body",
    [b"", b"\xff\xfe", b"[" * 100_000, b'{"tool": "dedup-engine", "schema": 2, "roots": 5}'],
)
def test_no_input_gives_a_traceback(tmp_path: Path, body: bytes) -> None:
    report = tmp_path / "bad.json"
    report.write_bytes(body)
    proc = subprocess.run(
        [*DEDUP, "apply", report, "--action", "delete"], capture_output=True, check=False
    )
    assert proc.returncode == 2
    assert b"Traceback" not in proc.stderr and proc.stderr.count(b"\n") == 1
