"""`dedup cache stats` and `dedup cache clear`: what a run left in the cache, and removing it."""

from __future__ import annotations

from pathlib import Path

import pytest
from cachetrust import need_trusted
from incli import invoke
from treebuilder import Tree, content

import dedup_engine.cli.cache as cache_cli
import dedup_engine.find.cache as cache_module


def test_stats_counts_what_a_run_stored_and_clear_removes_it(
    tree: Tree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    need_trusted(tree.root)
    monkeypatch.setattr(cache_module, "RACY_NS", 0)  # the test's files are cached at once
    tree.file("a", content(3000))
    tree.file("b", content(3000))
    tree.file("c", content(3000, seed="c"))
    cache = tmp_path / "cache"
    assert invoke("find", tree.root, "--cache-dir", cache, "-q")[0] == 0
    code, out, _ = invoke("cache", "stats", "--cache-dir", cache)
    assert code == 0
    assert "3 digests" in out.decode() and "whole file: 3" in out.decode()
    code, out, _ = invoke("cache", "clear", "--cache-dir", cache)
    assert (code, out.decode().strip()) == (0, f"removed the cache in {cache}")
    assert not (cache / cache_module.FILE_NAME).exists()
    assert invoke("cache", "stats", "--cache-dir", cache)[1].decode().strip() == (
        f"no cache in {cache}"
    )


def test_clear_refuses_a_directory_others_may_write(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / cache_module.FILE_NAME).write_bytes(b"someone's")
    shared.chmod(0o777)
    code, _, err = invoke("cache", "clear", "--cache-dir", shared)
    assert code == 2 and "may be written by others" in err.decode()
    assert (shared / cache_module.FILE_NAME).exists()


def test_prune_drops_the_digests_of_files_gone_and_says_so(
    tree: Tree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    need_trusted(tree.root)
    monkeypatch.setattr(cache_module, "RACY_NS", 0)
    tree.file("a", content(3000))
    tree.file("b", content(3000))
    cache = tmp_path / "cache"
    assert invoke("find", tree.root, "--cache-dir", cache, "-q")[0] == 0
    (Path(tree.root) / "b").unlink()
    code, out, _ = invoke("cache", "prune", "--cache-dir", cache, "--max-size", "1G")
    assert code == 0
    lines = out.decode().splitlines()
    assert lines[0].startswith(f"{cache}: 2 digests") and "-> 1 digests" in lines[0]
    assert lines[1:] == [
        "  1 dropped: files gone or changed",
        "  0 dropped: least recently used, for --max-size",
    ]
    assert "1 digests" in invoke("cache", "stats", "--cache-dir", cache)[1].decode()


def test_prune_refuses_a_size_that_is_not_one(tmp_path: Path) -> None:
    code, _, err = invoke("cache", "prune", "--cache-dir", tmp_path, "--max-size", "lots")
    assert code == 2 and "is not a size" in err.decode()
    assert invoke("cache", "prune", "--cache-dir", tmp_path)[1].decode().strip() == (
        f"no cache in {tmp_path}"
    )


def test_an_empty_cache_dir_and_no_cache_with_a_cache_dir_are_usage_errors(
    tree: Tree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree.file("a", b"x")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    for args in (
        ("find", tree.root, "--cache-dir", ""),
        ("find", tree.root, "--no-cache", "--cache-dir", tmp_path / "c"),
        ("cache", "stats", "--cache-dir", ""),
    ):
        code, _, err = invoke(*args)
        assert code == 2 and err.decode().count("\n") == 1, args
    assert list(cwd.iterdir()) == []  # no cache made in the current directory
    monkeypatch.setenv(cache_module.ENVIRONMENT, "0")  # a default, which --cache-dir overrides
    assert invoke("find", tree.root, "--cache-dir", tmp_path / "c")[0] == 0
    assert (tmp_path / "c" / cache_module.FILE_NAME).is_file()


def test_a_relative_xdg_cache_home_is_ignored(
    tree: Tree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree.file("a", b"x")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")
    assert invoke("find", tree.root, "--cache")[0] == 0
    assert not (tmp_path / "relative").exists()
    assert (tmp_path / "home" / ".cache" / "dedup-engine" / cache_module.FILE_NAME).is_file()


def test_an_interrupted_prune_says_so_and_exits_130(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened = cache_module.DigestCache.open(str(tmp_path)).cache
    assert opened is not None
    opened.close()

    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt  # as the handler of SIGTERM raises it

    monkeypatch.setattr(cache_cli, "prune", interrupted)
    code, _, err = invoke("cache", "prune", "--cache-dir", tmp_path)
    assert (code, err.decode()) == (130, "dedup: interrupted\n")
