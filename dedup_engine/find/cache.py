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
import errno
import os
import sqlite3
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from dedup_engine.find.tasks import DIGEST_SIZE, NO_DIGEST
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


def kind_name(kind: int) -> str:
    """A kind in words: "whole file", "head 4096", "tail 4096"."""
    window = {1: "head", 2: "tail"}.get(kind >> _KIND_SHIFT)
    return "whole file" if window is None else f"{window} {kind & ((1 << _KIND_SHIFT) - 1)}"


@dataclass(frozen=True, slots=True)
class Summary:
    """What a cache holds: its rows, in all and by kind, and its bytes on disk (with its WAL)."""

    path: str
    rows: int
    bytes: int
    by_kind: dict[str, int]


def clear(directory: str) -> bool:
    """Remove the cache in `directory` (its database and WAL files); False where there was none.
    The directory is checked as for a run: only its owner's cache is removed."""
    if not os.path.lexists(directory):
        return False
    dir_fd = _open_directory(directory)
    try:
        found = False
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(FILE_NAME + suffix, dir_fd=dir_fd)
                found = found or not suffix
        return found
    finally:
        os.close(dir_fd)


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
    """The cache ready for use (None: not usable now, and left as it is), and the warning to
    give once where it was rebuilt or cannot be used."""

    cache: DigestCache | None
    warning: str | None


class _NotOurs(sqlite3.DatabaseError):
    """A database that is not a cache of this version: set aside and rebuilt."""


#: SQLite's words for a file that is not a database, or a damaged one: set aside and rebuilt.
#: Anything else (locked, disk full, an I/O error) passes, and the file is left alone.
_DAMAGED = frozenset({"SQLITE_NOTADB", "SQLITE_CORRUPT"})

#: The only object a cache holds, and its columns: (name, type, place in the primary key).
_COLUMNS = [
    ("fs", "BLOB", 1),
    ("ino", "INTEGER", 2),
    ("kind", "INTEGER", 3),
    ("size", "INTEGER", 0),
    ("mtime", "INTEGER", 0),
    ("ctime", "INTEGER", 0),
    ("digest", "BLOB", 0),
]


class DigestCache:
    """One connection to the cache in a directory; lookups and stores a batch at a time.

    The directory is opened once (not through a symlink) and checked on its descriptor: a real
    directory of this user that nobody else may write to; the database is reached through that
    descriptor, so a directory renamed or swapped after the check is never the one used.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._dir_fd = _open_directory(directory)
        try:
            _check_file(self._dir_fd, directory)
            self._db = _connect(_pinned(self._dir_fd, directory))
        except BaseException:
            os.close(self._dir_fd)
            raise

    @classmethod
    def open(cls, directory: str) -> Opened:
        """The cache in `directory` (made, private to this user, if missing).  A file that is not
        a usable cache of this version is set aside and a new one made, with a warning; a cache
        that cannot be used now (locked, a full disk) is left alone, with a warning."""
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise CacheError(exc.errno, f"cache directory {directory!r}: {exc.strerror}") from None
        cache: DigestCache | None = None
        try:
            cache = cls(directory)
            cache._check()
            return Opened(cache, None)
        except sqlite3.DatabaseError as exc:
            if cache is not None:
                cache.close()
            reason = str(exc) or type(exc).__name__
            if (
                not isinstance(exc, _NotOurs)
                and getattr(exc, "sqlite_errorname", "") not in _DAMAGED
            ):
                return Opened(
                    None,
                    f"the cache in {directory} cannot be used now ({reason}); "
                    "this run reads every file",
                )
        _set_aside(os.path.join(directory, FILE_NAME))
        cache = cls(directory)
        cache._check()
        path = os.path.join(directory, FILE_NAME)
        return Opened(cache, f"the cache {path} was unusable ({reason}) and is rebuilt")

    def _check(self) -> None:
        """Make the table in a new file, or prove an existing one is ours, of this version, and
        holds nothing else (no trigger or view to run on its reads and writes).  Under a write
        lock: two runs starting on a new cache make it once."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            (application,) = db.execute("PRAGMA application_id").fetchone()
            (version,) = db.execute("PRAGMA user_version").fetchone()
            objects = db.execute("SELECT type, name FROM sqlite_schema").fetchall()
            if application == 0 and version == 0 and not objects:
                db.execute(_SCHEMA)
                db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif application != APPLICATION_ID:
                raise _NotOurs("not a dedup-engine cache")
            elif version != SCHEMA_VERSION:
                raise _NotOurs(f"cache version {version}, this program reads {SCHEMA_VERSION}")
            else:
                columns = [
                    (name, kind, pk)
                    for _, name, kind, _, _, pk in db.execute("PRAGMA table_info(digests)")
                ]
                if objects != [("table", "digests")] or columns != _COLUMNS:
                    raise _NotOurs("a cache holding other tables, views or triggers")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

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
                and row[3] != NO_DIGEST
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

    def summary(self) -> Summary:
        """What the cache holds, for `dedup cache stats`."""
        kinds = self._db.execute("SELECT kind, count(*) FROM digests GROUP BY kind ORDER BY kind")
        by_kind = {kind_name(kind): count for kind, count in kinds}
        size = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(FileNotFoundError):
                size += os.stat(FILE_NAME + suffix, dir_fd=self._dir_fd).st_size
        return Summary(
            os.path.join(self.directory, FILE_NAME), sum(by_kind.values()), size, by_kind
        )

    def count(self) -> int:
        """Rows held."""
        return int(self._db.execute("SELECT count(*) FROM digests").fetchone()[0])

    def close(self) -> None:
        self._db.close()
        os.close(self._dir_fd)


def _connect(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=_BUSY_MS / 1000, check_same_thread=False)
    db.execute(f"PRAGMA busy_timeout = {_BUSY_MS}")
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    return db


def _open_directory(directory: str) -> int:
    """The directory, opened without following a symlink and checked on its descriptor: a real
    directory of this user that nobody else may write to, so no one can plant a cache that says
    two different files are the same."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise CacheError(
                exc.errno, f"cache directory {directory!r} is not a directory (or is a symlink)"
            ) from None
        raise CacheError(exc.errno, f"cache directory {directory!r}: {exc.strerror}") from None
    st = os.fstat(fd)
    problem = None
    if st.st_uid != os.geteuid():
        problem = f"belongs to uid {st.st_uid}, not you"
    elif st.st_mode & 0o022:
        problem = "may be written by others"
    if problem is not None:
        os.close(fd)
        raise CacheError(0, f"cache directory {directory!r} {problem}")
    return fd


def _check_file(dir_fd: int, directory: str) -> None:
    """The database file (made 0600 if missing): a regular file of this user with one name,
    that nobody else may write to."""
    path = os.path.join(directory, FILE_NAME)
    try:
        fd = os.open(
            FILE_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd
        )
    except OSError as exc:
        raise CacheError(exc.errno, f"cache {path!r}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_nlink != 1:
        raise CacheError(0, f"cache {path!r} is not a regular file of yours with one name")
    if st.st_mode & 0o022:
        raise CacheError(0, f"cache {path!r} may be written by others")


def _pinned(dir_fd: int, directory: str) -> str:
    """The database's path through the open directory (`/proc/self/fd`), so that SQLite opens
    it and its WAL files in the directory checked; the plain path where /proc is missing."""
    through = f"/proc/self/fd/{dir_fd}"
    if os.path.isdir(through):
        return os.path.join(through, FILE_NAME)
    return os.path.join(directory, FILE_NAME)


def _set_aside(path: str) -> None:
    """Move an unusable cache out of the way (kept for a look, once), with its WAL files; another
    run may have done it first."""
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path + suffix)
    with contextlib.suppress(FileNotFoundError):
        os.replace(path, path + ".unusable")
