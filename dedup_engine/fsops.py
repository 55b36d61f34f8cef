"""The system calls `apply` changes the disk with, behind one interface that tests can fault.

Every call that `apply` makes to change or open a file goes through a `Syscalls` object, so a test
can make any one of them fail with any errno (or crash the process) at any step of an operation
and then check what is left on disk.  `REAL` is the implementation on the real system.

Two calls are not in `os`: `rename_noreplace` (renameat2 with RENAME_NOREPLACE, so putting a file
back never overwrites a file someone else created in the meantime) and `dedupe` (the
FIDEDUPERANGE ioctl: the kernel shares the blocks only if the bytes are equal, atomically).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import struct
from typing import Protocol

#: _IOWR(0x94, 54, struct file_dedupe_range), from linux/fs.h.
FIDEDUPERANGE = 0xC0189436
_RANGE = struct.Struct("=QQHHI")  # src_offset, src_length, dest_count, reserved1, reserved2
_INFO = struct.Struct("=qQQiI")  # dest_fd, dest_offset, bytes_deduped, status, reserved
_SAME, _DIFFERS = 0, 1
#: Asked per ioctl call; the kernel may do less (XFS caps a call at 1 GiB) and says how much.
DEDUPE_STEP = 1 << 30

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


class ContentDiffers(OSError):
    """The kernel compared the bytes for a dedupe and they differ: nothing was shared."""


class Syscalls(Protocol):
    def open(self, path: str, flags: int) -> int: ...
    def rename_noreplace(self, src: str, dst: str) -> None: ...
    def link(self, src: str, dst: str) -> None: ...
    def symlink(self, target: str, path: str) -> None: ...
    def unlink(self, path: str) -> None: ...
    def mkdir(self, path: str) -> None: ...
    def dedupe(self, src_fd: int, dst_fd: int, length: int) -> None: ...


class RealSyscalls:
    """The real calls; `rename_noreplace` falls back to link+unlink where renameat2 is missing."""

    def __init__(self) -> None:
        self._renameat2 = None
        name = ctypes.util.find_library("c")
        if name:
            libc = ctypes.CDLL(name, use_errno=True)
            self._renameat2 = getattr(libc, "renameat2", None)

    def open(self, path: str, flags: int) -> int:
        return os.open(path, flags)

    def rename_noreplace(self, src: str, dst: str) -> None:
        if self._renameat2 is not None:
            result = self._renameat2(
                _AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE
            )
            if result == 0:
                return
            code = ctypes.get_errno()
            if code not in (errno.EINVAL, errno.ENOSYS):
                raise OSError(code, os.strerror(code), src, None, dst)
        # A filesystem without RENAME_NOREPLACE: link refuses an existing name as well, and
        # `src` is one of our own names, so removing it after the link loses nothing.
        os.link(src, dst, follow_symlinks=False)
        try:
            os.unlink(src)
        except OSError:
            os.unlink(dst)  # not renamed after all: leave no second name behind
            raise

    def link(self, src: str, dst: str) -> None:
        os.link(src, dst, follow_symlinks=False)

    def symlink(self, target: str, path: str) -> None:
        os.symlink(target, path)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def mkdir(self, path: str) -> None:
        os.mkdir(path)

    def dedupe(self, src_fd: int, dst_fd: int, length: int) -> None:
        """Share `length` bytes of src with dst if they are equal; `ContentDiffers` if not."""
        offset = 0
        while offset < length:
            step = min(DEDUPE_STEP, length - offset)
            request = _RANGE.pack(offset, step, 1, 0, 0) + _INFO.pack(dst_fd, offset, 0, 0, 0)
            buf = bytearray(request)
            fcntl.ioctl(src_fd, FIDEDUPERANGE, buf)
            _, _, done, status, _ = _INFO.unpack_from(buf, _RANGE.size)
            if status == _DIFFERS:
                raise ContentDiffers(errno.EILSEQ, "the kernel found the bytes differ")
            if status < 0:
                raise OSError(-status, os.strerror(-status))
            if done == 0:
                raise OSError(errno.EIO, "the kernel deduplicated no bytes")
            offset += done


REAL: Syscalls = RealSyscalls()


def fs_type(path: str) -> str:
    """The filesystem type of `path`'s mount ("ext4", "xfs"...), or "unknown"."""
    try:
        dev = os.lstat(path).st_dev
        wanted = f"{os.major(dev)}:{os.minor(dev)}"
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as table:
            for line in table:
                fields = line.split()
                if len(fields) > 2 and fields[2] == wanted and " - " in line:
                    return line.split(" - ", 1)[1].split()[0]
    except OSError:
        pass
    return "unknown"
