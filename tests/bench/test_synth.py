"""The synthetic-tree generator: deterministic, its manifest true to the disk, its traps present."""

from __future__ import annotations

import json
import math
import os
import stat
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import blake3
import pytest

from dedup_engine import ScanOptions, find_duplicates
from dedup_engine.bench.synth import MANIFEST_NAME, Manifest, Profile, generate, load_manifest
from dedup_engine.bench.synthscale import TINY

#: Small enough for a quick suite, big enough that every trap kind appears.
SMALL_FILES = 3000
LARGE_FILES = 30
LARGE_SCALE = 1 / 32
MIXED_SCALE = 1 / 8
#: Ten directories: enough for the shape's rates to show within a few points.
SCALE_FILES = 5000


def _regular_files(dest: Path) -> dict[str, os.stat_result]:
    """Every regular-file path under dest/data (symlinks not followed), relative to dest."""
    out: dict[str, os.stat_result] = {}
    for dirpath, _dirs, names in os.walk(dest / "data"):
        for name in names:
            path = Path(dirpath) / name
            st = path.lstat()
            if stat.S_ISREG(st.st_mode):
                out[path.relative_to(dest).as_posix()] = st
    return out


def _tree_digest(dest: Path) -> dict[str, str]:
    """Each path under dest mapped to its content digest, link target or kind."""
    out: dict[str, str] = {}
    for dirpath, dirs, names in os.walk(dest):
        for name in names + dirs:
            path = Path(dirpath) / name
            rel = path.relative_to(dest).as_posix()
            if path.is_symlink():
                out[rel] = "link:" + str(path.readlink())
            elif path.is_file():
                out[rel] = blake3.blake3(path.read_bytes()).hexdigest()
            else:
                out[rel] = "dir"
    return out


def _brute_groups(dest: Path) -> tuple[tuple[str, ...], ...]:
    """The duplicate groups by hashing every file, hard links collapsed by (st_dev, st_ino)."""
    inodes: dict[tuple[int, int], list[str]] = defaultdict(list)
    for rel, st in _regular_files(dest).items():
        inodes[(st.st_dev, st.st_ino)].append(rel)
    by_content: dict[tuple[int, bytes], list[list[str]]] = defaultdict(list)
    for paths in inodes.values():
        data = (dest / paths[0]).read_bytes()
        if data:
            by_content[(len(data), blake3.blake3(data).digest())].append(paths)
    return tuple(
        sorted(
            tuple(sorted(p for paths in same for p in paths))
            for same in by_content.values()
            if len(same) >= 2
        )
    )


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Manifest]:
    dest = tmp_path_factory.mktemp("small")
    return dest, generate(dest, Profile.SMALL, 7, files=SMALL_FILES, workers=2)


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Manifest]:
    dest = tmp_path_factory.mktemp("large")
    return dest, generate(dest, "large", 7, files=LARGE_FILES, size_scale=LARGE_SCALE)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Manifest]:
    dest = tmp_path_factory.mktemp("mixed")
    return dest, generate(dest, "mixed", 7, workers=2, size_scale=MIXED_SCALE)


@pytest.fixture(scope="module")
def scale(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Manifest]:
    dest = tmp_path_factory.mktemp("scale")
    return dest, generate(dest, Profile.SCALE, 7, files=SCALE_FILES, workers=2)


@pytest.fixture(params=["small", "large", "mixed", "scale"])
def tree(request: pytest.FixtureRequest) -> tuple[Path, Manifest]:
    result: tuple[Path, Manifest] = request.getfixturevalue(request.param)
    return result


def test_same_seed_same_tree_whatever_the_workers(
    small: tuple[Path, Manifest], tmp_path: Path
) -> None:
    dest, manifest = small
    again = generate(tmp_path / "again", Profile.SMALL, 7, files=SMALL_FILES, workers=0)
    assert again == manifest
    assert (tmp_path / "again" / MANIFEST_NAME).read_bytes() == (dest / MANIFEST_NAME).read_bytes()
    assert _tree_digest(tmp_path / "again") == _tree_digest(dest)


def test_other_seed_other_tree(small: tuple[Path, Manifest], tmp_path: Path) -> None:
    dest, manifest = small
    other = generate(tmp_path, Profile.SMALL, 8, files=SMALL_FILES, workers=0)
    assert other.groups != manifest.groups
    digests, other_digests = _tree_digest(dest), _tree_digest(tmp_path)
    common = digests.keys() & other_digests.keys()
    assert sum(digests[k] != other_digests[k] for k in common) > len(common) // 2


def test_manifest_is_the_true_answer(tree: tuple[Path, Manifest]) -> None:
    dest, manifest = tree
    files = _regular_files(dest)
    assert manifest.groups == _brute_groups(dest)
    assert manifest.groups
    assert manifest.files_in_groups == sum(len(g) for g in manifest.groups)
    assert manifest.files == len(files)
    inodes = {(st.st_dev, st.st_ino): st.st_size for st in files.values()}
    assert manifest.bytes == sum(inodes.values())
    assert manifest.empty_files == tuple(sorted(p for p, st in files.items() if not st.st_size))
    linked = sorted(
        tuple(sorted(p for p, st in files.items() if (st.st_dev, st.st_ino) == key))
        for key in {(st.st_dev, st.st_ino) for st in files.values() if st.st_nlink > 1}
    )
    assert manifest.hard_links == tuple(linked)
    assert all((dest / link).is_symlink() for link in manifest.symlinks)


def test_manifest_round_trips(tree: tuple[Path, Manifest]) -> None:
    dest, manifest = tree
    assert Manifest.from_json(manifest.to_json()) == manifest
    assert load_manifest(dest) == manifest
    text = (dest / MANIFEST_NAME).read_text(encoding="utf-8")
    data = json.loads(text)
    assert data["schema"] == 1
    assert text == json.dumps(data, sort_keys=True, indent=1) + "\n"


def test_small_has_size_collisions_shared_headers_and_near_copies(
    small: tuple[Path, Manifest],
) -> None:
    dest, manifest = small
    contents = {p: (dest / p).read_bytes() for p in _regular_files(dest)}
    by_size: dict[int, set[bytes]] = defaultdict(set)
    for data in contents.values():
        by_size[len(data)].add(data)
    # Files whose size is shared with a file of other content: size alone cannot settle them.
    colliding = sum(len(by_size[len(d)]) > 1 for d in contents.values())
    assert colliding > SMALL_FILES * 0.4
    by_head: dict[tuple[int, bytes], set[bytes]] = defaultdict(set)
    for data in contents.values():
        by_head[(len(data), data[:4096])].add(data)
    same_head = sum(len(s) for s in by_head.values() if len(s) > 1)
    assert same_head > SMALL_FILES * 0.08
    near = 0
    for same in by_head.values():
        for a in same:
            m = len(a) // 2
            near += any(
                a != b and (a[:-1] == b[:-1] or (a[:m] == b[:m] and a[m + 1 :] == b[m + 1 :]))
                for b in same
            )
    assert near > SMALL_FILES * 0.03
    assert max(len(g) for g in manifest.groups) >= 5
    assert len({g[0].rsplit("/", 1)[0] for g in manifest.groups}) > 10


def _one_byte_diff(a: bytes, b: bytes) -> int | None:
    """The offset of the only differing byte of two equal-size contents, or None."""
    x = int.from_bytes(a, "big") ^ int.from_bytes(b, "big")
    low, high = ((x & -x).bit_length() - 1) // 8, (x.bit_length() - 1) // 8
    return len(a) - 1 - low if x and low == high else None


def test_large_has_every_trap_and_power_of_two_sizes(large: tuple[Path, Manifest]) -> None:
    dest, manifest = large
    by_size: dict[int, list[bytes]] = defaultdict(list)
    for p in _regular_files(dest):
        data = (dest / p).read_bytes()
        by_size[len(data)].append(data)
    kinds = set()
    for size, same in by_size.items():
        for i, a in enumerate(same):
            for b in same[i + 1 :]:
                off = _one_byte_diff(a, b)
                names = {
                    size - 1: "tail",
                    size // 2: "middle",
                    4096: "head_edge",
                    8193: "inner",
                    size - 4097: "tail_edge",
                }
                if off is not None:
                    kinds.add(names[off])
    assert kinds == {"tail", "middle", "head_edge", "inner", "tail_edge"}
    # Unrelated files of one power-of-two size (1 MiB scaled to 32 KiB units).
    unit = int(1024 * 1024 * LARGE_SCALE)
    assert any(
        s % unit == 0 and (s // unit) & (s // unit - 1) == 0 and len(set(same)) > 1
        for s, same in by_size.items()
    )
    assert len(manifest.groups) >= 2


def test_mixed_has_links_symlinks_and_empty_files(mixed: tuple[Path, Manifest]) -> None:
    dest, manifest = mixed
    grouped = {p for g in manifest.groups for p in g}
    alone = [h for h in manifest.hard_links if not set(h) & grouped]
    with_copy = [h for h in manifest.hard_links if set(h) <= grouped]
    assert alone
    assert any(len(g) == 3 and set(h) < set(g) for h in with_copy for g in manifest.groups)
    links = [dest / s for s in manifest.symlinks]
    assert not grouped & set(manifest.symlinks)
    assert any(not p.exists() for p in links)
    assert any(p.is_dir() for p in links)
    assert any(
        p.is_file() and str(p.resolve().relative_to(dest.resolve())) in grouped for p in links
    )
    assert len(manifest.empty_files) >= 3
    assert not grouped & set(manifest.empty_files)
    assert all((dest / e).stat().st_size == 0 for e in manifest.empty_files)
    big = [p for p in grouped if (dest / p).stat().st_size >= 1024 * 1024 * MIXED_SCALE]
    assert big


def test_refuses_a_nonempty_data_dir(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    generate(tmp_path, "small", 1, files=50, workers=0)  # an empty data/ is fine
    with pytest.raises(ValueError, match="not an empty directory"):
        generate(tmp_path, "small", 1, files=50, workers=0)
    with pytest.raises(ValueError):
        generate(tmp_path / "x", "tiny", 1)


@pytest.mark.parametrize("workers", [0, 2])
def test_the_engine_finds_exactly_the_manifest_groups(
    tree: tuple[Path, Manifest], workers: int
) -> None:
    dest, manifest = tree
    result = find_duplicates(dest / "data", ScanOptions(workers=workers))
    found = tuple(
        sorted(tuple(sorted(os.path.relpath(f.path, dest) for f in g.files)) for g in result.groups)
    )
    assert found == manifest.groups
    assert sum(len(g.files) for g in result.groups) == manifest.files_in_groups
    assert result.issues == ()


def test_the_cli_on_a_synth_tree_agrees_with_its_manifest(mixed: tuple[Path, Manifest]) -> None:
    dest, manifest = mixed
    proc = subprocess.run(
        [sys.executable, "-m", "dedup_engine", "find", str(dest / "data"), "-f", "fdupes", "-q"],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    blocks = [b for b in proc.stdout.split(b"\n\n") if b.strip()]
    found = sorted(
        tuple(sorted(os.path.relpath(os.fsdecode(p), dest) for p in block.split(b"\n") if p))
        for block in blocks
    )
    assert tuple(found) == manifest.groups


def test_scale_same_seed_same_tree_whatever_the_workers(tmp_path: Path) -> None:
    one = generate(tmp_path / "one", Profile.SCALE, 3, files=1500, workers=0)
    two = generate(tmp_path / "two", Profile.SCALE, 3, files=1500, workers=2)
    assert one == two
    assert _tree_digest(tmp_path / "one") == _tree_digest(tmp_path / "two")
    generate(tmp_path / "other", Profile.SCALE, 4, files=1500, workers=0)
    # Other names: not one path below data/ is shared.
    other_paths = _tree_digest(tmp_path / "other").keys() & _tree_digest(tmp_path / "one").keys()
    assert other_paths == {"data", MANIFEST_NAME}


def test_scale_has_the_issue_shape(scale: tuple[Path, Manifest]) -> None:
    dest, _manifest = scale
    dirs = [p.relative_to(dest / "data") for p in (dest / "data").rglob("*") if p.is_dir()]
    assert len(dirs) == SCALE_FILES // 500
    assert max(len(d.parts) for d in dirs) <= 4
    assert any(len(d.parts) >= 3 for d in dirs)
    files = _regular_files(dest)
    names = [Path(p).name for p in files] + [d.name for d in dirs]
    assert all(10 <= len(n) <= 40 for n in names)
    assert min(map(len, names)) <= 11 and max(map(len, names)) >= 39
    sizes = [st.st_size for st in files.values()]
    assert min(sizes) >= 1 and max(sizes) <= 64 * 1024
    # Log-uniform over 1 B .. 64 KiB: half the files under 256 B, a quarter under 16 B.
    assert sum(s < 256 for s in sizes) / len(sizes) == pytest.approx(0.5, abs=0.03)
    assert sum(s <= 16 for s in sizes) / len(sizes) == pytest.approx(
        math.log(17) / math.log(64 * 1024 + 1), abs=0.03
    )


def test_scale_copies_and_near_copies_at_their_rates_in_other_directories(
    scale: tuple[Path, Manifest],
) -> None:
    dest, manifest = scale
    # Above TINY bytes a group is an original and its copies, not small files that collide.
    big = [p for p, st in _regular_files(dest).items() if st.st_size > TINY]
    groups = [g for g in manifest.groups if (dest / g[0]).stat().st_size > TINY]
    copies = sum(len(g) - 1 for g in groups)
    assert copies / len(big) == pytest.approx(0.15, abs=0.02)
    assert all(len({p.rsplit("/", 1)[0] for p in g}) >= 2 for g in groups)
    by_size: dict[int, dict[bytes, list[str]]] = defaultdict(lambda: defaultdict(list))
    for p in big:
        data = (dest / p).read_bytes()
        by_size[len(data)][data].append(p)
    near = []
    for same in by_size.values():
        contents = list(same)
        for i, a in enumerate(contents):
            near += [same[a] + same[b] for b in contents[i + 1 :] if _one_byte_diff(a, b)]
    assert len(near) / len(big) == pytest.approx(0.05, abs=0.015)
    # The near-copy's directory is not its original's (a copy of that may share it).
    assert all(len({p.rsplit("/", 1)[0] for p in paths}) >= 2 for paths in near)


def test_scale_refuses_too_few_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="too few"):
        generate(tmp_path, Profile.SCALE, 1, files=5, workers=0)
