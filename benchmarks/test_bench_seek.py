"""pytest-benchmark suite for reads on a spinning disk, measured without one: the head's travel.

    python -m pytest benchmarks/test_bench_seek.py --benchmark-only
    DEDUP_BENCH_FULL=1 ...                          # 20,000 files instead of 3,000
    DEDUP_BENCH_COLD=1 ... -k cold                  # also the cold read-depth sweep (root)

A tree's files are created in name order (so inode numbers follow the names) and then written
in another order, shuffled or the same, so their data lies on the disk in the order written.
Each read order (the walk's, inode numbers', FIEMAP's first extents) is timed as it is computed,
and `extra_info` holds what a single head would travel to read every file's first 4 KiB in that
order (`readorder.seek_distance`), next to the walk order's.

The cold sweep reads every file's first 4 KiB (with BLAKE3) from a dropped page cache with 1 to
64 reads in flight, split over one worker process per CPU, each keeping its share in flight with
threads or from one thread reading ahead: the measurement behind the default read depth of a
virtual disk in `find.device`, and behind reading ahead on local disks in `find.readers`.
"""

from __future__ import annotations

import os
import random
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from multiprocessing.pool import Pool
from pathlib import Path
from typing import Any

import blake3
import pytest

from dedup_engine.find.device import device_for, threads_per_worker
from dedup_engine.find.readorder import (
    Location,
    first_extent,
    inode_order,
    locate,
    physical_order,
    seek_distance,
)
from dedup_engine.openflags import OPEN_READ
from dedup_engine.options import cpu_count

from .conftest import FULL

Bench = Any  # pytest-benchmark's fixture has no public type

SEEK_FILES = 20_000 if FULL else 3_000
COLD_FILES = 20_000
HEAD = 4096
DIRS = 30


@dataclass
class SeekTree:
    """A tree's files in walk order, with what the walk knows of them and where FIEMAP puts them."""

    layout: str
    paths: list[str]
    inodes: list[int]
    sizes: list[int]
    where: list[Location]

    def reads(self, order: Iterable[int]) -> list[tuple[int, int]]:
        """(physical offset, bytes) of each located file's head read, in `order`."""
        out = []
        for i in order:
            extent = self.where[i].extent
            if extent is not None:
                out.append((extent.physical, min(self.sizes[i], HEAD, extent.length)))
        return out


def _make_tree(root: Path, count: int, write_order: str, seed: int = 10) -> None:
    """`count` files of 512 B to 64 KiB (log-uniform) in DIRS directories, created in name
    order and written in `write_order` ("shuffled" or "in-order"), each synced once written."""
    rng = random.Random(seed)
    names = [root / f"d{i % DIRS:02d}" / f"f{i:05d}" for i in range(count)]
    for i in range(DIRS):
        (root / f"d{i:02d}").mkdir()
    for path in names:
        path.touch()
    if write_order == "shuffled":
        rng.shuffle(names)
    for path in names:
        with open(path, "r+b") as f:
            f.write(rng.randbytes(int(2 ** rng.uniform(9, 16))))
            os.fdatasync(f.fileno())


def _walk(root: Path) -> tuple[list[str], list[int], list[int]]:
    """Paths, inodes and sizes in the order a walk lists them: directories in listing order."""
    paths, inodes, sizes = [], [], []
    pending = [str(root)]
    while pending:
        with os.scandir(pending.pop(0)) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
                else:
                    paths.append(entry.path)
                    inodes.append(entry.inode())
                    sizes.append(entry.stat(follow_symlinks=False).st_size)
    return paths, inodes, sizes


def _has_fiemap(root: Path) -> bool:
    probe = root / "probe"
    probe.write_bytes(b"x")
    fd = os.open(probe, OPEN_READ)
    try:
        first_extent(fd)
    except OSError:
        return False
    finally:
        os.close(fd)
        probe.unlink()
    return True


@pytest.fixture(scope="session", params=["shuffled", "in-order"])
def seek_tree(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> SeekTree:
    layout = request.param
    root = tmp_path_factory.mktemp(f"seek-{layout}")
    if not _has_fiemap(root):
        pytest.skip(f"no FIEMAP on the filesystem of {root}")
    _make_tree(root, SEEK_FILES, layout)
    paths, inodes, sizes = _walk(root)
    where = locate(paths, inodes)
    if any(w.extent is None for w, size in zip(where, sizes, strict=True) if size):
        os.sync()  # a one-block file may still be in delayed allocation after its fsync
        where = locate(paths, inodes)
    return SeekTree(layout, paths, inodes, sizes, where)


ORDERS: dict[str, Callable[[SeekTree], Sequence[int]]] = {
    "walk": lambda tree: range(len(tree.paths)),
    "inode": lambda tree: inode_order(tree.inodes),
    "physical": lambda tree: physical_order(tree.paths, tree.inodes),
}


@pytest.mark.parametrize("order", sorted(ORDERS))
def test_seek_distance_of_read_order(benchmark: Bench, seek_tree: SeekTree, order: str) -> None:
    indexes = benchmark(ORDERS[order], seek_tree)
    tally = seek_distance(seek_tree.reads(indexes))
    walk = seek_distance(seek_tree.reads(range(len(seek_tree.paths))))
    benchmark.extra_info.update(
        tree=seek_tree.layout,
        files=len(seek_tree.paths),
        located=sum(w.extent is not None for w in seek_tree.where),
        order=order,
        seek_bytes=tally.distance,
        seeks=tally.seeks,
        backward_seeks=tally.backward,
        seek_bytes_per_file=tally.distance // max(1, len(seek_tree.paths)),
        ratio_to_walk=round(tally.distance / max(1, walk.distance), 6),
    )
    assert sorted(indexes) == list(range(len(seek_tree.paths)))


# The cold read-depth sweep ------------------------------------------------------------------------

COLD = os.environ.get("DEDUP_BENCH_COLD") == "1"


def _drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def _head(path: str) -> bytes:
    fd = os.open(path, OPEN_READ)
    try:
        digest: bytes = blake3.blake3(os.read(fd, HEAD)).digest()
        return digest
    finally:
        os.close(fd)


def _read_share(share: tuple[list[str], int, str]) -> int:
    """One worker's part: its paths, read in batches as a worker would, with `depth` reads in
    flight: by as many threads, or by one thread that opens files `depth` ahead of the one it
    reads and asks for their heads (`hashtasks`' reading ahead)."""
    paths, depth, how = share
    if how == "ahead":
        for start in range(0, len(paths), 256):
            _read_ahead(paths[start : start + 256], depth)
        return len(paths)
    with ThreadPoolExecutor(depth) as readers:
        for start in range(0, len(paths), 256):
            list(readers.map(_head, paths[start : start + 256]))
    return len(paths)


def _read_ahead(paths: list[str], depth: int) -> None:
    opened: deque[int] = deque()
    for path in paths[:depth]:
        opened.append(_ask(path))
    for at in range(len(paths)):
        fd = opened.popleft()
        if at + depth < len(paths):
            opened.append(_ask(paths[at + depth]))
        try:
            blake3.blake3(os.read(fd, HEAD)).digest()
        finally:
            os.close(fd)


def _ask(path: str) -> int:
    fd = os.open(path, OPEN_READ)
    os.posix_fadvise(fd, 0, HEAD, os.POSIX_FADV_WILLNEED)
    return fd


@pytest.fixture(scope="session")
def cold_tree(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    if not COLD:
        pytest.skip("the cold sweep drops the page cache: DEDUP_BENCH_COLD=1 runs it")
    if os.geteuid() != 0:
        pytest.skip("dropping the page cache needs root")
    root = tmp_path_factory.mktemp("cold")
    rng = random.Random(7)
    for i in range(COLD_FILES):
        folder = root / f"d{i // 100:03d}"
        folder.mkdir(exist_ok=True)
        (folder / f"f{i:05d}").write_bytes(rng.randbytes(rng.randint(1024, 16384)))
    paths = _walk(root)[0]
    random.Random(1).shuffle(paths)
    return paths


@pytest.fixture(scope="session")
def cold_pool() -> Iterable[Pool]:
    with get_context("forkserver").Pool(cpu_count()) as pool:
        yield pool


@pytest.mark.parametrize("how", ["threads", "ahead"])
@pytest.mark.parametrize("depth", [1, 2, 4, 8, 16, 32, 64])
def test_cold_read_depth(
    benchmark: Bench, cold_tree: list[str], cold_pool: Pool, depth: int, how: str
) -> None:
    workers = cpu_count()
    threads = threads_per_worker(depth, workers)
    shares = [(cold_tree[k::workers], threads, how) for k in range(workers)]
    done = benchmark.pedantic(
        lambda: sum(cold_pool.map(_read_share, shares)), setup=_drop_caches, rounds=3
    )
    info = device_for(cold_tree[0])
    benchmark.extra_info.update(
        files=done, depth=depth, workers=workers, per_worker=threads, how=how, device=info.cls.value
    )
