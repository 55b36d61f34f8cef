"""Worker side of the digest cache: a hashing or comparing task answered from the cache where it
can be, the rest read as without it, and what was read stored for the next run.

A stored digest is one of a file seen unchanged from its scan to after its read: the head and tail
stages' reader checks only the size, so each file read is stat'ed again here before its digest is
stored (as the re-check of a finished group does); the full stage's reader checks every file on
its open descriptor.  A group of the full stage whose every member the cache knows is not read at
all: each member is stat'ed, and one no longer as the scan saw it fails as it would have in the
read.  Files on a filesystem the cache does not trust, or without an identity
(`fsidentity.filesystem_id`), are read as without a cache; so are the files of two devices that
give one identity (an overlay over several filesystems, say), which cannot be one filesystem.
Every file read for a digest to keep has its dirty pages written back first
(`fsidentity.expose_mapped_writes`: the readers do it for a task marked `writeback`).  A cache
locked by another program is not waited for: what is held is written at a later flush, or not at
all (the last flush, at the end of the run, waits `CLOSING_BUSY_MS`).  A cache that fails
mid-run otherwise (a full disk, a file damaged under the run) is left alone for the rest of the
run, whose result does not depend on it.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from array import array
from collections.abc import Callable, Sequence

from dedup_engine.find.cache import (
    CLOSING_BUSY_MS,
    WORKER_BUSY_MS,
    DigestCache,
    Entry,
    Place,
    Seen,
    cacheable,
    error_name,
)
from dedup_engine.find.cache import kind_of as cache_kind
from dedup_engine.find.changes import Scanned, still_as_scanned
from dedup_engine.find.changes import describe as describe_error
from dedup_engine.find.fsidentity import filesystem_id
from dedup_engine.find.store import RowStore
from dedup_engine.find.tasks import (
    NO_DIGEST,
    CompareResult,
    CompareTask,
    Failure,
    HashResult,
    HashTask,
)
from dedup_engine.model import Stage

#: Where a digest may be looked up: (filesystem identity, kind).
Slot = tuple[bytes, int]
#: Digests are held in a worker and written together at most this often, or past this many: a
#: commit per task would have the workers wait on each other's write lock.  A run killed at any
#: moment loses at most that much of its work.
FLUSH_S = 1.0
FLUSH_ROWS = 50_000
#: Rows held at most while the cache is locked by another program; past it they are dropped.
HELD_MAX = 4 * FLUSH_ROWS
#: Lookups and writes in a row that found the cache locked, after which a worker goes on
#: without it: each waited `WORKER_BUSY_MS`.
BUSY_LIMIT = 3
_NOTHING_HASHED = HashResult(b"", (), 0, 0)
_NOTHING_COMPARED = CompareResult(b"", (), 0, 0, array("I"), array("I"), array("H"))


class WorkerCache:
    """A worker's connection to the cache, made on first use (never across a fork), and the
    identity of each filesystem it has met."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._cache: DigestCache | None = None
        self._broken = False
        self._fs: dict[int, bytes | None] = {}
        self._devs: dict[bytes, int] = {}
        self._pending: dict[Place, list[Entry]] = {}
        self._held = 0
        self._flushed = time.monotonic()
        self._busy = 0

    def fs(self, dev: int, path: str, follow_links: bool) -> bytes | None:
        """The identity of device `dev`'s filesystem, asked of `path`, a file on it: of the
        file itself, which with links followed may be on another filesystem than the link.  A
        file that cannot be asked (gone, or no longer on `dev`) leaves the question to the next."""
        if dev not in self._fs:
            try:
                identity = filesystem_id(path, dev, follow_links)
            except OSError:
                return None
            self._fs[dev] = identity
            if identity is not None and self._devs.setdefault(identity, dev) != dev:
                self._fs[dev] = self._fs[self._devs[identity]] = None  # trust neither
        return self._fs[dev]

    def lookup(self, slot: Slot, seen: Sequence[Seen]) -> list[bytes | None]:
        return self.lookup_kinds(slot[0], (slot[1],), seen)[slot[1]]

    def lookup_kinds(
        self, fs: bytes, kinds: Sequence[int], seen: Sequence[Seen]
    ) -> dict[int, list[bytes | None]]:
        """`DigestCache.lookup_kinds`; nothing found where the cache cannot be used."""
        cache = self._open()
        try:
            if cache is not None:
                found = cache.lookup_kinds(fs, kinds, seen)
                self._busy = 0
                return found
        except sqlite3.Error as exc:
            self._failed(exc)
        return {kind: [None] * len(seen) for kind in kinds}

    def store(self, place: Place, entries: list[Entry]) -> None:
        """Keep these digests: written with the others at most `FLUSH_S` later, or at `close`."""
        if not entries or self._broken:
            return
        self._pending.setdefault(place, []).extend(entries)
        self._held += len(entries)
        if self._held >= FLUSH_ROWS or time.monotonic() - self._flushed >= FLUSH_S:
            self.flush()

    def flush(self) -> None:
        """Write what is held, in one transaction."""
        pending, held, self._pending, self._held = self._pending, self._held, {}, 0
        self._flushed = time.monotonic()
        cache = self._open()
        if cache is None or not (pending or cache.unwritten):
            return
        try:
            cache.store_many(pending.items())
        except sqlite3.Error as exc:
            self._failed(exc)
            if not self._broken and held <= HELD_MAX:  # locked: tried again at the next flush
                for place, entries in pending.items():
                    self._pending.setdefault(place, []).extend(entries)
                self._held += held
            return
        self._busy = 0

    def close(self) -> None:
        """Write what is held and let the file go: the end of the worker's run.  This last
        write waits `CLOSING_BUSY_MS` for the lock, not `WORKER_BUSY_MS`: no later flush would
        keep its digests."""
        cache = self._open() if self._pending else self._cache
        if cache is not None and (self._pending or cache.unwritten):
            with contextlib.suppress(sqlite3.Error):  # the flush then meets the same error
                cache.wait_for_locks(CLOSING_BUSY_MS)
        self.flush()
        if self._cache is not None:
            self._cache.close()
            self._cache = None

    def _open(self) -> DigestCache | None:
        if self._cache is None and not self._broken:
            try:
                # Checked again: this is a new open.
                self._cache = DigestCache(self.directory, busy_ms=WORKER_BUSY_MS)
            except (sqlite3.Error, OSError):
                self._broken = True
        return self._cache

    def _failed(self, exc: sqlite3.Error) -> None:
        """A lookup or write failed: the cache is given up for this run unless it was locked,
        and then only after `BUSY_LIMIT` such in a row."""
        self._busy = self._busy + 1 if _busy(exc) else BUSY_LIMIT
        if self._busy >= BUSY_LIMIT:
            self._give_up()

    def _give_up(self) -> None:
        self._broken = True
        if self._cache is not None:
            self._cache.close()
            self._cache = None


def _busy(exc: sqlite3.Error) -> bool:
    """The cache is locked by another connection for longer than a worker waits."""
    return error_name(exc) in ("SQLITE_BUSY", "SQLITE_LOCKED")


def hash_cached(
    task: HashTask,
    store: RowStore,
    cache: WorkerCache,
    run: Callable[[HashTask], HashResult],
) -> HashResult:
    """A head or tail task: digests from the cache where it has them, the other files read by
    `run`, and those read unchanged stored.  With `whole_known`, each file above the window
    also gets its whole-file digest where the cache has one (`HashResult.whole`)."""
    started = time.time_ns()
    rows, sizes, window = task.rows, task.sizes, task.window
    devs = store.devs(rows)
    ino, mtime, ctime = store.ino, store.mtime, store.ctime
    # What the scan saw of each file, less its device: (ino, size, mtime, ctime), as looked up.
    keys = list(
        zip(
            [ino[row] for row in rows],
            sizes,
            [mtime[row] for row in rows],
            [ctime[row] for row in rows],
            strict=True,
        )
    )
    fs_of = {
        dev: cache.fs(dev, store.paths([rows[devs.index(dev)]])[0], task.follow_links)
        for dev in set(devs)
    }
    places = (
        [next(iter(fs_of.values()))] * len(devs)
        if len(fs_of) == 1
        else [fs_of[dev] for dev in devs]
    )
    window_kind, whole = cache_kind(window.stage, window.length), cache_kind(Stage.FULL)
    limit = window.whole_limit
    found = _look_up(cache, places, (whole, window_kind), keys)
    wholes = found[whole]
    digests = [
        held if size <= limit else part
        for held, part, size in zip(wholes, found[window_kind], sizes, strict=True)
    ]
    missing = [p for p, digest in enumerate(digests) if digest is None]
    result = (
        run(
            HashTask(
                window,
                array("Q", [rows[p] for p in missing]),
                array("q", [sizes[p] for p in missing]),
                task.follow_links,
                writeback=True,
            )
        )
        if missing
        else _NOTHING_HASHED
    )
    read = _column(result.digests, len(missing))
    for p, digest in zip(missing, read, strict=True):
        digests[p] = digest
    paths = store.paths([rows[p] for p in missing])
    seen = [Scanned(devs[p], *keys[p]) for p in missing]
    # The reader checked only the size: each file read is stat'ed again before its digest is
    # kept.
    _keep(
        cache,
        started,
        [
            (
                _slot(places[p], whole if sizes[p] <= limit else window_kind),
                seen[j],
                read[j],
                paths[j],
            )
            for j, p in enumerate(missing)
            if read[j] != NO_DIGEST and _unchanged(paths[j], seen[j], task.follow_links)
        ],
    )
    looked = sum(place is not None for place in places)
    return HashResult(
        b"".join(digest or NO_DIGEST for digest in digests),
        _moved(result.failed, missing),
        result.files_opened,
        result.bytes_read,
        len(digests) - len(missing),
        looked - (len(digests) - len(missing)),
        _above(wholes, sizes, limit) if task.whole_known else b"",
    )


def _slot(fs: bytes | None, kind: int) -> Slot | None:
    return None if fs is None else (fs, kind)


def _above(wholes: list[bytes | None], sizes: Sequence[int], limit: float) -> bytes:
    """The whole-file digests known of the files above a window's limit, in task order
    (`NO_DIGEST` for the others); nothing if none is known."""
    known = [
        NO_DIGEST if digest is None or size <= limit else digest
        for digest, size in zip(wholes, sizes, strict=True)
    ]
    return b"".join(known) if known.count(NO_DIGEST) < len(known) else b""


def compare_cached(
    task: CompareTask, cache: WorkerCache, run: Callable[[CompareTask], CompareResult]
) -> CompareResult:
    """A full-stage task: a group whose members the cache all knows is stat'ed, not read; the
    other groups are compared by `run`, and their members' digests stored."""
    started = time.time_ns()
    count = len(task.paths)
    whole = cache_kind(Stage.FULL)
    places: list[bytes | None] = []
    seen: list[Scanned] = []
    for p in range(count):
        # A file compared on `--sample` windows gets no whole-file digest: not looked up, never
        # stored.
        places.append(
            None
            if task.sampled(task.sizes[p])
            else cache.fs(task.devs[p], task.paths[p], task.follow_links)
        )
        seen.append(
            Scanned(task.devs[p], task.inos[p], task.sizes[p], task.mtimes[p], task.ctimes[p])
        )
    slots = [_slot(fs, whole) for fs in places]
    known = _look_up(cache, places, (whole,), [scanned[1:] for scanned in seen])[whole]
    digests: list[bytes | None] = [None] * count
    uids, gids = array("I", bytes(4 * count)), array("I", bytes(4 * count))
    modes = array("H", bytes(2 * count))
    failed: list[Failure] = []
    read_groups: list[int] = []
    members: list[int] = []
    start = 0
    for size in task.groups:
        positions = range(start, start + size)
        start += size
        if all(known[p] is not None for p in positions):
            for p in positions:
                try:
                    st = still_as_scanned(task.paths[p], seen[p], task.follow_links)
                except OSError as exc:
                    failed.append((p, task.paths[p], describe_error(exc)))
                    continue
                digests[p] = known[p]
                uids[p], gids[p], modes[p] = st.st_uid, st.st_gid, st.st_mode & 0o7777
        else:
            read_groups.append(size)
            members.extend(positions)
    result = (
        run(task.subset(members, read_groups, writeback=True)) if members else _NOTHING_COMPARED
    )
    read = _column(result.digests, len(members))
    for j, p in enumerate(members):
        digests[p] = read[j]
        uids[p], gids[p], modes[p] = result.uids[j], result.gids[j], result.modes[j]
    failed.extend(_moved(result.failed, members))
    # The reader checked each file on its open descriptor: a digest means it was as scanned.
    _keep(
        cache,
        started,
        [(slots[p], seen[p], read[j], task.paths[p]) for j, p in enumerate(members)],
    )
    opened, total = result.files_opened, result.bytes_read
    # A member that differed from all the others stopped being read: it is read to its end
    # now, so that the next run need not open it to tell it apart again.
    stopped = {index for index, _, _ in result.failed}
    lone = [
        p
        for j, p in enumerate(members)
        if read[j] == NO_DIGEST and j not in stopped and slots[p] is not None
    ]
    if lone:
        alone = run(task.subset(lone, [1] * len(lone), writeback=True))
        ends = _column(alone.digests, len(lone))
        _keep(
            cache,
            started,
            [(slots[p], seen[p], ends[j], task.paths[p]) for j, p in enumerate(lone)],
        )
        opened, total = opened + alone.files_opened, total + alone.bytes_read
    hits = count - len(members)
    looked = sum(slot is not None for slot in slots)
    return CompareResult(
        b"".join(digest or NO_DIGEST for digest in digests),
        tuple(sorted(failed)),
        opened,
        total,
        uids,
        gids,
        modes,
        hits,
        looked - sum(known[p] is not None for p in range(count)),
    )


def _look_up(
    cache: WorkerCache, places: Sequence[bytes | None], kinds: Sequence[int], keys: Sequence[Seen]
) -> dict[int, list[bytes | None]]:
    """Each file's stored digest of each kind, or None, by its filesystem (None: not looked
    up); one query per filesystem."""
    if places and places[0] is not None and places.count(places[0]) == len(places):
        return cache.lookup_kinds(places[0], kinds, keys)  # the common task: one filesystem
    by_fs: dict[bytes, list[int]] = {}
    for p, fs in enumerate(places):
        if fs is not None:
            by_fs.setdefault(fs, []).append(p)
    found: dict[int, list[bytes | None]] = {kind: [None] * len(keys) for kind in kinds}
    for fs, positions in by_fs.items():
        for kind, digests in cache.lookup_kinds(fs, kinds, [keys[p] for p in positions]).items():
            column = found[kind]
            for p, digest in zip(positions, digests, strict=True):
                column[p] = digest
    return found


def _keep(
    cache: WorkerCache, started: int, read: list[tuple[Slot | None, Scanned, bytes, str]]
) -> None:
    """Store the digests of files read and seen unchanged, with the directory each was seen in,
    but for those not cacheable: no filesystem identity, no digest, or changed just before the
    read began."""
    by_place: dict[Place, list[Entry]] = {}
    for slot, seen, digest, path in read:
        if slot is not None and digest != NO_DIGEST and cacheable(seen.ctime, started):
            by_place.setdefault((*slot, os.path.dirname(path)), []).append(
                (seen.ino, seen.size, seen.mtime, seen.ctime, digest)
            )
    for place, entries in by_place.items():
        cache.store(place, entries)


def _unchanged(path: str, seen: Scanned, follow_links: bool) -> bool:
    try:
        still_as_scanned(path, seen, follow_links)
    except OSError:
        return False
    return True


def _column(blob: bytes, count: int) -> list[bytes]:
    width = len(NO_DIGEST)
    return [blob[i * width : (i + 1) * width] for i in range(count)]


def _moved(failed: Sequence[Failure], positions: Sequence[int]) -> tuple[Failure, ...]:
    """A sub-task's failures at their positions in the whole task."""
    return tuple((positions[index], path, message) for index, path, message in failed)
