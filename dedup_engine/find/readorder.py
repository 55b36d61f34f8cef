"""The order a spinning disk's files are read in: by where their data lies on the disk.

A hard disk serves reads in the order they come, and every jump of its head costs milliseconds;
reading a batch of files by the physical offset of their first extent turns the jumps into one
sweep, as fclones and rmlint do. The offset comes from the FIEMAP ioctl, one call per file on a
descriptor opened with the engine's read flags and no `FIEMAP_FLAG_SYNC` (rmlint syncs every file
first, which is most of its cost on a large tree). Where a filesystem has no FIEMAP (tmpfs, most
network filesystems) files go in inode order, which on ext4 and XFS follows the inode tables and
roughly the data; a file that cannot be opened keeps its place among the rest at the end.

`seek_distance` is a model of a single head for a read order: the benchmark measures orders with
it, so the spinning-disk path is measured without a spinning disk.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from dedup_engine.openflags import read_flags

#: FS_IOC_FIEMAP = _IOWR('f', 11, struct fiemap), the same number on every Linux architecture.
FS_IOC_FIEMAP = 0xC020660B

# struct fiemap: fm_start, fm_length, fm_flags, fm_mapped_extents, fm_extent_count, fm_reserved.
_FIEMAP = struct.Struct("=QQIIII")
# struct fiemap_extent: fe_logical, fe_physical, fe_length, 2 reserved u64, fe_flags, 3 reserved.
_EXTENT = struct.Struct("=QQQQQIIII")
_WHOLE_FILE = 0xFFFF_FFFF_FFFF_FFFF  # FIEMAP_MAX_OFFSET: the first extent anywhere in the file
_EXTENT_UNKNOWN = 0x0002  # data not yet on the disk (delayed allocation): no position
_EXTENT_DATA_INLINE = 0x0200  # data inside metadata; btrfs then says physical 0
# The filesystem has no FIEMAP at all: no use asking again for the rest of the batch.
_UNSUPPORTED = frozenset({errno.ENOTTY, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL})


@dataclass(frozen=True, slots=True)
class Extent:
    """Where a file's first run of data lies on its device, in bytes."""

    physical: int
    length: int


@dataclass(frozen=True, slots=True)
class Location:
    """What is known of where a file lies: its first extent, else its inode number, else nothing."""

    extent: Extent | None
    inode: int | None


@dataclass(frozen=True, slots=True)
class SeekTally:
    """What a single head travels to serve reads in a given order."""

    distance: int  # bytes between the end of each read and the start of the next, summed
    seeks: int  # reads that did not start where the one before ended
    backward: int  # of those, the ones that went back: a sweep in one direction has none


def first_extent(fd: int) -> Extent | None:
    """The first extent of the open file `fd`, or None where it has no data with a position yet
    (an empty file, a sparse file with no data, data still in delayed allocation).

    Raises OSError where the ioctl fails; an errno in `_UNSUPPORTED` means the filesystem has no
    FIEMAP.
    """
    buf = bytearray(_FIEMAP.size + _EXTENT.size)
    _FIEMAP.pack_into(buf, 0, 0, _WHOLE_FILE, 0, 0, 1, 0)
    fcntl.ioctl(fd, FS_IOC_FIEMAP, buf, True)
    mapped = _FIEMAP.unpack_from(buf)[3]
    if mapped == 0:
        return None
    _logical, physical, length, _r1, _r2, flags, *_rest = _EXTENT.unpack_from(buf, _FIEMAP.size)
    if flags & _EXTENT_UNKNOWN or (flags & _EXTENT_DATA_INLINE and physical == 0):
        return None
    return Extent(physical, length)


def locate(
    paths: Sequence[str | bytes],
    inodes: Sequence[int] | None = None,
    follow_links: bool = False,
) -> list[Location]:
    """Where each file lies: one open, one FIEMAP and at most one fstat per file.

    `inodes`, where the caller has them from the walk, spares the fstat. The paths should all be
    on one device: after the first "no FIEMAP here" the rest of the batch is not asked, and with
    `inodes` given, not even opened.
    """
    flags = read_flags(follow_links)
    fiemap = True
    found = []
    for i, path in enumerate(paths):
        known = inodes[i] if inodes is not None else None
        if not fiemap and known is not None:
            found.append(Location(None, known))
            continue
        try:
            fd = os.open(path, flags)
        except OSError:
            found.append(Location(None, known))
            continue
        try:
            extent, fiemap = _try_fiemap(fd) if fiemap else (None, False)
            if extent is None and known is None:
                known = os.fstat(fd).st_ino
        except OSError:
            pass  # fstat of an open descriptor failing: the file keeps its place in the batch
        finally:
            os.close(fd)
        found.append(Location(extent, known))
    return found


def physical_order(
    paths: Sequence[str | bytes],
    inodes: Sequence[int] | None = None,
    follow_links: bool = False,
) -> list[int]:
    """Indexes into `paths` in the order one reader should take them on a spinning disk.

    First the files with a known first extent, by its physical offset; then the rest by inode
    number; then those with neither, in the order given. The sort is stable, so equal keys (two
    names of one inode) keep the order given. Meant for a batch of one device's files, just
    before its reader reads them; it costs an open per file, so a solid device skips it.
    """
    return order_of(locate(paths, inodes, follow_links))


def order_of(locations: Sequence[Location]) -> list[int]:
    """The read order `physical_order` gives for files already located."""
    return sorted(range(len(locations)), key=lambda i: _sort_key(locations[i]))


def inode_order(inodes: Sequence[int]) -> list[int]:
    """Indexes into `inodes`, by inode number: the order where no FIEMAP is to be had."""
    return sorted(range(len(inodes)), key=inodes.__getitem__)


def seek_distance(reads: Iterable[tuple[int, int]], start: int | None = None) -> SeekTally:
    """The travel of one head serving `(physical offset, length)` reads in the order given.

    The head starts at `start`, by default where the first read begins (the way there is the
    same whatever the order); it ends each read at offset + length, and every read is a move
    from there to its offset, forward or back. A model: it counts bytes, not milliseconds, and
    knows nothing of tracks, caches or a drive reordering its queue. Good enough to compare
    orders.
    """
    head = start
    distance = seeks = backward = 0
    for offset, length in reads:
        if head is not None and offset != head:
            distance += abs(offset - head)
            seeks += 1
            backward += offset < head
        head = offset + length
    return SeekTally(distance, seeks, backward)


def _try_fiemap(fd: int) -> tuple[Extent | None, bool]:
    """(the first extent or None, whether to go on asking FIEMAP for the batch)."""
    try:
        return first_extent(fd), True
    except OSError as exc:
        return None, exc.errno not in _UNSUPPORTED


def _sort_key(location: Location) -> tuple[int, int]:
    if location.extent is not None:
        return (0, location.extent.physical)
    if location.inode is not None:
        return (1, location.inode)
    return (2, 0)
