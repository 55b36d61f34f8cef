"""Each root's device is classed from sysfs and mountinfo, and a spinning disk is read in order.

Device tests build a fake `/sys` and `/proc/self/mountinfo` laid out as the kernel lays them out
(`/sys/dev/block/MAJ:MIN` a relative link into `/sys/devices/...`), and point a `DeviceProbe` at
them. Read-order tests use FIEMAP on the filesystem of the test's temporary directory for real, and
are skipped with the reason where that filesystem has none.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from treebuilder import content

from dedup_engine.find import readorder
from dedup_engine.find.device import (
    DEFAULT_DEPTH,
    DeviceClass,
    DeviceProbe,
    device_for,
    read_depth,
    threads_per_worker,
)
from dedup_engine.find.readorder import (
    Extent,
    Location,
    first_extent,
    inode_order,
    locate,
    order_of,
    physical_order,
    seek_distance,
)
from dedup_engine.options import cpu_count

pytestmark = pytest.mark.usefixtures("deadline")

SATA = "devices/pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0/block"
NVME = "devices/pci0000:00/0000:00:1d.0/0000:3d:00.0/nvme/nvme0"
VIRTIO = "devices/pci0000:00/0000:00:02.0/virtio1/block"
VIRTUAL = "devices/virtual/block"


class FakeSystem:
    """A fake sysfs and procfs under one directory, written as the kernel would show them."""

    def __init__(self, root: Path) -> None:
        self.sys = root / "sys"
        self.proc = root / "proc"
        (self.proc / "self").mkdir(parents=True)
        self.mountinfo: list[str] = []

    def probe(self) -> DeviceProbe:
        (self.proc / "self" / "mountinfo").write_text("".join(self.mountinfo))
        return DeviceProbe(str(self.sys), str(self.proc))

    def block(
        self, where: str, name: str, dev: int, rotational: str | None = None, vendor: str = ""
    ) -> Path:
        """A block device's directory under /sys/devices, linked from dev/block and class/block."""
        node = self.sys / where / name
        node.mkdir(parents=True)
        (node / "dev").write_text(f"{os.major(dev)}:{os.minor(dev)}\n")
        if rotational is not None:
            (node / "queue").mkdir()
            (node / "queue" / "rotational").write_text(rotational + "\n")
        if vendor:
            (node / "device").mkdir()
            (node / "device" / "vendor").write_text(vendor + "\n")
        self._link(self.sys / "dev" / "block" / f"{os.major(dev)}:{os.minor(dev)}", node)
        self._link(self.sys / "class" / "block" / name, node)
        return node

    def partition(self, disk: Path, name: str, dev: int) -> Path:
        """A partition: a directory inside its disk's, with no queue/ of its own."""
        node = self.block(str(disk.relative_to(self.sys)), name, dev)
        (node / "partition").write_text("1\n")
        return node

    def stacked(self, name: str, dev: int, members: list[Path], dm_name: str = "") -> Path:
        """A dm or md device over `members` (its slaves/), with a queue that says rotational=0."""
        node = self.block(VIRTUAL, name, dev, rotational="0")
        (node / "slaves").mkdir()
        for member in members:
            self._link(node / "slaves" / member.name, member)
        if dm_name:
            (node / "dm").mkdir()
            (node / "dm" / "name").write_text(dm_name + "\n")
        return node

    def loop(self, name: str, dev: int, backing: str, rotational: str = "1") -> Path:
        node = self.block(VIRTUAL, name, dev, rotational=rotational)
        (node / "loop").mkdir()
        (node / "loop" / "backing_file").write_text(backing + "\n")
        return node

    def mount(self, dev: int, point: str, fstype: str, source: str, options: str = "rw") -> None:
        mm = f"{os.major(dev)}:{os.minor(dev)}"
        point = point.replace(" ", "\\040")
        index = len(self.mountinfo) + 20
        line = f"{index} 1 {mm} / {point} rw,relatime shared:1 - {fstype} {source} {options}\n"
        self.mountinfo.append(line)

    @staticmethod
    def _link(link: Path, target: Path) -> None:
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(target, link.parent))


@pytest.fixture
def fake(tmp_path: Path) -> FakeSystem:
    return FakeSystem(tmp_path / "fake")


def dev(major: int, minor: int) -> int:
    return os.makedev(major, minor)


def test_a_partition_of_a_hard_disk_is_rotational_read_by_one_reader(fake: FakeSystem) -> None:
    sda = fake.block(SATA, "sda", dev(8, 0), rotational="1", vendor="ATA")
    fake.partition(sda, "sda1", dev(8, 1))
    fake.mount(dev(8, 1), "/data", "ext4", "/dev/sda1")
    info = fake.probe().info(dev(8, 1))
    assert (info.cls, info.disk, info.fstype) == (DeviceClass.ROTATIONAL, "sda", "ext4")
    assert info.depth == 1 and info.ordered
    assert info.dev == dev(8, 1)
    assert "queue/rotational=1" in info.why


def test_an_nvme_disk_is_solid_with_many_reads_in_flight(fake: FakeSystem) -> None:
    fake.block(NVME, "nvme0n1", dev(259, 0), rotational="0")
    fake.mount(dev(259, 0), "/", "xfs", "/dev/nvme0n1")
    info = fake.probe().info(dev(259, 0))
    assert (info.cls, info.disk) == (DeviceClass.SOLID, "nvme0n1")
    assert info.depth == DEFAULT_DEPTH[DeviceClass.SOLID] > 1 and not info.ordered


def test_a_virtual_disk_is_not_taken_for_a_spinning_one(fake: FakeSystem) -> None:
    """virtio-blk says rotational=1 unless the host sets it; so do emulated SCSI disks."""
    fake.block(VIRTIO, "vda", dev(254, 0), rotational="1")
    fake.block(SATA, "sdb", dev(8, 16), rotational="1", vendor="QEMU    ")
    probe = fake.probe()
    for number, name in ((dev(254, 0), "vda"), (dev(8, 16), "sdb")):
        info = probe.info(number)
        assert (info.cls, info.disk) == (DeviceClass.VIRTUAL, name)
        assert info.depth == DEFAULT_DEPTH[DeviceClass.VIRTUAL] > 1


def test_device_mapper_over_a_hard_disk_is_the_hard_disk(fake: FakeSystem) -> None:
    sda = fake.block(SATA, "sda", dev(8, 0), rotational="1")
    sda2 = fake.partition(sda, "sda2", dev(8, 2))
    fake.stacked("dm-0", dev(253, 0), [sda2], dm_name="vg-root")
    info = fake.probe().info(dev(253, 0))
    assert (info.cls, info.disk) == (DeviceClass.ROTATIONAL, "sda")
    assert info.why.startswith("dm-0 over sda")


def test_an_ssd_cache_over_a_hard_disk_is_read_as_the_hard_disk(fake: FakeSystem) -> None:
    fake.block(NVME, "nvme0n1", dev(259, 0), rotational="0")
    fake.block(SATA, "sda", dev(8, 0), rotational="1")
    nvme, sda = (fake.sys / "class" / "block" / n for n in ("nvme0n1", "sda"))
    fake.stacked("dm-1", dev(253, 1), [nvme, sda])
    fake.stacked("md0", dev(9, 0), [nvme])
    probe = fake.probe()
    assert probe.info(dev(253, 1)).cls is DeviceClass.ROTATIONAL
    assert probe.info(dev(9, 0)).cls is DeviceClass.SOLID


def test_btrfs_on_an_anonymous_device_is_found_through_its_mount_source(
    fake: FakeSystem,
) -> None:
    """btrfs gives its files an `st_dev` of major 0; mountinfo's source names the disk, and a
    subvolume not listed in mountinfo is found by the mount point above its path."""
    sda = fake.block(SATA, "sda", dev(8, 0), rotational="1")
    fake.stacked("dm-2", dev(253, 2), [fake.partition(sda, "sda3", dev(8, 3))], "vg-home")
    fake.block(NVME, "nvme0n1", dev(259, 0), rotational="0")
    fake.mount(dev(0, 40), "/home/my files", "btrfs", "/dev/mapper/vg-home")
    fake.mount(dev(0, 41), "/srv", "btrfs", "/dev/nvme0n1")
    probe = fake.probe()
    assert probe.info(dev(0, 40)).disk == "sda"
    subvolume = probe.info(dev(0, 77), "/home/my files/snapshots/a")
    assert (subvolume.cls, subvolume.fstype) == (DeviceClass.ROTATIONAL, "btrfs")
    assert probe.info(dev(0, 41)).cls is DeviceClass.SOLID


def test_a_loop_device_is_classed_by_its_backing_files_disk(
    fake: FakeSystem, tmp_path: Path
) -> None:
    backing = tmp_path / "disk.img"
    backing.write_bytes(b"\0" * 4096)
    here = os.stat(backing).st_dev
    fake.block(NVME, "nvme9n1", here, rotational="0")
    fake.loop("loop3", dev(7, 3), str(backing))
    info = fake.probe().info(dev(7, 3))
    assert (info.cls, info.disk) == (DeviceClass.SOLID, "nvme9n1")
    assert info.why.startswith("loop3 backing on nvme9n1")


def test_a_loop_device_whose_backing_file_is_gone_falls_back_to_its_own_queue(
    fake: FakeSystem, tmp_path: Path
) -> None:
    fake.loop("loop4", dev(7, 4), str(tmp_path / "gone.img") + " (deleted)", rotational="0")
    info = fake.probe().info(dev(7, 4))
    assert (info.cls, info.disk) == (DeviceClass.SOLID, "loop4")
    assert "No such file" in info.why


def test_a_loop_over_a_file_on_itself_stops_instead_of_going_round(
    fake: FakeSystem, tmp_path: Path
) -> None:
    backing = tmp_path / "self.img"
    backing.write_bytes(b"")
    fake.loop("loop5", os.stat(backing).st_dev, str(backing), rotational="1")
    info = fake.probe().info(os.stat(backing).st_dev)
    assert info.cls is DeviceClass.ROTATIONAL
    assert "on the device itself" in info.why


@pytest.mark.parametrize("fstype", ["nfs4", "nfs", "cifs", "fuse.sshfs", "9p", "ceph"])
def test_network_filesystems_are_their_own_class(fake: FakeSystem, fstype: str) -> None:
    fake.mount(dev(0, 50), "/mnt/share", fstype, "server:/export")
    info = fake.probe().info(dev(0, 50))
    assert (info.cls, info.fstype, info.disk) == (DeviceClass.NETWORK, fstype, "")
    assert info.depth == DEFAULT_DEPTH[DeviceClass.NETWORK] and not info.ordered


def test_a_network_block_device_is_network(fake: FakeSystem) -> None:
    fake.block(VIRTUAL, "nbd0", dev(43, 0), rotational="1")
    assert fake.probe().info(dev(43, 0)).cls is DeviceClass.NETWORK


def test_tmpfs_is_memory_read_by_one_thread_per_cpu(fake: FakeSystem) -> None:
    fake.mount(dev(0, 23), "/dev/shm", "tmpfs", "tmpfs")
    fake.block(VIRTUAL, "zram0", dev(253, 7), rotational="0")
    probe = fake.probe()
    info = probe.info(dev(0, 23))
    assert (info.cls, info.depth) == (DeviceClass.MEMORY, cpu_count())
    assert probe.info(dev(253, 7)).cls is DeviceClass.MEMORY


def test_an_overlay_is_classed_by_its_upper_layer(fake: FakeSystem, tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    upper.mkdir()
    fake.block(SATA, "sdc", os.stat(upper).st_dev, rotational="1")
    fake.mount(dev(0, 60), "/merged", "overlay", "overlay", f"rw,lowerdir=/l1:/l2,upperdir={upper}")
    info = fake.probe().info(dev(0, 60))
    assert (info.cls, info.disk, info.fstype) == (DeviceClass.ROTATIONAL, "sdc", "overlay")


def test_an_unresolvable_device_is_unknown_and_says_why(fake: FakeSystem) -> None:
    fake.mount(dev(0, 70), "/tank", "zfs", "tank/data")
    probe = fake.probe()
    cases = {
        dev(8, 48): "no ",  # a block device missing from sysfs
        dev(0, 99): "no mount listed",  # an anonymous device with no mount
        dev(0, 70): "no block device found",  # ZFS names a pool, not a disk
    }
    for number, reason in cases.items():
        info = probe.info(number)
        assert info.cls is DeviceClass.UNKNOWN and reason in info.why
        assert info.depth == DEFAULT_DEPTH[DeviceClass.UNKNOWN] > 1
    fake.block(SATA, "sdd", dev(8, 64))  # a disk without a queue/ directory
    assert "no queue/rotational" in fake.probe().info(dev(8, 64)).why


def test_answers_are_cached_per_device(fake: FakeSystem) -> None:
    sda = fake.block(SATA, "sda", dev(8, 0), rotational="1")
    probe = fake.probe()
    first = probe.info(dev(8, 0))
    (sda / "queue" / "rotational").write_text("0\n")
    assert probe.info(dev(8, 0)) is first
    assert fake.probe().info(dev(8, 0)).cls is DeviceClass.SOLID


def test_device_for_takes_a_path_or_an_st_dev(tmp_path: Path) -> None:
    info = device_for(tmp_path)
    assert info.dev == os.stat(tmp_path).st_dev and info.depth >= 1
    assert device_for(info.dev) == info
    with pytest.raises(FileNotFoundError):
        device_for(tmp_path / "missing")


def test_the_override_wins_and_the_depth_is_shared_among_workers(fake: FakeSystem) -> None:
    fake.block(SATA, "sda", dev(8, 0), rotational="1")
    info = fake.probe().info(dev(8, 0))
    assert read_depth(info) == 1
    assert read_depth(info, 4) == 4
    with pytest.raises(ValueError, match="at least 1"):
        read_depth(info, 0)
    assert [threads_per_worker(16, w) for w in (1, 2, 3, 16, 32)] == [16, 8, 6, 1, 1]
    assert threads_per_worker(1, 0) == 1


# Read order ------------------------------------------------------------------------------------


def _written(root: Path, count: int, synced: bool = True) -> list[str]:
    """`count` files of a few blocks each; synced, so that each has its blocks allocated.

    An fsync allocates a file of two blocks or more on ext4 here, but may leave a one-block file
    in delayed allocation; a full sync, slow on a busy machine, is the fallback.
    """
    paths = []
    for i in range(count):
        path = root / f"f{i:03d}"
        with open(path, "wb") as f:
            f.write(content(4096 * (2 + i % 5), seed=i))
            if synced:
                os.fsync(f.fileno())
        paths.append(str(path))
    if synced and any(where.extent is None for where in locate(paths)):
        os.sync()
    return paths


@pytest.fixture
def fiemap_dir(tmp_path: Path) -> Iterator[Path]:
    """The test's directory, where its filesystem answers FIEMAP."""
    probe = tmp_path / "probe"
    probe.write_bytes(b"x")
    fd = os.open(probe, os.O_RDONLY)
    try:
        first_extent(fd)
    except OSError as exc:
        pytest.skip(f"no FIEMAP on {tmp_path}'s filesystem: {exc}")
    finally:
        os.close(fd)
    yield tmp_path


def test_fiemap_gives_each_file_a_plausible_first_extent(fiemap_dir: Path) -> None:
    paths = _written(fiemap_dir, 40)
    fs = os.statvfs(fiemap_dir)
    locations = locate(paths)
    offsets = set()
    for path, where in zip(paths, locations, strict=True):
        assert where.extent is not None, path
        assert where.extent.physical % 512 == 0
        assert 0 < where.extent.physical < fs.f_blocks * fs.f_frsize
        assert where.extent.length >= min(os.path.getsize(path), fs.f_bsize)
        offsets.add(where.extent.physical)
    assert len(offsets) == len(paths)  # no two files start at one place


def test_physical_order_sorts_by_first_extent_and_is_stable(fiemap_dir: Path) -> None:
    paths = _written(fiemap_dir, 60)
    paths.reverse()
    order = physical_order(paths)
    assert sorted(order) == list(range(len(paths)))
    offsets = [where.extent.physical for where in locate(paths) if where.extent]
    assert [offsets[i] for i in order] == sorted(offsets)
    assert physical_order(paths) == order
    # The same files given in another order come back in the same physical order.
    shuffled = paths[1::2] + paths[::2]
    assert [shuffled[i] for i in physical_order(shuffled)] == [paths[i] for i in order]


def test_files_without_an_extent_follow_by_inode_then_the_unopenable(fiemap_dir: Path) -> None:
    paths = _written(fiemap_dir, 5)
    empty = [str(fiemap_dir / name) for name in ("e1", "e2")]
    for path in empty:
        Path(path).write_bytes(b"")
    missing = str(fiemap_dir / "missing")
    batch = [missing, empty[1], paths[0], empty[0], *paths[1:]]
    order = [batch[i] for i in physical_order(batch)]
    assert sorted(order[:5]) == sorted(paths)
    by_inode = sorted(empty, key=lambda p: os.stat(p).st_ino)
    assert order[5:] == [*by_inode, missing]


def test_without_fiemap_the_order_is_by_inode_and_fiemap_is_asked_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = _written(tmp_path, 12, synced=False)
    asked = []

    def no_fiemap(fd: int) -> Extent | None:
        asked.append(fd)
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(readorder, "first_extent", no_fiemap)
    inodes = [os.stat(p).st_ino for p in paths]
    assert physical_order(paths) == inode_order(inodes)
    assert len(asked) == 1
    # With the walk's inode numbers, the batch is not even opened after the first file.
    gone = [str(tmp_path / f"gone{i}") for i in range(3)]
    assert physical_order(gone, [30, 10, 20]) == [1, 2, 0]


def test_a_file_failing_fiemap_alone_keeps_fiemap_for_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = _written(tmp_path, 3, synced=False)
    positions: Iterator[Extent | OSError] = iter(
        [OSError(errno.EIO, "I/O error"), Extent(8192, 4096), Extent(4096, 4096)]
    )

    def flaky(fd: int) -> Extent | None:
        answer = next(positions)
        if isinstance(answer, OSError):
            raise answer
        return answer

    monkeypatch.setattr(readorder, "first_extent", flaky)
    found = locate(paths)
    assert found[0] == Location(None, os.stat(paths[0]).st_ino)
    assert order_of(found) == [2, 1, 0]


def test_tmpfs_has_no_fiemap_and_falls_back_to_inode_order() -> None:
    shm = "/dev/shm"
    if not os.path.isdir(shm) or device_for(shm).cls is not DeviceClass.MEMORY:
        pytest.skip("no tmpfs at /dev/shm")
    import tempfile

    with tempfile.TemporaryDirectory(dir=shm) as root:
        paths = _written(Path(root), 8, synced=False)
        found = locate(paths)
        assert all(where.extent is None for where in found)
        assert [where.inode for where in found] == [os.stat(p).st_ino for p in paths]
        assert physical_order(paths) == inode_order([os.stat(p).st_ino for p in paths])


def test_seek_distance_is_the_travel_of_one_head() -> None:
    tally = readorder.SeekTally
    assert seek_distance([]) == tally(0, 0, 0)
    # From 0: -> 100 (100), read to 150, -> 150 (none), read to 200, -> 50 (150, backward).
    assert seek_distance([(100, 50), (150, 50), (50, 10)], start=0) == tally(250, 2, 1)
    # By default the head starts where the first read does.
    assert seek_distance([(100, 50), (150, 50), (50, 10)]) == tally(150, 1, 1)
    assert seek_distance([(300, 10), (0, 10), (200, 10)]) == tally(310 + 190, 2, 1)
    reads = [(4096 * k, 4096) for k in (5, 1, 9, 3, 7)]
    assert seek_distance(sorted(reads)) == tally(4 * 4096, 4, 0)
    assert seek_distance(reads).distance > 4 * 4096
