"""Plan and write the `scale` profile: a tree of millions of small files, drawn compactly.

The shape issue 10 measures memory on: about one directory per 500 files, up to 4 deep; directory
and file names of 10-40 random characters; sizes log-uniform from 1 B to 64 KiB; 15% of the files
exact copies and 5% near-copies (one byte changed) of a file in another directory.  Per-file
numbers live in typed arrays and each directory's file names in one string, so a plan of 4M files
takes a few hundred MB; a path is made only while its directory is written, or for the manifest
when the file is in a group.  Every choice is drawn from the caller's one Random, in a fixed order.
"""

from __future__ import annotations

import math
import os
import random
import string
from array import array
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dedup_engine.bench.synth import (
    DATA_DIR,
    KIB,
    Content,
    Manifest,
    Profile,
    WriteJob,
    content_bytes,
    run_jobs,
)

FILES_PER_DIR = 500
MAX_DEPTH = 4
NAME_LENGTHS = (10, 40)
MAX_SIZE = 64 * KIB
COPY_SHARE = 0.15
NEAR_SHARE = 0.05
#: Files up to this size are grouped by their bytes: there are only 256 contents of one byte, so
#: unrelated small files collide, as they do on real disks.  Above it, distinct content keys give
#: distinct bytes (a collision among 4M files of 17 random bytes has odds below 2**-90).
TINY = 16
#: 64 characters, so each random byte maps to one of them evenly; no "." (hidden files) or "/".
_ALPHABET = string.ascii_letters + string.digits + "-_"
_TO_NAME = bytes.maketrans(bytes(range(256)), (_ALPHABET * 4).encode("ascii"))
#: exp(random() * this) spans 1 .. MAX_SIZE + 1 evenly in log scale; int() floors it to 1..MAX_SIZE.
_LN_SPAN = math.log(MAX_SIZE + 1)
#: Names in a directory are joined by this, which no name can hold.
_SEP = "/"


@dataclass(frozen=True, slots=True)
class ScalePlan:
    """Every file of a scale tree: directory d holds files starts[d] .. starts[d + 1] - 1.

    `key[i]` is the content key of file i (the index of the file it copies, plus one);
    `patches` maps a near-copy to its (offset, xor mask); `copies` lists the exact copies.
    """

    dirs: tuple[str, ...]
    starts: array[int]
    names: tuple[str, ...]
    size: array[int]
    key: array[int]
    patches: dict[int, tuple[int, int]]
    copies: array[int]

    def dir_of(self, i: int) -> int:
        return bisect_right(self.starts, i) - 1

    def content(self, i: int) -> Content:
        patch = self.patches.get(i)
        return Content(self.key[i], self.size[i], patches=(patch,) if patch else ())

    def jobs(self, root: str, seed: int) -> Iterator[WriteJob]:
        """One writer job per directory, its paths made only when the job is taken."""
        for d, path in enumerate(self.dirs):
            first = self.starts[d]
            names = self.names[d].split(_SEP) if self.starts[d + 1] > first else []
            files = [
                (f"{DATA_DIR}/{path}/{name}", self.content(first + j))
                for j, name in enumerate(names)
            ]
            yield root, seed, files

    def paths(self, wanted: set[int]) -> dict[int, str]:
        """The relative paths of the wanted files, splitting each directory's names once."""
        out: dict[int, str] = {}
        current, names = -1, [""]
        for i in sorted(wanted):
            d = self.dir_of(i)
            if d != current:
                current, names = d, self.names[d].split(_SEP)
            out[i] = f"{DATA_DIR}/{self.dirs[d]}/{names[i - self.starts[d]]}"
        return out

    def groups(self, seed: int) -> list[tuple[str, ...]]:
        """The true duplicate groups: copies with their original, and small files by bytes."""
        by_original: dict[int, list[int]] = {}
        for i in self.copies:
            original = self.key[i] - 1
            if self.size[i] > TINY:
                by_original.setdefault(original, [original]).append(i)
        by_bytes: dict[bytes, list[int]] = {}
        for i, size in enumerate(self.size):
            if size <= TINY:
                by_bytes.setdefault(content_bytes(seed, self.content(i)), []).append(i)
        members = [*by_original.values(), *(g for g in by_bytes.values() if len(g) > 1)]
        paths = self.paths({i for g in members for i in g})
        return sorted(tuple(sorted(paths[i] for i in g)) for g in members)


def plan_scale(rng: random.Random, n: int) -> ScalePlan:
    """Draw the tree, in this order: directories, files per directory, names, sizes, copies.

    ValueError where every original lands in one directory (possible only for a handful of
    files), so no copy could be placed in another.
    """
    dirs, taken = _draw_dirs(rng, max(2, round(n / FILES_PER_DIR)))
    starts = _draw_starts(rng, n, len(dirs))
    names = tuple(_draw_names(rng, starts[d + 1] - starts[d], taken[d]) for d in range(len(dirs)))
    size = array("L", (int(math.exp(rng.random() * _LN_SPAN)) for _ in range(n)))
    plan = ScalePlan(tuple(dirs), starts, names, size, array("L", range(1, n + 1)), {}, array("L"))
    _draw_copies(rng, plan, round(n * COPY_SHARE), round(n * NEAR_SHARE))
    return plan


def _draw_dirs(rng: random.Random, count: int) -> tuple[list[str], list[set[str]]]:
    """`count` directory paths (each under the top or a random earlier one, MAX_DEPTH at most)
    and, for each, the names of its subdirectories."""
    paths, depths, can_nest = [""], [0], [0]
    taken: list[set[str]] = [set()]
    for _ in range(count):
        parent = can_nest[rng.randrange(len(can_nest))]
        name = _draw_name(rng, taken[parent])
        paths.append(f"{paths[parent]}/{name}".lstrip("/"))
        depths.append(depths[parent] + 1)
        taken.append(set())
        if depths[-1] < MAX_DEPTH:
            can_nest.append(len(paths) - 1)
    # The top (data/ itself) holds only directories.
    return paths[1:], taken[1:]


def _draw_starts(rng: random.Random, n: int, dirs: int) -> array[int]:
    """Where each directory's files start: cut points uniform over the files, so directory
    sizes spread around the mean as an exponential would, a few of them empty."""
    cuts = sorted(rng.randint(0, n) for _ in range(dirs - 1))
    return array("Q", [0, *cuts, n])


def _draw_name(rng: random.Random, taken: set[str]) -> str:
    """A name of NAME_LENGTHS characters not yet in `taken`, which it joins."""
    while True:
        raw = rng.randbytes(rng.randint(*NAME_LENGTHS))
        name = raw.translate(_TO_NAME).decode("ascii")
        if name not in taken:
            taken.add(name)
            return name


def _draw_names(rng: random.Random, count: int, subdirs: set[str]) -> str:
    taken = set(subdirs)
    return _SEP.join(_draw_name(rng, taken) for _ in range(count))


def _draw_copies(rng: random.Random, plan: ScalePlan, copies: int, near: int) -> None:
    """Turn random files into exact copies and near-copies of originals in other directories.

    No two near-copies share (original, offset, mask), so none equals another (small files
    aside, whose equality the manifest settles by bytes).
    """
    n = len(plan.size)
    picked = rng.sample(range(n), copies + near)
    is_original = bytearray(b"\x01") * n
    for i in picked:
        is_original[i] = 0
    originals = array("L", (i for i in range(n) if is_original[i]))
    if not originals or plan.dir_of(originals[0]) == plan.dir_of(originals[-1]):
        raise ValueError(f"{n} files are too few for the scale profile's copies")

    def original_for(i: int) -> int:
        # Terminates: originals lie in at least two directories, so one is outside i's.
        home = plan.dir_of(i)
        while True:
            j = originals[rng.randrange(len(originals))]
            if plan.dir_of(j) != home:
                return j

    for i in picked[:copies]:
        j = original_for(i)
        plan.key[i], plan.size[i] = plan.key[j], plan.size[j]
        plan.copies.append(i)
    used: set[tuple[int, int, int]] = set()
    for i in picked[copies:]:
        j = original_for(i)
        plan.key[i], plan.size[i] = plan.key[j], plan.size[j]
        change = (j, rng.randrange(plan.size[j]), rng.randint(1, 255))
        while change in used:
            change = (j, rng.randrange(plan.size[j]), rng.randint(1, 255))
        used.add(change)
        plan.patches[i] = change[1:]


def generate_scale(
    dest: Path, rng: random.Random, seed: int, n: int, workers: int | None
) -> Manifest:
    """Plan, make the directories, write the files (one job per directory), and list the groups."""
    plan = plan_scale(rng, n)
    (dest / DATA_DIR).mkdir(parents=True, exist_ok=True)
    for path in plan.dirs:
        os.mkdir(dest / DATA_DIR / path)
    run_jobs(plan.jobs(str(dest), seed), len(plan.dirs), workers)
    groups = plan.groups(seed)
    return Manifest(
        profile=Profile.SCALE.value,
        seed=seed,
        files=n,
        bytes=sum(plan.size),
        groups=tuple(groups),
        files_in_groups=sum(len(g) for g in groups),
        empty_files=(),
        hard_links=(),
        symlinks=(),
    )
