"""The persistent digest cache: digests of files and of their windows, kept in SQLite across runs.

A digest is found again only for the same file unchanged: the key is the filesystem's identity,
the inode and what was hashed (`kind`: the whole file, or a head or tail window of a length), and a
row is used only where the file's size, mtime and ctime are still those it was stored with.  A
write changes ctime, which no user can set back, so bytes rewritten and mtime put back still miss
(a write through a shared memory mapping too, once the file's pages were written back before its
read: `fsidentity.expose_mapped_writes`).
Timestamps are coarse (a few ms on many kernels): a file whose ctime is within `RACY_NS` of the
moment its read began could change again within the same tick unseen, so its digest is not stored
(as git treats a "racily clean" index entry).

The filesystem's identity, and which filesystems the cache trusts at all, are
`find/fsidentity.py`'s rules.

The file is untrusted input: one that is not a cache of this version (another program's database,
a newer schema, bytes that are not SQLite) is set aside and rebuilt, with one warning; a row whose
digest is not `DIGEST_SIZE` bytes is never used.  SQLite opens a database by its path, so the
path must be one no one else can redirect: every directory above the cache belongs to root or to
this user and is writable by no one else unless sticky (as /tmp), and the file SQLite opened is
checked to be the one checked.  Writers commit each batch (WAL, so readers never wait and a
killed run keeps every batch it committed); two runs may share a cache.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import itertools
import os
import sqlite3
import stat
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from dedup_engine.find.tasks import DIGEST_SIZE, NO_DIGEST
from dedup_engine.model import Stage
from dedup_engine.openflags import OPEN_DIR

#: "DDUP": marks the database as ours, so another program's SQLite file is never taken for one.
APPLICATION_ID = 0x44445550
#: The layout of the table below; another value is rebuilt, never read.
SCHEMA_VERSION = 2
FILE_NAME = "digests.sqlite3"
#: Set to 1, this environment variable turns the cache on for `dedup find` by default.
ENVIRONMENT = "DEDUP_ENGINE_CACHE"
#: A file changed this recently before its read began is not stored: its timestamps may not show
#: a write made in the same tick as the one before.  Two seconds covers coarse clocks (a jiffy)
#: and filesystems with one-second or two-second timestamps (FAT's mtime).
RACY_NS = 2_000_000_000
#: Inodes per lookup query: under SQLite's oldest limit on bound parameters (999).
_LOOKUP_CHUNK = 900
#: Pages each connection keeps at most, in KiB: a bound on what a worker adds to its memory.
_PAGE_CACHE_KIB = 16 * 1024
#: How long opening the cache waits for another run's transaction before going without it.
BUSY_MS = 10_000
#: How long a worker's write waits for the lock: past it the batch is held for the next flush,
#: so a cache locked by another program never stalls the run.
WORKER_BUSY_MS = 250
#: How long a worker's last write, at the end of its run, waits for the lock: nothing would keep
#: its digests after it, and the lock then is most often the other workers' own last writes,
#: which took over `WORKER_BUSY_MS` on a busy disk here.  Another program's lock held longer
#: costs the end of a run no more than this (the pool waits for its workers `pool.CLOSE_S`).
CLOSING_BUSY_MS = 2_000
#: How long a run waits for another that is setting a damaged cache aside.
_REBUILD_WAIT_S = 5.0
#: Symlinks followed at most on the way to the cache directory, as the kernel's limit.
_MAX_LINKS = 40
#: A directory above the cache, opened only to go through it (never a symlink).
_THROUGH = os.O_PATH | OPEN_DIR

#: The cache's layout.  A filesystem's identity is kept once, in `filesystems`, and rows name it
#: by number.  `dirs` names the directory each file was last stored from, so that `prune` can
#: look for it there, and when a run last used that directory's digests (a day number), so that
#: a size cap drops the least recently used first.  Numbers of filesystems are never reused.
_SCHEMA = (
    """CREATE TABLE filesystems (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    identity BLOB NOT NULL UNIQUE
)""",
    """CREATE TABLE digests (
    fs INTEGER NOT NULL,
    ino INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    size INTEGER NOT NULL,
    mtime INTEGER NOT NULL,
    ctime INTEGER NOT NULL,
    digest BLOB NOT NULL,
    dir INTEGER NOT NULL,
    PRIMARY KEY (fs, ino, kind)
) WITHOUT ROWID""",
    """CREATE TABLE dirs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    fs INTEGER NOT NULL,
    path BLOB NOT NULL,
    used INTEGER NOT NULL,
    UNIQUE (fs, path)
)""",
)
_OBJECTS = "SELECT type, name, tbl_name, sql FROM sqlite_schema ORDER BY type, name"


def _layout() -> list[tuple[str, str, str, str | None]]:
    """Every object a cache of this version holds, as SQLite records them: a file that holds
    anything else (a trigger, a view, another column) is not ours."""
    db = sqlite3.connect(":memory:")
    try:
        for statement in _SCHEMA:
            db.execute(statement)
        return db.execute(_OBJECTS).fetchall()
    finally:
        db.close()


_LAYOUT = _layout()

#: A row to store: (inode, size, mtime_ns, ctime_ns, digest).
Entry = tuple[int, int, int, int, bytes]
#: Where rows are stored: (filesystem identity, kind, the directory the files were seen in).
Place = tuple[bytes, int, str]
#: What the scan saw of a file to look up: (inode, size, mtime_ns, ctime_ns).
Seen = tuple[int, int, int, int]

#: A kind's low bits say the window (0 the whole file, 1 a head, 2 a tail), the rest its
#: length: small numbers, which SQLite stores in two or three bytes.
_WINDOW_BITS = 2


class CacheError(OSError):
    """The cache directory cannot be used safely (another user's, a symlink, not a directory):
    fatal before any work starts."""


def kind_of(stage: Stage, length: int = 0) -> int:
    """What a digest covers: the whole file (0, whatever stage read it), or a head or tail
    window of `length` bytes."""
    if stage is Stage.HEAD:
        return (length << _WINDOW_BITS) | 1
    if stage is Stage.TAIL:
        return (length << _WINDOW_BITS) | 2
    return 0


def environment_without() -> dict[str, str]:
    """This process's environment less `ENVIRONMENT`: for benchmarks, which measure reads."""
    return {name: value for name, value in os.environ.items() if name != ENVIRONMENT}


def kind_name(kind: int) -> str:
    """A kind in words: "whole file", "head 4096", "tail 4096"."""
    window = {1: "head", 2: "tail"}.get(kind & ((1 << _WINDOW_BITS) - 1))
    return "whole file" if window is None else f"{window} {kind >> _WINDOW_BITS}"


@dataclass(frozen=True, slots=True)
class Summary:
    """What a cache holds: its rows, in all and by kind, its bytes on disk (with its WAL), and
    the directories its rows were stored from."""

    path: str
    rows: int
    bytes: int
    by_kind: dict[str, int]
    directories: int


class Directory(NamedTuple):
    """A directory files were stored from, on a filesystem."""

    fs: bytes
    path: str


class Key(NamedTuple):
    """A stored row's key and what it says of its file (`fs` the filesystem's identity, b""
    where it is not recorded; `fs_id` its number in the cache)."""

    fs: bytes
    fs_id: int
    ino: int
    kind: int
    size: int
    mtime: int
    ctime: int


def clear(directory: str) -> bool:
    """Remove the cache in `directory` (its database and WAL files); False where there was none.
    The directory is checked as for a run: only its owner's cache is removed."""
    if not os.path.lexists(directory):
        return False
    dir_fd = _secure_directory(resolve_directory(directory))
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
    """`$XDG_CACHE_HOME/dedup-engine`, or `~/.cache/dedup-engine` where it is unset, empty or
    relative (which the XDG base directory specification says to ignore)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "dedup-engine")


def cacheable(ctime_ns: int, read_started_ns: int) -> bool:
    """Whether a digest of a file last changed at `ctime_ns`, read from `read_started_ns` on, may
    be stored (`RACY_NS`)."""
    return read_started_ns - ctime_ns >= RACY_NS


@dataclass(frozen=True, slots=True)
class _Made:
    """Numbers given in an open transaction: kept once it commits."""

    filesystems: dict[bytes, int]
    dirs: dict[tuple[int, bytes], int]


@dataclass(frozen=True, slots=True)
class Opened:
    """The cache ready for use (None: not usable now, and left as it is), and the warning to
    give once where it was rebuilt or cannot be used."""

    cache: DigestCache | None
    warning: str | None


class _NotOurs(sqlite3.DatabaseError):
    """A database that is not a cache of this version: set aside and rebuilt."""


class _Replaced(sqlite3.OperationalError):
    """The database was replaced or removed between its check and SQLite's open of it: tried
    once more, then not used for this run."""


#: SQLite's words for a file that is not a database, or a damaged one: set aside and rebuilt.
#: Anything else (locked, disk full, an I/O error) passes, and the file is left alone.
_DAMAGED = frozenset({"SQLITE_NOTADB", "SQLITE_CORRUPT"})


class DigestCache:
    """One connection to the cache in a directory; lookups and stores a batch at a time.

    The directory is reached by a path no one else can redirect (`_secure_directory`) and
    checked on its descriptor: a real directory of this user that nobody else may write to.
    SQLite opens the database by that path; the file it opened is then checked to be the one
    checked (`_opened_by_sqlite`).
    """

    def __init__(self, directory: str, busy_ms: int | None = None) -> None:
        #: The canonical path, which `DigestCache.open` checked: the one to hand to workers.
        self.directory = resolve_directory(directory)
        self._filesystems: dict[bytes, int] = {}
        self._dirs: dict[tuple[int, bytes], int] = {}
        self._used: set[int] = set()
        self._dir_fd = _secure_directory(self.directory)
        try:
            checked = _check_file(self._dir_fd, self.directory)
            path = os.path.join(self.directory, FILE_NAME)
            before = _descriptors()
            self._db = _connect(path, BUSY_MS if busy_ms is None else busy_ms)
            try:
                _opened_by_sqlite(path, before, checked)
            except BaseException:
                self._db.close()
                raise
        except BaseException:
            os.close(self._dir_fd)
            raise

    @classmethod
    def open(cls, directory: str) -> Opened:
        """The cache in `directory` (made, private to this user, if missing).  A file that is not
        a usable cache of this version is set aside and a new one made, with a warning; a cache
        that cannot be used now (locked, a full disk, replaced twice while opened) is left alone,
        with a warning.  A directory that cannot be trusted is CacheError."""
        canonical = resolve_directory(directory)
        os.close(_secure_directory(canonical, create=True))
        reason = ""
        for _ in range(2):
            try:
                return Opened(cls._checked(canonical), None)
            except _Replaced as exc:
                reason = str(exc)
            except sqlite3.DatabaseError as exc:
                reason = str(exc) or type(exc).__name__
                if not _damaged(exc):
                    return _not_now(directory, reason)
                break
        else:
            return _not_now(directory, reason)
        try:
            return cls._rebuilt(canonical, reason)
        except (sqlite3.Error, OSError) as exc:
            return _not_now(directory, str(exc) or type(exc).__name__)

    @classmethod
    def _checked(cls, directory: str) -> DigestCache:
        cache = cls(directory)
        try:
            cache._check()
        except BaseException:
            cache.close()
            raise
        return cache

    @classmethod
    def _rebuilt(cls, directory: str, reason: str) -> Opened:
        """Set a damaged cache aside and make a new one, under a lock on the directory: of runs
        that found it damaged at once, the first rebuilds it and the others use the new one (a
        file set aside is always the damaged one, never a cache another run just made)."""
        dir_fd = _secure_directory(directory)
        try:
            _lock(dir_fd)
            try:
                return Opened(cls._checked(directory), None)
            except sqlite3.DatabaseError as exc:
                if not _damaged(exc):
                    raise
            _set_aside(dir_fd)
            path = os.path.join(directory, FILE_NAME)
            return Opened(
                cls._checked(directory), f"the cache {path} was unusable ({reason}) and is rebuilt"
            )
        finally:
            os.close(dir_fd)  # and the lock with it

    def _check(self) -> None:
        """Make the table in a new file, or prove an existing one is ours, of this version, and
        holds nothing else (no trigger or view to run on its reads and writes).  Under a write
        lock: two runs starting on a new cache make it once."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            (application,) = db.execute("PRAGMA application_id").fetchone()
            (version,) = db.execute("PRAGMA user_version").fetchone()
            objects = db.execute(_OBJECTS).fetchall()
            if application == 0 and version == 0 and not objects:
                for statement in _SCHEMA:
                    db.execute(statement)
                db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif application != APPLICATION_ID:
                raise _NotOurs("not a dedup-engine cache")
            elif version != SCHEMA_VERSION:
                raise _NotOurs(f"cache version {version}, this program reads {SCHEMA_VERSION}")
            elif objects != _LAYOUT:
                raise _NotOurs("a cache holding other tables, columns, views or triggers")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def lookup(self, fs: bytes, kind: int, seen: Sequence[Seen]) -> list[bytes | None]:
        """The stored digest of each file, in order, where it is still the file stored; else
        None.  The directories of the digests found count as used (at the next store)."""
        return self.lookup_kinds(fs, (kind,), seen)[kind]

    def lookup_kinds(
        self, fs: bytes, kinds: Sequence[int], seen: Sequence[Seen]
    ) -> dict[int, list[bytes | None]]:
        """`lookup` of several kinds of digest at once, one list for each: a file's digests are
        neighbours in the table, so one probe finds them all."""
        fs_id = self._filesystem(fs)
        if fs_id is None:
            return {kind: [None] * len(seen) for kind in kinds}
        inos = list({ino for ino, _, _, _ in seen})
        # Inode numbers are kept signed (`_signed`); one of 2**63 or more is rare enough that
        # the keys are rewritten only when there is one.
        wrapped = max(inos, default=0) >= _SIGN
        if wrapped:
            inos = [_signed(ino) for ino in inos]
        # Keyed by all four numbers, so one probe matches inode, size, mtime and ctime at once.
        found: dict[int, dict[tuple[int, ...], tuple[bytes, int]]] = {kind: {} for kind in kinds}
        for start in range(0, len(inos), _LOOKUP_CHUNK):
            chunk = inos[start : start + _LOOKUP_CHUNK]
            rows = self._db.execute(
                _lookup_query(len(kinds), len(chunk)), (fs_id, *kinds, *chunk)
            ).fetchall()
            if len(kinds) == 1:
                found[kinds[0]].update({row[1:5]: row[5:] for row in rows})
            else:
                for row in rows:
                    found[row[0]][row[1:5]] = row[5:]
        out: dict[int, list[bytes | None]] = {}
        for kind, rows_of in found.items():
            if wrapped:
                rows_of = {(_unsigned(key[0]), *key[1:]): hit for key, hit in rows_of.items()}
            hits = [rows_of.get(key) for key in seen]
            self._used.update({hit[1] for hit in hits if hit is not None})
            out[kind] = [None if hit is None else hit[0] for hit in hits]
        return out

    @property
    def unwritten(self) -> bool:
        """Whether directories were used since the last store, which records it."""
        return bool(self._used)

    def store(self, fs: bytes, kind: int, directory: str, entries: Iterable[Entry]) -> None:
        """Keep these digests of files in `directory`, replacing what the same files had;
        committed at once."""
        self.store_many([((fs, kind, directory), entries)])

    def store_many(self, batches: Iterable[tuple[Place, Iterable[Entry]]]) -> None:
        """`store` for several (filesystem, kind, directory) at once, in one transaction, which
        also records the directories used since the last."""
        batches = list(batches)
        today = _today()
        made = _Made({}, {})
        with self._db:
            rows: list[tuple[object, ...]] = []
            for (fs, kind, directory), entries in batches:
                fs_id = self._filesystem(fs, made)
                assert fs_id is not None  # made if missing
                dir_id = self._directory(fs_id, directory, today, made)
                rows.extend((fs_id, _signed(ino), kind, *rest, dir_id) for ino, *rest in entries)
            self._db.executemany(
                "INSERT OR REPLACE INTO digests (fs, ino, kind, size, mtime, ctime, digest, dir)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            self._db.executemany(
                "UPDATE dirs SET used = ? WHERE id = ? AND used < ?",
                [(today, used, today) for used in self._used],
            )
        # Known only once committed: a number rolled back may be given to another.
        self._filesystems.update(made.filesystems)
        self._dirs.update(made.dirs)
        self._used.clear()

    def _filesystem(self, identity: bytes, made: _Made | None = None) -> int | None:
        """A filesystem's number in the cache; made if missing where `made` is given (in the
        open transaction, noted there), else None where the cache has none."""
        known = self._filesystems.get(identity)
        if known is None and made is not None:
            known = made.filesystems.get(identity)
        if known is not None:
            return known
        if made is not None:
            self._db.execute("INSERT OR IGNORE INTO filesystems (identity) VALUES (?)", (identity,))
        row = self._db.execute(
            "SELECT id FROM filesystems WHERE identity = ?", (identity,)
        ).fetchone()
        if row is None:
            return None
        (made.filesystems if made is not None else self._filesystems)[identity] = row[0]
        return int(row[0])

    def _directory(self, fs_id: int, directory: str, today: int, made: _Made) -> int:
        """The number of a directory of files stored, made if new (in the open transaction).  A
        number kept here after `prune` dropped its directory only files rows under a directory
        no longer recorded, which the next prune drops."""
        key = (fs_id, os.fsencode(directory))
        known = self._dirs.get(key) or made.dirs.get(key)
        if known is None:
            self._db.execute(
                "INSERT OR IGNORE INTO dirs (fs, path, used) VALUES (?, ?, ?)", (*key, today)
            )
            (known,) = self._db.execute(
                "SELECT id FROM dirs WHERE fs = ? AND path = ?", key
            ).fetchone()
            made.dirs[key] = known
        self._used.add(known)
        return known

    def summary(self) -> Summary:
        """What the cache holds, for `dedup cache stats`."""
        kinds = self._db.execute(
            "SELECT kind, count(*) FROM digests WHERE typeof(kind) = 'integer'"
            " GROUP BY kind ORDER BY kind"
        )
        by_kind = {kind_name(kind): count for kind, count in kinds}
        (directories,) = self._db.execute("SELECT count(*) FROM dirs").fetchone()
        return Summary(
            os.path.join(self.directory, FILE_NAME),
            self.count(),
            self.bytes_on_disk(),
            by_kind,
            directories,
        )

    def bytes_on_disk(self) -> int:
        """The database's bytes and its WAL's."""
        size = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(FileNotFoundError):
                size += os.stat(FILE_NAME + suffix, dir_fd=self._dir_fd).st_size
        return size

    def count(self) -> int:
        """Rows held."""
        return int(self._db.execute("SELECT count(*) FROM digests").fetchone()[0])

    # --- for `prune` ---------------------------------------------------------------------------

    def by_directory(self) -> Iterator[tuple[Directory | None, list[Key]]]:
        """Every row's key, by the directory it was stored from (None: a directory no longer
        recorded), one directory at a time."""
        rows = self._db.execute(
            "SELECT g.dir, df.identity, d.path, gf.identity, g.fs, g.ino, g.kind, g.size,"
            " g.mtime, g.ctime FROM digests g"
            " LEFT JOIN dirs d ON d.id = g.dir"
            " LEFT JOIN filesystems df ON df.id = d.fs"
            " LEFT JOIN filesystems gf ON gf.id = g.fs"
            " ORDER BY g.dir"
        )
        for (_, fs, path), group in itertools.groupby(rows, key=lambda row: row[:3]):
            keys = [Key(row[3] or b"", row[4], _unsigned(row[5]), *row[6:]) for row in group]
            known = isinstance(fs, bytes) and isinstance(path, bytes)
            yield (Directory(fs, os.fsdecode(path)) if known else None), keys

    def doom(self, keys: Iterable[Key]) -> None:
        """Mark these rows to drop at `forget_doomed` (in a temporary table, so that marking
        while `by_directory` reads leaves the rows it reads alone)."""
        self._db.execute(_DOOMED)
        self._db.executemany(
            "INSERT INTO temp.doomed VALUES (?, ?, ?, ?, ?, ?)",
            ((k.fs_id, _signed(k.ino), k.kind, k.size, k.mtime, k.ctime) for k in keys),
        )

    def forget_doomed(self) -> int:
        """Drop the rows marked, but those stored again since (another run's), and directories
        left with none; the rows dropped.  The read that marked them ends first: its snapshot
        could not take the write lock once another run had committed since."""
        self._db.commit()
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute(_DOOMED)
            dropped = self._db.execute(
                "DELETE FROM digests WHERE (fs, ino, kind, size, mtime, ctime) IN"
                " (SELECT fs, ino, kind, size, mtime, ctime FROM doomed)"
            ).rowcount
            self._db.execute("DELETE FROM temp.doomed")
            self._forget_empty_directories()
            self._db.commit()
        except BaseException:
            self._db.rollback()
            raise
        return int(dropped)

    def least_used(self) -> list[tuple[int, int]]:
        """(directory id, rows) of every directory, least recently used first."""
        return self._db.execute(
            "SELECT d.id, count(*) FROM dirs d JOIN digests g ON g.dir = d.id"
            " GROUP BY d.id ORDER BY d.used, d.id"
        ).fetchall()

    def forget_directories(self, ids: Sequence[int]) -> int:
        """Drop every row stored from these directories; the rows dropped."""
        dropped = 0
        with self._db:
            for start in range(0, len(ids), _LOOKUP_CHUNK):
                chunk = ids[start : start + _LOOKUP_CHUNK]
                marks = ",".join("?" * len(chunk))
                dropped += self._db.execute(
                    f"DELETE FROM digests WHERE dir IN ({marks})", chunk
                ).rowcount
            self._forget_empty_directories()
        return dropped

    def compact(self) -> None:
        """Give the space of dropped rows back to the filesystem (VACUUM, then the WAL)."""
        self._db.execute("VACUUM")
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _forget_empty_directories(self) -> None:
        self._db.execute(
            "DELETE FROM dirs WHERE NOT EXISTS (SELECT 1 FROM digests WHERE digests.dir = dirs.id)"
        )

    def wait_for_locks(self, busy_ms: int) -> None:
        """From now on, wait up to `busy_ms` for another connection's lock, not the wait this
        connection was opened with."""
        self._db.execute(f"PRAGMA busy_timeout = {int(busy_ms)}")

    def close(self) -> None:
        self._db.close()
        os.close(self._dir_fd)


#: SQLite's primary messages, for Python before 3.11, whose errors carry no `sqlite_errorname`.
_NAMES_BY_MESSAGE = {
    "file is not a database": "SQLITE_NOTADB",
    "database disk image is malformed": "SQLITE_CORRUPT",
    "database is locked": "SQLITE_BUSY",
    "database table is locked": "SQLITE_LOCKED",
}


def error_name(exc: sqlite3.Error) -> str:
    """SQLite's name for an error ("SQLITE_BUSY"), or "" where it gives none."""
    name = getattr(exc, "sqlite_errorname", None)
    return name if isinstance(name, str) else _NAMES_BY_MESSAGE.get(str(exc), "")


@functools.cache
def _lookup_query(kinds: int, inodes: int) -> str:
    """The lookup of `inodes` inode numbers of a filesystem, in `kinds` kinds.  A digest that is
    not `DIGEST_SIZE` bytes, or is `NO_DIGEST`, is never used (the cache is untrusted input):
    SQLite drops those rows, which is cheaper than a look at each here."""
    marks = ",".join("?" * inodes)
    # With several kinds, the key's last column is a filter on the few rows of each inode
    # ("+kind" keeps SQLite from seeking once per inode and kind: measured a fifth slower).
    kind = "kind = ?" if kinds == 1 else f"+kind IN ({','.join('?' * kinds)})"
    return (
        "SELECT kind, ino, size, mtime, ctime, digest, dir FROM digests"
        f" WHERE fs = ? AND {kind} AND ino IN ({marks})"
        f" AND typeof(digest) = 'blob' AND length(digest) = {DIGEST_SIZE}"
        f" AND digest != x'{NO_DIGEST.hex()}'"
    )


#: Rows `prune` is to drop, as they were when marked.
_DOOMED = "CREATE TEMP TABLE IF NOT EXISTS doomed (fs, ino, kind, size, mtime, ctime)"


_SIGN, _WRAP = 1 << 63, 1 << 64


def _signed(ino: int) -> int:
    """An inode number as SQLite keeps it: a signed 64-bit integer (some filesystems give
    numbers of 2**63 and more)."""
    return ino - _WRAP if ino >= _SIGN else ino


def _unsigned(value: int) -> int:
    return value + _WRAP if value < 0 else value


def _today() -> int:
    """Days since the epoch: how finely a directory's last use is kept."""
    return int(time.time()) // 86_400


def _damaged(exc: sqlite3.DatabaseError) -> bool:
    return isinstance(exc, _NotOurs) or error_name(exc) in _DAMAGED


def _not_now(directory: str, reason: str) -> Opened:
    return Opened(
        None, f"the cache in {directory} cannot be used now ({reason}); this run reads every file"
    )


def _connect(path: str, busy_ms: int) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=busy_ms / 1000, check_same_thread=False)
    db.execute(f"PRAGMA busy_timeout = {busy_ms}")
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    # Lookups probe pages all over the file: SQLite's default 2 MiB of pages has each worker
    # read most of them again from the kernel (measured: a quarter of a rerun's system time).
    db.execute(f"PRAGMA cache_size = -{_PAGE_CACHE_KIB}")
    return db


def resolve_directory(directory: str) -> str:
    """`directory` made absolute, every symlink on the way resolved a link at a time (parts that
    do not exist yet are kept as given).  A symlink that belongs to neither root nor this user is
    refused, so that no one else decides where the cache goes; so is a cache directory that is
    itself a symlink."""
    pending = [p for p in os.path.abspath(directory).split("/") if p]
    done, hops = "/", 0
    while pending:
        part = pending.pop(0)
        if part == ".":
            continue
        if part == "..":
            done = os.path.dirname(done)
            continue
        here = os.path.join(done, part)
        try:
            st = os.lstat(here)
        except FileNotFoundError:
            return os.path.join(here, *pending)
        except OSError as exc:
            raise CacheError(exc.errno, f"cache directory {directory!r}: {exc.strerror}") from None
        if not stat.S_ISLNK(st.st_mode):
            done = here
            continue
        if not pending:
            raise CacheError(
                errno.ELOOP, f"cache directory {directory!r} is not a directory (or is a symlink)"
            )
        hops += 1
        if st.st_uid not in (0, os.geteuid()) or hops > _MAX_LINKS:
            raise CacheError(
                errno.ELOOP,
                f"{here!r}, on the way to the cache directory, is a symlink of uid {st.st_uid}"
                if hops <= _MAX_LINKS
                else f"cache directory {directory!r}: too many levels of symbolic links",
            )
        target = os.readlink(here)
        done = "/" if target.startswith("/") else done
        pending = [p for p in target.split("/") if p] + pending
    return done


def _secure_directory(canonical: str, create: bool = False) -> int:
    """The cache directory at `canonical` (a path `resolve_directory` gave), opened: a path no
    one but this user and root can redirect.  Each directory above it belongs to root or this
    user and may be written by no one else, unless sticky (where only a name's owner may move
    it, and the next directory down is root's or this user's).  The directory itself is not a
    symlink, and is this user's, and nobody else may write to it, so no one can plant a cache
    that says two different files are the same.  With `create`, directories missing on the way
    are made (0700), each only once the one it is made in has passed."""
    fd = os.open("/", _THROUGH)
    parts = [p for p in canonical.split("/") if p]
    try:
        where = "/"
        for part in parts[:-1]:
            _check_above(fd, where)
            below = _open_or_make(part, fd, _THROUGH, create)
            os.close(fd)
            fd, where = below, os.path.join(where, part)
        _check_above(fd, where)
        opened = _open_or_make(parts[-1] if parts else ".", fd, OPEN_DIR, create)
    except OSError as exc:
        if isinstance(exc, CacheError):
            raise
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise CacheError(
                exc.errno, f"cache directory {canonical!r} is not a directory (or is a symlink)"
            ) from None
        raise CacheError(exc.errno, f"cache directory {canonical!r}: {exc.strerror}") from None
    finally:
        os.close(fd)
    st = os.fstat(opened)
    problem = None
    if st.st_uid != os.geteuid():
        problem = f"belongs to uid {st.st_uid}, not you"
    elif st.st_mode & 0o022:
        problem = "may be written by others"
    if problem is not None:
        os.close(opened)
        raise CacheError(0, f"cache directory {canonical!r} {problem}")
    return opened


def _open_or_make(name: str, dir_fd: int, flags: int, create: bool) -> int:
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        if not create:
            raise
    with contextlib.suppress(FileExistsError):  # another run made it meanwhile
        os.mkdir(name, 0o700, dir_fd=dir_fd)
    return os.open(name, flags, dir_fd=dir_fd)


def _check_above(fd: int, where: str) -> None:
    """A directory above the cache: root's or this user's, and writable by no one else unless
    sticky."""
    st = os.fstat(fd)
    if st.st_uid not in (0, os.geteuid()):
        raise CacheError(0, f"{where!r}, above the cache directory, belongs to uid {st.st_uid}")
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise CacheError(
            0, f"{where!r}, above the cache directory, may be written by others (not sticky)"
        )


def _descriptors() -> set[str]:
    """This process's open descriptors, by number ('/proc/self/fd'; empty where /proc is not)."""
    try:
        return set(os.listdir("/proc/self/fd"))
    except OSError:
        return set()


def _opened_by_sqlite(path: str, before: set[str], checked: os.stat_result) -> None:
    """The database SQLite just opened at `path` is the file checked: the descriptors it opened
    that name `path` are that file (by the path, where /proc is not there to ask).  `_Replaced`
    where it is another, or was removed meanwhile (another run set it aside, or a `clear`)."""
    opened: list[os.stat_result] = []
    for fd in _descriptors() - before:
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/self/fd/{fd}")
            if link == f"{path} (deleted)":
                raise _Replaced(f"the cache {path} was removed while it was opened")
            if link == path:
                opened.append(os.fstat(int(fd)))
    if not opened:
        try:
            opened.append(os.stat(path))
        except FileNotFoundError:
            raise _Replaced(f"the cache {path} was removed while it was opened") from None
    if any((st.st_dev, st.st_ino) != (checked.st_dev, checked.st_ino) for st in opened):
        raise _Replaced(f"the cache {path} was replaced while it was opened")


def _lock(dir_fd: int) -> None:
    """Take the directory's lock (flock), waiting at most `_REBUILD_WAIT_S`."""
    deadline = time.monotonic() + _REBUILD_WAIT_S
    while True:
        try:
            fcntl.flock(dir_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise OSError(errno.EAGAIN, "another run holds it to rebuild it") from None
            time.sleep(0.02)


def _check_file(dir_fd: int, directory: str) -> os.stat_result:
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
    _check_owned(st, path)
    for suffix in _COMPANIONS:  # SQLite trusts them as much as the database
        try:
            companion = os.stat(FILE_NAME + suffix, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        _check_owned(companion, path + suffix)
    return st


#: The files SQLite keeps beside a database, which it reads as part of it.
_COMPANIONS = ("-wal", "-shm", "-journal")


def _check_owned(st: os.stat_result, path: str) -> None:
    """A regular file of this user with one name, that nobody else may write to."""
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_nlink != 1:
        raise CacheError(0, f"cache {path!r} is not a regular file of yours with one name")
    if st.st_mode & 0o022:
        raise CacheError(0, f"cache {path!r} may be written by others")


def _set_aside(dir_fd: int) -> None:
    """Move a damaged cache out of the way, with its WAL files, keeping the latest for a look.
    Under the directory's lock, after the file was found damaged again: these are its WAL files,
    and no run's live cache."""
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.replace(
                FILE_NAME + suffix,
                f"{FILE_NAME}.unusable{suffix}",
                src_dir_fd=dir_fd,
                dst_dir_fd=dir_fd,
            )
