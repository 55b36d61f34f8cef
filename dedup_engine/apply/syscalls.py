"""The system calls `apply` opens, reads and changes files with, behind one fault-able interface.

Every call that `apply` makes to open, read, lease or change a file goes through a `Syscalls`
object, so a test can make any one of them fail with any errno (or crash the process) at any step
of an operation and then check what is left on disk.  `REAL` is the implementation on the real
system.

Files are reached through their directory: `open_dir` opens a directory one component at a time
without following any symlink (a symlink planted anywhere on the way is refused, and a path
longer than PATH_MAX still works), and every other call names a file relative to such a
directory descriptor (`openat`, `renameat2`, `linkat`, `unlinkat`, `symlinkat`, `mkdirat`).

Calls not in `os`: `rename_noreplace` (renameat2 with RENAME_NOREPLACE, so putting a file back
never overwrites a file someone else created in the meantime), `exchange` (RENAME_EXCHANGE: a
link put in a copy's place in one step, so the name is never absent), `lease` (a Linux read
lease: it cannot be taken while any process holds the file open for writing, and it is broken,
visibly, when one opens it for writing) and `dedupe` (the FIDEDUPERANGE ioctl: the kernel
shares the blocks only if the bytes are equal, atomically).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import signal
import struct
from typing import Protocol

from dedup_engine.openflags import open_dir_handle

#: _IOWR(0x94, 54, struct file_dedupe_range), from linux/fs.h.
FIDEDUPERANGE = 0xC0189436
_RANGE = struct.Struct("=QQHHI")  # src_offset, src_length, dest_count, reserved1, reserved2
_INFO = struct.Struct("=qQQiI")  # dest_fd, dest_offset, bytes_deduped, status, reserved
_SAME, _DIFFERS = 0, 1
#: Asked per ioctl call; the kernel may do less (XFS caps a call at 1 GiB) and says how much.
DEDUPE_STEP = 1 << 30

_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
#: A lease break is signalled to its holder, by default with SIGIO, whose default action kills
#: the process.  SIGURG's default action is to ignore it, so no handler has to be installed:
#: `apply` asks the lease's state (F_GETLEASE) at each step instead.
LEASE_SIGNAL = signal.SIGURG


class ContentDiffers(OSError):
    """The kernel compared the bytes for a dedupe and they differ: nothing was shared."""


class Syscalls(Protocol):
    def open_dir(self, at: int | None, path: str) -> int:
        """`path` (absolute when `at` is None, else relative to `at`) as an O_PATH descriptor,
        opened a component at a time; `SymlinkInPath` if any component is a symlink."""

    def open(self, at: int, name: str, flags: int) -> int: ...
    def pread(self, fd: int, length: int, offset: int) -> bytes: ...
    def lease(self, fd: int) -> None:
        """Take a read lease on `fd` (EAGAIN: the file is open for writing somewhere)."""

    def rename_noreplace(self, src_at: int, src: str, dst_at: int, dst: str) -> None: ...
    def exchange(self, a_at: int, a: str, b_at: int, b: str) -> None:
        """Swap two names in one step (RENAME_EXCHANGE); EINVAL where the filesystem cannot."""

    def link(self, src_at: int, src: str, dst_at: int, dst: str) -> None: ...
    def symlink(self, target: str, at: int, name: str) -> None: ...
    def unlink(self, at: int, name: str) -> None: ...
    def mkdir(self, at: int, name: str) -> None: ...
    def dedupe(self, src_fd: int, dst_fd: int, length: int) -> None: ...


class RealSyscalls:
    """The real calls; `rename_noreplace` falls back to link+unlink where renameat2 is missing."""

    def __init__(self) -> None:
        self._renameat2 = None
        name = ctypes.util.find_library("c")
        if name:
            libc = ctypes.CDLL(name, use_errno=True)
            self._renameat2 = getattr(libc, "renameat2", None)

    def open_dir(self, at: int | None, path: str) -> int:
        return open_dir_handle(at, path)

    def open(self, at: int, name: str, flags: int) -> int:
        return os.open(name, flags, dir_fd=at)

    def pread(self, fd: int, length: int, offset: int) -> bytes:
        return os.pread(fd, length, offset)

    def lease(self, fd: int) -> None:
        fcntl.fcntl(fd, fcntl.F_SETSIG, LEASE_SIGNAL)
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)

    def _rename2(self, src_at: int, src: str, dst_at: int, dst: str, flags: int) -> int:
        """renameat2's errno (0: done); ENOSYS where the C library lacks it."""
        if self._renameat2 is None:
            return errno.ENOSYS
        if self._renameat2(src_at, os.fsencode(src), dst_at, os.fsencode(dst), flags) == 0:
            return 0
        return ctypes.get_errno()

    def exchange(self, a_at: int, a: str, b_at: int, b: str) -> None:
        code = self._rename2(a_at, a, b_at, b, _RENAME_EXCHANGE)
        if code:
            raise OSError(code, os.strerror(code), a, None, b)

    def rename_noreplace(self, src_at: int, src: str, dst_at: int, dst: str) -> None:
        code = self._rename2(src_at, src, dst_at, dst, _RENAME_NOREPLACE)
        if code == 0:
            return
        if code not in (errno.EINVAL, errno.ENOSYS):
            raise OSError(code, os.strerror(code), src, None, dst)
        # A filesystem without RENAME_NOREPLACE: link refuses an existing name as well, and
        # `src` is one of our own names, so removing it after the link loses nothing.
        self.link(src_at, src, dst_at, dst)
        try:
            os.unlink(src, dir_fd=src_at)
        except OSError:
            os.unlink(dst, dir_fd=dst_at)  # not renamed after all: leave no second name behind
            raise

    def link(self, src_at: int, src: str, dst_at: int, dst: str) -> None:
        os.link(src, dst, src_dir_fd=src_at, dst_dir_fd=dst_at, follow_symlinks=False)

    def symlink(self, target: str, at: int, name: str) -> None:
        os.symlink(target, name, dir_fd=at)

    def unlink(self, at: int, name: str) -> None:
        os.unlink(name, dir_fd=at)

    def mkdir(self, at: int, name: str) -> None:
        os.mkdir(name, 0o700, dir_fd=at)  # a moved copy need be reachable by no one new

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


def fs_type(path: str | int) -> str:
    """The filesystem type of the mount holding `path` or descriptor ("ext4", "xfs"...), or
    "unknown"."""
    try:
        dev = os.fstat(path).st_dev if isinstance(path, int) else os.lstat(path).st_dev
        wanted = f"{os.major(dev)}:{os.minor(dev)}"
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as table:
            for line in table:
                fields = line.split()
                if len(fields) > 2 and fields[2] == wanted and " - " in line:
                    return line.split(" - ", 1)[1].split()[0]
    except OSError:
        pass
    return "unknown"
