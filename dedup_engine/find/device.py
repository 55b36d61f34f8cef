"""Which kind of device holds a root, and how many reads it should have in flight.

Read concurrency belongs to the device, not to the CPU count: a spinning disk wants one reader
going through its files in physical order (`readorder.physical_order`), while SSDs, NVMe, virtual
disks and network filesystems only reach their speed with many reads outstanding. This module
finds the device behind an `st_dev` and classes it, from `/proc/self/mountinfo` (the filesystem
type) and sysfs (`/sys/dev/block/MAJ:MIN` and the disk's `queue/rotational`), without a subprocess.

How the workers use it (`readers.Readers`):

- once per `st_dev` a worker meets, `info = DeviceProbe().info(st_dev)`, cached per `st_dev`;
- `depth = read_depth(info, override)`, where `override` is the user's `--io-depth`;
- if `info.ordered`, the device's files are read in `physical_order` by one thread, while holding
  the disk's lock, which every worker of every run of the user shares (one reader at a time);
- otherwise every worker reading from the device runs `threads_per_worker(depth, workers)` reader
  threads (`os.read` and BLAKE3 release the GIL), so about `depth` reads are in flight in all.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from dedup_engine.options import cpu_count


class DeviceClass(Enum):
    """What a device is like to read from; each class has its own default read depth."""

    ROTATIONAL = "rotational"  # a spinning disk: one reader, in physical order
    SOLID = "solid"  # SSD, NVMe, eMMC: many reads in flight
    VIRTUAL = "virtual"  # a hypervisor's disk (virtio, Xen, VMware...): its rotational flag is moot
    NETWORK = "network"  # NFS, SMB, sshfs, Ceph...: each read is a round trip
    MEMORY = "memory"  # tmpfs, ramfs, zram: a read is a memory copy, bound by the CPUs
    UNKNOWN = "unknown"  # could not be resolved (overlay without a layer, ZFS, a vanished disk)


#: Reads in flight per device, in all workers together, by class. Where each comes from:
#: - ROTATIONAL 1: fclones (since 0.9, once it read in physical order) found one thread per hard
#:   disk gave slightly more IOPS than several, and parallel sequential reads "hurt a lot";
#:   rmlint also reads each disk in physical order.
#: - SOLID 16: fclones' SSD default is 4 threads per core, 16 on a 4-core machine such as the
#:   laptop of its published NVMe benchmark; a SATA disk queues 32 commands (NCQ). A constant:
#:   the device, not the CPU count, sets it. No SSD or NVMe disk was at hand to measure.
#: - VIRTUAL 32: measured on this project's virtio disk by the cold sweep of
#:   benchmarks/test_bench_seek.py (20,000 files, 4 KiB head + BLAKE3 each, page cache dropped,
#:   two worker processes, median of 3). With threads, two sweeps: 2 in flight 3.53 s, 4
#:   2.01-2.51 s, 8 1.30-1.61 s, 16 1.11-1.26 s, 32 1.00-1.01 s, 64 0.95-1.03 s; a third, on a
#:   faster day: 16 0.88 s, 32 0.81 s, 64 0.94 s. With one thread a worker reading ahead, as
#:   `readers` reads a local disk: 8 0.54 s, 16 0.44 s, 32 0.33 s, 64 0.42 s. Reading ahead
#:   costs no thread per read, so the depth that reads fastest is taken; warm, 2 to 64 in
#:   flight all read the tree in 0.3-0.4 s.
#: - NETWORK 32: each read is a round trip, so latency, not the server, bounds one reader; the
#:   Linux NFSv4.1 client opens 64 session slots by default (NFS4_DEF_SLOT_TABLE_SIZE): half of
#:   them leaves room for the walk's metadata calls and other clients.
#: - MEMORY: one per usable CPU (`cpu_count()` at lookup); a read is a copy that holds a CPU, and
#:   threads gave no gain over processes on warm small files (anchors).
#: - UNKNOWN 8: a hedge between a disk and the rest. fclones reads an unknown device in
#:   parallel too: many reads in flight cost a hard disk at most 30% in its tests, while one
#:   reader makes an SSD or a virtual disk several times slower (2.2-2.7x here, 8 against 2).
DEFAULT_DEPTH: dict[DeviceClass, int] = {
    DeviceClass.ROTATIONAL: 1,
    DeviceClass.SOLID: 16,
    DeviceClass.VIRTUAL: 32,
    DeviceClass.NETWORK: 32,
    DeviceClass.UNKNOWN: 8,
}

#: Filesystem types whose reads cross a network (mountinfo's type; FUSE types carry a subtype).
# fmt: off
NETWORK_FS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "afs", "coda", "9p", "virtiofs", "ceph",
    "lustre", "glusterfs", "gpfs", "beegfs", "orangefs", "pvfs2", "davfs", "sshfs",
    "fuse.sshfs", "fuse.glusterfs", "fuse.ceph", "fuse.cephfs", "fuse.s3fs", "fuse.rclone",
    "fuse.gcsfuse", "fuse.davfs2", "fuse.gvfsd-fuse", "fuse.juicefs", "fuse.moosefs",
    "fuse.lizardfs", "fuse.goofys", "fuse.curlftpfs",
})
# fmt: on

#: Filesystem types whose files live in memory.
MEMORY_FS = frozenset({"tmpfs", "ramfs", "devtmpfs", "hugetlbfs", "shm"})

# Block devices classed by their kernel name, before queue/rotational (which they report wrongly
# or not at all): RAM disks and persistent memory, and block devices served over the network.
_MEMORY_DISK = re.compile(r"(zram|ram|pmem|brd)\d")
_NETWORK_DISK = re.compile(r"(nbd|rbd|drbd)\d")
# A hypervisor's disk: virtio-blk sits under a virtio bus, Xen names its disks xvd*, and SCSI or
# NVMe disks emulated by a hypervisor name it as their vendor. Such disks often say rotational=1
# (virtio-blk does unless the host sets it), though the host behind them serves reads in parallel.
_VIRTUAL_DISK = re.compile(r"xvd[a-z]")
_VIRTUAL_VENDORS = ("QEMU", "VMware", "Msft", "VBOX", "Google", "Xen", "Virtual")

# Combining the disks under a device-mapper or md device: the most cautious class wins, so an
# SSD cache over a hard disk (dm-cache, bcache) or a mirror with one spinning member is read as
# a spinning disk.
_CAUTION = (
    DeviceClass.ROTATIONAL,
    DeviceClass.UNKNOWN,
    DeviceClass.NETWORK,
    DeviceClass.VIRTUAL,
    DeviceClass.SOLID,
    DeviceClass.MEMORY,
)

# Loop over loop over dm over ...: a bound on the chain, and a guard against a cycle.
_MAX_HOPS = 8


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """The device behind one `st_dev`: its class, its default read depth, and how that was found.

    `disk` is the kernel name of the disk the class was read from (`sda`, `nvme0n1`), empty where
    there is none (tmpfs, NFS); `fstype` is the filesystem type from mountinfo, empty when the
    device has no mount there; `why` says in a few words what decided the class, for `--stats`
    and for a user wondering why a disk was read one way.
    """

    dev: int
    cls: DeviceClass
    depth: int
    fstype: str
    disk: str
    why: str

    @property
    def ordered(self) -> bool:
        """Whether reads should go in physical order (`readorder.physical_order`)."""
        return self.cls is DeviceClass.ROTATIONAL


@dataclass(frozen=True, slots=True)
class Mount:
    """One line of mountinfo: what is mounted where."""

    major: int
    minor: int
    point: str
    fstype: str
    source: str
    options: str  # the superblock options: overlay's layers are there


@dataclass(frozen=True, slots=True)
class _Verdict:
    cls: DeviceClass
    disk: str
    why: str


class DeviceProbe:
    """Classifies devices by `st_dev`, reading sysfs and procfs under the given roots; caches.

    The roots are arguments so that tests can build a fake sysfs and mountinfo; the module's
    default probe reads the real `/sys` and `/proc`. Mount information is read once per probe.
    """

    def __init__(self, sys_root: str = "/sys", proc_root: str = "/proc") -> None:
        self.sys_root = sys_root
        self.proc_root = proc_root
        self._sys_real = os.path.realpath(sys_root)
        self._cache: dict[int, DeviceInfo] = {}
        self._mounts: list[Mount] | None = None

    def info(self, dev: int, path: str | None = None) -> DeviceInfo:
        """The device of `dev` (an `st_dev`); `path`, a canonical path on it, helps find its mount.

        Cached per `st_dev`: a later call for the same device returns the first answer.
        """
        found = self._cache.get(dev)
        if found is None:
            mount = self.mount_of(dev, path)
            verdict = self._classify(dev, mount, set())
            depth = cpu_count() if verdict.cls is DeviceClass.MEMORY else DEFAULT_DEPTH[verdict.cls]
            fstype = mount.fstype if mount else ""
            found = DeviceInfo(dev, verdict.cls, depth, fstype, verdict.disk, verdict.why)
            self._cache[dev] = found
        return found

    def mounts(self) -> list[Mount]:
        """Every mount in `/proc/self/mountinfo`, in its order; none if it cannot be read."""
        if self._mounts is None:
            text = _read(os.path.join(self.proc_root, "self", "mountinfo"))
            self._mounts = _parse_mountinfo(text or "")
        return self._mounts

    def mount_of(self, dev: int, path: str | None = None) -> Mount | None:
        """The mount of `dev` by its MAJ:MIN, else the mount whose point is the longest prefix
        of `path` (a btrfs subvolume has an `st_dev` of its own that mountinfo does not list)."""
        major, minor = os.major(dev), os.minor(dev)
        for mount in self.mounts():
            if (mount.major, mount.minor) == (major, minor):
                return mount
        if path is None:
            return None
        best: Mount | None = None
        for mount in self.mounts():
            if _under(path, mount.point) and (best is None or len(mount.point) >= len(best.point)):
                best = mount  # the later of two mounts on one point is the visible one
        return best

    def _classify(self, dev: int, mount: Mount | None, seen: set[int]) -> _Verdict:
        if mount is not None:
            by_type = _class_of_fstype(mount.fstype)
            if by_type is not None:
                return _Verdict(by_type, "", f"{mount.fstype} filesystem")
        if os.major(dev) != 0:
            return self._block(os.major(dev), os.minor(dev), seen)
        if mount is not None:
            return self._anonymous(mount, seen)
        return _Verdict(DeviceClass.UNKNOWN, "", f"no mount listed for device {_mm(dev)}")

    def _anonymous(self, mount: Mount, seen: set[int]) -> _Verdict:
        """A filesystem on an anonymous device (major 0): btrfs, fuseblk, overlay, ZFS..."""
        if mount.fstype == "overlay":
            layer = _overlay_layer(mount.options)
            if layer is not None:
                return self._through_file(layer, f"overlay layer {layer}", seen)
        if mount.source.startswith("/dev/"):
            name = self._block_name(mount.source)
            numbers = _parse_mm(_read(os.path.join(self._class_block(), name, "dev")) or "")
            if name and numbers:
                return self._block(*numbers, seen)
        why = f"{mount.fstype} on {mount.source or '?'}: no block device found"
        return _Verdict(DeviceClass.UNKNOWN, "", why)

    def _block(self, major: int, minor: int, seen: set[int]) -> _Verdict:
        """A block device by number, followed down to the disk that serves its reads."""
        dev = os.makedev(major, minor)
        if dev in seen or len(seen) >= _MAX_HOPS:
            why = f"device chain loops or is too deep at {major}:{minor}"
            return _Verdict(DeviceClass.UNKNOWN, "", why)
        seen = {*seen, dev}
        link = os.path.join(self.sys_root, "dev", "block", f"{major}:{minor}")
        if not os.path.isdir(link):
            return _Verdict(DeviceClass.UNKNOWN, "", f"no {link}")
        node = os.path.realpath(link)
        # A partition has no queue of its own: its disk is the directory above it.
        if not os.path.isdir(os.path.join(node, "queue")) and os.path.exists(
            os.path.join(node, "partition")
        ):
            node = os.path.dirname(node)
        name = os.path.basename(node)
        backing = (_read(os.path.join(node, "loop", "backing_file")) or "").rstrip("\n")
        if backing:
            return self._loop(node, name, backing.removesuffix(" (deleted)"), seen)
        members = self._members(node)
        if members:
            return _most_cautious(name, (self._block(*mm, seen) for mm in members))
        return self._disk(node, name)

    def _loop(self, node: str, name: str, backing: str, seen: set[int]) -> _Verdict:
        """A loop device reads through its backing file's filesystem. Where that cannot be
        reached (another mount namespace, a deleted file), the loop's own queue is the best
        guess: the kernel makes it non-rotational when the backing device is."""
        via = self._through_file(backing, f"{name} backing", seen)
        if via.cls is not DeviceClass.UNKNOWN:
            return via
        own = self._disk(node, name)
        return _Verdict(own.cls, name, f"{via.why}; {own.why}")

    def _disk(self, node: str, name: str) -> _Verdict:
        """A whole disk: its class from its name, its bus, its vendor, then queue/rotational."""
        if _MEMORY_DISK.match(name):
            return _Verdict(DeviceClass.MEMORY, name, f"{name} is a memory-backed disk")
        if _NETWORK_DISK.match(name):
            return _Verdict(DeviceClass.NETWORK, name, f"{name} is a network block device")
        vendor = (_read(os.path.join(node, "device", "vendor")) or "").strip()
        if (
            "/virtio" in node.removeprefix(self._sys_real)
            or _VIRTUAL_DISK.match(name)
            or vendor.startswith(_VIRTUAL_VENDORS)
        ):
            return _Verdict(DeviceClass.VIRTUAL, name, f"{name} is a virtual disk")
        rotational = (_read(os.path.join(node, "queue", "rotational")) or "").strip()
        if rotational == "1":
            return _Verdict(DeviceClass.ROTATIONAL, name, f"{name}: queue/rotational=1")
        if rotational == "0":
            return _Verdict(DeviceClass.SOLID, name, f"{name}: queue/rotational=0")
        return _Verdict(DeviceClass.UNKNOWN, name, f"{name}: no queue/rotational")

    def _members(self, node: str) -> list[tuple[int, int]]:
        """The MAJ:MIN of the devices under a dm, md or bcache device (its `slaves/`)."""
        slaves = os.path.join(node, "slaves")
        try:
            names = sorted(os.listdir(slaves))
        except OSError:
            return []
        numbers = (_parse_mm(_read(os.path.join(slaves, n, "dev")) or "") for n in names)
        return [mm for mm in numbers if mm]

    def _through_file(self, path: str, what: str, seen: set[int]) -> _Verdict:
        """The device of the filesystem holding `path` (a loop's backing file, an overlay layer)."""
        try:
            dev = os.stat(path).st_dev
        except OSError as exc:
            return _Verdict(DeviceClass.UNKNOWN, "", f"{what}: {exc.strerror or exc}")
        if dev in seen:
            return _Verdict(DeviceClass.UNKNOWN, "", f"{what} is on the device itself")
        inner = self._classify(dev, self.mount_of(dev, path), seen)
        return _Verdict(inner.cls, inner.disk, f"{what} on {inner.why}")

    def _class_block(self) -> str:
        return os.path.join(self.sys_root, "class", "block")

    def _block_name(self, source: str) -> str:
        """The sysfs name of the block device a mount names by its `/dev` path."""
        if source.startswith("/dev/mapper/"):
            wanted = source.removeprefix("/dev/mapper/")
            for name in _listdir(self._class_block()):
                found = _read(os.path.join(self._class_block(), name, "dm", "name"))
                if found is not None and found.strip() == wanted:
                    return name
            return ""
        return os.path.basename(source)


_DEFAULT_PROBE = DeviceProbe()


def device_for(
    target: int | str | os.PathLike[str], probe: DeviceProbe | None = None
) -> DeviceInfo:
    """The device of an `st_dev`, or of the file or directory at a path (following symlinks).

    Pass the canonical path where there is one: when the device's own MAJ:MIN is not in
    mountinfo (a btrfs subvolume), the mount is found by the longest mount point above it.
    Raises OSError only for a path that cannot be stat'ed; an unresolvable device comes back as
    UNKNOWN, with the reason in `why`.
    """
    probe = probe or _DEFAULT_PROBE
    if isinstance(target, int):
        return probe.info(target)
    path = os.fspath(target)
    return probe.info(os.stat(path).st_dev, os.path.realpath(path))


def read_depth(info: DeviceInfo, override: int | None = None) -> int:
    """Reads to keep in flight on the device: the user's override (`--io-depth`), else its class's.

    The override holds for every device, a spinning one too: a RAID of hard disks, or one that
    sorts a deep queue itself (NCQ), may want more than one reader.
    """
    if override is None:
        return info.depth
    if override < 1:
        raise ValueError(f"a read depth must be at least 1, not {override}")
    return override


def threads_per_worker(depth: int, workers: int) -> int:
    """Reader threads each of `workers` processes runs for a device, so that `depth` reads are in
    flight in all: at least one each (a worker with files on the device must read them)."""
    return max(1, -(-depth // max(1, workers)))


def _class_of_fstype(fstype: str) -> DeviceClass | None:
    if fstype in NETWORK_FS:
        return DeviceClass.NETWORK
    if fstype in MEMORY_FS:
        return DeviceClass.MEMORY
    return None


def _most_cautious(name: str, verdicts: Iterable[_Verdict]) -> _Verdict:
    found = list(verdicts)
    worst = min(found, key=lambda v: _CAUTION.index(v.cls))
    return _Verdict(worst.cls, worst.disk, f"{name} over {worst.why}")


def _overlay_layer(options: str) -> str | None:
    """The layer an overlay's new files land in (upperdir), else its first lower layer."""
    fields = dict(opt.partition("=")[::2] for opt in options.split(","))
    if fields.get("upperdir"):
        return fields["upperdir"]
    lower = fields.get("lowerdir", "")
    return lower.split(":")[0] or None


def _parse_mountinfo(text: str) -> list[Mount]:
    """proc(5): `id parent MAJ:MIN root point options [optional...] - fstype source superopts`."""
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        head, tail = left.split(), right.split()
        if not sep or len(head) < 5 or len(tail) < 2:
            continue
        numbers = _parse_mm(head[2])
        if numbers:
            options = tail[2] if len(tail) > 2 else ""
            point, source = _unescape(head[4]), _unescape(tail[1])
            mounts.append(Mount(*numbers, point, tail[0], source, options))
    return mounts


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (`\\040`)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _under(path: str, point: str) -> bool:
    return point in ("/", path) or path.startswith(point.rstrip("/") + "/")


def _parse_mm(text: str) -> tuple[int, int] | None:
    """MAJ:MIN as sysfs and mountinfo write it; None for anything else."""
    found = re.fullmatch(r"(\d+):(\d+)", text.strip())
    return (int(found.group(1)), int(found.group(2))) if found else None


def _mm(dev: int) -> str:
    return f"{os.major(dev)}:{os.minor(dev)}"


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []
