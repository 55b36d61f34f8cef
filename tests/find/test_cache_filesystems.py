"""The digest cache and the filesystems under it: an ext4 filesystem remounted on another loop
device (so another `st_dev`) and elsewhere is still known by its identity (an `f_fsid` made from
its UUID), and a rerun there opens no file; a filesystem the cache does not trust (tmpfs, XFS)
gets no rows; a file written through a shared mapping is never answered from the cache with its
old digest; a symlink's target is keyed on its own filesystem.  The mounts need root, losetup
and the filesystem's mkfs; skipped, with the reason, where any of them is missing."""

from __future__ import annotations

import mmap
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cachetrust import trusted
from treebuilder import content

import dedup_engine.find.cache as cache_module
from dedup_engine import ScanOptions, find_duplicates
from dedup_engine.find.cached import WorkerCache
from dedup_engine.find.fsidentity import filesystem_id
from dedup_engine.model import FindResult, Stage

pytestmark = pytest.mark.usefixtures("deadline")

MiB = 1 << 20
IMAGE_BYTES = {"ext4": 32 * MiB, "xfs": 300 * MiB}  # 300 MiB: the smallest XFS mkfs.xfs makes


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


class Loop:
    """An image file attached to loop devices and mounted, one mount at a time."""

    def __init__(self, image: Path) -> None:
        self.image = image
        self.devices: list[str] = []
        self.mounted: list[Path] = []

    def attach(self, image: Path | None = None) -> str:
        made = _run(["losetup", "--find", "--show", str(image or self.image)])
        if made.returncode != 0:
            pytest.skip(f"losetup --find --show failed: {made.stderr.strip()}")
        self.devices.append(made.stdout.strip())
        return self.devices[-1]

    def mount(self, device: str, where: Path) -> None:
        where.mkdir(parents=True, exist_ok=True)
        made = _run(["mount", device, str(where)])
        if made.returncode != 0:
            pytest.skip(f"mount {device} failed: {made.stderr.strip()}")
        self.mounted.append(where)

    def unmount(self, where: Path) -> None:
        assert _run(["umount", str(where)]).returncode == 0
        self.mounted.remove(where)

    def detach(self, device: str) -> None:
        _run(["losetup", "-d", device])
        self.devices.remove(device)

    def release(self) -> None:
        for where in list(self.mounted):
            if _run(["umount", str(where)]).returncode != 0:
                _run(["umount", "-l", str(where)])
        for device in list(self.devices):
            _run(["losetup", "-d", device])


def _made(kind: str, tmp_path: Path) -> Loop:
    """An image of a new `kind` filesystem, to attach and mount."""
    if os.geteuid() != 0:
        pytest.skip("needs root to attach a loop device and mount an image")
    for tool in (f"mkfs.{kind}", "losetup", "mount", "umount"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} to make and mount a {kind} image")
    image = tmp_path / f"{kind}.img"
    with open(image, "wb") as file:
        file.truncate(IMAGE_BYTES[kind])
    made = _run([f"mkfs.{kind}", "-q", *(["-F"] if kind == "ext4" else []), str(image)])
    if made.returncode != 0:
        pytest.skip(f"mkfs.{kind} failed: {made.stderr.strip()}")
    return Loop(image)


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[Loop]:
    attached = _made("ext4", tmp_path)
    try:
        yield attached
    finally:
        attached.release()


def _mounted(kind: str, tmp_path: Path) -> Iterator[Path]:
    """A new `kind` filesystem, mounted at `tmp_path/kind` for the test."""
    attached = _made(kind, tmp_path)
    try:
        attached.mount(attached.attach(), tmp_path / kind)
        yield tmp_path / kind
    finally:
        attached.release()


@pytest.fixture
def xfs(tmp_path: Path) -> Iterator[Path]:
    yield from _mounted("xfs", tmp_path)


@pytest.fixture
def ext4(tmp_path: Path) -> Iterator[Path]:
    yield from _mounted("ext4", tmp_path)


def _build(root: Path) -> None:
    big = content(300_000)
    for name, data in {
        "a/small": content(3000),
        "b/small": content(3000),
        "a/big": big,
        "b/big": big,
        "b/near": big[:-1] + b"X",
        "c/alone": content(5000),
    }.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)


def _find(root: Path, cache: Path) -> FindResult:
    return find_duplicates(str(root), ScanOptions(workers=2, cache_dir=str(cache)))


def _opened(result: FindResult) -> int:
    return sum(result.stats.stage(s).files_opened for s in (Stage.HEAD, Stage.TAIL, Stage.FULL))


def _relative(result: FindResult, root: Path) -> list[list[str]]:
    return [sorted(os.path.relpath(f.path, root) for f in g.files) for g in result.groups]


def test_a_filesystem_remounted_on_another_device_is_known_by_its_identity(
    loop: Loop, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    attached = loop
    monkeypatch.setattr(cache_module, "RACY_NS", 0)  # the test's files are cached at once
    cache = tmp_path / "cache"
    first_device = attached.attach()
    first = tmp_path / "first"
    attached.mount(first_device, first)
    _build(first)
    before = _find(first, cache)
    assert _opened(before) > 0
    first_dev = first.stat().st_dev
    attached.unmount(first)
    attached.detach(first_device)

    blocker = tmp_path / "blocker.img"
    with open(blocker, "wb") as file:
        file.truncate(MiB)
    attached.attach(blocker)  # takes the first device, so the image gets another
    second_device = attached.attach()
    second = tmp_path / "second"
    attached.mount(second_device, second)
    assert second.stat().st_dev != first_dev
    after = _find(second, cache)
    assert _relative(after, second) == _relative(before, first)
    assert _opened(after) == 0


def _not_cached(where: Path, cache: Path) -> None:
    _build(where)
    first, again = _find(where, cache), _find(where, cache)
    assert _opened(again) == _opened(first) > 0
    assert _relative(again, where) == _relative(first, where)
    opened = cache_module.DigestCache.open(str(cache)).cache
    assert opened is not None and opened.count() == 0


@pytest.mark.usefixtures("at_once")
def test_tmpfs_is_read_without_the_cache(tmp_path: Path) -> None:
    """tmpfs has nothing to write a mapped file's pages back to, so a write through a mapping
    could change a file unseen by its ctime."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    where = tmp_path / "tmpfs"
    where.mkdir()
    if _run(["mount", "-t", "tmpfs", "tmpfs", str(where)]).returncode != 0:
        pytest.skip("mount -t tmpfs failed")
    try:
        _not_cached(where, tmp_path / "cache")
    finally:
        _run(["umount", str(where)])


@pytest.mark.usefixtures("at_once")
def test_xfs_is_read_without_the_cache(tmp_path: Path, xfs: Path) -> None:
    """XFS_IOC_SWAPEXT (for xfs_fsr) swaps the data of two files for anyone who may write both,
    and leaves their mtime and ctime as they were."""
    _not_cached(xfs, tmp_path / "cache")


@pytest.mark.usefixtures("at_once")
def test_a_file_written_through_a_shared_mapping_is_not_answered_from_the_cache(
    tmp_path: Path,
) -> None:
    """A page already dirty takes writes through a mapping without moving mtime or ctime: the
    file's pages are written back before its read, so the next write faults and moves them."""
    if not trusted(tmp_path):
        pytest.skip("the temporary directory is on a filesystem the cache does not trust")
    tree = tmp_path / "tree"
    tree.mkdir()
    data = content(8192)
    for name in ("x", "y"):
        (tree / name).write_bytes(data)
    os.sync()  # clean pages: the first write through the mapping moves ctime
    fd = os.open(tree / "x", os.O_RDWR)
    mapped = mmap.mmap(fd, 8192, mmap.MAP_SHARED)
    try:
        mapped[0:1] = data[0:1]  # the same byte: x is still y's copy, and its page is dirty
        cache = tmp_path / "cache"
        assert _relative(_find(tree, cache), tree) == [["x", "y"]]
        mapped[100:110] = b"0123456789"  # other bytes, into the page that was dirty
        assert (tree / "x").read_bytes() != data
        assert _relative(_find(tree, cache), tree) == []
    finally:
        mapped.close()
        os.close(fd)


@pytest.mark.usefixtures("at_once")
def test_a_symlink_s_target_on_another_filesystem_is_keyed_on_that_one(
    tmp_path: Path, ext4: Path
) -> None:
    """With links followed, a file's device and inode are its target's: so must its filesystem
    be, or a target elsewhere would take the key of another file of the link's filesystem."""
    if not trusted(tmp_path):
        pytest.skip("the temporary directory is on a filesystem the cache does not trust")
    (ext4 / "target").write_bytes(b"x")
    link = tmp_path / "link"
    link.symlink_to(ext4 / "target")
    cache = WorkerCache(str(tmp_path / "cache"))
    there = filesystem_id(str(ext4), ext4.stat().st_dev)
    assert there is not None and there != filesystem_id(str(tmp_path), tmp_path.stat().st_dev)
    assert cache.fs(os.stat(link).st_dev, str(link), True) == there
