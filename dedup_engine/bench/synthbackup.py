"""Plan and write the `backup` profile: dated snapshots of one tree, as `rsync --link-dest`
makes them, the shape in which users see duplicate finders read the same bytes again and again.

The first snapshot is a `realistic` tree (`synthreal`).  Each later one is the one before,
changed as a week changes a file system: files deleted, edited in place, appended to (logs),
renamed or moved, and new ones made.  As `rsync --link-dest` does, a file whose path and content
are unchanged is a hard link to the snapshot before's inode; any other file is a new inode, so a
file renamed or moved is a whole copy of the inode its old name still holds in the earlier
snapshots.  The snapshots are `data/YYYY-MM-DD/`, a week apart.
"""

from __future__ import annotations

import datetime
import posixpath
import random
from pathlib import Path

from dedup_engine.bench import synthreal
from dedup_engine.bench.synth import DATA_DIR, Manifest, Profile
from dedup_engine.bench.synthformats import FORMATS

#: Snapshots in a tree, a week apart from FIRST_DAY (our choice: a month and a half of
#: weeklies).
SNAPSHOTS = 6
FIRST_DAY = datetime.date(2026, 10, 4)
#: What happens to a file in a week: of the files of one weekly snapshot, 0.14% are modified and
#: 0.35% deleted by the next (Tarasov et al., "Generating Realistic Datasets for Deduplication
#: Analysis", USENIX ATC'12, table 2).  Renames and moves are not measured there: RENAMED is our
#: choice, as is APPENDED, the share of log files that grow in a week.  New files replace the
#: deleted ones, and as many again grow the tree, each of any format alike (our choice).
MODIFIED = 0.0014
DELETED = 0.0035
RENAMED = 0.002
APPENDED = 0.5
GROWTH = 1.0


def generate_backup(
    dest: Path, rng: random.Random, seed: int, n: int, workers: int | None, size_scale: float
) -> Manifest:
    """A tree of about `n` paths over SNAPSHOTS snapshots: n / SNAPSHOTS files in the first,
    and each later one as many give or take the week's changes (the manifest counts them)."""
    per = max(1, n // SNAPSHOTS)
    planner = synthreal.Planner(rng, size_scale)
    files = synthreal.plan(rng, per, size_scale, planner)
    paths = [p.removeprefix(f"{DATA_DIR}/") for p in synthreal.layout(rng, files)]
    inodes = list(files)
    names: list[list[str]] = [[] for _ in inodes]
    current = dict(zip(paths, range(len(inodes)), strict=True))
    for week in range(SNAPSHOTS):
        if week:
            current = _week(rng, planner, current, inodes, names)
        day = FIRST_DAY + datetime.timedelta(weeks=week)
        for path, inode in current.items():
            names[inode].append(f"{DATA_DIR}/{day.isoformat()}/{path}")
    return synthreal.write(dest, seed, inodes, names, workers, Profile.BACKUP)


def _week(
    rng: random.Random,
    planner: synthreal.Planner,
    before: dict[str, int],
    inodes: list[synthreal.File],
    names: list[list[str]],
) -> dict[str, int]:
    """The next snapshot's paths and inodes, from the one before's."""

    def new(file: synthreal.File) -> int:
        inodes.append(file)
        names.append([])
        return len(inodes) - 1

    after: dict[str, int] = {}
    deleted = 0
    dirs = sorted({posixpath.dirname(p) for p in before})
    for path, inode in before.items():
        file = inodes[inode]
        draw = rng.random()
        if draw < DELETED:
            deleted += 1
        elif draw < DELETED + MODIFIED:
            after[path] = new(planner.edit(file))
        elif draw < DELETED + MODIFIED + RENAMED:
            moved = _elsewhere(rng, path, dirs)
            after[moved if moved not in before else path] = new(file)  # a copy: a new inode
        elif file.kind == "log" and file.size and rng.random() < APPENDED:
            after[path] = new(planner.append(file))
        else:
            after[path] = inode  # linked to the snapshot before's
    for _ in range(round(deleted + GROWTH * deleted)):
        kind = rng.choice(list(synthreal.shares()))  # our choice: any format, evenly
        file = planner.new(kind)
        home = rng.choice(dirs)
        name = f"n{len(inodes):07d}.{FORMATS[kind].extension}"
        after[posixpath.join(home, name)] = new(file)
    return after


def _elsewhere(rng: random.Random, path: str, dirs: list[str]) -> str:
    """A file renamed in its directory, or moved to another one."""
    home, name = posixpath.split(path)
    stem, dot, ext = name.rpartition(".")
    if rng.random() < 0.5:
        return posixpath.join(home, f"{stem}-renamed{dot}{ext}")
    return posixpath.join(rng.choice(dirs), name)
