"""The group spool: groups added in any order come back in report order, exactly, from disk."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from treebuilder import Tree, content

from dedup_engine import DuplicateGroup, FileEntry, ScanOptions, find_duplicates
from dedup_engine.model import report_order
from dedup_engine.report.spool import GroupSpool

pytestmark = pytest.mark.usefixtures("deadline")

# Code points that order differently as UTF-8 bytes if encoded carelessly: NUL, an undecodable
# byte (a lone surrogate), the last code point before the surrogates and the first after them,
# one beyond the BMP, a newline, a backslash.
ALPHABET = ["a", "b", "\0", "\udcff", "\udc80", "\ud7ff", "\ue000", "\U0001f600", "\n", "\\", "é"]


def _entry(path: str, ino: int) -> FileEntry:
    return FileEntry(path, 2049, ino, 7, -1_000_000_007, 2**62, 1000, 100, 0o4755)


def _random_groups(count: int, seed: int) -> list[DuplicateGroup]:
    rng = random.Random(seed)
    groups = []
    for number in range(count):
        paths = ["/" + "".join(rng.choices(ALPHABET, k=rng.randint(0, 5))) for _ in range(2)]
        size = rng.choice([1, 2, 4096, 10**12, 2**63 - 1])
        groups.append(
            DuplicateGroup(size, f"{number:064x}", tuple(_entry(p, i) for i, p in enumerate(paths)))
        )
    return groups


@pytest.mark.parametrize("max_keys", [1, 3, 1000, 100_000])
def test_groups_come_back_sorted_whatever_the_order_added_and_the_runs_spilled(
    tmp_path: Path, max_keys: int
) -> None:
    groups = _random_groups(2000, seed=max_keys)
    with GroupSpool(str(tmp_path), max_keys=max_keys) as spool:
        spool.extend(groups)
        assert len(spool) == len(groups)
        assert list(spool) == sorted(groups, key=report_order)
        assert list(spool) == sorted(groups, key=report_order)  # and again: it can be read twice


def test_a_search_spooled_in_any_order_reads_back_as_the_search_lists_it(
    tree: Tree, tmp_path: Path
) -> None:
    for size in (100, 5000):  # four groups of each size: the first path decides among them
        for copy in range(3):
            for group in range(4):
                tree.file(f"d{group}/s{size}-{copy}/f", content(size, seed=(group, size)))
    result = find_duplicates(tree.root, ScanOptions(workers=0))
    assert len(result.groups) == 8
    shuffled = list(result.groups)
    random.Random(7).shuffle(shuffled)
    with GroupSpool(str(tmp_path), max_keys=2) as spool:
        spool.extend(shuffled)
        assert list(spool) == list(result.groups)


def test_odd_names_and_every_field_round_trip_exactly(tmp_path: Path) -> None:
    names = [
        os.fsdecode(b"/t/not-utf8-\xff\xfe\x80"),
        "/t/new\nline\ttab\\back\0nul",
        "/t/\U0001f600 \u00e9 \ud800 lone",
        "",
        "/t/" + "long" * 5000,
    ]
    files = tuple(
        FileEntry(name, 2**64 - 1, 2**63 + i, 0, -(2**62), 0, 2**32 - 2, 0, 0o7777)
        for i, name in enumerate(names)
    )
    group = DuplicateGroup(2**63 - 1, "f" * 64, files)
    with GroupSpool(str(tmp_path), max_keys=1) as spool:
        spool.add(group)
        spool.add(DuplicateGroup(1, "0" * 64, files[:2]))
        back = list(spool)
    assert back[0] == group  # every field of every file
    assert [f.path for f in back[0].files] == names
    assert os.fsencode(back[0].files[0].path) == b"/t/not-utf8-\xff\xfe\x80"


def test_an_empty_spool_gives_no_groups(tmp_path: Path) -> None:
    with GroupSpool(str(tmp_path)) as spool:
        assert len(spool) == 0
        assert list(spool) == []


def _spool_fds(directory: Path) -> list[str]:
    """This process's open files that lie (or lay, before being removed) in `directory`."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the listing's own descriptor, closed by now
        if target.startswith(str(directory) + "/"):
            out.append(target)
    return out


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_a_closed_spool_leaves_no_file_behind(tmp_path: Path) -> None:
    spool = GroupSpool(str(tmp_path), max_keys=1)  # one key: the runs file is made too
    spool.extend(_random_groups(10, seed=1))
    assert os.listdir(tmp_path) == []  # anonymous from the start: nothing to leave if killed
    assert len(_spool_fds(tmp_path)) == 2
    assert all(target.endswith("(deleted)") for target in _spool_fds(tmp_path))
    spool.close()
    assert _spool_fds(tmp_path) == []
    assert os.listdir(tmp_path) == []
    spool.close()  # twice is harmless
    assert len(spool) == 0
