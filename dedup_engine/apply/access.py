"""Whether acting on two files would change who can read or write a path, or lose the only copy.

A hard link or symlink hands a path another file, and a delete or move leaves a path's users only
the kept copy; so `apply` acts on two files only where that changes nothing for anyone:

- owner, group and mode are equal (the planner splits groups by them; checked again here on the
  open files, since a report can be hand-made);
- POSIX ACLs and security attributes (`system.posix_acl_access`, `security.*`: file
  capabilities, SELinux and SMACK labels) are equal;
- the same users can reach both paths through their directories.  The directories are the ones
  the operation works in: walked up from their open descriptors (`..`), never looked up again by
  name, so a directory swapped for another under its name cannot answer for it.  Users are
  judged as Linux judges them, owner class first, then group, then others, for the file's owner,
  the members of its group and of every directory's group on the way, and everyone else (by the
  permission bits; ACLs on directories are not read).
- a move lands in directories no more reachable than the copy's own, owned by root or by the
  file's owner (directories it makes are mode 700: the kept copy stays where its users reach
  it, so the moved one need be reachable by no one new).

`--across-owners` waives these.  One rule it does not waive: a delete or symlink across two
filesystems only between filesystems whose files are their own.  An overlay's merged view shows
the files of its lower layer under another device number, and a FUSE or network mount may show a
local file again, so there two (dev, ino) pairs can be one file, and deleting "the copy" would
delete the only one.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from typing import NamedTuple

from dedup_engine.apply.fsquery import owner
from dedup_engine.apply.plan import Action
from dedup_engine.apply.syscalls import fs_type
from dedup_engine.openflags import DIR_HANDLE

#: Filesystems that hold their own files: a file seen on two of them is two files.
OWN_FILES = frozenset(
    {
        "bcachefs", "btrfs", "exfat", "ext2", "ext3", "ext4", "f2fs", "hfs", "hfsplus", "jfs",
        "msdos", "nilfs2", "ntfs", "ntfs3", "ramfs", "reiserfs", "tmpfs", "udf", "vfat", "xfs",
        "zfs",
    }
)  # fmt: skip
#: The extended attributes that decide who may do what with a file.
_ACL = "system.posix_acl_access"
_SECURITY = "security."

#: Walking up by "../../..", a fresh descriptor is taken this far up, before PATH_MAX.
_ANCHOR_AT = 3000
#: (uid, gid, mode) of each directory from a file's own up to "/".
Chain = list[tuple[int, int, int]]
#: Who: ("owner", uid), ("group", gid) for its members, or ("other", 0).
Principal = tuple[str, int]


def _up(directory: int) -> Iterator[tuple[tuple[int, int], tuple[int, int, int]]]:
    """(dev, ino) and (uid, gid, mode) of `directory` (an open descriptor) and of each directory
    above it, up to the root: "..", "../.." and so on, looked up from the descriptor, so they
    are the directories above it now, whatever names lead to it."""
    anchor = os.dup(directory)
    try:
        st, up = os.fstat(anchor), ".."
        while True:
            yield (st.st_dev, st.st_ino), (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))
            if len(up) > _ANCHOR_AT:  # "../../.." would outgrow PATH_MAX: start again higher
                higher = os.open(up[:-3], DIR_HANDLE, dir_fd=anchor)
                os.close(anchor)
                anchor, up = higher, ".."
            above = os.stat(up, dir_fd=anchor)
            if (above.st_dev, above.st_ino) == (st.st_dev, st.st_ino):  # "/" is its own parent
                return
            st, up = above, up + "/.."
    finally:
        os.close(anchor)


def chain(directory: int) -> Chain:
    """The directories from `directory` (an open descriptor) up to the root."""
    return [perms for _, perms in _up(directory)]


def own_parts(a: int, b: int) -> tuple[Chain, Chain]:
    """The directories above `a` and above `b` below the first one they share: the part of
    each path the other does not cross.  Walked in turns, so a deep common part is not."""
    walks = (_up(a), _up(b))
    own: tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]] = ([], [])
    seen: tuple[dict[tuple[int, int], int], dict[tuple[int, int], int]] = ({}, {})
    while True:
        steps = [next(walk, None) for walk in walks]
        if steps == [None, None]:  # no directory in common (not even "/"): all is their own
            return own[0], own[1]
        for side, step in enumerate(steps):
            if step is None:
                continue
            key, perms = step
            where = seen[1 - side].get(key)
            if where is not None:  # the first directory above both
                del own[1 - side][where:]
                return own[0], own[1]
            seen[side][key] = len(own[side])
            own[side].append(perms)


def reach(path_chain: Chain, principals: set[Principal], gid: int) -> dict[Principal, bool]:
    """Whether each principal can search every directory of the chain, with Linux's order:
    the owner's bits for the directory's owner, the group's for its group, else the others'.
    The file's owner counts as a member of the file's group (`gid`)."""
    out = {}
    for who in principals:
        kind, ident = who
        ok = True
        for duid, dgid, dmode in path_chain:
            if kind == "owner" and duid == ident:
                bit = stat.S_IXUSR
            elif (kind == "group" and dgid == ident) or (kind == "owner" and dgid == gid):
                bit = stat.S_IXGRP
            else:
                bit = stat.S_IXOTH
            ok = ok and bool(dmode & bit)
        out[who] = ok
    return out


def principals(st: os.stat_result, *chains: Chain) -> set[Principal]:
    """Everyone whose access could differ between the chains: the file's owner, its group,
    every directory's group, and the rest."""
    found: set[Principal] = {("owner", st.st_uid), ("group", st.st_gid), ("other", 0)}
    for each in chains:
        found.update(("group", gid) for _, gid, _ in each)
    return found


class Refusal(NamedTuple):
    """Why a copy may not give way to the kept file, and whether `--across-owners` waives it."""

    why: str
    waivable: bool


class Access:
    """The checks, with the filesystem types they learn kept for the run."""

    def __init__(self) -> None:
        self._fs: dict[int, str] = {}

    def refusal(
        self,
        action: Action,
        kept: tuple[int, int],
        victim: tuple[int, int],
        *,
        across_owners: bool,
    ) -> Refusal | None:
        """Why the copy ((directory, file) descriptors) may not give way to the kept file for
        `action`, or None: a delete or symlink only where the two cannot be one file, and,
        unless `across_owners`, only where that changes no one's access."""
        if action in (Action.DELETE, Action.SYMLINK):
            problem = self.one_file_possible(kept[1], victim[1])
            if problem:
                return Refusal(problem, waivable=False)
        if across_owners:
            return None
        problem = self.differs(kept, victim)
        return Refusal(problem, waivable=True) if problem else None

    def differs(self, kept: tuple[int, int], victim: tuple[int, int]) -> str | None:
        """Why the copy ((directory, file) descriptors) may not give way to the kept file."""
        (kept_dir, kept_fd), (victim_dir, victim_fd) = kept, victim
        kst, vst = os.fstat(kept_fd), os.fstat(victim_fd)
        if owner(kst) != owner(vst):
            return (
                f"differs in owner, group or mode ({owner(vst)}) from the kept file ({owner(kst)})"
            )
        if _security(kept_fd) != _security(victim_fd):
            return "differs in ACL or security attributes (capabilities, labels) from the kept file"
        if not _same_reach(kept_dir, victim_dir, kst):
            return (
                "is reachable by other users than the kept file (the permissions of the "
                "directories on the way differ)"
            )
        return None

    def exposes(self, target_dir: int, victim_dir: int, victim_fd: int) -> str | None:
        """Why moving the copy into `target_dir` would let someone new reach it, or None."""
        vst = os.fstat(victim_fd)
        tpart, _ = own_parts(target_dir, victim_dir)
        # Above the first directory they share, a stranger's directory holds the copy already.
        strangers = [o for o, _, _ in tpart if o not in (0, vst.st_uid)]
        if strangers:
            return f"a directory of the destination belongs to another user (uid {strangers[0]})"
        tchain, vchain = chain(target_dir), chain(victim_dir)
        who = principals(vst, tchain, vchain)
        before, after = reach(vchain, who, vst.st_gid), reach(tchain, who, vst.st_gid)
        if any(after[w] and not before[w] for w in who):
            return "the destination is reachable by users who cannot reach the copy now"
        return None

    def one_file_possible(self, kept_fd: int, victim_fd: int) -> str | None:
        """Why two files on two filesystems might be one file (an overlay's view of its lower
        layer, a FUSE or network mount of a local directory), or None."""
        kdev, vdev = os.fstat(kept_fd).st_dev, os.fstat(victim_fd).st_dev
        if kdev == vdev:
            return None
        for dev, fd in ((kdev, kept_fd), (vdev, victim_fd)):
            fs = self._fs.setdefault(dev, fs_type(fd))
            if fs not in OWN_FILES:
                return (
                    f"the kept file is on another filesystem, and {fs} can show one file on two "
                    "(an overlay, FUSE or network view): it may be this very file"
                )
        return None


def _same_reach(a: int, b: int, st: os.stat_result) -> bool:
    """Whether the same users can reach the directories `a` and `b` (descriptors).  The part
    above the first directory they share is common to both, so the parts below it decide,
    unless they differ: then a principal they part on may still be stopped above, for both."""
    own_a, own_b = own_parts(a, b)
    who = principals(st, own_a, own_b)
    if reach(own_a, who, st.st_gid) == reach(own_b, who, st.st_gid):
        return True
    full_a, full_b = chain(a), chain(b)
    who = principals(st, full_a, full_b)
    return reach(full_a, who, st.st_gid) == reach(full_b, who, st.st_gid)


def _security(fd: int) -> dict[str, bytes]:
    with contextlib.suppress(OSError):  # a filesystem without extended attributes
        names = [n for n in os.listxattr(fd) if n == _ACL or n.startswith(_SECURITY)]
        return {name: os.getxattr(fd, name) for name in names}
    return {}
