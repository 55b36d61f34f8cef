"""Real file trees for the engine's tests, and results read back as plain sets.

`Tree` writes files, links, sparse files, FIFOs and sockets under one root, with names given as
`str` or, for names that are not UTF-8, as `bytes`; every method returns the absolute path as the
engine reports it (a `str`, surrogate-escaped where the bytes are not UTF-8).

`find_checked` runs `find_duplicates` and then checks what must hold for every result, whatever the
tree: every path at most once, no group of one inode unless hard links count, every group's files
byte-for-byte equal with the BLAKE3 digest the group claims, and totals that add up.
"""

from __future__ import annotations

import errno
import os
import random
import socket
import stat
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import blake3

from dedup_engine import DuplicateGroup, FindResult, Issue, ScanOptions, find_duplicates

Name = str | bytes
GroupSet = set[frozenset[str]]


def content(size: int, seed: object = 0) -> bytes:
    """Deterministic incompressible bytes; a different seed gives different bytes everywhere."""
    return random.Random(f"{seed}:{size}").randbytes(size)


def flip(data: bytes, offset: int) -> bytes:
    """The same bytes with the one at `offset` changed."""
    out = bytearray(data)
    out[offset] ^= 0xFF
    return bytes(out)


class Tree:
    """A directory tree under `root` (made absolute and symlink-free, as the engine reports it)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        Path(root).mkdir(parents=True, exist_ok=True)
        self.root = os.path.realpath(root)

    def p(self, rel: Name) -> Path:
        """`rel` (relative to the root) as a Path; odd bytes ride along surrogate-escaped."""
        return Path(self.root, os.fsdecode(rel))

    def path(self, rel: Name) -> str:
        """The absolute path of `rel` (relative to the root) as the engine reports it."""
        return str(self.p(rel))

    def bpath(self, rel: Name) -> bytes:
        """The absolute path as the bytes on disk."""
        return os.fsencode(self.p(rel))

    def paths(self, *rels: Name) -> frozenset[str]:
        return frozenset(self.path(r) for r in rels)

    def dir(self, rel: Name) -> str:
        self.p(rel).mkdir(parents=True, exist_ok=True)
        return self.path(rel)

    def _parent(self, rel: Name) -> Path:
        full = self.p(rel)
        full.parent.mkdir(parents=True, exist_ok=True)
        return full

    def file(self, rel: Name, data: bytes = b"", mode: int | None = None) -> str:
        full = self._parent(rel)
        full.write_bytes(data)
        if mode is not None:
            full.chmod(mode)
        return self.path(rel)

    def read(self, rel: Name) -> bytes:
        return self.p(rel).read_bytes()

    def copy(self, src: Name, dst: Name) -> str:
        return self.file(dst, self.read(src))

    def hardlink(self, rel: Name, existing: Name) -> str:
        self._parent(rel).hardlink_to(self.p(existing))
        return self.path(rel)

    def symlink(self, rel: Name, target: Name) -> str:
        """A symlink at `rel` whose text is `target` exactly (relative or absolute)."""
        self._parent(rel).symlink_to(os.fsdecode(target))
        return self.path(rel)

    def sparse(self, rel: Name, size: int, writes: dict[int, bytes]) -> str:
        """A file of `size` bytes, all holes but the given writes."""
        fd = os.open(self._parent(rel), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(fd, size)
            for offset, data in writes.items():
                os.pwrite(fd, data, offset)
        finally:
            os.close(fd)
        return self.path(rel)

    def fifo(self, rel: Name) -> str:
        os.mkfifo(self._parent(rel))
        return self.path(rel)

    def unix_socket(self, rel: Name) -> str:
        """A bound unix socket's file (the socket itself is closed; the file stays)."""
        full = self._parent(rel)
        old = Path.cwd()
        # bind() by a relative name: sun_path holds only ~108 bytes.
        os.chdir(full.parent)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.bind(full.name)
        finally:
            os.chdir(old)
        return self.path(rel)


# --- reading results ------------------------------------------------------------------------------


class Outcome(Protocol):
    """A `FindResult` or a `Report` read back from JSON: both have groups and issues."""

    @property
    def groups(self) -> tuple[DuplicateGroup, ...]: ...

    @property
    def issues(self) -> tuple[Issue, ...]: ...


def groups_of(result: Outcome) -> GroupSet:
    """The groups as a set of frozensets of paths."""
    return {frozenset(f.path for f in g.files) for g in result.groups}


def issues_of(result: Outcome) -> dict[str, set[str]]:
    """Each path with an issue, mapped to the stages it had issues in."""
    out: dict[str, set[str]] = defaultdict(set)
    for issue in result.issues:
        out[issue.path].add(issue.stage.value)
    return dict(out)


def expect(tree: Tree, *groups: Iterable[Name]) -> GroupSet:
    """Expected groups, given as paths relative to the tree's root."""
    return {tree.paths(*g) for g in groups}


def check_invariants(result: FindResult, *, hard_links: bool = False) -> None:
    """What holds for any result of any tree, checked against the files on disk."""
    seen: set[str] = set()
    for group in result.groups:
        assert len(group.files) >= 2, f"a group of one path: {group}"
        for f in group.files:
            assert f.path not in seen, f"{f.path!r} listed twice"
            seen.add(f.path)
            assert f.size == group.size, f"{f.path!r}: size {f.size} in a group of {group.size}"
        if not hard_links:
            assert group.inodes >= 2, f"a group of one inode (a file as its own duplicate): {group}"
        datas: set[bytes] = set()
        for f in group.files:
            datas.add(Path(f.path).read_bytes())
            st = Path(f.path).stat()
            assert (st.st_dev, st.st_ino) == (f.dev, f.ino), f"{f.path!r}: wrong (dev, ino)"
        assert len(datas) == 1, f"a group of files whose contents differ: {group}"
        data = datas.pop()
        assert len(data) == group.size
        assert group.digest == blake3.blake3(data).hexdigest(), f"wrong digest for {group}"
    for issue in result.issues:
        assert issue.path not in seen, f"{issue.path!r} has an issue and is in a group"
    stats = result.stats
    assert stats.groups == len(result.groups)
    assert stats.files_in_groups == len(seen)
    assert stats.bytes_reclaimable == sum(g.reclaimable for g in result.groups)
    order = [(-g.size, g.files[0].path) for g in result.groups]
    assert order == sorted(order), "groups are not largest first, then by first path"


def find_checked(
    roots: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
    options: ScanOptions | None = None,
) -> FindResult:
    """`find_duplicates`, then `check_invariants`."""
    result = find_duplicates(roots, options)
    check_invariants(result, hard_links=bool(options and options.hard_links))
    return result


class Runner(Protocol):
    """The `run` fixture: `find_checked` with `ScanOptions(**options)`, workers from the fixture."""

    def __call__(
        self, roots: Sequence[str | os.PathLike[str]] | str | os.PathLike[str], **options: Any
    ) -> FindResult: ...


def brute_groups(root: str) -> GroupSet:
    """The true groups under root with default options: regular files (links not followed) of
    equal non-zero content, two or more inodes, every path of each inode listed."""
    by_inode: dict[tuple[int, int], list[str]] = defaultdict(list)
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            full = Path(dirpath, name)
            st = full.lstat()
            if stat.S_ISREG(st.st_mode) and st.st_size:
                by_inode[(st.st_dev, st.st_ino)].append(str(full))
    by_data: dict[bytes, list[list[str]]] = defaultdict(list)
    for paths in by_inode.values():
        by_data[Path(paths[0]).read_bytes()].append(paths)
    return {
        frozenset(p for paths in inodes for p in paths)
        for inodes in by_data.values()
        if len(inodes) >= 2
    }


# --- standing in for `os` inside dedup_engine.find.hashtasks and .fullcompare ------------------


class OsSpy:
    """Replaces the `os` module seen by `find.hashtasks` and `find.fullcompare` of `dedup_engine`
    (monkeypatch it into both, workers=0).

    Records every open by path and counts opens per path (a name opened under a directory
    handle, `find.anchors`, counts at the handle's path joined to it): a file too big to be
    read whole is opened once per stage (head = 1st, tail = 2nd where the tail stage applies,
    full = last), a small one once.  A test acts at exact points: `on_open(path, n)` runs just
    before the n-th open of path, `on_read(path, n)` just before the first read after the n-th
    open, and `eio` holds (path, n) pairs whose reads after the n-th open fail with EIO,
    whatever the read call.
    Everything else is the real `os`.
    """

    def __init__(self) -> None:
        self.opened: list[str] = []
        self.opens: dict[str, int] = defaultdict(int)
        self.fd_paths: dict[int, str] = {}
        self.on_open: Callable[[str, int], None] | None = None
        self.on_read: Callable[[str, int], None] | None = None
        self.eio: set[tuple[str, int]] = set()
        self._read_once: set[tuple[str, int]] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def open(self, name: str, flags: int, *args: Any, dir_fd: int | None = None, **kw: Any) -> int:
        path = (
            name if dir_fd is None else os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), name)
        )
        self.opens[path] += 1
        if self.on_open is not None:
            self.on_open(path, self.opens[path])
        fd = os.open(name, flags, *args, dir_fd=dir_fd, **kw)
        self.opened.append(path)
        self.fd_paths[fd] = path
        return fd

    def close(self, fd: int) -> None:
        self.fd_paths.pop(fd, None)
        os.close(fd)

    def _before_read(self, fd: int) -> None:
        path = self.fd_paths.get(fd)
        if path is None:
            return
        key = (path, self.opens[path])
        if key in self.eio:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        if self.on_read is not None and key not in self._read_once:
            self._read_once.add(key)
            self.on_read(*key)

    def read(self, fd: int, n: int) -> bytes:
        self._before_read(fd)
        return os.read(fd, n)

    def pread(self, fd: int, n: int, offset: int) -> bytes:
        self._before_read(fd)
        return os.pread(fd, n, offset)

    def readv(self, fd: int, buffers: Sequence[bytearray]) -> int:
        self._before_read(fd)
        return os.readv(fd, buffers)

    def preadv(self, fd: int, buffers: Sequence[bytearray], offset: int, *flags: int) -> int:
        self._before_read(fd)
        return os.preadv(fd, buffers, offset, *flags)


def rewrite(path: str, data: bytes) -> None:
    """Write `data` over the file in place (same size), and move its mtime on by a second."""
    before = os.stat(path)
    assert len(data) == before.st_size
    with Path(path).open("r+b") as f:
        f.write(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))


def append(path: str, data: bytes = b"+") -> None:
    with Path(path).open("ab") as f:
        f.write(data)


def manifest_found(dest: Path) -> FindResult:
    """Check that a synthetic tree's manifest (`dest/manifest.json`) holds the groups its bytes
    make and the engine finds in `dest/data`; the engine's result."""
    from dedup_engine.bench.synth import load_manifest

    manifest = load_manifest(dest)
    expected = {frozenset(str(dest / p) for p in group) for group in manifest.groups}
    assert expected == brute_groups(str(dest / "data"))
    found = find_duplicates(dest / "data", ScanOptions(workers=2))
    assert {frozenset(f.path for f in g.files) for g in found.groups} == expected
    return found
