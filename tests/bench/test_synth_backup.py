"""The `backup` synthetic tree: weekly snapshots as `rsync --link-dest` makes them, unchanged
files linked to the snapshot before, renamed and moved files whole copies, edited and appended
files new inodes; its manifest true to the disk and to what the engine finds."""

from __future__ import annotations

import datetime
import itertools
import os
from collections import defaultdict
from pathlib import Path

import pytest
from treebuilder import manifest_found

from dedup_engine.bench import synthbackup
from dedup_engine.bench.synth import Profile, generate, load_manifest
from dedup_engine.model import Stage

FILES = 1800


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("backup")
    # Changes every week, so that a small tree shows every kind of them.
    with pytest.MonkeyPatch.context() as patch:
        for name, rate in (("MODIFIED", 0.03), ("DELETED", 0.03), ("RENAMED", 0.03)):
            patch.setattr(synthbackup, name, rate)
        generate(dest, Profile.BACKUP, 3, FILES, workers=2, size_scale=1 / 64)
    return dest


def _snapshots(dest: Path) -> dict[str, dict[str, os.stat_result]]:
    out: dict[str, dict[str, os.stat_result]] = {}
    for day in sorted(os.listdir(dest / "data")):
        top = dest / "data" / day
        out[day] = {
            str(Path(d, n).relative_to(top)): Path(d, n).lstat()
            for d, _, names in os.walk(top)
            for n in names
        }
    return out


def test_snapshots_are_dated_a_week_apart(tree: Path) -> None:
    days = sorted(_snapshots(tree))
    assert days == [
        (synthbackup.FIRST_DAY + datetime.timedelta(weeks=w)).isoformat()
        for w in range(synthbackup.SNAPSHOTS)
    ]


def test_unchanged_files_are_links_to_the_snapshot_before_and_changed_ones_are_not(
    tree: Path,
) -> None:
    snaps = list(_snapshots(tree).values())
    linked = changed = moved_away = 0
    for before, after in itertools.pairwise(snaps):
        for path, st in after.items():
            old = before.get(path)
            if old is None:
                continue
            if (old.st_dev, old.st_ino) == (st.st_dev, st.st_ino):
                linked += 1
            else:
                changed += 1
        moved_away += sum(1 for path in before if path not in after)
    assert linked > 10 * changed > 0
    assert moved_away > 0


def test_a_renamed_file_is_a_whole_copy_of_its_old_inode(tree: Path) -> None:
    """A group holds names in early snapshots under one path and later ones under another."""
    manifest = load_manifest(tree)
    spanning = 0
    for group in manifest.groups:
        by_path = defaultdict(set)
        for name in group:
            _, day, rel = name.split("/", 2)
            by_path[rel].add(day)
        if len(by_path) >= 2 and any(len(days) >= 2 for days in by_path.values()):
            spanning += 1
    assert spanning > 5


def test_the_manifest_is_what_the_bytes_say_and_what_the_engine_finds(tree: Path) -> None:
    found = manifest_found(tree)
    manifest = load_manifest(tree)
    names = sum(len(_) for _ in _snapshots(tree).values())
    assert manifest.files == names
    # Every inode is read at most once, however many snapshots link it.
    inodes = {(s.st_dev, s.st_ino) for snap in _snapshots(tree).values() for s in snap.values()}
    assert found.stats.stage(Stage.HEAD).files_opened <= len(inodes)


def test_the_same_seed_gives_the_same_tree(tmp_path: Path) -> None:
    made = []
    for writers in (2, 0):
        dest = tmp_path / str(writers)
        generate(dest, Profile.BACKUP, 9, 300, workers=writers, size_scale=1 / 64)
        made.append(load_manifest(dest))
    assert made[0] == made[1]
    assert made[0].hard_links  # snapshots share inodes
