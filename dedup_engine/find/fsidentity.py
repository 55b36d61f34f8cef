"""Which filesystems the digest cache trusts, what identifies each across remounts, and how every
later change to a file is made to show in its ctime.

A cached digest is keyed on a file's filesystem, inode, size, mtime and ctime, so the cache
trusts a filesystem only where (1) the kernel sets ctime at every change: not an image whose
timestamps come from whoever built it (squashfs, EROFS, ISO 9660), not a network filesystem
(another client's write shows late, or with the server's clock), not a stacking one whose layers
share one `f_fsid` and repeat inode numbers (overlayfs, FUSE); (2) a file written through a
shared memory mapping can be written back on demand (not tmpfs, which has no backing store to
write to); (3) no call lets a user change a file's bytes and leave its ctime (not XFS, whose
XFS_IOC_SWAPEXT, for its defragmenter, swaps two files' data for anyone who may write both and
keeps their timestamps); and (4) its identity names one inode space and outlives a remount.
Trusted: ext2/3/4 (`f_fsid` made from the filesystem UUID) and btrfs (`f_fsid` made from the
UUID and the subvolume).  Any other filesystem is read as without a cache.

The cache trusts a filesystem not to change while it is not mounted here: an image or a disk
written elsewhere (a copy of an image edited, a disk written by another machine) keeps its UUID,
inode numbers and times, and its digests are taken as they were.

A write through a shared mapping moves mtime and ctime only when it first dirties a clean page;
a page already dirty takes further writes unseen until it is written back.  `expose_mapped_writes`
writes a file's dirty pages back (without a device flush) before the file is read for a digest to
keep: after it, any write through a mapping faults and moves ctime.
"""

from __future__ import annotations

import ctypes
import errno
import os

#: `statfs` f_type of the filesystems trusted (linux/magic.h): ext2/3/4, btrfs.
TRUSTED_TYPES = frozenset({0xEF53, 0x9123683E})
#: The same filesystems by the names /proc/self/mountinfo gives their types.
TRUSTED_MOUNT_TYPES = frozenset({b"ext2", b"ext3", b"ext4", b"btrfs"})
#: SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER.
_WRITE_AND_WAIT = 7
#: Room for `struct statfs` (120 bytes on 64-bit Linux), whose first field is f_type (a long).
_STATFS_BYTES = 256

_libc = ctypes.CDLL(None, use_errno=True)
_fstatfs = getattr(_libc, "fstatfs", None)
_sync_file_range = getattr(_libc, "sync_file_range", None)
if _sync_file_range is not None:
    _sync_file_range.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]


def filesystem_id(
    path: str, dev: int, follow_links: bool = False, dir_fd: int | None = None
) -> bytes | None:
    """The identity, kept across remounts, of the filesystem of device `dev`, asked of `path`, a
    file or directory on it (its target with `follow_links`; relative to `dir_fd` where given):
    its `f_fsid`, 8 bytes.  None where the cache does not trust that filesystem, or it gives no
    identity (0, or its device number, which the next filesystem on that device would share).
    Asked of the open file, which must be on `dev`: a path that now leads to another filesystem
    never lends that one's identity.  OSError where the file cannot be asked."""
    flags = os.O_PATH | os.O_CLOEXEC | (0 if follow_links else os.O_NOFOLLOW)
    fd = os.open(path, flags, dir_fd=dir_fd)
    try:
        if os.fstat(fd).st_dev != dev:
            raise OSError(errno.EXDEV, "no longer on the device scanned", path)
        if _sync_file_range is None or filesystem_type(fd) not in TRUSTED_TYPES:
            return None
        fsid = os.fstatvfs(fd).f_fsid
    finally:
        os.close(fd)
    return fsid.to_bytes(8, "little", signed=False) if fsid and fsid != dev else None


def filesystem_type(fd: int) -> int | None:
    """`statfs`'s f_type of the filesystem of descriptor `fd` (an O_PATH one will do), or None
    where it cannot be asked."""
    if _fstatfs is None:
        return None
    answer = ctypes.create_string_buffer(_STATFS_BYTES)
    if _fstatfs(fd, answer) != 0:
        return None
    return ctypes.c_long.from_buffer(answer).value & 0xFFFFFFFF


def expose_mapped_writes(fd: int) -> None:
    """Write back the dirty pages of the open file `fd` and wait (sync_file_range; no device
    flush, and no cost for a file with none): any later write through a shared mapping then
    faults and moves the file's ctime.  OSError where it fails."""
    if _sync_file_range is None:
        raise OSError(errno.ENOSYS, "sync_file_range is not available")
    if _sync_file_range(fd, 0, 0, _WRITE_AND_WAIT) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
