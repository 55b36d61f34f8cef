"""The persistent digest cache: digests of files and of their windows, kept in SQLite across runs.

A digest is found again only for the same file unchanged: the key is the filesystem's identity,
the inode and what was hashed (`kind`: the whole file, or a head or tail window of a length), and a
row is used only where the file's size, mtime and ctime are still those it was stored with.  A
write changes ctime, which no user can set back, so bytes rewritten and mtime put back still miss.
Timestamps are coarse (a few ms on many kernels): a file whose ctime is within `RACY_NS` of the
moment its read began could change again within the same tick unseen, so its digest is not stored
(as git treats a "racily clean" index entry).

The filesystem's identity is `statvfs`'s `f_fsid`, which most local filesystems derive from their
UUID (ext4, XFS, btrfs per subvolume) and which survives reboots and remounts, where `st_dev` may
not (USB disks, device-mapper numbers).  A filesystem that reports no identity (0) is not cached.

The file is untrusted input: one that is not a cache of this version (another program's database,
a newer schema, bytes that are not SQLite) is set aside and rebuilt, with one warning; a row whose
digest is not `DIGEST_SIZE` bytes is never used.  Writers commit each batch (WAL, so readers never
wait and a killed run keeps every batch it committed); two runs may share a cache.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from dedup_engine.find.tasks import DIGEST_SIZE
from dedup_engine.model import Stage

#: "DDUP": marks the database as ours, so another program's SQLite file is never taken for one.
APPLICATION_ID = 0x44445550
#: The layout of the table below; another value is rebuilt, never read.
SCHEMA_VERSION = 1
FILE_NAME = "digests.sqlite3"
#: Set to 1, this environment variable turns the cache on for `dedup find` by default.
ENVIRONMENT = "DEDUP_ENGINE_CACHE"
#: A file changed this recently before its read began is not stored: its timestamps may not show
#: a write made in the same tick as the one before.  Two seconds covers coarse clocks (a jiffy)
#: and filesystems with one-second or two-second timestamps (FAT's mtime).
RACY_NS = 2_000_000_000
#: Inodes per lookup query: under SQLite's oldest limit on bound parameters (999).
_LOOKUP_CHUNK = 900
#: How long a writer waits for another run's transaction before giving up on one batch.
_BUSY_MS = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS digests (
    fs BLOB NOT NULL,
    ino INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    size INTEGER NOT NULL,
    mtime INTEGER NOT NULL,
    ctime INTEGER NOT NULL,
    digest BLOB NOT NULL,
    PRIMARY KEY (fs, ino, kind)
) WITHOUT ROWID
"""

#: A row to store: (inode, size, mtime_ns, ctime_ns, digest).
Entry = tuple[int, int, int, int, bytes]
#: What the scan saw of a file to look up: (inode, size, mtime_ns, ctime_ns).
Seen = tuple[int, int, int, int]

_KIND_SHIFT = 40


class CacheError(OSError):
    """The cache directory cannot be used safely (another user's, a symlink, not a directory):
    fatal before any work starts."""


def kind_of(stage: Stage, length: int = 0) -> int:
    """What a digest covers: the whole file (0, whatever stage read it), or a head or tail
    window of `length` bytes."""
    if stage is Stage.HEAD:
        return (1 << _KIND_SHIFT) | length
    if stage is Stage.TAIL:
        return (2 << _KIND_SHIFT) | length
    return 0


def environment_without() -> dict[str, str]:
    """This process's environment less `ENVIRONMENT`: for benchmarks, which measure reads."""
    return {name: value for name, value in os.environ.items() if name != ENVIRONMENT}


def default_directory() -> str:
    """`$XDG_CACHE_HOME/dedup-engine`, or `~/.cache/dedup-engine`."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "dedup-engine")


def filesystem_id(path: str) -> bytes | None:
    """The identity of the filesystem holding `path` that outlives a remount, or None where it
    has none to give (its `f_fsid` is 0) or cannot be asked."""
    try:
        fsid = os.statvfs(path).f_fsid
    except OSError:
        return None
    return fsid.to_bytes(8, "little", signed=False) if fsid else None


def cacheable(ctime_ns: int, read_started_ns: int) -> bool:
    """Whether a digest of a file last changed at `ctime_ns`, read from `read_started_ns` on, may
    be stored (`RACY_NS`)."""
    return read_started_ns - ctime_ns >= RACY_NS


@dataclass(frozen=True, slots=True)
class Opened:
    """A cache ready for use, and the warning to give once if it had to be rebuilt."""

    cache: DigestCache
    warning: str | None


class DigestCache:
    """One connection to the cache file; lookups and stores a batch at a time."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._db = _connect(path)

    @classmethod
    def open(cls, directory: str) -> Opened:
        """The cache in `directory` (made, private to this user, if missing); a file that is not
        a usable cache of this version is set aside and a new one made, with a warning."""
        _own_directory(directory)
        path = os.path.join(directory, FILE_NAME)
        _refuse_odd_file(path)
        cache: DigestCache | None = None
        try:
            cache = cls(path)
            cache._check()
            return Opened(cache, None)
        except sqlite3.DatabaseError as exc:
            if cache is not None:
                cache.close()
            reason = str(exc) or type(exc).__name__
        _set_aside(path)
        cache = cls(path)
        cache._check()
        return Opened(cache, f"the cache {path} was unusable ({reason}) and is rebuilt")

    def _check(self) -> None:
        """Make the table in a new file, or prove an existing one is ours and of this version."""
        db = self._db
        (application,) = db.execute("PRAGMA application_id").fetchone()
        (version,) = db.execute("PRAGMA user_version").fetchone()
        tables = db.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]
        if application == 0 and version == 0 and tables == 0:
            with db:
                db.execute(_SCHEMA)
                db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            return
        if application != APPLICATION_ID:
            raise sqlite3.DatabaseError("not a dedup-engine cache")
        if version != SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"cache version {version}, this program reads {SCHEMA_VERSION}"
            )
        db.execute(
            "SELECT fs, ino, kind, size, mtime, ctime, digest FROM digests LIMIT 1"
        ).fetchall()

    def lookup(self, fs: bytes, kind: int, seen: Sequence[Seen]) -> list[bytes | None]:
        """The stored digest of each file, in order, where it is still the file stored; else
        None."""
        found: dict[int, tuple[int, int, int, bytes]] = {}
        inos = list({ino for ino, _, _, _ in seen})
        for start in range(0, len(inos), _LOOKUP_CHUNK):
            chunk = inos[start : start + _LOOKUP_CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                "SELECT ino, size, mtime, ctime, digest FROM digests"
                f" WHERE fs = ? AND kind = ? AND ino IN ({marks})",
                (fs, kind, *chunk),
            )
            for ino, size, mtime, ctime, digest in rows:
                found[ino] = (size, mtime, ctime, digest)
        out: list[bytes | None] = []
        for ino, size, mtime, ctime in seen:
            row = found.get(ino)
            hit = (
                row is not None
                and row[:3] == (size, mtime, ctime)
                and isinstance(row[3], bytes)
                and len(row[3]) == DIGEST_SIZE
            )
            out.append(row[3] if hit and row is not None else None)
        return out

    def store(self, fs: bytes, kind: int, entries: Iterable[Entry]) -> None:
        """Keep these digests, replacing what the same files had; committed at once."""
        self.store_many([((fs, kind), entries)])

    def store_many(self, batches: Iterable[tuple[tuple[bytes, int], Iterable[Entry]]]) -> None:
        """`store` for several (filesystem, kind) at once, in one transaction."""
        rows = [
            (fs, ino, kind, *seen_and_digest)
            for (fs, kind), entries in batches
            for ino, *seen_and_digest in entries
        ]
        if not rows:
            return
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO digests (fs, ino, kind, size, mtime, ctime, digest)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    def count(self) -> int:
        """Rows held."""
        return int(self._db.execute("SELECT count(*) FROM digests").fetchone()[0])

    def close(self) -> None:
        self._db.close()


def _connect(path: str) -> sqlite3.Connection:
    # Made private before SQLite opens it: a cache tells what files a user has, and how big.
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    os.close(fd)
    db = sqlite3.connect(path, timeout=_BUSY_MS / 1000, check_same_thread=False)
    db.execute(f"PRAGMA busy_timeout = {_BUSY_MS}")
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    return db


def _own_directory(directory: str) -> None:
    """Make the directory (0700) or check it: a real directory of this user that nobody else may
    write to, so no one can plant a cache that says two different files are the same."""
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        st = os.lstat(directory)
    except OSError as exc:
        raise CacheError(exc.errno, f"cache directory {directory!r}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise CacheError(0, f"cache directory {directory!r} is not a directory (or is a symlink)")
    if st.st_uid != os.geteuid():
        raise CacheError(0, f"cache directory {directory!r} belongs to uid {st.st_uid}, not you")
    if st.st_mode & 0o022:
        raise CacheError(0, f"cache directory {directory!r} may be written by others")


def _refuse_odd_file(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise CacheError(exc.errno, f"cache {path!r}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
        raise CacheError(0, f"cache {path!r} is not a regular file of yours")


def _set_aside(path: str) -> None:
    """Move an unusable cache out of the way (kept for a look, once), with its WAL files."""
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path + suffix)
    os.replace(path, path + ".unusable")
