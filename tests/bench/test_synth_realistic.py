"""The `realistic` synthetic tree: deterministic, its manifest true to the bytes on disk, its
files in the formats they are named for, and its shape the published one it is drawn from."""

from __future__ import annotations

import collections
import hashlib
import math
import os
import random
from pathlib import Path

import pytest
from treebuilder import manifest_found

from dedup_engine.bench import synthreal
from dedup_engine.bench.synth import Profile, generate, load_manifest
from dedup_engine.bench.synthformats import FORMATS, Choices, Hole, spec_bytes

FILES = 600
SCALE = 1 / 64
#: What a file of each format starts with, by its specification.
MAGIC = {
    "jpg": b"\xff\xd8\xff\xe1",
    "png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR",
    "docx": b"PK\x03\x04",
    "pdf": b"%PDF-1.7\n",
    "so": b"\x7fELF\x02\x01\x01",
    "gz": b"\x1f\x8b\x08\x00",
    "sqlite": b"SQLite format 3\x00\x10\x00",
}


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("realistic")
    generate(dest, Profile.REALISTIC, 7, FILES, workers=2, size_scale=SCALE)
    return dest


def _digest_of_tree(dest: Path) -> str:
    out = hashlib.sha256()
    for dirpath, dirs, names in sorted(os.walk(dest / "data")):
        dirs.sort()
        for name in sorted(names):
            path = Path(dirpath, name)
            out.update(str(path.relative_to(dest)).encode() + b"\0" + path.read_bytes())
    return out.hexdigest()


def test_the_same_seed_gives_the_same_tree_whatever_the_writers(tree: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    generate(again, Profile.REALISTIC, 7, FILES, workers=0, size_scale=SCALE)
    assert load_manifest(again) == load_manifest(tree)
    assert _digest_of_tree(again) == _digest_of_tree(tree)


def test_the_manifest_is_what_the_bytes_say_and_what_the_engine_finds(tree: Path) -> None:
    manifest_found(tree)
    manifest = load_manifest(tree)
    assert manifest.files == FILES
    assert len(manifest.groups) > 10  # copies of every rate's kind


def test_each_file_is_in_the_format_its_name_says(tree: Path) -> None:
    seen: collections.Counter[str] = collections.Counter()
    for dirpath, _dirs, names in os.walk(tree / "data"):
        for name in names:
            magic = MAGIC.get(name.rsplit(".", 1)[1])
            if magic is None:
                continue
            with open(Path(dirpath, name), "rb") as f:
                start = f.read(len(magic))
            if len(start) == len(magic):
                assert start == magic, name
                seen[name.rsplit(".", 1)[1]] += 1
    assert set(seen) == set(MAGIC)


def test_a_format_s_files_share_their_header_and_differ_after_it() -> None:
    """Two files of one family share the bytes the format puts first: what makes a short head
    window worse than a long one."""
    rng = random.Random(3)
    keys = iter(range(1, 1000))
    made = []
    for _ in range(2):
        choices = Choices(rng, lambda: next(keys), family=4)
        made.append(spec_bytes(1, FORMATS["source"].build(choices, 6000)))
    shared = next(i for i, (a, b) in enumerate(zip(*made, strict=False)) if a != b)
    assert 500 < shared < 4096
    assert made[0] != made[1]


def test_sparse_images_hold_holes(tree: Path) -> None:
    sizes = [
        (st.st_size, st.st_blocks * 512)
        for path in (tree / "data").rglob("*.img")
        if (st := path.stat()).st_size > 1 << 18
    ]
    assert sizes and any(used < size // 2 for size, used in sizes)


def test_a_near_copy_differs_where_it_was_changed_and_keeps_its_size() -> None:
    rng = random.Random(5)
    planner = synthreal.Planner(rng, 1.0)
    base = planner.new("gzip")
    nears = [planner.near(base) for _ in range(40)]
    sized = [n for n in nears if n.size == base.size]
    assert sized and all(n.patches for n in sized)
    assert any(n.patches[0][0] == synthreal.HEADER_FIELD["gzip"] for n in sized)
    photo = planner.new("jpeg")
    at = synthreal._header_field(photo)
    assert spec_bytes(1, photo.spec)[at - 5 : at] == b"2026:"  # in the Exif DateTime
    assert any(n.size > base.size for n in nears)  # appended


def test_sizes_files_per_directory_and_copies_follow_the_published_shape() -> None:
    rng = random.Random(11)
    files = synthreal.plan(rng, 20_000, 1.0)
    plain = [f.size for f in files if f.kind == "binary" and f.size > 1]
    logs = [math.log(s) for s in plain]
    mean = sum(logs) / len(logs)
    sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / len(logs))
    assert abs(mean - synthreal.SIZE_MU) < 0.2 and abs(sd - synthreal.SIZE_SIGMA) < 0.2
    empty = sum(1 for f in files if f.size == 0) / len(files)
    assert abs(empty - synthreal.EMPTY_SHARE) < 0.005
    counts = synthreal._dir_sizes(random.Random(2), 100_000)
    assert abs(counts.count(0) / len(counts) - synthreal.EMPTY_DIRS) < 0.02
    by_kind = collections.Counter(f.kind for f in files)
    copies: collections.Counter[str] = collections.Counter()
    seen: set[int] = set()
    for f in files:
        if id(f) in seen:
            copies[f.kind] += 1
        seen.add(id(f))
    assert copies["elf"] / by_kind["elf"] > 0.5
    assert copies["text"] / by_kind["text"] < 0.1


def test_directories_hang_off_parents_with_more_subdirectories_more_often() -> None:
    paths = synthreal._directories(random.Random(4), 3000)
    children = collections.Counter(p.rsplit("/", 1)[0] if "/" in p else "" for p in paths)
    assert children[""] > 10  # the root's weight grows with its subdirectories
    depth = collections.Counter(p.count("/") + 1 for p in paths)
    assert max(depth) >= 5


def test_holes_written_over_by_a_near_copy_are_written() -> None:
    """A patch that falls in a hole is data, not a hole."""
    from dedup_engine.bench.synthformats import Noise, render

    spec = (Noise(1, 10), Hole(100))
    path = Path(os.environ.get("TMPDIR", "/tmp"), f"hole-{os.getpid()}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        render(fd, 1, spec, ((50, 0x0F),))
    finally:
        os.close(fd)
    data = path.read_bytes()
    path.unlink()
    assert len(data) == 110 and data[50] == 0x0F and data[51:] == bytes(59)
    assert data == spec_bytes(1, spec, ((50, 0x0F),))
