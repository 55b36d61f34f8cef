"""`dedup_engine.bench.compare`: the peers agree with dedup on a tricky tree, runs are interleaved
and counted, a disagreeing tool is caught, and the JSON, CSV, SVG and Markdown reports read back.

A peer that is not installed is skipped with the reason `available_tools` gives.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from treebuilder import Tree, content

from dedup_engine.bench import compare as bc
from dedup_engine.bench import compare_report as cr

pytestmark = pytest.mark.usefixtures("deadline")

PEERS = ("jdupes", "jdupes-Q", "fdupes", "rmlint", "rdfind")


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Tree:
    """Duplicates nested and hidden, hard links, symlinks, empty files, odd names."""
    t = Tree(tmp_path_factory.mktemp("bench") / "tree")
    t.file("a", content(5000, "a"))
    t.copy("a", "sub/a2")
    t.copy("a", "sub/deep/a3")
    t.file("b", content(3000, "b"))
    t.copy("b", ".hidden/b2")
    t.file(".dot", content(900, "dot"))
    t.copy(".dot", "sub/.dot2")
    t.file("sp ace", content(700, "sp"))
    t.copy("sp ace", b"odd-\xff name")
    # Two inodes, five paths: every path belongs in the group.
    t.file("h1", content(4000, "h"))
    t.hardlink("sub/h1-link", "h1")
    t.hardlink("sub/deep/h1-link2", "h1")
    t.copy("h1", "h2")
    t.hardlink("sub/h2-link", "h2")
    # One inode only: hard links are not duplicates of each other.
    t.file("solo", content(2000, "solo"))
    t.hardlink("sub/solo-link", "solo")
    t.file("empty1")
    t.file("sub/empty2")
    t.file("unique", content(6000, "u"))
    t.symlink("link-to-a", "a")
    t.symlink("link-to-a-again", "a")
    t.symlink("link-to-sub", "sub")
    return t


def expected(t: Tree) -> bc.GroupSet:
    return frozenset(
        {
            t.paths("a", "sub/a2", "sub/deep/a3"),
            t.paths("b", ".hidden/b2"),
            t.paths(".dot", "sub/.dot2"),
            t.paths("sp ace", b"odd-\xff name"),
            t.paths("h1", "sub/h1-link", "sub/deep/h1-link2", "h2", "sub/h2-link"),
        }
    )


def dedup_tool() -> bc.Tool:
    tools, _ = bc.available_tools([])
    assert [t.name for t in tools] == ["dedup"]
    return tools[0]


def fake_tool(tmp_path: Path, t: Tree) -> bc.Tool:
    """A shell script that prints one right group, one wrong group, and misses the rest."""
    script = tmp_path / "fake.sh"
    script.write_text(
        "#!/bin/sh\n"
        f"printf '%s\\n' '{t.path('a')}' '{t.path('sub/a2')}' '{t.path('sub/deep/a3')}' ''\n"
        f"printf '%s\\n' '{t.path('unique')}' '{t.path('b')}' ''\n"
    )
    return bc.Tool("fake", ("/bin/sh", str(script), bc.ROOT), "fake 1.0")


def snapshot(root: str) -> set[tuple[str, int]]:
    return {
        (os.path.join(d, n), os.lstat(os.path.join(d, n)).st_mtime_ns)
        for d, dirs, files in os.walk(root)
        for n in dirs + files
    }


def test_dedup_finds_the_expected_groups(tree: Tree, tmp_path: Path) -> None:
    assert bc.groups_of(dedup_tool(), tree.root, str(tmp_path)) == expected(tree)


@pytest.mark.parametrize("peer", PEERS)
def test_peer_agrees_with_dedup(peer: str, tree: Tree, tmp_path: Path) -> None:
    tools, skipped = bc.available_tools([peer])
    if skipped:
        pytest.skip(f"{peer}: {skipped[0][1]}")
    tool = tools[1]
    assert tool.version and tool.version != "unknown"
    before = snapshot(tree.root)
    assert bc.groups_of(tool, tree.root, str(tmp_path)) == expected(tree)
    assert snapshot(tree.root) == before
    assert os.listdir(tmp_path) == []  # no rmlint.sh, rmlint.json or results.txt left behind


def test_dedup_runs_with_a_bytecode_cache_of_the_comparisons_own(
    tree: Tree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As an installed package has its bytecode, whatever the environment says: the untimed
    run that reads the groups writes it, and the timed runs find it.  The digest cache stays
    off."""
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    monkeypatch.setenv("DEDUP_ENGINE_CACHE", "1")
    workdir = tmp_path / "work"
    workdir.mkdir()
    bc.groups_of(dedup_tool(), tree.root, str(workdir))
    assert list((workdir / "bytecode").rglob("pipeline.*.pyc"))
    seen = tmp_path / "seen"
    script = tmp_path / "tool.py"
    script.write_text(
        "import os, sys\n"
        "with open(sys.argv[1], 'a') as f:\n"
        "    f.write(f'{sys.flags.dont_write_bytecode} {sys.pycache_prefix} "
        '{os.environ.get("DEDUP_ENGINE_CACHE")}\')\n'
    )
    bc._timed(
        bc.Tool("py", (sys.executable, str(script), str(seen)), "py 1"), tree.root, str(workdir)
    )
    assert seen.read_text() == f"0 {workdir / 'bytecode'} None"


def test_available_tools_reasons(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    tools, skipped = bc.available_tools(["dedup", "jdupes", "nosuch"], ["/bin/true"])
    assert [t.name for t in tools] == ["dedup"]
    assert tools[0].command[:2] == ("/bin/true", "find")
    assert skipped[0] == ("jdupes", "not installed: apt-get install jdupes")
    assert skipped[1][0] == "nosuch" and skipped[1][1].startswith("unknown tool")


def test_jdupes_trusting_its_hashes_is_jdupes_with_Q(monkeypatch: pytest.MonkeyPatch) -> None:
    """`jdupes-Q` runs the jdupes executable, adds -Q, and is installed as jdupes is."""
    monkeypatch.setattr("shutil.which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(bc, "_version", lambda label, argv: f"{label} 9.9 via {argv[0]}")
    tools, skipped = bc.available_tools(["jdupes", "jdupes-Q"], ["/bin/true"])
    plain, trusting = tools[1:]
    assert skipped == []
    assert trusting.name == "jdupes-Q" and trusting.command[0] == "/usr/bin/jdupes"
    assert trusting.command == (*plain.command[:-1], "-Q", bc.ROOT)
    assert trusting.version == "jdupes 9.9 via /usr/bin/jdupes"
    monkeypatch.setattr("shutil.which", lambda name: None)
    _, skipped = bc.available_tools(["jdupes-Q"], ["/bin/true"])
    assert skipped == [("jdupes-Q", "not installed: apt-get install jdupes")]


def test_compare_installed_tools(tree: Tree) -> None:
    tools, skipped = bc.available_tools(["dedup", *PEERS])
    calls: list[tuple[str, int, int, float]] = []
    before = snapshot(tree.root)
    c = bc.compare(
        Path(tree.root),
        tools,
        runs=2,
        warmup=0,
        progress=lambda *a: calls.append(a),
        skipped=skipped,
    )
    assert snapshot(tree.root) == before
    assert c.root == tree.root and (c.runs, c.warmup, c.cold) == (2, 0, None)
    assert c.cpus == os.cpu_count()
    assert c.skipped == tuple(skipped)
    assert [(name, i, n) for name, i, n, _ in calls] == [
        (t.name, i, 2) for i in (1, 2) for t in tools
    ]
    for summary in c.tools:
        assert len(summary.runs) == 2, summary.name
        assert summary.agrees, (summary.name, summary.differences)
        assert summary.differences == ()
        assert (summary.groups, summary.files_in_groups) == (5, 14)
        assert summary.min_wall <= summary.median_wall <= summary.max_wall
    ours = c.tools[0]
    assert ours.name == "dedup" and ours.relative == 1.0
    assert ours.peak_rss > 5 * 2**20 and ours.median_cpu > 0  # a Python process, sampled
    for summary in c.tools[1:]:
        assert summary.relative == pytest.approx(summary.median_wall / ours.median_wall)


def test_disagreeing_tool_is_reported(tree: Tree, tmp_path: Path) -> None:
    c = bc.compare(Path(tree.root), [dedup_tool(), fake_tool(tmp_path, tree)], runs=1, warmup=0)
    fake = c.tools[1]
    assert not fake.agrees and c.tools[0].agrees
    assert (fake.groups, fake.files_in_groups) == (2, 5)
    assert "only fake: b, unique" in fake.differences
    assert "only dedup: b, .hidden/b2" not in fake.differences  # sorted by relative path
    assert "only dedup: .hidden/b2, b" in fake.differences
    assert len(fake.differences) == 5  # four groups only dedup found, one only fake


def test_runs_are_interleaved_after_warmup(
    tree: Tree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    order: list[str] = []

    def timed(tool: bc.Tool, root: str, workdir: str) -> bc.RunSample:
        order.append(tool.name)
        return bc.RunSample(tool.name, 0.5 if tool.name == "dedup" else 1.0, 0.1, 1)

    def evict(root: Path) -> str:
        order.append("evict")
        return "fadvise"

    monkeypatch.setattr(bc, "_timed", timed)
    monkeypatch.setattr(bc, "evict", evict)
    tools = [dedup_tool(), fake_tool(tmp_path, tree)]
    c = bc.compare(Path(tree.root), tools, runs=2, warmup=1, cold=True)
    assert order == ["evict", "dedup", "evict", "fake"] * 3
    assert c.cold == "fadvise" and [len(t.runs) for t in c.tools] == [2, 2]
    assert [t.relative for t in c.tools] == [1.0, 2.0]


MEMORY_HOG = """
import subprocess, sys, time
if sys.argv[1] == "child":
    block = bytearray(150 * 2**20)
    time.sleep(0.3)
else:
    subprocess.run([sys.executable, __file__, "child"], check=True)
"""


def test_peak_rss_counts_the_children(tmp_path: Path) -> None:
    """A parent that only waits for a 150 MiB child: the tree's peak, not ru_maxrss, is taken."""
    script = tmp_path / "hog.py"
    script.write_text(MEMORY_HOG)
    tool = bc.Tool("hog", (sys.executable, str(script), "parent"), "hog 1")
    sample = bc._timed(tool, str(tmp_path), str(tmp_path))
    assert 150 * 2**20 < sample.peak_rss < 400 * 2**20
    assert sample.wall >= 0.3 and sample.cpu > 0


def test_bad_arguments(tree: Tree, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="runs"):
        bc.compare(Path(tree.root), [dedup_tool()], runs=0)
    with pytest.raises(ValueError, match="dedup"):
        bc.compare(Path(tree.root), [fake_tool(tmp_path, tree)])
    with pytest.raises(ValueError, match="directory"):
        bc.compare(tmp_path / "missing", [dedup_tool()])


@pytest.fixture
def comparison(tree: Tree, tmp_path: Path) -> bc.Comparison:
    c = bc.compare(Path(tree.root), [dedup_tool(), fake_tool(tmp_path, tree)], runs=2, warmup=0)
    return bc.Comparison(c.root, c.runs, c.warmup, c.cold, c.tools, (("x", "why <&>"),), c.created)


def test_json_round_trip(comparison: bc.Comparison, tmp_path: Path) -> None:
    cr.write_json(comparison, tmp_path / "c.json")
    data: dict[str, Any] = json.loads((tmp_path / "c.json").read_text())
    assert data["schema"] == 1
    assert data["root"] == comparison.root and data["runs"] == 2 and data["cold"] is None
    assert data["skipped"] == [{"name": "x", "reason": "why <&>"}]
    assert data["tools"] == json.loads(json.dumps([asdict(t) for t in comparison.tools]))
    assert set(data["tools"][0]) >= {"median_wall", "peak_rss", "agrees", "relative", "runs"}
    assert len(data["tools"][1]["runs"]) == 2


def test_csv_round_trip(comparison: bc.Comparison, tmp_path: Path) -> None:
    cr.write_csv(comparison, tmp_path / "c.csv")
    with (tmp_path / "c.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == ["dedup", "fake"]
    assert list(rows[0]) == list(cr.CSV_COLUMNS)
    assert [r["agrees"] for r in rows] == ["True", "False"]
    assert float(rows[0]["relative"]) == 1.0 and rows[1]["runs"] == "2"
    assert float(rows[1]["median_wall"]) == comparison.tools[1].median_wall


def test_svg_parses(comparison: bc.Comparison, tmp_path: Path) -> None:
    cr.write_svg(comparison, tmp_path / "c.svg")
    svg = ET.parse(tmp_path / "c.svg").getroot()
    ns = "{http://www.w3.org/2000/svg}"
    texts = ["".join(e.itertext()) for e in svg.iter(f"{ns}text")]
    assert texts[0] == comparison.root
    assert any("1.00\u00d7 dedup" in t for t in texts)
    assert any("DIFFERENT GROUPS" in t for t in texts)
    bars = [r for r in svg.iter(f"{ns}rect") if r.find(f"{ns}title") is not None]
    assert len(bars) == 2
    assert len({r.get("fill") for r in bars}) == 2  # dedup stands out
    fastest = min(comparison.tools, key=lambda t: t.median_wall).name
    names = [t for t in texts if t in ("dedup", "fake")]
    assert names[0] == fastest


@pytest.mark.parametrize("knob", ["writable", "refused"])
def test_evict_leaves_files_intact(
    knob: str, tree: Tree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = Tree(tmp_path / "t")
    t.file("f", content(10000))
    t.file(".h/g", content(100))
    t.symlink("s", "f")
    t.fifo("fifo")  # opened non-blocking, not read: no hang
    # A stand-in for the kernel's knob: the suite must not drop the whole machine's page cache.
    fake_knob = tmp_path / "drop_caches"
    monkeypatch.setattr(bc, "DROP_CACHES", str(fake_knob))
    if knob == "refused":

        def refuse(*args: Any, **kwargs: Any) -> Any:
            raise PermissionError("no")

        monkeypatch.setattr(bc, "open", refuse, raising=False)
    method = bc.evict(Path(t.root))
    if knob == "writable":
        assert method == "drop_caches" and fake_knob.read_text() == "1"
    else:
        assert method == "fadvise"
    assert t.read("f") == content(10000) and t.read(".h/g") == content(100)
    assert os.readlink(t.path("s")) == "f"


def test_module_imports_neither_typer_nor_rich() -> None:
    script = (
        "import sys, dedup_engine.bench.compare; "
        "print(','.join(m for m in ('typer', 'rich', 'click') if m in sys.modules) or 'none')"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, check=True)
    assert proc.stdout.decode().strip() == "none"


def summary(name: str, median: float, agrees: bool = True, *differences: str) -> bc.ToolSummary:
    return bc.ToolSummary(
        name=name,
        version=f"{name} 1.2 | beta",
        runs=(),
        median_wall=median,
        min_wall=median / 2,
        max_wall=median * 2,
        median_cpu=median,
        peak_rss=3 * 2**20 // 2,
        groups=17130,
        files_in_groups=60000,
        agrees=agrees,
        relative=median / 2.0,
        differences=differences,
    )


def made_up_comparison(cold: str | None = None) -> bc.Comparison:
    tools = (summary("dedup", 2.0), summary("slow", 5.0, False, "only slow: a, b\nc"))
    skipped = (("rdfind", "not installed: apt-get install rdfind"),)
    return bc.Comparison("/t", 3, 1, cold, tools, skipped, "2026-01-02T03:04:05+00:00", 2)


def test_markdown_is_the_printed_table_under_how_it_was_measured() -> None:
    lines = cr.markdown(made_up_comparison()).splitlines()
    assert lines[0] == (
        "/t: 3 interleaved runs, warm page cache, after 1 warm-up; 2 CPUs; "
        "2026-01-02T03:04:05+00:00"
    )
    assert lines[2] == "| " + " | ".join(cr.TABLE_COLUMNS) + " |"
    assert lines[3] == "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"
    assert lines[4] == (
        "| dedup | dedup 1.2 \\| beta | 2.000 s | 1.000 s | 4.000 s | 2.000 s | 1.5 MiB "
        "| 17,130 | 60,000 | yes | 1.00x |"
    )
    assert lines[5].endswith("| 60,000 | NO | 2.50x |")


def test_markdown_lists_differences_and_skipped_tools_on_one_line_each() -> None:
    text = cr.markdown(made_up_comparison(cold="fadvise"))
    assert "cold (fadvise)" in text.splitlines()[0]
    assert text.splitlines()[-3:] == [
        "",
        "- slow differs: only slow: a, b?c",
        "- skipped rdfind: not installed: apt-get install rdfind",
    ]


def test_write_all_writes_every_kind_into_the_directory(tmp_path: Path) -> None:
    paths = cr.write_all(made_up_comparison(), tmp_path)
    assert [p.name for p in paths] == [f"comparison.{kind}" for kind in cr.KINDS]
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in paths)
    assert (tmp_path / "comparison.md").read_text() == cr.markdown(made_up_comparison())
    assert json.loads((tmp_path / "comparison.json").read_text())["cpus"] == 2
