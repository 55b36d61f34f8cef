"""`dedup bench compare` as a command: a tree by profile from the cache instead of a root, the
dedup executable to time, and the files it leaves (the Markdown table among them).

Each comparison runs dedup alone, once, on a small tree: these check what the command does with
its options, not how fast anything is.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

import pytest
from incli import invoke
from treebuilder import Tree, content

from dedup_engine.bench import treecache
from dedup_engine.bench.synth import DEFAULT_FILES, Profile, load_manifest

pytestmark = pytest.mark.usefixtures("deadline")

ONCE = ("--tools", "dedup", "--runs", "1", "--warmup", "0")


@pytest.fixture
def small_profile(monkeypatch: pytest.MonkeyPatch) -> int:
    """The small profile at 60 files, so the profile's own tree takes a moment to make."""
    monkeypatch.setitem(DEFAULT_FILES, Profile.SMALL, 60)
    return 60


def written(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "comparison.json").read_text())
    return data


def test_profile_tree_is_made_into_the_cache_once_and_reused(
    small_profile: int, tmp_path: Path
) -> None:
    cache, out = tmp_path / "cache", tmp_path / "out"
    by_profile = ["bench", "compare", "--profile", "small", "--seed", "3", "--cache", str(cache)]
    by_profile += ["--out", str(out), *ONCE]
    code, _, err = invoke(*by_profile)
    assert code == 0, err
    entry = cache / f"small-seed3-n{small_profile}-s1-g{treecache.generator_digest()}"
    manifest = load_manifest(entry)
    assert (manifest.profile, manifest.seed, manifest.files) == ("small", 3, small_profile)
    assert f"tree: {entry / 'data'}" in err.decode()
    ours = written(out)["tools"][0]
    assert written(out)["root"] == os.path.realpath(entry / "data")
    assert (ours["groups"], ours["files_in_groups"]) == (
        len(manifest.groups),
        manifest.files_in_groups,
    )
    made = (entry / "manifest.json").stat().st_mtime_ns
    code, _, err = invoke(*by_profile)
    assert code == 0, err
    assert (entry / "manifest.json").stat().st_mtime_ns == made


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "give either a root or --profile"),
        (("ROOT", "--profile", "small"), "give either a root or --profile"),
        (
            ("--profile", "huge"),
            "unknown profile 'huge' (small, large, mixed, scale, realistic, backup)",
        ),
        (("ROOT", "--dedup", "no-such-dedup-here"), "--dedup: 'no-such-dedup-here' is not an"),
    ],
)
def test_tree_and_executable_are_checked_before_anything_runs(
    args: tuple[str, ...], message: str, tmp_path: Path
) -> None:
    argv = [str(tmp_path) if a == "ROOT" else a for a in args]
    code, out, err = invoke("bench", "compare", *argv, "--out", tmp_path / "out", *ONCE)
    assert code == 2
    assert message in err.decode()
    assert out == b"" and not (tmp_path / "out").exists()


def test_dedup_option_times_the_executable_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = Tree(tmp_path / "tree")
    tree.file("a", content(3000))
    tree.copy("a", "b")
    log = tmp_path / "calls"
    wrapper = tmp_path / "my-dedup"
    wrapper.write_text(
        f'#!/bin/sh\necho "$@" >> {log}\nexec {sys.executable} -m dedup_engine "$@"\n'
    )
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)  # given relative to here; the tools run elsewhere
    code, _, err = invoke(
        "bench", "compare", tree.root, "--dedup", "./my-dedup", "--out", out, *ONCE
    )
    assert code == 0, err
    ours = written(out)["tools"][0]
    assert ours["command"][0] == str(wrapper)
    assert ours["groups"] == 1
    calls = log.read_text().splitlines()
    assert calls[0] == "--version"
    assert calls.count(f"find {tree.root} -f fdupes -q") == 2  # the untimed run, the timed one


def test_the_command_leaves_the_printed_table_as_markdown(tmp_path: Path) -> None:
    tree = Tree(tmp_path / "tree")
    tree.file("a", content(3000))
    tree.copy("a", "b")
    out = tmp_path / "out"
    code, printed, err = invoke("bench", "compare", tree.root, "--out", out, *ONCE)
    assert code == 0, err
    names = ("json", "csv", "svg", "md")
    assert f"written: {', '.join(str(out / f'comparison.{n}') for n in names)}" in err.decode()
    table = (out / "comparison.md").read_text().splitlines()
    assert table[2].startswith("| tool | version | median |")
    assert table[4].startswith("| dedup | dedup-engine ")
    assert table[4].endswith("| 1 | 2 | yes | 1.00x |")
    assert "1.00x" in printed.decode()
