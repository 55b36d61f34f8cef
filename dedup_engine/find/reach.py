"""Reaching a root by its canonical path without following a symlink on the way.

Roots are resolved once, before the scan (`pipeline.canonical_roots`): their paths hold no
symlink.  Someone who may write to a directory above a root could put one there afterwards, and
a plain stat or open of the path would follow it out of the roots; so a root is reached a
component at a time from "/", each opened with `O_NOFOLLOW`, and a symlink met on the way is an
error (ELOOP).  Below a root the walk checks each directory it lists to be the one its parent's
listing named (`walk`), and the readers each file they read (`hashtasks`, `fullcompare`).
"""

from __future__ import annotations

import errno
import os
import stat

from dedup_engine.openflags import open_dir_handle


def open_directory(path: str) -> int:
    """An `O_PATH` descriptor of the directory at the absolute `path`, reached from "/" a
    component at a time (`openflags.open_dir_handle`): `SymlinkInPath` (ELOOP) where a component
    is now a symlink."""
    return open_dir_handle(None, path)


def stat_root(path: str, parent_fd: int | None = None) -> os.stat_result:
    """The stat of the root at the absolute `path`, reached without following a symlink (see
    `open_directory`; `parent_fd`: its parent, already reached so).  A root that is now a
    symlink itself is ELOOP."""
    head, name = os.path.split(path)
    if not name:
        return os.stat(path, follow_symlinks=False)  # "/"
    fd = open_directory(head) if parent_fd is None else parent_fd
    try:
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
    finally:
        if parent_fd is None:
            os.close(fd)
    if stat.S_ISLNK(st.st_mode):
        raise OSError(errno.ELOOP, f"{path!r} became a symlink after it was resolved")
    return st


class Reached:
    """`stat_root` for many roots, each parent directory reached once while it is among the
    last `keep` (a list of a million files names a few thousand directories, mostly in turn).
    Closes what it holds on exit."""

    def __init__(self, keep: int = 256) -> None:
        self._keep = keep
        self._parents: dict[str, int | OSError] = {}

    def stat(self, path: str) -> os.stat_result:
        head = os.path.dirname(path)
        if head == path:
            return stat_root(path)
        parent = self._parents.get(head)
        if parent is None:
            if len(self._parents) >= self._keep:
                self._forget(next(iter(self._parents)))
            try:
                parent = open_directory(head)
            except OSError as exc:
                parent = exc
            self._parents[head] = parent
        if isinstance(parent, OSError):
            raise OSError(parent.errno, parent.strerror, parent.filename)
        return stat_root(path, parent)

    def _forget(self, head: str) -> None:
        parent = self._parents.pop(head)
        if isinstance(parent, int):
            os.close(parent)

    def __enter__(self) -> Reached:
        return self

    def __exit__(self, *exc: object) -> None:
        while self._parents:
            self._forget(next(iter(self._parents)))
