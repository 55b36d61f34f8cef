"""Files rewritten while `find` runs: a file that is not as the scan saw it by the end of its last
read is never grouped, and is listed as an issue of the stage that read it last.

A change is injected at an exact point by a stand-in for `os` in the hashing modules, just before
a chosen read; it works in the worker processes too (they are forked with it in place).  Every
rewrite keeps the size and moves the mtime by a second, so it is seen whatever the timestamp
granularity of the filesystem.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from treebuilder import (
    Tree,
    check_invariants,
    content,
    expect,
    flip,
    groups_of,
    issues_of,
    rewrite,
)

import dedup_engine.find.fullcompare
import dedup_engine.find.hashtasks
from dedup_engine import FindResult, ScanOptions, find_duplicates
from dedup_engine.find.fullcompare import MAX_COMPARED

pytestmark = pytest.mark.usefixtures("deadline")

SMALL = 1000  # read whole by the head stage: its last read
MID = 20_000  # head, then the full stage (one chunk)
BIG = 300_000  # head, tail, then the full stage (several chunks)


class ReadHook:
    """Stands in for `os` in `dedup_engine.find.hashtasks` and `.fullcompare`.

    Just before the first read of the kind `kind` of each watched file, calls `act(order, path)`,
    `order` counting the watched files so met before (0 for the first).  "pread" is how the head
    and tail windows read (`preadv` where a worker reads from the page cache first), "readv" how
    the full stage does.  Whether a file was met is kept on disk, so that the worker processes
    share it, and each read of a watched file is made holding a lock they share: with two workers
    reading at once, one file's read is done before another file's `act` can change it.
    """

    def __init__(
        self, kind: str, watched: Sequence[str], act: Callable[[int, str], None], state: Path
    ) -> None:
        self.kind = kind
        self.watched = list(watched)
        self.act = act
        self.state = state
        state.mkdir()

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    @contextlib.contextmanager
    def _reading(self, fd: int, kind: str) -> Iterator[None]:
        """Around a read of `kind`: for a watched file, the act due before it, then the read,
        all under the lock."""
        path = os.readlink(f"/proc/self/fd/{fd}") if kind == self.kind else None
        if path not in self.watched:
            yield
            return
        # Two workers may meet their files at once: each must get its order, and one's read must
        # not fall between the other's act and read.
        with (self.state.parent / f"{self.state.name}.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            mark = self.state / str(self.watched.index(path))
            if not mark.exists():
                order = len(list(self.state.iterdir()))
                mark.touch()
                self.act(order, path)
            yield

    def pread(self, fd: int, n: int, offset: int) -> bytes:
        with self._reading(fd, "pread"):
            return os.pread(fd, n, offset)

    def preadv(self, fd: int, buffers: Sequence[bytearray], offset: int, *flags: int) -> int:
        with self._reading(fd, "pread"):
            return os.preadv(fd, buffers, offset, *flags)

    def readv(self, fd: int, buffers: Sequence[bytearray]) -> int:
        with self._reading(fd, "readv"):
            return os.readv(fd, buffers)


def find_hooked(
    monkeypatch: pytest.MonkeyPatch, hook: ReadHook, root: str, options: ScanOptions
) -> FindResult:
    monkeypatch.setattr(dedup_engine.find.hashtasks, "os", hook)
    monkeypatch.setattr(dedup_engine.find.fullcompare, "os", hook)
    result = find_duplicates(root, options)
    monkeypatch.undo()
    check_invariants(result)
    return result


@pytest.mark.parametrize(("size", "kind"), [(SMALL, "pread"), (MID, "readv")])
def test_files_never_equal_at_once_are_not_grouped(
    tree: Tree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int, size: int, kind: str
) -> None:
    """Two files rewritten during the run, never equal at one moment, are not grouped.

    The first file is read; then, before the second is read, the second is given the bytes the
    first was read with, and the first other bytes.  Both reads see the same bytes.
    """
    # The same head, so that the two also meet in the full stage.
    original = [content(size), flip(content(size), size - 1)]
    one = tree.file("a/one", original[0])
    two = tree.file("b/two", original[1])

    def swap(order: int, path: str) -> None:
        if order == 1:
            first = two if path == one else one
            rewrite(path, original[first == two])
            rewrite(first, content(size, seed=3))

    hook = ReadHook(kind, [one, two], swap, tmp_path / "hook")
    result = find_hooked(monkeypatch, hook, tree.root, ScanOptions(workers=workers))
    assert groups_of(result) == set()
    stage = "head" if size == SMALL else "full"
    assert issues_of(result) == {one: {stage}, two: {stage}}
    assert all("changed since the scan" in i.message for i in result.issues)


#: (size, copies, stage that reads the file last, how it reads)
LAST_READS = [
    (SMALL, 3, "head", "pread"),  # read whole by the head window, re-checked by path after
    (MID, 3, "full", "readv"),  # compared side by side, checked on the open file
    (BIG, 3, "full", "readv"),
    (MID, MAX_COMPARED + 2, "full", "readv"),  # too many to compare: hashed one by one
]


@pytest.mark.parametrize(("size", "copies", "stage", "kind"), LAST_READS)
def test_a_file_rewritten_before_its_last_read_is_an_issue(
    tree: Tree,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    workers: int,
    size: int,
    copies: int,
    stage: str,
    kind: str,
) -> None:
    """Rewritten with its own bytes: equal to its copies when read, yet not the file scanned."""
    data = content(size)
    names = [f"d{n:02d}/copy" for n in range(copies)]
    paths = [tree.file(name, data) for name in names]
    victim = paths[-1]

    def touch(order: int, path: str) -> None:
        if path == victim:
            rewrite(path, data)

    hook = ReadHook(kind, [victim], touch, tmp_path / "hook")
    result = find_hooked(monkeypatch, hook, tree.root, ScanOptions(workers=workers))
    assert groups_of(result) == expect(tree, names[:-1])
    assert issues_of(result) == {victim: {stage}}
    assert "changed since the scan" in result.issues[0].message


def test_a_file_rewritten_after_its_last_read_is_not_grouped(
    tree: Tree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    """A file read whole early, then changed, is not grouped with a copy read later.

    Its read is done when the change comes, so only a check after every read of its group can
    see it: the group's files are shown to hold the same bytes at one moment.
    """
    data = content(SMALL)
    paths = [tree.file(f"d{n}/copy", data) for n in range(3)]
    read_first = tmp_path / "read-first"  # on disk: the files may be read by different workers

    def change_the_first(order: int, path: str) -> None:
        if order == 0:
            read_first.write_text(path)
        elif order == 1:
            rewrite(read_first.read_text(), data)

    hook = ReadHook("pread", paths, change_the_first, tmp_path / "hook")
    result = find_hooked(monkeypatch, hook, tree.root, ScanOptions(workers=workers))
    changed = [i.path for i in result.issues]
    assert len(changed) == 1
    assert groups_of(result) == {frozenset(paths) - set(changed)}
    assert issues_of(result) == {changed[0]: {"head"}}


def test_a_file_read_whole_by_the_tail_window_is_rechecked(
    tree: Tree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    """With windows where the tail stage reads a file whole, its digest is final there too."""
    options = ScanOptions(
        workers=workers, head_window=1024, whole_threshold=0, tail_window=8192, tail_min_size=0
    )
    size = 4000  # head reads 1 KiB of it, tail all of it
    data = content(size)
    paths = [tree.file(f"d{n}/copy", data) for n in range(3)]
    victim = paths[0]

    def touch(order: int, path: str) -> None:
        rewrite(path, data)  # before its first read, by the head window: the tail reads it last

    hook = ReadHook("pread", [victim], touch, tmp_path / "hook")
    result = find_hooked(monkeypatch, hook, tree.root, options)
    assert groups_of(result) == {frozenset(paths[1:])}
    assert issues_of(result) == {victim: {"tail"}}
