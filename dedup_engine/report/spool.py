"""Holding final groups on disk until the report is written, and giving them back in report order.

A search finishes its groups in no particular order, and a report lists them largest size first,
then by first path (the order `find_duplicates` returns).  `GroupSpool` takes them as they come,
writes them to an anonymous temporary file, `FLUSH_BYTES` at a time (deleted when the spool is
closed, or by the kernel when the process dies) and keeps only a compact sort key per group in
memory; past `max_keys` keys, a sorted run of keys goes to a second anonymous file too.
Iterating sorts the keys still in memory, merges them with the runs, and reads each group back:
the memory held is bounded whatever the number of groups.

A key is one bytes object ordered as the report is: the size's complement, the first path's code
points as UTF-8 (which orders like the code points, lone surrogates of undecodable bytes
included), then where the group lies in the data file.  A group is stored with `marshal`, which
keeps any string exactly.  `BlockSpool` is the same spool for groups already rendered in a
report's format (`report.formats.blocks`): it stores each one's bytes and gives them back as they
are, so that writing the report at the end of a search only orders them.
"""

from __future__ import annotations

import contextlib
import heapq
import marshal
import os
import struct
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import IO, TypeVar

from dedup_engine.model import (
    DirectoryGroup,
    DuplicateGroup,
    Issue,
    RunStats,
    Verified,
    entry_of,
    report_order,
)

#: Keys kept in memory before a sorted run of them is written out: about 4 MiB of keys for
#: paths of 60 characters, a few bytes a file at a million files; a merge of 10M files' groups
#: then reads some 60 runs, a record of `RUN_CHUNK` keys at a time each.
MAX_KEYS = 1 << 15

#: Keys a run's records hold: a merge of runs holds one record of each in memory (some 55 KiB
#: for paths of 60 characters), and reads a run with one `marshal.loads` per record.
RUN_CHUNK = 512
#: Records of groups held before they are written out together.
FLUSH_BYTES = 1 << 16

_SIZE_TOP = (1 << 64) - 1
_PLACE = struct.Struct(">QI")  # a group's offset and length in the data file, ending its key
_CHUNK_LENGTH = struct.Struct(">I")  # before each record of a run on disk
#: A `Verified` as the spool stores it, and back: cheaper than the enum's own lookups.
_VALUE = {member: member.value for member in Verified}
_VERIFIED = {member.value: member for member in Verified}
_S = TypeVar("_S", bound="_Spool")


def default_directory() -> str | None:
    """Where a spool's files go unless told: $TMPDIR where the user set it, else /var/tmp (on a
    disk on most systems, where /tmp is often memory, which a report of millions of files would
    fill), else `tempfile`'s choice."""
    chosen = os.environ.get("TMPDIR")
    if chosen:
        return chosen
    if os.path.isdir("/var/tmp") and os.access("/var/tmp", os.W_OK | os.X_OK):
        return "/var/tmp"
    return None


class _Spool:
    """Records of groups added in any order, given back in report order, held in temporary
    files.

    `directory` is where the anonymous files live (`tempfile`'s choice by default); `max_keys`
    bounds the keys held in memory.  Use it as a context manager, or `close` it: both files go
    at once.
    """

    def __init__(self, directory: str | None = None, max_keys: int = MAX_KEYS) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self._max_keys = max_keys
        # The files live as long as the spool, not a block: `close` (or __exit__) closes them.
        self._data: IO[bytes] = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115
        self._directory = directory
        self._runs_file: IO[bytes] | None = None
        self._runs: list[tuple[int, int]] = []  # (offset, length) of each sorted run of keys
        self._keys: list[bytes] = []
        self._end = 0  # the data file's length, the records waiting included
        self._count = 0
        self._pending: list[bytes] = []  # records not yet written
        self._pending_bytes = 0

    def _add(self, group: DuplicateGroup, record: bytes) -> None:
        """Write the group's record out (once `FLUSH_BYTES` are waiting, or at `flush`); only
        its key stays."""
        self._pending.append(record)
        self._pending_bytes += len(record)
        self._keys.append(_key(report_order(group), self._end, len(record)))
        self._end += len(record)
        self._count += 1
        if self._pending_bytes >= FLUSH_BYTES:
            self._write_pending()
        if len(self._keys) >= self._max_keys:
            self._spill()

    def _write_pending(self) -> None:
        """Write the records waiting: one write for many groups, not one each."""
        self._data.write(b"".join(self._pending))
        self._pending, self._pending_bytes = [], 0

    def flush(self) -> None:
        """Put every group added so far in the spool's files, so that a full disk shows once
        the groups are all added (`OSError`), not as they are read back."""
        self._write_pending()
        self._data.flush()
        if self._runs_file is not None:
            self._runs_file.flush()

    def __len__(self) -> int:
        return self._count

    def _records(self) -> Iterator[bytes]:
        """The records in report order; one added while iterating may be missed."""
        self.flush()
        self._keys.sort()
        sources: list[Iterable[bytes]] = [self._run(*run) for run in self._runs]
        keys = heapq.merge(*sources, self._keys) if sources else iter(self._keys)
        fd, place, pread = self._data.fileno(), _PLACE.unpack_from, os.pread
        for key in keys:
            offset, length = place(key, len(key) - _PLACE.size)
            yield pread(fd, length, offset)

    def _spill(self) -> None:
        """Write the keys in memory out as one sorted run, `RUN_CHUNK` keys a record."""
        if self._runs_file is None:
            self._runs_file = tempfile.TemporaryFile(dir=self._directory)  # noqa: SIM115
        keys = self._keys
        keys.sort()
        start = self._runs_file.tell()
        for at in range(0, len(keys), RUN_CHUNK):
            chunk = marshal.dumps(keys[at : at + RUN_CHUNK])
            self._runs_file.write(_CHUNK_LENGTH.pack(len(chunk)) + chunk)
        self._runs.append((start, self._runs_file.tell() - start))
        self._keys = []

    def _run(self, offset: int, length: int) -> Iterator[bytes]:
        """The keys of one run, read a record at a time (each run keeps its own place)."""
        assert self._runs_file is not None
        fd, end = self._runs_file.fileno(), offset + length
        while offset < end:
            header = os.pread(fd, _CHUNK_LENGTH.size, offset)
            if len(header) == _CHUNK_LENGTH.size:
                (size,) = _CHUNK_LENGTH.unpack(header)
                chunk = os.pread(fd, size, offset + len(header))
                if len(chunk) == size:
                    yield from marshal.loads(chunk)
                    offset += len(header) + size
                    continue
            raise OSError(f"a spool's run of keys ends early at {offset}")

    def close(self) -> None:
        """Remove both files (idempotent); the spool is empty afterwards.  Never fails: what a
        full disk kept from them is no longer wanted (the error was met where it was written)."""
        for spooled in (self._data, self._runs_file):
            if spooled is not None:
                with contextlib.suppress(OSError):  # the descriptor is closed all the same
                    spooled.close()
        self._keys, self._runs, self._count = [], [], 0
        self._pending, self._pending_bytes = [], 0

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class GroupSpool(_Spool):
    """Duplicate groups added in any order, given back in report order, held in temporary files.

    `add` a group as soon as it is final; iterate (as often as needed) for the groups in
    `model.report_order` order, each read back from disk.
    """

    def add(self, group: DuplicateGroup) -> None:
        record = marshal.dumps(
            (group.size, group.digest, tuple(map(tuple, group.files)), _VALUE[group.verified])
        )
        self._add(group, record)

    def extend(self, groups: Iterable[DuplicateGroup]) -> None:
        for group in groups:
            self.add(group)

    def __iter__(self) -> Iterator[DuplicateGroup]:
        """The groups in report order; a group added while iterating may be missed."""
        loads = marshal.loads
        for record in self._records():
            size, digest, files, verified = loads(record)
            yield DuplicateGroup(size, digest, tuple(map(entry_of, files)), _VERIFIED[verified])


class BlockSpool(_Spool):
    """Groups rendered in a report's format, added in any order with the group each renders,
    given back in report order as the bytes added."""

    def add(self, group: DuplicateGroup, block: bytes) -> None:
        self._add(group, block)

    def __iter__(self) -> Iterator[bytes]:
        """The blocks in report order; one added while iterating may be missed."""
        return self._records()


@dataclass(frozen=True, slots=True)
class SpooledResult:
    """A finished search whose groups wait in a spool: a `Findings` for the report writers.
    Where they wait rendered already (a `BlockSpool`), `groups` is empty and the blocks go to the
    format's `BlockWriter` beside it."""

    roots: Sequence[str]
    groups: Iterable[DuplicateGroup]
    issues: tuple[Issue, ...]
    stats: RunStats
    reference_roots: tuple[str, ...] = ()
    directory_groups: tuple[DirectoryGroup, ...] = ()


def _key(order: tuple[int, str], offset: int, length: int) -> bytes:
    """Bytes that sort as the group's `model.report_order` does, ending in where the group lies
    in the data file.

    A NUL in the path becomes NUL 1 and the path ends in NUL NUL, so a path sorts before every
    longer path it begins, as a string does."""
    negative_size, first_path = order
    path = first_path.encode("utf-8", "surrogatepass")
    if b"\0" in path:
        path = path.replace(b"\0", b"\0\1")
    size_part = (_SIZE_TOP + negative_size).to_bytes(8, "big")
    return size_part + path + b"\0\0" + _PLACE.pack(offset, length)
