"""Which filesystems the digest cache trusts, what identifies each across remounts, and how every
later change to a file is made to show in its ctime.

A cached digest is keyed on a file's filesystem, inode, size, mtime and ctime, so the cache
trusts a filesystem only where (1) the kernel sets ctime at every change: not an image whose
timestamps come from whoever built it (squashfs, EROFS, ISO 9660), not a network filesystem
(another client's write shows late, or with the server's clock), not a stacking one whose layers
share one `f_fsid` and repeat inode numbers (overlayfs, FUSE); (2) a file written through a
shared memory mapping can be written back on demand (not tmpfs, which has no backing store to
write to); and (3) its identity names one inode space and outlives a remount.  Trusted: ext2/3/4
(`f_fsid` made from the filesystem UUID), btrfs (`f_fsid` made from the UUID and the subvolume)
and XFS (whose `f_fsid` is the device number, which another mount may reuse: its UUID instead,
from FS_IOC_GETFSUUID, Linux 6.5).  Any other filesystem is read as without a cache.

A write through a shared mapping moves mtime and ctime only when it first dirties a clean page;
a page already dirty takes further writes unseen until it is written back.  `expose_mapped_writes`
writes a file's dirty pages back (without a device flush) before the file is read for a digest to
keep: after it, any write through a mapping faults and moves ctime.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import stat

from dedup_engine.openflags import OPEN_DIR

#: `statfs` f_type of the filesystems trusted (linux/magic.h): ext2/3/4, XFS, btrfs.
TRUSTED_TYPES = frozenset({0xEF53, 0x58465342, 0x9123683E})
#: _IOR(0x15, 0, struct fsuuid2 { __u8 len; __u8 uuid[16]; }), from linux/fs.h.
_FS_IOC_GETFSUUID = 0x80111500
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
    file or directory on it (its target with `follow_links`; relative to `dir_fd` where given);
    None where the cache does not trust that filesystem or it gives no identity.  Asked of the
    open file, which must be on `dev`: a path that now leads to another filesystem never lends
    that one's identity.  OSError where the file cannot be asked.

    The identity is `f_fsid` (8 bytes), or where that is the device number, the filesystem's
    UUID (17 bytes: "U" and the UUID)."""
    flags = os.O_PATH | os.O_CLOEXEC | (0 if follow_links else os.O_NOFOLLOW)
    fd = os.open(path, flags, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if st.st_dev != dev:
            raise OSError(errno.EXDEV, "no longer on the device scanned", path)
        if _sync_file_range is None or filesystem_type(fd) not in TRUSTED_TYPES:
            return None
        fsid = os.fstatvfs(fd).f_fsid
        if fsid != dev:
            return fsid.to_bytes(8, "little", signed=False) if fsid else None
        if stat.S_ISDIR(st.st_mode):
            uuid = _uuid_of_directory(".", dev, fd)
        else:
            uuid = _uuid_of_directory(os.path.dirname(path) or ".", dev, dir_fd)
    finally:
        os.close(fd)
    return None if uuid is None else b"U" + uuid


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


def _uuid_of_directory(path: str, dev: int, dir_fd: int | None) -> bytes | None:
    """The UUID of the filesystem of directory `path`, if it is on `dev` and the kernel says
    one (an ioctl, so the directory is opened for reading: an O_PATH descriptor takes none)."""
    try:
        fd = os.open(path, OPEN_DIR & ~os.O_NOFOLLOW, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        if os.fstat(fd).st_dev != dev:
            return None
        answer = bytearray(17)
        fcntl.ioctl(fd, _FS_IOC_GETFSUUID, answer)
    except OSError:  # ENOTTY: an older kernel, or a filesystem without a UUID
        return None
    finally:
        os.close(fd)
    uuid = bytes(answer[1 : 1 + min(answer[0], 16)])
    return uuid if uuid.strip(b"\0") else None
