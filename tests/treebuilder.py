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
        os.makedirs(root, exist_ok=True)
        self.root = os.path.realpath(root)
        self.broot = os.fsencode(self.root)

    def path(self, rel: Name) -> str:
        """The absolute path of `rel` (relative to the root) as the engine reports it."""
        return os.fsdecode(self.bpath(rel))

    def bpath(self, rel: Name) -> bytes:
        return os.path.join(self.broot, os.fsencode(rel))

    def paths(self, *rels: Name) -> frozenset[str]:
        return frozenset(self.path(r) for r in rels)

    def dir(self, rel: Name) -> str:
        os.makedirs(self.bpath(rel), exist_ok=True)
        return self.path(rel)

    def _parent(self, rel: Name) -> bytes:
        full = self.bpath(rel)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        return full

    def file(self, rel: Name, data: bytes = b"", mode: int | None = None) -> str:
        full = self._parent(rel)
        fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        if mode is not None:
            os.chmod(full, mode)
        return self.path(rel)

    def read(self, rel: Name) -> bytes:
        with open(self.bpath(rel), "rb") as f:
            return f.read()

    def copy(self, src: Name, dst: Name) -> str:
        return self.file(dst, self.read(src))

    def hardlink(self, rel: Name, existing: Name) -> str:
        os.link(self.bpath(existing), self._parent(rel))
        return self.path(rel)

    def symlink(self, rel: Name, target: Name) -> str:
        """A symlink at `rel` whose text is `target` exactly (relative or absolute)."""
        os.symlink(os.fsencode(target), self._parent(rel))
        return self.path(rel)

    def sparse(self, rel: Name, size: int, writes: dict[int, bytes]) -> str:
        """A file of `size` bytes, all holes but the given writes."""
        full = self._parent(rel)
        fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
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
        old = os.getcwd()
        # bind() by a relative name: sun_path holds only ~108 bytes.
        os.chdir(os.path.dirname(full))
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.bind(os.path.basename(full))
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
            with open(os.fsencode(f.path), "rb") as fh:
                datas.add(fh.read())
            st = os.stat(os.fsencode(f.path))
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
    for dirpath, _dirs, names in os.walk(os.fsencode(root)):
        for name in names:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            if stat.S_ISREG(st.st_mode) and st.st_size:
                by_inode[(st.st_dev, st.st_ino)].append(os.fsdecode(full))
    by_data: dict[bytes, list[list[str]]] = defaultdict(list)
    for paths in by_inode.values():
        with open(os.fsencode(paths[0]), "rb") as fh:
            by_data[fh.read()].append(paths)
    return {
        frozenset(p for paths in inodes for p in paths)
        for inodes in by_data.values()
        if len(inodes) >= 2
    }


# --- standing in for `os` inside dedup_engine.hashing ----------------------------------------------


class OsSpy:
    """Replaces the `os` module seen by `dedup_engine.hashing` (monkeypatch it in, workers=0).

    Records every open by path, counts opens per path (head = 1st, tail = 2nd, full = 3rd for a
    file too big to be read whole), and lets a test act at exact points: `on_open(path, n)` runs
    just before the n-th open of path, `on_fstat(path)` just after an fstat of it (the size check of
    the stage that reads a file whole), and `eio` names (path, call, n) reads that fail with EIO.
    Everything else is the real `os`.
    """

    def __init__(self) -> None:
        self.opened: list[str] = []
        self.opens: dict[str, int] = defaultdict(int)
        self.fd_paths: dict[int, str] = {}
        self.on_open: Callable[[str, int], None] | None = None
        self.on_fstat: Callable[[str], None] | None = None
        self.eio: set[tuple[str, str, int]] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def open(self, path: str, flags: int, *args: Any, **kwargs: Any) -> int:
        self.opens[path] += 1
        if self.on_open is not None:
            self.on_open(path, self.opens[path])
        fd = os.open(path, flags, *args, **kwargs)
        self.opened.append(path)
        self.fd_paths[fd] = path
        return fd

    def close(self, fd: int) -> None:
        self.fd_paths.pop(fd, None)
        os.close(fd)

    def fstat(self, fd: int) -> os.stat_result:
        st = os.fstat(fd)
        path = self.fd_paths.get(fd)
        if path is not None and self.on_fstat is not None:
            self.on_fstat(path)
        return st

    def _check(self, fd: int, call: str) -> None:
        path = self.fd_paths.get(fd)
        if path is not None and (path, call, self.opens[path]) in self.eio:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

    def read(self, fd: int, n: int) -> bytes:
        self._check(fd, "read")
        return os.read(fd, n)

    def pread(self, fd: int, n: int, offset: int) -> bytes:
        self._check(fd, "pread")
        return os.pread(fd, n, offset)

    def readv(self, fd: int, buffers: Sequence[bytearray]) -> int:
        self._check(fd, "readv")
        return os.readv(fd, buffers)


def append(path: str, data: bytes = b"+") -> None:
    with open(os.fsencode(path), "ab") as f:
        f.write(data)
