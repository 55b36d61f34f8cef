"""Synthetic trees made once by `synth` into a cache outside the repository, and reused.

The work gate, the benchmark suite and `dedup bench compare --profile` all ask for trees by their
generation arguments; equal arguments give the same tree byte for byte, so a tree on disk with a
complete manifest is as good as a new one.  A tree is kept under its arguments and a digest of
the generator's source (`generator_digest`): a generator changed since makes other trees, which
a tree made before must never stand in for (the work gate would compare counts on two trees).
"""

from __future__ import annotations

import functools
import inspect
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from blake3 import blake3

from dedup_engine.bench import synth, synthbackup, synthformats, synthreal, synthscale
from dedup_engine.bench.synth import (
    DATA_DIR,
    DEFAULT_FILES,
    MANIFEST_NAME,
    Profile,
    generate,
    load_manifest,
)


@dataclass(frozen=True, slots=True)
class SynthTree:
    """The arguments of one `synth.generate` call, under a name that titles its cache entry."""

    name: str
    profile: str
    seed: int
    files: int
    size_scale: float = 1.0

    @classmethod
    def full_size(cls, profile: Profile, seed: int) -> SynthTree:
        """The profile's own tree, as `dedup synth DIR --profile P --seed S` makes it."""
        return cls(profile.value, profile.value, seed, DEFAULT_FILES[profile])


def ensure_tree(tree: SynthTree, cache: Path) -> Path:
    """The tree's data directory under `cache`, generated on first use and reused after."""
    name = f"{tree.name}-seed{tree.seed}-n{tree.files}-s{tree.size_scale:g}"
    dest = cache / f"{name}-g{generator_digest()}"
    if (dest / MANIFEST_NAME).exists():
        load_manifest(dest)  # refuses a damaged or foreign manifest
    else:
        if dest.exists():
            shutil.rmtree(dest)  # a generation that was interrupted
        dest.mkdir(parents=True)
        generate(dest, tree.profile, tree.seed, tree.files, size_scale=tree.size_scale)
    return dest / DATA_DIR


@functools.cache
def generator_digest() -> str:
    """A short digest of the source of every module that draws or writes a synthetic tree."""
    digest = blake3()
    for module in (synth, synthscale, synthreal, synthformats, synthbackup):
        digest.update(Path(inspect.getfile(module)).read_bytes())
    return digest.hexdigest(length=6)


def default_cache() -> Path:
    """Outside the repository: $DEDUP_BENCH_CACHE, else the user's cache directory."""
    env = os.environ.get("DEDUP_BENCH_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dedup-engine" / "bench"
