"""System calls that fail on cue, and the checks that no byte was lost, for the apply tests.

`Faulty` passes every call to the real system except the ones it is told to break: the `nth`
call (counting all calls, from 1) fails with `err`, and with `persist` every call after it fails
too (so the rollback fails as well).  With `crash`, the process "dies" there instead: a
`Crash` (a BaseException, which no rollback catches) is raised before or after the call is
made, leaving the disk as a SIGKILL would.

`snapshot` records every regular file's bytes by path; `assert_nothing_lost` checks a tree
after `apply` against it.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dedup_engine.apply.aside import ASIDE_PREFIX
from dedup_engine.apply.syscalls import REAL, Syscalls
from dedup_engine.model import FileEntry


class Crash(BaseException):
    """The process stops here, as if killed: nothing runs after it, not even a rollback."""


class Faulty:
    def __init__(
        self,
        nth: int = 0,
        err: int = 0,
        *,
        persist: bool = False,
        crash: str | None = None,  # "before" or "after" the nth call
        real: Syscalls = REAL,
        no_lease: bool = False,  # as on a filesystem without leases (EINVAL)
    ) -> None:
        self.nth, self.err, self.persist, self.crash = nth, err, persist, crash
        self.no_lease = no_lease
        self.real = real
        self.calls: list[str] = []
        self.hook: Callable[[str, int], None] | None = None

    def _call(self, name: str, target: str, run: Callable[[], Any]) -> Any:
        self.calls.append(name)
        number = len(self.calls)
        if self.hook is not None:
            self.hook(name, number)
        if self.crash == "before" and number == self.nth:
            raise Crash(f"crash before call {number} ({name})")
        if self.err and (number == self.nth or (self.persist and number > self.nth > 0)):
            raise OSError(self.err, os.strerror(self.err), target)
        try:
            return run()
        finally:
            # After the call, whether it succeeded or failed (ENOENT is an answer too).
            if self.crash == "after" and number == self.nth:
                raise Crash(f"crash after call {number} ({name})")

    def open_dir(self, at: int | None, path: str) -> int:
        return int(self._call("opendir", path, lambda: self.real.open_dir(at, path)))

    def open(self, at: int, name: str, flags: int) -> int:
        return int(self._call("open", name, lambda: self.real.open(at, name, flags)))

    def pread(self, fd: int, length: int, offset: int) -> bytes:
        data: bytes = self._call("pread", str(fd), lambda: self.real.pread(fd, length, offset))
        return data

    def lease(self, fd: int) -> None:
        if self.no_lease:
            self.calls.append("lease")
            raise OSError(errno.EINVAL, "leases are not supported here (a test's choice)")
        self._call("lease", str(fd), lambda: self.real.lease(fd))

    def rename_noreplace(self, src_at: int, src: str, dst_at: int, dst: str) -> None:
        self._call(
            "rename_noreplace", src, lambda: self.real.rename_noreplace(src_at, src, dst_at, dst)
        )

    def exchange(self, a_at: int, a: str, b_at: int, b: str) -> None:
        self._call("exchange", a, lambda: self.real.exchange(a_at, a, b_at, b))

    def link(self, src_at: int, src: str, dst_at: int, dst: str) -> None:
        self._call("link", dst, lambda: self.real.link(src_at, src, dst_at, dst))

    def symlink(self, target: str, at: int, name: str) -> None:
        self._call("symlink", name, lambda: self.real.symlink(target, at, name))

    def unlink(self, at: int, name: str) -> None:
        self._call("unlink", name, lambda: self.real.unlink(at, name))

    def mkdir(self, at: int, name: str) -> None:
        self._call("mkdir", name, lambda: self.real.mkdir(at, name))

    def dedupe(self, src_fd: int, dst_fd: int, length: int) -> None:
        self._call("ioctl", str(dst_fd), lambda: self.real.dedupe(src_fd, dst_fd, length))


def entry_of(path: str) -> FileEntry:
    """A report's entry for `path` as it is now: every stat check of `apply` passes."""
    st = os.lstat(path)
    return FileEntry(
        path,
        st.st_dev,
        st.st_ino,
        st.st_size,
        st.st_mtime_ns,
        st.st_ctime_ns,
        st.st_uid,
        st.st_gid,
        stat.S_IMODE(st.st_mode),
    )


def wait_past(ctime_ns: int, probe: Path) -> None:
    """Wait until the filesystem's clock is past `ctime_ns`, so a change shows in the ctime.
    (Timestamps come from a coarse clock: a change within the same tick would not.)"""
    while True:
        probe.write_bytes(b"")
        if probe.stat().st_ctime_ns > ctime_ns:
            return
        time.sleep(0.001)


def lease_breaking() -> bool:
    """Whether a read lease this process holds is being broken by a writer's open (which
    waits in open() until the lease is let go)."""
    for fd in os.listdir("/proc/self/fdinfo"):
        try:
            text = Path(f"/proc/self/fdinfo/{fd}").read_text()
        except OSError:
            continue
        if "LEASE" in text and "BREAKING" in text:
            return True
    return False


def snapshot(root: str) -> dict[str, bytes]:
    """Every regular file below `root` (not through symlinks), path -> bytes."""
    files: dict[str, bytes] = {}
    for directory, _, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            if stat.S_ISREG(os.lstat(path).st_mode):
                with open(path, "rb") as source:
                    files[path] = source.read()
    return files


def leftovers(root: str) -> list[str]:
    """Temporary names `apply` uses, anywhere below `root`."""
    return [
        os.path.join(directory, name)
        for directory, dirs, names in os.walk(root)
        for name in names + dirs
        if name.startswith(ASIDE_PREFIX)
    ]


def assert_nothing_lost(
    before: dict[str, bytes],
    root: str,
    *,
    gone_ok: set[str] = frozenset(),  # type: ignore[assignment]
    moved: dict[str, str] | None = None,
    stranded: dict[str, str] | None = None,
) -> None:
    """Each original path holds its bytes (as a file, a hard link or a symlink to equal bytes),
    or is in `gone_ok` (deleted by a completed operation: its bytes must live on at another
    path of the same content), or was `moved` to a path holding its bytes, or is `stranded`
    at a temporary name (a failed rollback) that holds its bytes."""
    moved = moved or {}
    stranded = stranded or {}
    contents = set(before.values())
    for path, data in before.items():
        if os.path.lexists(path):
            with open(path, "rb") as source:  # follows a symlink made by apply
                assert source.read() == data, f"{path!r} lost its bytes"
        elif path in moved:
            with open(moved[path], "rb") as source:
                assert source.read() == data, f"{path!r} moved to {moved[path]!r}: bytes differ"
        elif path in stranded:
            with open(stranded[path], "rb") as source:
                assert source.read() == data, f"{path!r} stranded at {stranded[path]!r}: differs"
        else:
            assert path in gone_ok, f"{path!r} is gone, and no completed operation removed it"
            survivors = [p for p, d in before.items() if d == data and os.path.lexists(p)]
            assert survivors, f"every copy of {path!r}'s content is gone"
    assert contents  # the check had something to check
    expected_leftovers = set(stranded.values())
    assert set(leftovers(root)) == expected_leftovers
