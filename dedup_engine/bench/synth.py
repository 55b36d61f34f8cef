"""Build deterministic synthetic file trees whose duplicate groups are known in advance.

`generate` writes `dest/data/` and `dest/manifest.json`, whose `groups` are the true answer of
`dedup find` with default options; tests and benchmarks check the engine against it.  The plan
(which path gets which content) is drawn in the parent from one `random.Random(seed)`, so the output
is byte-identical for equal arguments whatever `workers` is; workers only render and write.
Content id k of size n is `blake3(f"{seed}:{k}").digest(length=n)`, an XOF that runs at GB/s.
"""

from __future__ import annotations

import enum
import json
import math
import multiprocessing
import os
import posixpath
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, TypeVar

import blake3

SCHEMA = 1
J = TypeVar("J")
R = TypeVar("R")
T = TypeVar("T")
MANIFEST_NAME = "manifest.json"
DATA_DIR = "data"
KIB = 1024
MIB = 1024 * KIB
#: Render and write in slices of this size so a 64 MiB file never needs 64 MiB per worker.
_SLICE = 4 * MIB
#: A worker job ends at whichever limit comes first: few enough bytes that large files spread
#: over workers, enough files that per-job pickling stays negligible.
_JOB_BYTES = 32 * MIB
_JOB_FILES = 2000
#: Scaled large-shape files stay above this so the inner-offset traps (4096, 8193, size - 4097)
#: remain distinct bytes outside the 4 KiB head and tail windows.
_MIN_SCALED = 64 * KIB
#: Large-shape traps flip one byte: the last, the middle, just past the 4 KiB head window, inside
#: the third page, or just before the 4 KiB tail window.
_TRAP_KINDS = 5


class Profile(str, enum.Enum):
    """The shape of a synthetic tree."""

    SMALL = "small"
    LARGE = "large"
    MIXED = "mixed"
    SCALE = "scale"
    REALISTIC = "realistic"
    BACKUP = "backup"


DEFAULT_FILES = {
    Profile.SMALL: 200_000,
    Profile.LARGE: 200,
    Profile.MIXED: 2_027,
    Profile.SCALE: 1_000_000,
    Profile.REALISTIC: 20_000,
    Profile.BACKUP: 60_000,
}
#: Mixed trees add fixed extras (hard links, empty files) that need this many paths.
_MIXED_EXTRAS = 17
_MIN_FILES = {Profile.MIXED: 40, Profile.SCALE: 20, Profile.BACKUP: 6}  # backup: a file a week


@dataclass(frozen=True, slots=True)
class Manifest:
    """What a generated tree holds; `groups` is the engine's expected answer with default options.

    Paths are relative to `dest` with "/" separators.  `files` counts regular-file paths (hard
    links included, symlinks not); `bytes` sums the sizes of distinct inodes.
    """

    profile: str
    seed: int
    files: int
    bytes: int
    groups: tuple[tuple[str, ...], ...]
    files_in_groups: int
    empty_files: tuple[str, ...]
    hard_links: tuple[tuple[str, ...], ...]
    symlinks: tuple[str, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "schema": SCHEMA,
            "profile": self.profile,
            "seed": self.seed,
            "files": self.files,
            "bytes": self.bytes,
            "groups": [list(g) for g in self.groups],
            "files_in_groups": self.files_in_groups,
            "empty_files": list(self.empty_files),
            "hard_links": [list(h) for h in self.hard_links],
            "symlinks": list(self.symlinks),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> Manifest:
        """Rebuild from `to_json` output; ValueError on another schema or a mistyped field."""
        if data.get("schema") != SCHEMA:
            raise ValueError(f"manifest schema {data.get('schema')!r} is not {SCHEMA}")
        profile = data.get("profile")
        if not isinstance(profile, str):
            raise ValueError("manifest profile must be a string")
        return cls(
            profile=profile,
            seed=_json_int(data, "seed"),
            files=_json_int(data, "files"),
            bytes=_json_int(data, "bytes"),
            groups=_json_nested(data.get("groups"), "groups"),
            files_in_groups=_json_int(data, "files_in_groups"),
            empty_files=_json_strs(data.get("empty_files"), "empty_files"),
            hard_links=_json_nested(data.get("hard_links"), "hard_links"),
            symlinks=_json_strs(data.get("symlinks"), "symlinks"),
        )


def _json_int(data: Mapping[str, object], key: str) -> int:
    value = data.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"manifest {key} must be an integer")
    return value


def _json_strs(value: object, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"manifest {key} must be a list of strings")
    return tuple(value)


def _json_nested(value: object, key: str) -> tuple[tuple[str, ...], ...]:
    if not isinstance(value, list):
        raise ValueError(f"manifest {key} must be a list of lists of strings")
    return tuple(_json_strs(v, key) for v in value)


class Content(NamedTuple):
    """A file's content as a spec; equal specs are duplicates, distinct specs differ."""

    key: int
    size: int
    header_key: int = -1
    header_len: int = 0
    #: (offset, xor mask) pairs; masks are nonzero so a patched copy always differs from its base.
    patches: tuple[tuple[int, int], ...] = ()


#: Every empty file has this spec; `_Planner.key` never hands out 0.
_EMPTY = Content(0, 0)


class _Planner:
    """Collects inodes (content, number of paths) while drawing every choice from one Random."""

    def __init__(self, rng: random.Random, size_scale: float) -> None:
        self.rng = rng
        self.size_scale = size_scale
        self.inodes: list[tuple[Content, int]] = []
        self._next_key = 0

    def key(self) -> int:
        self._next_key += 1
        return self._next_key

    def add(self, content: Content, copies: int = 1, links: int = 1) -> None:
        self.inodes.extend([(content, links)] * copies)

    def small_size(self) -> int:
        size = min(max(int(self.rng.lognormvariate(math.log(16 * KIB), 0.8)), 512), 512 * KIB)
        if self.rng.random() < 0.5:
            # 4 KiB multiples make unrelated files collide on size, as block-sized files do.
            size = max(4 * KIB, round(size / (4 * KIB)) * 4 * KIB)
        return size

    def scaled(self, size: int) -> int:
        return size if self.size_scale == 1.0 else max(_MIN_SCALED, int(size * self.size_scale))


def _take(rng: random.Random, budget: int, lo: int, hi: int) -> int:
    """A group size in lo..hi that never leaves a remainder of 1, which could not form a group."""
    take = min(rng.randint(lo, hi), budget)
    return budget if budget - take == 1 else take


def _plan_small(p: _Planner, n: int) -> None:
    rng, left = p.rng, n
    dup = round(n * 0.30)
    while dup >= 2:
        c = _take(rng, dup, 2, 5)
        p.add(Content(p.key(), p.small_size()), copies=c)
        dup, left = dup - c, left - c
    family = round(n * 0.10)
    while family >= 2:
        m = _take(rng, family, 3, 8)
        h_key, h_len = p.key(), rng.randint(4 * KIB, 8 * KIB)
        size = max(p.small_size(), h_len + 512)
        # Mostly one size per family so members survive size grouping and reach head hashing.
        odd = rng.randrange(m) if rng.random() < 0.2 else -1
        for i in range(m):
            s = max(p.small_size(), h_len + 512) if i == odd else size
            p.add(Content(p.key(), s, h_key, h_len))
        family, left = family - m, left - m
    near = min(round(n * 0.02), left // 2)
    for _ in range(near):
        base = Content(p.key(), p.small_size())
        off = base.size - 1 if rng.random() < 0.5 else base.size // 2
        p.add(base)
        p.add(base._replace(patches=((off, rng.randint(1, 255)),)))
    for _ in range(left - 2 * near):
        p.add(Content(p.key(), p.small_size()))


def _plan_large(p: _Planner, n: int, lo_mib: int, hi_mib: int) -> None:
    rng = p.rng

    def size() -> int:
        return p.scaled(int(MIB * 2 ** rng.uniform(math.log2(lo_mib), math.log2(hi_mib))))

    dup = round(n * 0.25)
    rest = n - dup
    while dup >= 2:
        c = _take(rng, dup, 2, 3)
        p.add(Content(p.key(), size()), copies=c)
        dup -= c
    rest += dup
    traps, pow2 = round(n * 0.2), round(n * 0.2)
    rest -= traps + pow2
    t = 0
    while t < traps and rest > 0:
        base = Content(p.key(), size())
        p.add(base)
        rest -= 1
        for _ in range(min(rng.randint(1, 3), traps - t)):
            s = base.size
            # Cycle the kinds so even a short tree holds every one of them.
            off = (s - 1, s // 2, 4096, 8193, s - 4097)[t % _TRAP_KINDS]
            p.add(base._replace(patches=((off, rng.randint(1, 255)),)))
            t += 1
    rest += traps - t
    lo_exp, hi_exp = int(math.log2(lo_mib)), int(math.log2(hi_mib))
    while pow2 >= 2:
        # Unrelated files of one power-of-two size: only content tells them apart.
        m, s = _take(rng, pow2, 2, 3), p.scaled(MIB << rng.randint(lo_exp, hi_exp))
        for _ in range(m):
            p.add(Content(p.key(), s))
        pow2 -= m
    for _ in range(rest + pow2):
        p.add(Content(p.key(), size()))


def _plan_mixed(p: _Planner, n: int) -> None:
    n_large = max(2, round(n * 10 / DEFAULT_FILES[Profile.MIXED]))
    _plan_small(p, n - n_large - _MIXED_EXTRAS)
    _plan_large(p, n_large, 1, 4)
    # One inode with two names and no copy: hard links alone are never a group.
    p.add(Content(p.key(), p.small_size()), links=2)
    p.add(Content(p.key(), p.small_size()), links=3)
    # A linked inode plus a real copy: one group of all three paths.
    linked = Content(p.key(), p.small_size())
    p.add(linked, links=2)
    p.add(linked)
    # Two inodes of one content, each with two names: one group of four paths.
    p.add(Content(p.key(), p.small_size()), copies=2, links=2)
    p.add(_EMPTY, copies=5)


def _leaf_dirs(rng: random.Random, n_leaves: int, lo: int, hi: int) -> list[str]:
    """Relative directory paths of `n_leaves` leaves at depth lo..hi, e.g. "d03/d11/d00/d02"."""
    out: list[str] = []

    def walk(prefix: str, depth: int, n: int) -> None:
        if n == 1 and depth >= lo:
            while depth < hi and rng.random() < 0.5:
                prefix, depth = f"{prefix}/d00", depth + 1
            out.append(prefix.lstrip("/"))
            return
        k = n if depth >= lo - 1 else min(n, max(2, math.ceil(n ** (1 / (lo - depth)))))
        parts = [n // k + (1 if i < n % k else 0) for i in range(k)]
        rng.shuffle(parts)
        width = max(2, len(str(k - 1)))
        for i, part in enumerate(parts):
            walk(f"{prefix}/d{i:0{width}d}", depth + 1, part)

    walk("", 0, n_leaves)
    return out


def _slices(seed: int, c: Content) -> Iterator[bytes | bytearray]:
    """The content's bytes, in slices of at most _SLICE."""
    xof = blake3.blake3(f"{seed}:{c.key}".encode())
    header = b""
    if c.header_len:
        header = blake3.blake3(f"{seed}:{c.header_key}".encode()).digest(length=c.header_len)
    for start in range(0, c.size, _SLICE):
        length = min(_SLICE, c.size - start)
        data: bytes | bytearray = xof.digest(length=length, seek=start)
        hits = [(o - start, m) for o, m in c.patches if start <= o < start + length]
        if hits or (header and start == 0):
            data = bytearray(data)
            if start == 0:
                data[: len(header)] = header
            for o, m in hits:
                data[o] ^= m
        yield data


def content_bytes(seed: int, c: Content) -> bytes:
    """The whole content at once: for small files, whose bytes decide what equals what."""
    return b"".join(_slices(seed, c))


def _render_to(path: str, seed: int, c: Content) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        for data in _slices(seed, c):
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


#: (the tree's root, seed, [(path relative to the root, content)]): one writer's task.
WriteJob = tuple[str, int, list[tuple[str, Content]]]


def _write_job(job: WriteJob) -> int:
    root, seed, files = job
    for rel, content in files:
        _render_to(f"{root}/{rel}", seed, content)
    return len(files)


def generate(
    dest: Path,
    profile: Profile | str,
    seed: int,
    files: int | None = None,
    workers: int | None = None,
    *,
    size_scale: float = 1.0,
) -> Manifest:
    """Write a synthetic tree under `dest/data/` and its manifest as `dest/manifest.json`.

    files: number of regular-file paths (default per profile); workers: writer processes (None:
    os.cpu_count(), 0: in this process); size_scale: multiplies the sizes of large-shape files
    (the large profile and mixed's 1-4 MiB files; floor 64 KiB) so tests can use small trees.
    """
    dest, prof = Path(dest), Profile(profile)
    n = DEFAULT_FILES[prof] if files is None else files
    _check(dest, prof, n, size_scale)
    rng = random.Random(seed)
    if prof is Profile.SCALE:
        from dedup_engine.bench import synthscale

        manifest = synthscale.generate_scale(dest, rng, seed, n, workers)
    elif prof is Profile.REALISTIC:
        from dedup_engine.bench import synthreal

        manifest = synthreal.generate_realistic(dest, rng, seed, n, workers, size_scale)
    elif prof is Profile.BACKUP:
        from dedup_engine.bench import synthbackup

        manifest = synthbackup.generate_backup(dest, rng, seed, n, workers, size_scale)
    else:
        manifest = _generate_shaped(dest, rng, prof, seed, n, workers, size_scale)
    text = json.dumps(manifest.to_json(), sort_keys=True, indent=1) + "\n"
    # Written last, so a manifest on disk means the tree under it is complete.
    (dest / MANIFEST_NAME).write_text(text, encoding="utf-8")
    return manifest


def _generate_shaped(
    dest: Path,
    rng: random.Random,
    prof: Profile,
    seed: int,
    n: int,
    workers: int | None,
    size_scale: float,
) -> Manifest:
    """The small, large and mixed profiles: plan, lay out, write."""
    # Every choice below comes from this one Random, in this order: the plan, the layout, the
    # symlinks.  Reordering them would change every tree of every seed.
    inodes = _plan(prof, _Planner(rng, size_scale), n)
    leaves, names = _layout(rng, prof, n, inodes)
    symlinks = _plan_symlinks(rng, leaves, inodes, names) if prof is Profile.MIXED else []
    _write_tree(dest, seed, leaves, inodes, names, symlinks, workers)
    return _manifest(prof, seed, inodes, names, [link for link, _ in symlinks])


def _check(dest: Path, prof: Profile, n: int, size_scale: float) -> None:
    """ValueError for arguments no tree can be made from, before anything is written."""
    if n < _MIN_FILES.get(prof, 1):
        raise ValueError(f"files={n} is too few for the {prof.value} profile")
    if size_scale <= 0:
        raise ValueError(f"size_scale must be positive, not {size_scale}")
    data_dir = dest / DATA_DIR
    if data_dir.exists() and (not data_dir.is_dir() or any(data_dir.iterdir())):
        raise ValueError(f"{data_dir} exists and is not an empty directory")


def _plan(prof: Profile, planner: _Planner, n: int) -> list[tuple[Content, int]]:
    """The inodes of the profile's shape: (content, number of paths) each."""
    if prof is Profile.SMALL:
        _plan_small(planner, n)
    elif prof is Profile.LARGE:
        _plan_large(planner, n, 1, 64)
    else:
        _plan_mixed(planner, n)
    return planner.inodes


def _layout(
    rng: random.Random, prof: Profile, n: int, inodes: list[tuple[Content, int]]
) -> tuple[list[str], list[list[str]]]:
    """(leaf directories, the paths of each inode): directories of the profile's width and depth."""
    per_dir, depth = ((4, 16), (1, 3)) if prof is Profile.LARGE else ((20, 200), (4, 6))
    counts: list[int] = []
    left = n
    while left > 0:
        counts.append(min(rng.randint(*per_dir), left))
        left -= counts[-1]
    leaves = _leaf_dirs(rng, len(counts), *depth)
    width = max(6, len(str(n - 1)))
    dirs = [leaf for leaf, c in zip(leaves, counts, strict=True) for _ in range(c)]
    paths = [f"{DATA_DIR}/{leaf}/f{i:0{width}d}.bin" for i, leaf in enumerate(dirs)]
    # Shuffling paths, not inodes, spreads duplicates and hard links across directories.
    slots = [i for i, (_, links) in enumerate(inodes) for _ in range(links)]
    rng.shuffle(slots)
    names: list[list[str]] = [[] for _ in inodes]
    for path, inode in zip(paths, slots, strict=True):
        names[inode].append(path)
    return leaves, names


def _write_tree(
    dest: Path,
    seed: int,
    leaves: list[str],
    inodes: list[tuple[Content, int]],
    names: list[list[str]],
    symlinks: list[tuple[str, str]],
    workers: int | None,
) -> None:
    """Directories, then each inode's first path, then its other names, then the symlinks."""
    for leaf in leaves:
        (dest / DATA_DIR / leaf).mkdir(parents=True, exist_ok=True)
    # In path order, so each worker fills a few directories at a time instead of contending for all.
    firsts = sorted((ps[0], c) for ps, (c, _) in zip(names, inodes, strict=True))
    _write_all(dest, seed, firsts, workers)
    for ps in names:
        for extra in ps[1:]:
            os.link(dest / ps[0], dest / extra)
    for link, target in symlinks:
        (dest / link).symlink_to(target)


def _plan_symlinks(
    rng: random.Random,
    leaves: list[str],
    inodes: list[tuple[Content, int]],
    names: list[list[str]],
) -> list[tuple[str, str]]:
    """(link path, relative target): to files, to directories, and one dangling."""
    copies = Counter(content for content, _ in inodes)
    leaf = rng.choice(leaves)
    targets = [
        # A duplicated file: following this link would wrongly add a path to its group.
        next(ps[0] for (c, _), ps in zip(inodes, names, strict=True) if c.size and copies[c] > 1),
        rng.choice(names)[0],
        f"{DATA_DIR}/{leaf}",
        posixpath.dirname(f"{DATA_DIR}/{leaf}"),
        f"{DATA_DIR}/{leaf}/missing.bin",
    ]
    out = []
    for i, target in enumerate(targets):
        # Never inside a linked directory: a loop is a different trap from the one asked for.
        homes = [f"/{d}" for d in leaves if not f"{DATA_DIR}/{d}/".startswith(f"{target}/")]
        link = f"{DATA_DIR}{rng.choice(homes) if homes else ''}/s{i:03d}.lnk"
        out.append((link, posixpath.relpath(target, posixpath.dirname(link))))
    return out


def _write_all(dest: Path, seed: int, jobs: list[tuple[str, Content]], workers: int | None) -> None:
    chunks: list[WriteJob] = [
        (str(dest), seed, part) for part in writer_shares(jobs, lambda j: j[1].size)
    ]
    run_jobs(chunks, len(chunks), workers)


def writer_shares(files: Iterable[T], size: Callable[[T], int]) -> list[list[T]]:
    """The files cut into one writer's shares: a share ends at `_JOB_FILES` files or once it
    holds `_JOB_BYTES`, whichever comes first."""
    out: list[list[T]] = [[]]
    held = 0
    for file in files:
        if len(out[-1]) >= _JOB_FILES or held >= _JOB_BYTES:
            out.append([])
            held = 0
        out[-1].append(file)
        held += size(file)
    return out


def run_jobs(jobs: Iterable[WriteJob], count: int, workers: int | None) -> None:
    """Write every job (`map_jobs`)."""
    map_jobs(_write_job, jobs, count, workers)


def map_jobs(
    write: Callable[[J], R], jobs: Iterable[J], count: int, workers: int | None
) -> list[R]:
    """`write` each job, in `workers` forked processes (None: one per CPU; 0: in this one);
    what each returned, in no set order.

    `jobs` is consumed as the workers take them, so it may be a generator that builds each
    job's paths only then; `count` (how many it yields) caps the number of workers.
    """
    n_workers = min((os.cpu_count() or 1) if workers is None else workers, count)
    if n_workers <= 0 or "fork" not in multiprocessing.get_all_start_methods():
        return [write(job) for job in jobs]
    with multiprocessing.get_context("fork").Pool(n_workers) as pool:
        return list(pool.imap_unordered(write, jobs))


def _manifest(
    prof: Profile,
    seed: int,
    inodes: list[tuple[Content, int]],
    names: list[list[str]],
    symlinks: list[str],
) -> Manifest:
    by_content: dict[Content, list[str]] = {}
    inode_count: dict[Content, int] = {}
    for (content, _), ps in zip(inodes, names, strict=True):
        by_content.setdefault(content, []).extend(ps)
        inode_count[content] = inode_count.get(content, 0) + 1
    groups = sorted(
        tuple(sorted(ps))
        for content, ps in by_content.items()
        if content.size > 0 and inode_count[content] >= 2
    )
    return Manifest(
        profile=prof.value,
        seed=seed,
        files=sum(len(ps) for ps in names),
        bytes=sum(content.size for content, _ in inodes),
        groups=tuple(groups),
        files_in_groups=sum(len(g) for g in groups),
        empty_files=tuple(sorted(by_content.get(_EMPTY, []))),
        hard_links=tuple(sorted(tuple(sorted(ps)) for ps in names if len(ps) > 1)),
        symlinks=tuple(sorted(symlinks)),
    )


def load_manifest(dest: Path) -> Manifest:
    """The manifest `generate` wrote for the tree at `dest`."""
    data = json.loads((Path(dest) / MANIFEST_NAME).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{Path(dest) / MANIFEST_NAME} does not hold a JSON object")
    return Manifest.from_json(data)
