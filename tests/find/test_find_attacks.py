"""`find` attacked as a hostile user would: one file reached by two paths, names swapped after the
scan, workers killed, any worker count, and progress read by a display.

Each test states what must hold.  Those marked xfail show a defect of the engine as it stands; the
marker goes when the defect is fixed.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from treebuilder import (
    OsSpy,
    Tree,
    brute_groups,
    check_invariants,
    content,
    find_checked,
    flip,
    groups_of,
)

import dedup_engine.find.changes
import dedup_engine.find.fullcompare
import dedup_engine.find.hashtasks
import dedup_engine.find.pipeline
import dedup_engine.find.walk
from dedup_engine import DuplicateGroup, FindResult, Progress, ScanOptions, Stage, find_duplicates
from dedup_engine.find.fullcompare import MAX_COMPARED
from dedup_engine.find.pool import WorkerError

pytestmark = pytest.mark.usefixtures("deadline")

SMALL = 1000  # read whole by the head window, then re-checked by path
BIG = 100_000  # head, tail, then the full stage


def _listing(result: FindResult) -> list[tuple[int, str, tuple[str, ...]]]:
    """Everything a report shows of the groups, in the order it shows them."""
    return [(g.size, g.digest, tuple(f.path for f in g.files)) for g in result.groups]


def _issues(result: FindResult) -> list[tuple[str, str, str]]:
    return [(i.path, i.stage.value, i.message) for i in result.issues]


# --- one file, two paths ----------------------------------------------------------------------


@pytest.fixture
def bind_mounted(tree: Tree) -> Iterator[tuple[str, str]]:
    """`a` bind-mounted over `b`: one file, two paths, a link count of 1."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root and mount(8) to bind-mount a file")
    source = tree.file("a", content(5000))
    target = tree.file("b", b"placeholder that the mount hides")
    mounted = subprocess.run(["mount", "--bind", source, target], capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"bind mount refused here: {mounted.stderr.decode().strip()}")
    try:
        yield source, target
    finally:
        subprocess.run(["umount", target], check=False)


@pytest.mark.parametrize("as_roots", [False, True], ids=["walked", "file-roots"])
def test_a_bind_mounted_file_is_not_two_copies_with_hard_links(
    tree: Tree, bind_mounted: tuple[str, str], workers: int, as_roots: bool
) -> None:
    """Deleting one of the two "copies" would delete the only one."""
    roots = list(bind_mounted) if as_roots else [tree.root]
    result = find_duplicates(roots, ScanOptions(workers=workers, hard_links=True))
    assert groups_of(result) == set()


@pytest.mark.parametrize("hard_links", [False, True])
def test_a_file_root_reached_through_a_followed_directory_link_is_listed_once(
    tree: Tree, workers: int, hard_links: bool
) -> None:
    """The link is met first (depth 1), so the walk lists the file under it as well; without
    the copy, with --hard-links, the file is its own duplicate."""
    real = tree.file("deep/er/real/f", content(5000))
    copy = tree.file("copy", content(5000))
    tree.symlink("link", "deep/er/real")
    options = ScanOptions(workers=workers, follow_links=True, hard_links=hard_links)
    assert groups_of(find_checked([real, tree.root], options)) == {frozenset({real, copy})}
    Path(copy).unlink()
    assert groups_of(find_checked([real, tree.root], options)) == set()


# --- names swapped after the scan -------------------------------------------------------------


def _spied(monkeypatch: pytest.MonkeyPatch, spy: OsSpy, roots: list[str], **options: Any) -> Any:
    monkeypatch.setattr(dedup_engine.find.hashtasks, "os", spy)
    monkeypatch.setattr(dedup_engine.find.fullcompare, "os", spy)
    result = find_duplicates(roots, ScanOptions(workers=0, **options))
    monkeypatch.undo()
    return result


def _swap_the_other_name_once(
    spy: OsSpy, names: tuple[str, str], swap: Callable[[str], None]
) -> list[str]:
    """When one of two names of a file is first opened, swap the other (the one no stage reads:
    only an inode's representative is read)."""
    swapped: list[str] = []

    def on_open(path: str, n: int) -> None:
        if path in names and not swapped:
            other = names[1] if path == names[0] else names[0]
            swapped.append(other)
            swap(other)

    spy.on_open = on_open
    return swapped


@pytest.mark.parametrize("size", [SMALL, BIG])
@pytest.mark.parametrize("hard_links", [False, True])
def test_a_followed_link_retargeted_after_the_scan_is_never_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int, hard_links: bool
) -> None:
    """Two symlinks to one file outside the root, and a copy inside; one link then points to a
    file of the same size with other bytes."""
    outside = Tree(tmp_path / "outside")
    tree = Tree(tmp_path / "tree")
    data = content(size)
    target = outside.file("target", data)
    other = outside.file("other", content(size, seed="other"))
    links = (tree.symlink("s1", target), tree.symlink("s2", target))
    copy = tree.file("copy", data)
    spy = OsSpy()

    def retarget(path: str) -> None:
        Path(path).unlink()
        Path(path).symlink_to(other)

    swapped = _swap_the_other_name_once(spy, links, retarget)
    result = _spied(monkeypatch, spy, [tree.root], follow_links=True, hard_links=hard_links)
    assert swapped
    assert all(swapped[0] not in {f.path for f in g.files} for g in result.groups)
    check_invariants(result, hard_links=True)
    kept = ({*links} - {swapped[0]}).pop()
    assert groups_of(result) == {frozenset({kept, copy})}


@pytest.mark.parametrize("size", [SMALL, BIG])
def test_a_hard_link_name_replaced_after_the_scan_is_never_listed(
    tree: Tree, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    """Only the representative of an inode is read; its other name, replaced by another file of
    the same size, changes the inode's ctime, so the group is dropped rather than listing it."""
    data = content(size)
    names = (tree.file("d1/a", data), tree.hardlink("d2/b", "d1/a"))
    tree.file("d3/c", data)
    spy = OsSpy()

    def replace(path: str) -> None:
        Path(path).unlink()
        Path(path).write_bytes(content(size, seed="other"))

    swapped = _swap_the_other_name_once(spy, names, replace)
    result = _spied(monkeypatch, spy, [tree.root])
    assert swapped
    check_invariants(result)
    assert all(swapped[0] not in {f.path for f in g.files} for g in result.groups)


# --- any worker count, the same answer ---------------------------------------------------------


def _random_tree(tree: Tree, seed: int) -> None:
    """Files of a few sizes and contents (near-copies among them), odd names, hard links across
    directories, file and directory symlinks (loops, dangling), a FIFO."""
    rnd = random.Random(seed)
    dirs = ["", *(f"d{i}/s{rnd.randrange(3)}" for i in range(5)), "d9"]
    for d in dirs:
        tree.dir(d or ".")
    files: list[str] = []
    for i in range(50):
        name = rnd.choice([f"f{i}", f".h{i}", f"new\nline{i}", f"sp {i}", f"x\udcff{i}"])
        size = rnd.choice([0, 1, 100, 4096, 4097, 16384, 16385, 20000, 70000])
        data = content(size, seed=rnd.randrange(3))
        if size > 5000 and rnd.random() < 0.3:
            data = flip(data, size - 1)
        files.append(tree.file(f"{rnd.choice(dirs)}/{name}".lstrip("/"), data))
    for i in range(5):
        source = os.path.relpath(rnd.choice(files), tree.root)
        tree.hardlink(f"{rnd.choice(dirs)}/hl{i}".lstrip("/"), source)
    for i in range(4):
        d = rnd.choice(dirs)
        to = rnd.choice([os.path.relpath(rnd.choice(files), tree.p(d)), ".", "nowhere", tree.root])
        tree.symlink(f"{d}/sl{i}".lstrip("/"), to)
    tree.fifo("d9/fifo")


OPTION_SETS: list[dict[str, Any]] = [
    {},
    {"hard_links": True},
    {"follow_links": True, "hard_links": True},
    {"empty": True, "hidden": False},
]


@pytest.mark.parametrize("seed", range(3))
def test_every_worker_count_gives_the_same_report(tree: Tree, seed: int) -> None:
    """Groups, their order, the order of their files, and issues: the same for -j 0, 1, 3 and 8;
    the same groups through `on_group`; and, with the default options, the brute-force truth."""
    _random_tree(tree, seed)
    nested = os.path.join(tree.root, "d9")
    for roots in ([tree.root], [nested, tree.root, tree.root]):
        for options in OPTION_SETS:
            hard_links = bool(options.get("hard_links"))
            reports = []
            for workers in (0, 1, 3, 8):
                result = find_duplicates(roots, ScanOptions(workers=workers, **options))
                check_invariants(result, hard_links=hard_links)
                reports.append((_listing(result), _issues(result)))
                streamed: list[DuplicateGroup] = []
                find_duplicates(
                    roots, ScanOptions(workers=workers, **options), on_group=streamed.append
                )
                assert len(streamed) == len(result.groups)
                assert groups_of(result) == {frozenset(f.path for f in g.files) for g in streamed}
            assert all(report == reports[0] for report in reports), (roots, options)
            if not options and roots == [tree.root]:
                assert groups_of(result) == brute_groups(tree.root)


@pytest.mark.parametrize("hard_links", [False, True])
def test_groups_larger_than_a_comparison_spread_over_workers(tree: Tree, hard_links: bool) -> None:
    """More than MAX_COMPARED members per group, owned by several workers, with near-copies and
    hard links among them: the brute-force groups, whatever the worker count."""
    members = 2 * MAX_COMPARED + 10
    for size in (SMALL, 20_000, 300_000):
        data = content(size)
        for i in range(members):
            d = f"d{i % 13}"
            if i % 10 == 3:
                tree.file(f"{d}/near{size}-{i}", flip(data, size - 1 - i))
            elif i % 17 == 5:
                tree.hardlink(f"{d}/link{size}-{i}", f"d0/copy{size}-0")
            else:
                tree.file(f"{d}/copy{size}-{i}", data)
    listings = []
    for workers in (0, 2, 5):
        result = find_checked(tree.root, ScanOptions(workers=workers, hard_links=hard_links))
        assert groups_of(result) == brute_groups(tree.root)
        assert result.issues == ()
        listings.append(_listing(result))
    assert listings[1:] == listings[:-1]


class _BlockListing:
    """Stands in for `os` in `find.walk`: the listing of `held` waits until `until` is opened for
    its own listing (at most a few seconds), in whichever worker each runs."""

    def __init__(self, held: str, until: str, marker: Path) -> None:
        self.held, self.until, self.marker = held, until, marker

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def open(self, path: str, flags: int, *args: Any) -> int:
        if path == self.until:
            self.marker.touch()
        elif path == self.held:
            deadline = time.monotonic() + 10
            while not self.marker.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        return os.open(path, flags, *args)


def test_a_directory_reached_by_two_routes_is_listed_under_one_path_whatever_the_timing(
    tree: Tree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`links/link` reaches `target/deep/x` before the walk does (breadth first).  With two
    workers, the listing of `links` is held until `target/deep/x` is being listed: the same
    run, only slower."""
    tree.symlink("links/link", "../target/deep/x")
    tree.file("target/deep/x/f", content(5000))
    tree.file("copy", content(5000))
    inline = find_duplicates(tree.root, ScanOptions(workers=0, follow_links=True))
    hold = _BlockListing(tree.path("links"), tree.path("target/deep/x"), tmp_path / "listed")
    monkeypatch.setattr(dedup_engine.find.walk, "os", hold)
    held = find_duplicates(tree.root, ScanOptions(workers=2, follow_links=True))
    monkeypatch.undo()
    assert _listing(held) == _listing(inline)


# --- a worker killed ---------------------------------------------------------------------------


class _KillWorker:
    """Stands in for `os` in one worker-side module: the worker process SIGKILLs itself at its
    first call of `name` (the parent, which forked it, is spared)."""

    def __init__(self, name: str, parent: int) -> None:
        self.name, self.parent = name, parent

    def __getattr__(self, name: str) -> Any:
        real = getattr(os, name)
        if name != self.name:
            return real

        def killing(*args: Any, **kwargs: Any) -> Any:
            if os.getpid() != self.parent:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)

        return killing


@pytest.mark.parametrize(
    ("module", "call"),
    [
        (dedup_engine.find.walk, "scandir"),  # the scan
        (dedup_engine.find.hashtasks, "pread"),  # head and tail
        (dedup_engine.find.changes, "lstat"),  # the re-check of files read whole
        (dedup_engine.find.fullcompare, "readv"),  # the full stage
    ],
    ids=["scan", "window", "recheck", "full"],
)
def test_a_worker_killed_in_any_stage_is_a_worker_error(
    tree: Tree, monkeypatch: pytest.MonkeyPatch, module: Any, call: str
) -> None:
    """A clean error, no hang, no worker left behind; the next run works."""
    for i in range(6):
        tree.file(f"d{i}/small", content(SMALL))
        tree.file(f"d{i}/big", content(BIG))
    monkeypatch.setattr(module, "os", _KillWorker(call, os.getpid()))
    with pytest.raises(WorkerError, match="died"):
        find_duplicates(tree.root, ScanOptions(workers=2))
    monkeypatch.undo()
    assert multiprocessing.active_children() == []
    assert len(find_duplicates(tree.root, ScanOptions(workers=2)).groups) == 2


# --- progress ------------------------------------------------------------------------------------


class _FastClock:
    """Stands in for `time` in `find.pipeline`: a second passes at every look, so no progress
    event is held back by the rate limit."""

    def __init__(self) -> None:
        self.now = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def perf_counter(self) -> float:
        self.now += 1.0
        return self.now


def test_progress_events_name_the_stage_at_work(
    tree: Tree, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    """Stages come in pipeline order, and none has an event after its final one."""
    for i in range(2000):
        tree.file(f"d{i % 20}/f{i}", content(100 + i % 7))
    for i in range(20):
        tree.file(f"big/{i}", content(300_000 + i % 2))
    monkeypatch.setattr(dedup_engine.find.pipeline, "time", _FastClock())
    events: list[Progress] = []
    find_duplicates(tree.root, ScanOptions(workers=workers), progress=events.append)
    monkeypatch.undo()
    order = [Stage.SCAN, Stage.HEAD, Stage.TAIL, Stage.FULL]
    finished: set[Stage] = set()
    at = 0
    for event in events:
        assert event.stage not in finished, f"{event} after the stage's final event"
        assert order.index(event.stage) >= at, f"{event} after a later stage's event"
        at = order.index(event.stage)
        if event.finished:
            finished.add(event.stage)
    assert finished == set(order)
