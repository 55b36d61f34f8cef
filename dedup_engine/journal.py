"""The apply journal: a record of every operation, on disk before and after it, and `--resume`.

The journal is JSON lines: a header, then for each operation a `begin` record (the victim's path
and identity, its temporary name, the kept file) and an end record with the outcome.  `apply`
writes the `begin` records of a batch of operations and fsyncs them together before any of the
batch starts; each end record is written as its operation ends, and fsync'd with the batch,
after the directories the batch changed are synced (so "done" never runs ahead of the disk).
An operation with a `begin` and no end was interrupted (SIGKILL, power loss) or never started;
`resume` looks at what is on disk for each one and completes it or puts the victim back, so no
file is left under a temporary name, then records that in the journal too.  A running `apply`
holds an exclusive lock on its journal, so `--resume` cannot race a live run.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from dedup_engine.act import Outcome
from dedup_engine.fsops import REAL, Syscalls
from dedup_engine.fsquery import same_bytes, sync_dir
from dedup_engine.plan import Action, Operation

JOURNAL_VERSION = 1


class JournalError(Exception):
    """A journal that cannot be created, read, locked or written.

    Raised before the first operation (nothing changed), or when a record cannot be written,
    which stops the run: an operation whose `begin` is not on disk is never started."""


def default_path() -> str:
    """A new journal's path in the user's state directory (XDG_STATE_HOME, ~/.local/state)."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local/state")
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return os.path.join(base, "dedup-engine", "journals", f"apply-{stamp}-{os.getpid()}.jsonl")


class FileJournal:
    """The journal of one run; created new (never appended to an old run's journal)."""

    def __init__(self, path: str, header: dict[str, Any]) -> None:
        self.path = path
        directory = os.path.dirname(os.path.abspath(path))
        if os.path.isdir(path):
            raise JournalError(f"journal {path!r} is a directory: give a file name")
        try:
            os.makedirs(directory, exist_ok=True)
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        except FileExistsError:
            message = f"journal {path!r} exists: use --resume, or another --journal"
            raise JournalError(message) from None
        except OSError as exc:
            raise JournalError(f"cannot create journal {path!r}: {exc.strerror}") from None
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        self._write({"journal": JOURNAL_VERSION, "boot": boot_id(), **header})
        self.commit()
        sync_dir(directory)

    @classmethod
    def reopen(cls, path: str) -> FileJournal:
        """An existing journal, locked, for `resume` to append its settlements to."""
        journal = cls.__new__(cls)
        journal.path = path
        try:
            journal._fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        except OSError as exc:
            raise JournalError(f"cannot open journal {path!r}: {exc.strerror}") from None
        try:
            fcntl.flock(journal._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(journal._fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise JournalError(f"journal {path!r} is in use: its run is still going") from None
            raise
        journal._drop_torn_tail()
        return journal

    def _drop_torn_tail(self) -> None:
        # A record cut short (a kill, a full disk) was never complete, so its step was never
        # taken; cut it off, or the next record would be glued to it and unreadable.
        with open(self.path, "rb") as source:
            data = source.read()
        end = data.rfind(b"\n") + 1
        if end != len(data):
            os.ftruncate(self._fd, end)
            os.fsync(self._fd)

    def begin(self, index: int, op: Operation, aside: str | None) -> None:
        self._write(
            {
                "op": index,
                "state": "begin",
                "group": op.group,
                "action": op.action.value,
                "path": op.victim.path,
                "victim": [op.victim.dev, op.victim.ino],
                "aside": aside,
                "keep": op.keep.path,
                "kept": [op.keep.dev, op.keep.ino],
                "target": op.target,
                "dir": _identity(os.path.dirname(op.victim.path)),
            }
        )

    def start(self, index: int) -> None:
        self._write({"op": index, "state": "start"})

    def end(self, index: int, outcome: Outcome, message: str) -> None:
        self._write({"op": index, "state": outcome.value, "message": message})

    def commit(self) -> None:
        """Make every record written so far durable."""
        try:
            os.fsync(self._fd)
        except OSError as exc:
            raise JournalError(f"cannot write journal {self.path!r}: {exc.strerror}") from None

    def close(self) -> None:
        """Sync what is left, best effort: a record that does not reach the disk is one resume
        works out from the disk itself; never raise over the run's own outcome."""
        with contextlib.suppress(OSError):
            os.fsync(self._fd)
        os.close(self._fd)

    def _write(self, record: dict[str, Any]) -> None:
        # ensure_ascii: names that are not UTF-8 travel as \\udcxx escapes and come back exact.
        line = (json.dumps(record, ensure_ascii=True) + "\n").encode("ascii")
        try:
            if os.write(self._fd, line) != len(line):
                self._drop_torn_tail()
                raise OSError(errno.ENOSPC, "short write")
        except OSError as exc:
            # Without a record on disk no further operation may start: the run stops here.
            raise JournalError(f"cannot write journal {self.path!r}: {exc.strerror}") from None


def boot_id() -> str | None:
    """This boot's id: within one boot, what `write` put in the journal is what a reader sees,
    synced or not (the page cache outlives a killed process, not a power loss)."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as source:
            return source.read().strip()
    except OSError:
        return None


def _identity(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_dev, st.st_ino]


@dataclass(frozen=True, slots=True)
class Pending:
    """An operation the journal shows begun and never ended, or ended in a failed rollback."""

    index: int
    action: Action
    path: str
    victim: tuple[int, int]
    aside: str | None
    keep: str
    kept: tuple[int, int]
    target: str | None
    directory: tuple[int, int] | None  # the victim's directory, as it was when journaled
    started: bool | None  # False: surely never started (same boot, no start record)


def read(path: str) -> tuple[dict[str, Any], list[Pending]]:
    """The header and the interrupted operations.  A torn last line (killed mid-write) is
    ignored: its record was never complete, so its step was never taken."""
    try:
        with open(path, "rb") as source:
            lines = source.read().split(b"\n")
    except OSError as exc:
        raise JournalError(f"cannot read journal {path!r}: {exc.strerror}") from None
    records = list(_records(lines, path))
    if not records or records[0].get("journal") != JOURNAL_VERSION:
        raise JournalError(f"{path!r} is not a dedup-engine journal (version {JOURNAL_VERSION})")
    begun: dict[int, dict[str, Any]] = {}
    started: set[int] = set()
    for record in records[1:]:
        if record.get("state") == "begin":
            begun[int(record["op"])] = record
        elif record.get("state") == "start":
            started.add(int(record["op"]))
        elif record.get("state") != Outcome.ROLLBACK_FAILED.value:
            # A failed rollback stays open: its file is still under the temporary name.
            begun.pop(int(record["op"]), None)
    same_boot = records[0].get("boot") is not None and records[0].get("boot") == boot_id()
    pending = [
        Pending(
            index,
            Action(r["action"]),
            r["path"],
            (int(r["victim"][0]), int(r["victim"][1])),
            r["aside"],
            r["keep"],
            (int(r["kept"][0]), int(r["kept"][1])),
            r["target"],
            (int(r["dir"][0]), int(r["dir"][1])) if r.get("dir") else None,
            (index in started) if same_boot else None,
        )
        for index, r in sorted(begun.items())
    ]
    return records[0], pending


def _records(lines: list[bytes], path: str) -> Iterator[dict[str, Any]]:
    for number, line in enumerate(lines):
        if not line.strip() or b"\0" in line:
            # Blank, or zeros where writeback had not reached: an end record that was never
            # synced, which resume works out from the disk.  (A begin is synced before use.)
            continue
        try:
            yield json.loads(line)
        except ValueError:
            if number == len(lines) - 1 or not any(rest.strip() for rest in lines[number + 1 :]):
                return  # torn by the kill: the last record only
            raise JournalError(f"{path!r}: line {number + 1} is damaged") from None


@dataclass(frozen=True, slots=True)
class Settled:
    pending: Pending
    outcome: Outcome  # DONE: completed; SKIPPED: put back as it was; ROLLBACK_FAILED: needs you
    message: str


def resume(path: str, sys: Syscalls = REAL) -> list[Settled]:
    """Complete or roll back every interrupted operation of the journal at `path`."""
    _, pending = read(path)
    journal = FileJournal.reopen(path)
    try:
        settled = []
        for item in pending:
            outcome, message = _settle(item, sys)
            journal.end(item.index, outcome, f"resumed: {message}")
            settled.append(Settled(item, outcome, message))
        return settled
    finally:
        journal.close()


def _settle(item: Pending, sys: Syscalls) -> tuple[Outcome, str]:
    if item.started is False:
        return Outcome.SKIPPED, f"{item.path!r}: never started (it was waiting in its batch)"
    try:
        if item.action is Action.REFLINK:
            return Outcome.DONE, "a reflink is atomic: the file is whole either way"
        if item.action is Action.MOVE:
            return _settle_move(item, sys)
        return _settle_replace(item, sys)
    except OSError as exc:
        return Outcome.ROLLBACK_FAILED, f"{exc}; look at {item.path!r} and {item.aside!r}"


def _settle_move(item: Pending, sys: Syscalls) -> tuple[Outcome, str]:
    assert item.target is not None
    at_path, at_target = _lstat(item.path), _lstat(item.target)
    if _is(at_target, item.victim) and at_path is None:
        return Outcome.DONE, f"{item.path!r} had been moved to {item.target!r}"
    if _is(at_path, item.victim):
        return Outcome.SKIPPED, f"{item.path!r} had not been moved"
    # A move leaves no temporary name: with the file at neither place, someone moved or
    # removed it, and nothing of ours is stranded.
    return Outcome.SKIPPED, f"neither {item.path!r} nor {item.target!r} holds the file now"


def _settle_replace(item: Pending, sys: Syscalls) -> tuple[Outcome, str]:
    assert item.aside is not None
    path, aside = item.path, item.aside
    at_path, at_aside = _lstat(path), _lstat(aside)
    ours = at_path is not None and _is_new(item, path, at_path)
    if at_aside is None:
        if _is(at_path, item.victim):
            return Outcome.SKIPPED, f"{path!r} had not been touched"
        if ours:
            return Outcome.DONE, f"{path!r} had been completed"
        if not _same_directory(item):
            # An unmounted volume or a renamed directory hides both names: nothing can be
            # told from here, and a temporary name may be waiting there.
            return Outcome.ROLLBACK_FAILED, f"the directory of {path!r} is not the one we worked in"
        if at_path is None and item.action is Action.DELETE:
            if _is(_lstat(item.keep), item.kept):
                return Outcome.DONE, f"{path!r} had been deleted"
            return Outcome.ROLLBACK_FAILED, f"{path!r} and its kept copy {item.keep!r} are gone"
        # No temporary name and nothing of ours at the path: never started (a file changed
        # after the report is skipped before it is set aside), or changed by someone since.
        return Outcome.SKIPPED, f"{path!r} was changed by someone else; nothing of ours is there"
    if not _is(at_aside, item.victim):
        return Outcome.ROLLBACK_FAILED, f"{aside!r} is not the victim; left alone"
    if _is(at_path, item.victim):
        # A rename without RENAME_NOREPLACE is a link then an unlink: stopped between the two.
        sys.unlink(aside)
        return Outcome.SKIPPED, f"{path!r} had not been replaced; {aside!r} removed"
    if at_path is None:
        sys.rename_noreplace(aside, path)
        return Outcome.SKIPPED, f"{path!r} put back from {aside!r}"
    if not ours:
        return (
            Outcome.ROLLBACK_FAILED,
            f"the original is at {aside!r}; {path!r} now holds a file we did not create",
        )
    if _still_duplicate(item):
        sys.unlink(aside)
        return Outcome.DONE, f"{path!r} completed; {aside!r} removed"
    sys.unlink(path)
    sys.rename_noreplace(aside, path)
    return Outcome.SKIPPED, f"{path!r} put back: its bytes no longer match the kept file"


def _same_directory(item: Pending) -> bool:
    """The victim's directory is the one we worked in: not an unmounted volume, nor a new
    directory in place of one renamed away (which may hold our temporary name)."""
    try:
        st = os.stat(os.path.dirname(item.path))
    except OSError:
        return False
    if item.directory is not None:
        return (st.st_dev, st.st_ino) == item.directory
    return st.st_dev == item.victim[0]


def _is_new(item: Pending, path: str, st: os.stat_result) -> bool:
    """Whether `path` holds what the operation creates there (the link or symlink)."""
    if item.action is Action.HARDLINK:
        return stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) == item.kept
    if item.action is Action.SYMLINK:
        try:
            return stat.S_ISLNK(st.st_mode) and os.readlink(path) == item.keep
        except OSError:
            return False
    return False


def _still_duplicate(item: Pending) -> bool:
    """The set-aside victim and the kept file: the right files, with the same bytes."""
    assert item.aside is not None
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        a = os.open(item.keep, flags)
    except OSError:
        return False
    try:
        b = os.open(item.aside, flags)
        try:
            sa, sb = os.fstat(a), os.fstat(b)
            if (sa.st_dev, sa.st_ino) != item.kept or (sb.st_dev, sb.st_ino) != item.victim:
                return False
            return sa.st_size == sb.st_size and same_bytes(a, b, sa.st_size)
        finally:
            os.close(b)
    except OSError:
        return False
    finally:
        os.close(a)


def _lstat(path: str) -> os.stat_result | None:
    # Not fsquery.lstat, which reads any error as "absent": here an unreadable name must stop
    # the settling (needs you), not be taken for a name that is gone.
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _is(st: os.stat_result | None, identity: tuple[int, int]) -> bool:
    return st is not None and (st.st_dev, st.st_ino) == identity
