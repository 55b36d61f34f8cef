"""Plan and write the `realistic` profile: a tree shaped as file-system studies measured real
disks, with contents by format (`synthformats`), so that the stages' windows and thresholds can
be tuned and gated on bytes that look like a disk's.

Every number here comes from a published measurement, cited where it is set and gathered in
`docs/benchmarks.md` ("The realistic and backup trees"), or is said to be our choice.  The
shape: file sizes by count from a lognormal body; files per directory from an inverse
polynomial; directories placed by a generative model of the namespace; formats by their share
of files; whole-file copies at each format's rate; near-copies that differ in a header field, at
the end, in the middle, or by appended data.  The tree's true groups are found from the bytes
written (each writer digests what it writes), not from the plan: holes and zero runs may make
two plans equal.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from dedup_engine.bench.synth import DATA_DIR, MIB, Manifest, Profile, map_jobs, writer_shares
from dedup_engine.bench.synthformats import (
    FORMATS,
    Choices,
    Literal,
    Noise,
    Spec,
    render,
    spec_size,
)

#: File size by count: ln(bytes) ~ N(SIZE_MU, SIZE_SIGMA), the lognormal body of the hybrid
#: model Agrawal et al. fitted to the 2004 data of their five-year metadata study ("Generating
#: Realistic Impressions for File-System Benchmarking", FAST'09; its Pareto tail, 6 files in
#: 100,000, starts at 512 MiB, past `MAX_SIZE`).
SIZE_MU = 9.48
SIZE_SIGMA = 2.46
#: Sizes are drawn again above this (times the tree's size scale): a benchmark tree must fit a
#: CI disk.
MAX_SIZE = 64 * MIB
#: Share of files that are empty: 1.7% (Douceur and Bolosky, "A Large-Scale Study of
#: File-System Contents", SIGMETRICS'99, section 4).
EMPTY_SHARE = 0.017
#: Files per directory: 22.5% of directories hold none; the others n >= 1 files with P(n)
#: proportional to (n + FILES_OFFSET) ** -FILES_DEGREE (Agrawal et al., FAST'09: an inverse
#: polynomial fitted to the 2004 data), here at most FILES_MOST.
EMPTY_DIRS = 0.225
FILES_DEGREE = 2
FILES_OFFSET = 2.36
FILES_MOST = 5000
#: A new directory's parent is drawn with weight (its subdirectories + SUBDIR_BIAS): the
#: generative model of the namespace in Agrawal et al., FAST'07 (and Impressions).
SUBDIR_BIAS = 2
#: Share of files by extension, in percent of files (the Impressions model of the FAST'07
#: data): no extension 6.91, gif 6.77, h 6.69, dll 6.63, htm 4.45, txt 3.64, cpp 3.26, jpg 3.08,
#: exe 2.88, lib 1.46, pdb 1.34, and 47.35 in the long tail of other extensions.  Rendered as:
#: gif as PNG, h and cpp as source, dll, exe, lib and pdb as ELF objects (this is a Linux
#: tool), htm and txt as text; the long tail, whose make-up the study does not give, is split
#: evenly between the formats of `LONG_TAIL_FORMATS` (our choice, not a measurement).
SHARES = {
    "binary": 6.91,
    "png": 6.77,
    "source": 6.69 + 3.26,
    "elf": 6.63 + 2.88 + 1.46 + 1.34,
    "text": 4.45 + 3.64,
    "jpeg": 3.08,
}
LONG_TAIL = 47.35
LONG_TAIL_FORMATS = ("zip", "pdf", "gzip", "sqlite", "log", "sparse", "binary")
#: Whole-file copies, as a share of a format's files.  Copies hold 12.8% of the data
#: (Policroniades and Pratt, "Alternatives for Detecting Redundancy in Storage Systems Data",
#: USENIX ATC'04, section 4.2), and executables and libraries (dll, lib, pdb, exe, cab, msp,
#: msi) give 58% of the space whole-file deduplication saves (Meyer and Bolosky, "A Study of
#: Practical Deduplication", FAST'11, section 3.3).  With the shares above and sizes drawn
#: alike for every format, the binaries' rate is then 9.8 times the others'.
COPIES_BINARIES = 0.60
COPIES_OTHERS = 0.0615
#: Near-copies (a file changed in a few bytes, or appended to), as a share of each format's
#: files.  No study measures them directly; files sharing content below the file level hold
#: 16.5% of the data beyond whole copies (29.3% in identical 2 KiB chunks against 12.8% in
#: whole files, Policroniades and Pratt, table 5), which bounds this from above.
NEAR = 0.05
#: How a near-copy differs from the file it copies, and how often (our choice): a header field
#: (a timestamp), the last bytes (a log's last line, a trailer), the middle (an edit), or more
#: bytes at the end (a log appended to, another size).
NEAR_KINDS = (("header", 0.4), ("end", 0.25), ("middle", 0.2), ("appended", 0.15))
#: Where a format keeps the field a near-copy changes: an offset from its start (gzip's MTIME,
#: RFC 1952; SQLite's file change counter, its file format; the ZIP entry's modification time,
#: APPNOTE), or what precedes the field in its header (the Exif DateTime's year, the PDF
#: /CreationDate's).  Other formats: HEADER_OTHER, past every magic here, inside the first
#: window.
HEADER_FIELD: dict[str, int | bytes] = {
    "gzip": 4,
    "sqlite": 24,
    "zip": 10,
    "jpeg": b"\x00" + b"2026:",
    "pdf": b"/CreationDate (D:2026",
}
HEADER_OTHER = 64


def shares() -> dict[str, float]:
    """Each format's weight among the files drawn."""
    out = dict(SHARES)
    for kind in LONG_TAIL_FORMATS:
        out[kind] = out.get(kind, 0.0) + LONG_TAIL / len(LONG_TAIL_FORMATS)
    return out


def copy_rate(kind: str) -> float:
    return COPIES_BINARIES if kind == "elf" else COPIES_OTHERS


@dataclass(frozen=True, slots=True)
class File:
    """One inode of the plan: its spec, the XOR patches of a near-copy, and its format."""

    spec: Spec
    patches: tuple[tuple[int, int], ...]
    kind: str

    @property
    def size(self) -> int:
        return spec_size(self.spec)


class Planner:
    """Draws new files, copies and near-copies; every choice from one Random."""

    def __init__(self, rng: random.Random, size_scale: float) -> None:
        self.rng = rng
        self.most = max(4096, int(MAX_SIZE * size_scale))
        self._key = 0
        self.files: list[File] = []
        self.by_kind: dict[str, list[int]] = {kind: [] for kind in FORMATS}

    def key(self) -> int:
        self._key += 1
        return self._key

    def size(self, least: int) -> int:
        while True:
            size = int(math.exp(self.rng.gauss(SIZE_MU, SIZE_SIGMA)))
            if size <= self.most:
                return max(size, least, 1)

    def add(self, file: File) -> None:
        self.by_kind[file.kind].append(len(self.files))
        self.files.append(file)

    def new(self, kind: str) -> File:
        fmt = FORMATS[kind]
        size = self.size(fmt.least)
        if kind == "sqlite":
            size = -(-size // 4096) * 4096  # whole pages
        choices = Choices(self.rng, self.key, self.rng.randrange(fmt.families))
        return File(fmt.build(choices, size), (), kind)

    def near(self, base: File) -> File:
        """A near-copy of `base`: changed in place (`edit`), or appended to."""
        how = self.rng.choices([k for k, _ in NEAR_KINDS], [w for _, w in NEAR_KINDS])[0]
        if how == "appended" or base.size < 2:
            return self.append(base)
        return self.edit(base, how)

    def append(self, base: File) -> File:
        """`base` with more bytes at its end: a log's new line, or any file's new data."""
        extra: Literal | Noise = Noise(self.key(), self.rng.randint(1, 4096))
        if base.kind == "log":
            extra = Literal(b"2026-11-30T23:59:59.999Z INFO  [log.tail] appended\n")
        return File((*base.spec, extra), base.patches, base.kind)

    def edit(self, base: File, how: str | None = None) -> File:
        """`base` changed in a byte, keeping its size: in a header field, near its end or in
        its middle (`how`; drawn as `NEAR_KINDS` says when None)."""
        rng, size = self.rng, base.size
        if size < 1:
            return self.append(base)
        while how is None or how == "appended":
            how = rng.choices([k for k, _ in NEAR_KINDS], [w for _, w in NEAR_KINDS])[0]
        if how == "header":
            offset = min(_header_field(base), size - 1)
        elif how == "end":
            offset = size - 1 - rng.randint(0, min(size - 1, 100))
        else:
            offset = size // 2
        return File(base.spec, (*base.patches, (offset, rng.randint(1, 255))), base.kind)


def _header_field(file: File) -> int:
    """Where the header field of `HEADER_FIELD` is in this file."""
    field = HEADER_FIELD.get(file.kind, HEADER_OTHER)
    if isinstance(field, int):
        return field
    start = file.spec[0]
    found = start.data.find(field) if isinstance(start, Literal) else -1
    return found + len(field) if found >= 0 else HEADER_OTHER


def plan(
    rng: random.Random, n: int, size_scale: float, planner: Planner | None = None
) -> list[File]:
    """The inodes of a realistic tree of `n` files, each once (copies are inodes of their own)."""
    planner = planner or Planner(rng, size_scale)
    weighted = shares()
    kinds = list(weighted)
    weights = [weighted[k] for k in kinds]
    empty = File((), (), "binary")
    for _ in range(n):
        if rng.random() < EMPTY_SHARE:
            planner.files.append(empty)
            continue
        kind = rng.choices(kinds, weights)[0]
        earlier, copies = planner.by_kind[kind], copy_rate(kind)
        draw = rng.random()
        if earlier and draw < copies:
            planner.add(planner.files[rng.choice(earlier)])
        elif earlier and draw < copies + NEAR:
            planner.add(planner.near(planner.files[rng.choice(earlier)]))
        else:
            planner.add(planner.new(kind))
    return planner.files


def layout(rng: random.Random, files: list[File]) -> list[str]:
    """A path under `data/` for each file: directories from the namespace model, each holding
    an inverse-polynomial number of files, the files shuffled among them (copies land wherever
    their slot is)."""
    counts = _dir_sizes(rng, len(files))
    dirs = _directories(rng, len(counts))
    order = list(range(len(files)))
    rng.shuffle(order)
    slots = [d for d, count in enumerate(counts) for _ in range(count)]
    named: dict[int, str] = {}
    for index, slot in zip(order, slots, strict=True):
        ext = FORMATS[files[index].kind].extension
        named[index] = f"{DATA_DIR}/{dirs[slot]}/f{index:07d}.{ext}"
    return [named[i] for i in range(len(files))]


def _dir_sizes(rng: random.Random, n: int) -> list[int]:
    """Files in each directory (`EMPTY_DIRS`, then the inverse polynomial), until `n` are
    placed; directories with none are kept: they are part of the shape."""
    ks = range(1, FILES_MOST + 1)
    weights = [(k + FILES_OFFSET) ** -FILES_DEGREE for k in ks]
    counts: list[int] = []
    left = n
    while left > 0:
        if rng.random() < EMPTY_DIRS:
            counts.append(0)
            continue
        k = min(rng.choices(ks, weights)[0], left)
        counts.append(k)
        left -= k
    return counts


def _directories(rng: random.Random, count: int) -> list[str]:
    """`count` directory paths below the root, each new one under a parent drawn with weight
    (its subdirectories + SUBDIR_BIAS), the root among them.

    Drawn in O(1): the total weight is SUBDIR_BIAS for each directory plus one for each
    directory but the root (each is a subdirectory once), so the parent is a directory drawn
    evenly with probability SUBDIR_BIAS * all / total, else the parent of a non-root one drawn
    evenly."""
    paths = [""]
    parents = [-1]
    for made in range(1, count + 1):
        total = SUBDIR_BIAS * len(paths) + len(paths) - 1
        if rng.random() < SUBDIR_BIAS * len(paths) / total:
            parent = rng.randrange(len(paths))
        else:
            parent = parents[rng.randrange(1, len(paths))]
        paths.append(f"{paths[parent]}/d{made:05d}".lstrip("/"))
        parents.append(parent)
    return paths[1:]


# Writing, and the groups from the bytes written.

#: (the tree's root, seed, [(path, file)]): one writer's share.
_Job = tuple[str, int, list[tuple[str, File]]]


def _write(job: _Job) -> list[tuple[str, int, bytes]]:
    """Write each file; (path, size, digest) of each."""
    root, seed, files = job
    out = []
    for rel, file in files:
        fd = os.open(f"{root}/{rel}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            digest = render(fd, seed, file.spec, file.patches)
        finally:
            os.close(fd)
        out.append((rel, file.size, digest))
    return out


def write(
    dest: Path,
    seed: int,
    files: list[File],
    names: list[list[str]],
    workers: int | None,
    profile: Profile = Profile.REALISTIC,
) -> Manifest:
    """Write every file at its first name under `dest`, link its other names to it, and make
    the manifest of the groups its bytes make."""
    for path in sorted({os.path.dirname(n) for ns in names for n in ns}):
        (dest / path).mkdir(parents=True, exist_ok=True)
    firsts = sorted((ns[0], f) for ns, f in zip(names, files, strict=True) if ns)
    jobs: list[_Job] = [
        (str(dest), seed, part) for part in writer_shares(firsts, lambda f: f[1].size)
    ]
    written = [w for part in map_jobs(_write, jobs, len(jobs), workers) for w in part]
    linked = [tuple(ns) for ns in names if len(ns) > 1]
    for ns in linked:
        for name in ns[1:]:
            os.link(dest / ns[0], dest / name)
    return manifest(profile.value, seed, written, linked)


def manifest(
    profile: str,
    seed: int,
    written: Iterable[tuple[str, int, bytes]],
    links: Iterable[tuple[str, ...]] = (),
) -> Manifest:
    """The groups of the files written (path, size, digest): equal size and digest, two inodes
    or more, not empty, every name of each inode listed.  `links`: every name of each inode
    that has more than one, the one written first."""
    names: dict[str, list[str]] = {}
    for ns in links:
        names[ns[0]] = list(ns)
    by_content: dict[tuple[int, bytes], list[str]] = {}
    empty: list[str] = []
    total = count = 0
    for path, size, digest in written:
        every = names.get(path, [path])
        count += len(every)
        total += size
        if size == 0:
            empty.extend(every)
        by_content.setdefault((size, digest), []).append(path)
    groups = sorted(
        tuple(sorted(n for p in firsts for n in names.get(p, [p])))
        for (size, _), firsts in by_content.items()
        if size > 0 and len(firsts) >= 2
    )
    return Manifest(
        profile=profile,
        seed=seed,
        files=count,
        bytes=total,
        groups=tuple(groups),
        files_in_groups=sum(len(g) for g in groups),
        empty_files=tuple(sorted(empty)),
        hard_links=tuple(sorted(tuple(sorted(ns)) for ns in names.values())),
        symlinks=(),
    )


def generate_realistic(
    dest: Path, rng: random.Random, seed: int, n: int, workers: int | None, size_scale: float
) -> Manifest:
    files = plan(rng, n, size_scale)
    paths = layout(rng, files)
    return write(dest, seed, files, [[path] for path in paths], workers)
