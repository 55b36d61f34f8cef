"""The digest cache across a remount: a filesystem unmounted, attached to another loop device
(so another `st_dev`) and mounted elsewhere is still known by its identity, and a rerun there
opens no file.  ext4 gives an `f_fsid` made from its UUID; XFS gives its device number, so its
UUID is asked (FS_IOC_GETFSUUID).  Needs root, losetup and the filesystem's mkfs; skipped, with
the reason, where any of them is missing."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from treebuilder import content

import dedup_engine.find.cache as cache_module
from dedup_engine import ScanOptions, find_duplicates
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


@pytest.fixture(params=["ext4", "xfs"])
def loop(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Loop]]:
    kind = str(request.param)
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
    attached = Loop(image)
    try:
        yield kind, attached
    finally:
        attached.release()


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
    loop: tuple[str, Loop], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kind, attached = loop
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
    if kind == "xfs" and not _kernel_says_uuid(second):
        assert _opened(after) == _opened(before)  # known by device number only: read again
        pytest.skip("this kernel gives no filesystem UUID (FS_IOC_GETFSUUID, Linux 6.5)")
    assert _opened(after) == 0


def _kernel_says_uuid(directory: Path) -> bool:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(fd, 0x80111500, bytearray(17))  # FS_IOC_GETFSUUID
    except OSError:
        return False
    finally:
        os.close(fd)
    return True
