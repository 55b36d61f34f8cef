"""The cache of synthetic trees: a tree is made on first use and reused after; an interrupted
generation is made again; a damaged manifest is refused, not trusted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dedup_engine.bench import treecache
from dedup_engine.bench.synth import DEFAULT_FILES, Profile
from dedup_engine.bench.treecache import SynthTree, ensure_tree

TINY = SynthTree("tiny", "small", 5, 30)


def test_a_tree_is_made_on_first_use_and_reused_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = ensure_tree(TINY, tmp_path)
    assert data == tmp_path / f"tiny-seed5-n30-s1-g{treecache.generator_digest()}" / "data"
    assert sum(1 for p in data.rglob("*") if p.is_file()) == 30

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("made again")

    monkeypatch.setattr(treecache, "generate", refuse)
    assert ensure_tree(TINY, tmp_path) == data


def test_a_tree_without_its_manifest_is_made_again(tmp_path: Path) -> None:
    leftover = tmp_path / f"tiny-seed5-n30-s1-g{treecache.generator_digest()}" / "data"
    leftover /= "half-written.bin"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"x")
    data = ensure_tree(TINY, tmp_path)
    assert not leftover.exists()
    assert (data.parent / "manifest.json").exists()


def test_a_damaged_manifest_is_refused(tmp_path: Path) -> None:
    data = ensure_tree(TINY, tmp_path)
    (data.parent / "manifest.json").write_text('{"schema": 99}')
    with pytest.raises(ValueError, match="schema"):
        ensure_tree(TINY, tmp_path)


def test_a_tree_made_by_another_generator_is_not_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its counts are another tree's: the work gate would compare two trees."""
    before = ensure_tree(TINY, tmp_path)
    monkeypatch.setattr(treecache, "generator_digest", lambda: "000000")
    after = ensure_tree(TINY, tmp_path)
    assert after != before and (after.parent / "manifest.json").exists()


def test_full_size_is_the_profiles_own_tree() -> None:
    tree = SynthTree.full_size(Profile.LARGE, 7)
    assert tree == SynthTree("large", "large", 7, DEFAULT_FILES[Profile.LARGE], 1.0)


def test_default_cache_is_the_environments_then_the_users(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEDUP_BENCH_CACHE", "/somewhere")
    monkeypatch.setenv("XDG_CACHE_HOME", "/xdg")
    assert treecache.default_cache() == Path("/somewhere")
    monkeypatch.delenv("DEDUP_BENCH_CACHE")
    assert treecache.default_cache() == Path("/xdg/dedup-engine/bench")
