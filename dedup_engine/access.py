"""Whether acting on two files would change who can read or write a path, or lose the only copy.

A hard link or symlink hands a path another file, and a delete or move leaves a path's users only
the kept copy; so `apply` acts on two files only where that changes nothing for anyone:

- owner, group and mode are equal (the planner splits groups by them; checked again here on the
  open files, since a report can be hand-made);
- POSIX ACLs and security attributes (`system.posix_acl_access`, `security.*`: file
  capabilities, SELinux and SMACK labels) are equal;
- the same users can reach both paths through their directories: search permission on every
  directory on the way, for the file's owner, its group and others (by the permission bits;
  ACLs on directories are not read).

`--across-owners` waives these.  One rule it does not waive: a delete or symlink across two
filesystems only between filesystems whose files are their own.  An overlay's merged view shows
the files of its lower layer under another device number, and a FUSE or network mount may show a
local file again, so there two (dev, ino) pairs can be one file, and deleting "the copy" would
delete the only one.
"""

from __future__ import annotations

import os
import stat

from dedup_engine.fsops import fs_type
from dedup_engine.fsquery import owner

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

#: (can reach as the file's owner, as its group, as anyone else)
Reach = tuple[bool, bool, bool]


class Access:
    """The checks, with what they learn about directories and filesystems kept for the run."""

    def __init__(self) -> None:
        self._dirs: dict[str, tuple[int, int, int]] = {}
        self._fs: dict[int, str] = {}

    def differs(self, kept: tuple[str, int], victim: tuple[str, int]) -> str | None:
        """Why the copy (path, open descriptor) may not give way to the kept file, or None."""
        (kept_path, kept_fd), (victim_path, victim_fd) = kept, victim
        kst, vst = os.fstat(kept_fd), os.fstat(victim_fd)
        if owner(kst) != owner(vst):
            return (
                f"differs in owner, group or mode ({owner(vst)}) from the kept file ({owner(kst)})"
            )
        if _security(kept_fd) != _security(victim_fd):
            return "differs in ACL or security attributes (capabilities, labels) from the kept file"
        if self._reach(kept_path, kst) != self._reach(victim_path, vst):
            return (
                "is reachable by other users than the kept file (the permissions of the "
                "directories on the way differ)"
            )
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

    def _reach(self, path: str, st: os.stat_result) -> Reach:
        as_owner = as_group = as_other = True
        directory = os.path.dirname(path)
        while True:
            duid, dgid, dmode = self._dir(directory)
            other = bool(dmode & stat.S_IXOTH)
            group = other or (dgid == st.st_gid and bool(dmode & stat.S_IXGRP))
            as_other &= other
            as_group &= group
            as_owner &= group or (duid == st.st_uid and bool(dmode & stat.S_IXUSR))
            parent = os.path.dirname(directory)
            if parent == directory:
                return as_owner, as_group, as_other
            directory = parent

    def _dir(self, directory: str) -> tuple[int, int, int]:
        known = self._dirs.get(directory)
        if known is None:
            try:
                st = os.lstat(directory)
                known = (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))
                if not stat.S_ISDIR(st.st_mode):
                    known = (-1, -1, 0)  # reached by no one (acting refuses such a path anyway)
            except OSError:
                known = (-1, -1, 0)
            self._dirs[directory] = known
        return known


def _security(fd: int) -> dict[str, bytes]:
    try:
        names = [n for n in os.listxattr(fd) if n == _ACL or n.startswith(_SECURITY)]
        return {name: os.getxattr(fd, name) for name in names}
    except OSError:  # a filesystem without extended attributes
        return {}
