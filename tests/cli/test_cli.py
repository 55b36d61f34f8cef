"""The `dedup` command: exit codes, output formats and files, stderr, help and version.

Most checks run the real command (`python -m dedup_engine`) in a subprocess; the ones that need a
failure injected run in process through typer's CliRunner with `--workers 0`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from incli import invoke
from treebuilder import OsSpy, Tree, content, expect, groups_of, issues_of

import dedup_engine.find.fullcompare
import dedup_engine.find.hashtasks
from dedup_engine import ScanOptions, __version__, find_duplicates
from dedup_engine.report.formats.fdupes import write_fdupes
from dedup_engine.report.read import read_json

pytestmark = pytest.mark.usefixtures("deadline")

ODD = b"odd-\xff-name"


def dedup(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "dedup_engine", *args],
        cwd=cwd,
        capture_output=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def dups(tree: Tree) -> Tree:
    """Two groups (one with a non-UTF-8 name) and a unique file."""
    tree.file("a/one", content(100))
    tree.file("b/one", content(100))
    tree.file(b"a/" + ODD, content(50))
    tree.file(b"b/" + ODD, content(50))
    tree.file("c/unique", content(70))
    return tree


@pytest.fixture
def unique(tree: Tree) -> Tree:
    tree.file("a", content(100, seed=1))
    tree.file("b", content(100, seed=2))
    return tree


# --- exit codes -----------------------------------------------------------------------------------


def test_exit_0_with_duplicates_and_text_on_stdout(dups: Tree) -> None:
    proc = dedup("find", dups.root)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert dups.bpath("a/one") in out
    assert dups.bpath("b/one") in out
    assert b"2 groups, 4 files in groups" in out
    assert b"odd-\\xff-name" in out  # escaped for the terminal in the text format


def test_exit_3_with_fail_on_duplicates(dups: Tree) -> None:
    proc = dedup("find", dups.root, "--fail-on-duplicates", "-f", "fdupes")
    assert proc.returncode == 3, proc.stderr
    assert dups.bpath("a/one") + b"\n" in proc.stdout  # the report is still written


def test_exit_0_with_fail_on_duplicates_and_none_found(unique: Tree) -> None:
    code, out, err = invoke("find", unique.root, "--fail-on-duplicates", "-j", "0")
    assert code == 0, err
    assert out.startswith(b"0 groups")


@pytest.mark.parametrize(
    "args",
    [
        ["find", "{root}/no-such-dir"],
        ["find", "{root}", "--max-depth", "-1"],
        ["find", "{root}", "--min-size", "1.5"],
        ["find", "{root}", "--min-size", "lots"],
        ["find", "{root}", "--min-size", "10", "--max-size", "9"],
        ["find", "{root}", "--workers", "-1"],
        ["find", "{root}", "--format", "xml"],
        ["find", "{root}", "--exclude", ""],
        ["find", "{root}", "--no-such-option"],
        ["find"],
        ["no-such-command"],
    ],
)
def test_exit_2_on_usage_errors(unique: Tree, args: list[str]) -> None:
    args = [a.replace("{root}", unique.root) for a in args]
    code, out, err = invoke(*args)
    assert code == 2, (out, err)
    assert err  # says why, on stderr
    assert out == b""


def test_exit_2_in_a_real_process(tree: Tree) -> None:
    proc = dedup("find", tree.path("missing"))
    assert proc.returncode == 2
    assert b"dedup: error: root" in proc.stderr
    assert proc.stdout == b""


def test_exit_1_when_a_file_cannot_be_read(dups: Tree, monkeypatch: pytest.MonkeyPatch) -> None:
    spy = OsSpy()
    spy.eio.add((dups.path("b/one"), 1))
    monkeypatch.setattr(dedup_engine.find.hashtasks, "os", spy)
    monkeypatch.setattr(dedup_engine.find.fullcompare, "os", spy)
    code, out, err = invoke("find", dups.root, "-j", "0", "-f", "json")
    assert code == 1, err
    report = read_json(out.decode("ascii"))
    assert issues_of(report) == {dups.path("b/one"): {"head"}}
    assert groups_of(report) == expect(dups, [b"a/" + ODD, b"b/" + ODD])
    assert b"1 files could not be read" in err
    # --fail-on-duplicates wins over the unreadable file.
    code, _out, _err = invoke("find", dups.root, "-j", "0", "--fail-on-duplicates", "-q")
    assert code == 3


# --- formats and files ----------------------------------------------------------------------------


def test_json_on_stdout_matches_the_library(dups: Tree) -> None:
    proc = dedup("find", dups.root, "-f", "json", "-j", "2")
    assert proc.returncode == 0, proc.stderr
    report = read_json(proc.stdout.decode("ascii"))
    lib = find_duplicates(dups.root, ScanOptions(workers=0))
    assert report.groups == lib.groups
    assert report.roots == (dups.root,)
    odd = {os.fsencode(f.path) for g in report.groups for f in g.files if "odd" in f.path}
    assert odd == {dups.bpath(b"a/" + ODD), dups.bpath(b"b/" + ODD)}
    # The summary goes to stderr when the report is not the text format.
    assert b"2 groups, 4 files in groups" in proc.stderr


def test_fdupes_on_stdout_is_byte_exact(dups: Tree) -> None:
    code, out, _err = invoke("find", dups.root, "-f", "fdupes", "-j", "0")
    assert code == 0
    expected = io.BytesIO()
    write_fdupes(find_duplicates(dups.root, ScanOptions(workers=0)).groups, expected)
    assert out == expected.getvalue()
    assert dups.bpath(b"a/" + ODD) + b"\n" + dups.bpath(b"b/" + ODD) + b"\n\n" in out


def test_csv_on_stdout(dups: Tree) -> None:
    code, out, _err = invoke("find", dups.root, "-f", "csv", "-j", "0")
    assert code == 0
    rows = list(csv.reader(io.StringIO(out.decode("utf-8", "surrogateescape"), newline="")))
    assert rows[0][:4] == ["group", "size", "digest", "path"]
    assert sorted((r[0], r[3]) for r in rows[1:]) == sorted(
        [
            ("1", dups.path("a/one")),
            ("1", dups.path("b/one")),
            ("2", dups.path(b"a/" + ODD)),
            ("2", dups.path(b"b/" + ODD)),
        ]
    )


@pytest.mark.parametrize("fmt", ["json", "text", "fdupes", "csv"])
def test_output_file(dups: Tree, tmp_path: Path, fmt: str) -> None:
    target = tmp_path / f"report.{fmt}"
    proc = dedup("find", dups.root, "-f", fmt, "-o", str(target))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b""
    data = target.read_bytes()
    assert dups.bpath("a/one") in data
    if fmt == "json":
        report = read_json(data.decode("ascii"))
        assert groups_of(report) == expect(dups, ["a/one", "b/one"], [b"a/" + ODD, b"b/" + ODD])
    # With -o, a one-line summary goes to stderr.
    assert b"2 groups, 4 files in groups" in proc.stderr


def test_output_dash_is_stdout(dups: Tree) -> None:
    code, out, _err = invoke("find", dups.root, "-f", "fdupes", "-o", "-", "-j", "0")
    assert code == 0
    assert dups.bpath("a/one") in out


@pytest.mark.parametrize("where", ["missing-dir/report.json", "."])
def test_unwritable_output_is_a_usage_error(unique: Tree, tmp_path: Path, where: str) -> None:
    """Refused as a usage error (exit 2, not 1 'files unreadable'), with no traceback."""
    proc = dedup("find", unique.root, "-f", "json", "-o", str(tmp_path / where))
    assert proc.returncode == 2
    assert b"dedup: error:" in proc.stderr
    assert b"Traceback" not in proc.stderr


def test_root_given_as_non_utf8_bytes(tmp_path: Path) -> None:
    root = os.fsencode(tmp_path) + b"/r\xe9pertoire"
    tree = Tree(os.fsdecode(root))
    tree.file(b"\xff", b"same")
    tree.file("b", b"same")
    proc = subprocess.run(
        [os.fsencode(sys.executable), b"-m", b"dedup_engine", b"find", root, b"-f", b"fdupes"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == root + b"/b\n" + root + b"/\xff\n\n"


# --- stderr ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "text", "fdupes"])
def test_quiet_prints_nothing_on_stderr(dups: Tree, tmp_path: Path, fmt: str) -> None:
    proc = dedup("find", dups.root, "-f", fmt, "--quiet", "-o", str(tmp_path / "out"))
    assert proc.returncode == 0
    assert proc.stderr == b""
    proc = dedup("find", dups.root, "-f", fmt, "-q", "--progress")
    assert proc.returncode == 0
    assert proc.stderr == b""


def test_stats_prints_a_table_on_stderr(dups: Tree) -> None:
    proc = dedup("find", dups.root, "--stats", "-f", "json")
    assert proc.returncode == 0
    read_json(proc.stdout.decode("ascii"))  # stdout is still just the report
    err = proc.stderr.decode()
    assert "work per stage" in err
    for column in ("stage", "files in", "files out", "opened", "bytes read"):
        assert column in err
    lines = err.splitlines()
    for stage in ("scan", "size", "hardlink", "head", "tail", "full"):
        assert any(line.strip("│┃| ").startswith(stage) for line in lines), stage


_SECONDS = r"\d+\.\d\d s"
_SHARE = r"( \(\d+\.\d% in this process\))?"  # none where no CPU time was counted at all


@pytest.mark.parametrize(
    ("workers", "said"),
    [
        ("2", f"CPU: {_SECONDS} in this process, {_SECONDS} in its 2 workers{_SHARE}"),
        ("1", f"CPU: {_SECONDS} in this process, {_SECONDS} in its 1 worker{_SHARE}"),
        ("0", rf"CPU: {_SECONDS}, all in this process \(no worker processes\)"),
    ],
)
def test_stats_say_the_cpu_time_of_the_process_and_its_workers(
    dups: Tree, workers: str, said: str
) -> None:
    proc = dedup("find", dups.root, "--stats", "-q", "-j", workers)
    assert proc.returncode == 0
    lines = [line for line in proc.stderr.decode().splitlines() if line.startswith("CPU")]
    assert len(lines) == 2
    assert re.fullmatch(said, lines[0]), lines[0]
    # Then the tasks' time by kind (files this small are read whole: no full stage), and with
    # worker processes their time outside the tasks.
    between = rf"; {_SECONDS} between them" if workers != "0" else ""
    kinds = ", ".join(f"{kind} {_SECONDS}" for kind in ("scan", "head", "describe"))
    assert re.fullmatch(rf"CPU of the tasks: {kinds}{between}", lines[1]), lines[1]


# --- options reach the engine ---------------------------------------------------------------------


def test_filter_options_reach_the_engine(tree: Tree) -> None:
    data = content(5000)
    tree.file("a.txt", data)
    tree.file("sub/b.txt", data)
    tree.file("sub/deeper/c.txt", data)
    tree.file(".hidden.txt", data)
    tree.file("skip/d.txt", data)
    tree.file("e.log", data)
    tree.file("empty1")
    tree.file("empty2")

    def groups(*flags: str) -> set[frozenset[str]]:
        code, out, err = invoke("find", tree.root, "-f", "json", "-j", "0", *flags)
        assert code == 0, err
        return groups_of(read_json(out.decode("ascii")))

    everything = ["a.txt", "sub/b.txt", "sub/deeper/c.txt", ".hidden.txt", "skip/d.txt", "e.log"]
    assert groups() == expect(tree, everything)
    assert groups("--empty") == expect(tree, everything, ["empty1", "empty2"])
    assert groups("--include", "*.txt", "--exclude", "skip") == expect(
        tree, ["a.txt", "sub/b.txt", "sub/deeper/c.txt", ".hidden.txt"]
    )
    assert groups("--max-depth", "1", "--no-hidden") == expect(
        tree, ["a.txt", "sub/b.txt", "skip/d.txt", "e.log"]
    )
    assert groups("--min-size", "5K") == set()  # 5K = 5120 > 5000
    assert groups("--min-size", "4K", "--max-size", "5000") == expect(tree, everything)
    assert groups("--max-size", "4KiB") == set()


def test_hard_links_and_follow_links_flags(tree: Tree) -> None:
    tree.file("a", content(100))
    tree.hardlink("b", "a")
    tree.file("c", content(200))
    outside = Tree(Path(tree.root).parent / "outside")
    outside.file("c-copy", content(200))
    tree.symlink("link", outside.root)

    def groups(*flags: str) -> set[frozenset[str]]:
        code, out, err = invoke("find", tree.root, "-f", "json", "-j", "0", *flags)
        assert code == 0, err
        return groups_of(read_json(out.decode("ascii")))

    assert groups() == set()
    assert groups("--hard-links") == expect(tree, ["a", "b"])
    assert groups("-L") == expect(tree, ["c", "link/c-copy"])
    assert groups("--follow-links", "-x") == expect(tree, ["c", "link/c-copy"])


def test_several_roots(tmp_path: Path) -> None:
    one, two = Tree(tmp_path / "one"), Tree(tmp_path / "two")
    one.file("x", b"same bytes")
    two.file("x", b"same bytes")
    code, out, _err = invoke("find", two.root, one.root, "-f", "fdupes", "-j", "0")
    assert code == 0
    assert out == two.bpath("x") + b"\n" + one.bpath("x") + b"\n\n"


# --- help and version -----------------------------------------------------------------------------


def test_find_help_lists_the_exit_codes() -> None:
    proc = dedup("find", "--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.decode().split())
    assert "Exit codes: 0 done; 1 done, but some files could not be read; 2 usage error" in text
    assert "3 duplicates found with --fail-on-duplicates" in text
    assert "4 the run could not finish" in text
    assert "5 the report could not be written; 130 interrupted" in text
    for flag in ("--format", "--output", "--null", "--follow-links", "--one-file-system"):
        assert flag in text
    for flag in ("--include", "--exclude", "--no-hidden", "--min-size", "--max-size", "--empty"):
        assert flag in text
    for flag in ("--max-depth", "--hard-links", "--workers", "--quiet", "--stats"):
        assert flag in text
    assert "--fail-on-duplicates" in text


def test_top_level_help() -> None:
    code, out, _err = invoke("--help")
    assert code == 0
    assert b"find" in out
    assert b"--version" in out
    text = " ".join(out.decode().split())
    assert "Exit codes: 0 done; 1 done, but some files could not be read; 2 usage error" in text


def test_reader_closing_the_pipe_early_is_not_an_error(tree: Tree) -> None:
    """`dedup find ... | head`: a reader that leaves early is not an error (not exit 1, the
    unreadable-files code)."""
    for number in range(150):  # long names, so the report is bigger than a pipe's buffer
        name = f"{number:03d}-" + "n" * 240
        tree.file(f"a/{name}", content(50, seed=str(number)))
        tree.file(f"b/{name}", content(50, seed=str(number)))
    proc = subprocess.Popen(
        [sys.executable, "-m", "dedup_engine", "find", tree.root, "-f", "fdupes", "-q"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().startswith(os.fsencode(tree.root))
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 0
    assert b"Traceback" not in err


def test_version() -> None:
    script = shutil.which("dedup")
    cmd = [script, "--version"] if script else [sys.executable, "-m", "dedup_engine", "--version"]
    proc = subprocess.run(cmd, capture_output=True, timeout=60, check=False)
    assert proc.returncode == 0
    assert proc.stdout == f"dedup-engine {__version__}\n".encode()
    code, out, _err = invoke("--version")
    assert (code, out) == (0, proc.stdout)


def test_exit_4_when_a_worker_dies(dups: Tree, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crashed run is not 'done, but some files could not be read': exit 4, not 1."""
    import dedup_engine.cli.find
    from dedup_engine.find.pool import WorkerError

    def crash(*args: object, **kwargs: object) -> None:
        raise WorkerError("a worker process died (exit code -9)")

    monkeypatch.setattr(dedup_engine.cli.find, "find_duplicates", crash)
    code, out, err = invoke("find", dups.root)
    assert code == 4
    assert out == b""
    assert b"a worker process died" in err


def test_bench_compare_writes_the_table_json_csv_and_chart(dups: Tree, tmp_path: Path) -> None:
    out = tmp_path / "report"
    proc = dedup(
        "bench", "compare", dups.root, "--tools", "dedup,jdupes,nosuchtool",
        "--runs", "1", "--warmup", "0", "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout.decode()
    assert "dedup" in table and "agrees" in table and "1.00x" in table
    assert b"skipped nosuchtool" in proc.stderr
    data = json.loads((out / "comparison.json").read_text())
    assert data["tools"][0]["name"] == "dedup"
    assert all(t["agrees"] for t in data["tools"])
    assert (out / "comparison.csv").read_text().count("\n") == 1 + len(data["tools"])
    assert (out / "comparison.svg").read_text().lstrip().startswith("<")
