"""The apply journal: every operation on disk before and after it; read back as untrusted input.

The journal is JSON lines: a header (what `--resume` needs to make the same plan again: the
report's path and BLAKE3 digest, the policy), then for each operation a `begin` record (the
victim's path and identity, its temporary name, the kept file), a `start` record just before its
first change, and an end record with the outcome and the files as it left them.  `apply` writes
the `begin` records of a batch of operations and fsyncs them together before any of the batch
starts; end records are fsync'd with the batch, after the directories the batch changed are
synced (writeback may carry one to the disk sooner: what a crash leaves then is a temporary
name or a copy not yet linked, never a lost file).  An operation closed without starting (Ctrl-C)
gets an `unstarted` record.  A running `apply` holds an exclusive lock on its journal, so
`--resume` (`resume.py`, `settle.py`) cannot race a live run.

`read` trusts nothing in the file: it must belong to the caller and be writable by no one else,
and every record is checked (paths absolute and normalised, temporary names of the shape `apply`
makes, in the victim's own directory) before `--resume` may act on it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import json
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NoReturn

from dedup_engine.apply.aside import ASIDE_PATTERN
from dedup_engine.apply.fsquery import sync_dir
from dedup_engine.apply.outcome import OpResult, Outcome, Stamp
from dedup_engine.apply.plan import Action, Operation
from dedup_engine.model import FileEntry
from dedup_engine.openflags import GUARDS
from dedup_engine.oserror import describe_error
from dedup_engine.report.read import path_problem

JOURNAL_VERSION = 2
#: Version 1 journals (dedup-engine 0.1.0) hold no plan: they can be settled, not finished.
READABLE_VERSIONS = (1, JOURNAL_VERSION)
_ASIDE = re.compile(ASIDE_PATTERN)
_ENDS = {o.value for o in Outcome}
_STATES = {"begin", "start", "unstarted", *_ENDS}
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC


class JournalError(Exception):
    """A journal that cannot be created, read, trusted or locked: raised before anything is
    touched."""


class JournalWriteError(JournalError):
    """A record that cannot be written (a full disk): the run stops before its next operation,
    and `--resume` finishes it once there is room."""


def default_path() -> str:
    """A new journal's path in the user's state directory (XDG_STATE_HOME, ~/.local/state)."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local/state")
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return os.path.join(base, "dedup-engine", "journals", f"apply-{stamp}-{os.getpid()}.jsonl")


def create_private(path: str, what: str) -> int:
    """A new file only the caller may read or write, never through a symlink."""
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise JournalError(f"{what} {path!r} is a directory: give a file name")
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        return os.open(path, _CREATE, 0o600)
    except FileExistsError:
        raise JournalError(f"{what} {path!r} exists: use --resume, or another --journal") from None
    except OSError as exc:
        raise JournalError(f"cannot create {what} {path!r}: {describe_error(exc)}") from None


def open_private(path: str, flags: int, what: str) -> int:
    """An existing file of the caller's that no one else can write; anything else is refused
    (a journal tells `--resume` what to rename and delete)."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):  # checked again on the descriptor below
            raise JournalError(f"{what} {path!r} is not a regular file; refused")
        # O_NONBLOCK: a FIFO put there meanwhile must be refused, not waited on.
        fd = os.open(path, flags | GUARDS)
    except OSError as exc:
        reason = "it is a symlink" if exc.errno == errno.ELOOP else describe_error(exc)
        raise JournalError(f"cannot open {what} {path!r}: {reason}") from None
    st = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(st.st_mode):
        problem = "is not a regular file"
    elif st.st_uid != os.geteuid():
        problem = f"belongs to uid {st.st_uid}, not to you (uid {os.geteuid()})"
    elif st.st_mode & 0o022:
        problem = f"is writable by others (mode {stat.S_IMODE(st.st_mode):04o})"
    if problem:
        os.close(fd)
        raise JournalError(f"{what} {path!r} {problem}; refused")
    os.set_blocking(fd, True)
    return fd


class FileJournal:
    """The journal of one run; created new (never appended to an old run's journal)."""

    def __init__(self, path: str, header: dict[str, Any]) -> None:
        self.path = path
        self._fd = create_private(path, "journal")
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            self._write({"journal": JOURNAL_VERSION, "boot": boot_id(), **header})
            self.commit()
        except JournalError as exc:  # no half journal left to be mistaken for a run's
            os.close(self._fd)
            os.unlink(path)
            raise JournalError(str(exc)) from None
        sync_dir(os.path.dirname(os.path.abspath(path)))

    @classmethod
    def reopen(cls, path: str) -> FileJournal:
        """An existing journal, locked, for `resume` to append to."""
        journal = cls.__new__(cls)
        journal.path = path
        journal._fd = open_private(path, os.O_WRONLY | os.O_APPEND, "journal")
        try:
            fcntl.flock(journal._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(journal._fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise JournalError(f"journal {path!r} is in use: its run is still going") from None
            raise JournalError(f"cannot lock journal {path!r}: {describe_error(exc)}") from None
        journal._drop_torn_tail()
        return journal

    def _drop_torn_tail(self) -> None:
        # A record cut short (a kill, a full disk) was never complete, so its step was never
        # taken; cut it off, or the next record would be glued to it and unreadable.
        data = _read_all(self.path)
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

    def start(self, index: int, keep: FileEntry) -> None:
        # The kept file is said again: after an EMLINK it is another than the begin record's.
        self._write(
            {"op": index, "state": "start", "keep": keep.path, "kept": [keep.dev, keep.ino]}
        )

    def end(self, index: int, result: OpResult) -> None:
        self.end_as(
            index, result.outcome, result.message, result.reclaimed, result.seen, result.general
        )

    def end_as(
        self,
        index: int,
        outcome: Outcome,
        message: str,
        reclaimed: int = 0,
        seen: tuple[Stamp, ...] = (),
        general: bool = False,
    ) -> None:
        """An end record; `resume` settles operations with no `OpResult` of their own."""
        self._write(
            {
                "op": index,
                "state": outcome.value,
                "message": message,
                "reclaimed": reclaimed,
                "seen": [list(s) for s in seen],
                "general": general,
            }
        )

    def unstarted(self, index: int, why: str, seen: tuple[Stamp, ...] = ()) -> None:
        self._write(
            {"op": index, "state": "unstarted", "message": why, "seen": [list(s) for s in seen]}
        )

    def commit(self) -> None:
        """Make every record written so far durable."""
        try:
            os.fsync(self._fd)
        except OSError as exc:
            raise JournalWriteError(
                f"cannot write journal {self.path!r}: {describe_error(exc)}"
            ) from None

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
            raise JournalWriteError(
                f"cannot write journal {self.path!r}: {describe_error(exc)}"
            ) from None


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


@dataclass(frozen=True, slots=True)
class Ended:
    """An operation's last end record."""

    outcome: Outcome
    message: str
    reclaimed: int
    seen: tuple[Stamp, ...]
    general: bool


@dataclass(frozen=True, slots=True)
class State:
    """What a journal says: its header, the operations begun (action, path, kept path and
    target by index), those to settle, those ended, and the files as the run's own operations
    left them, in order (so their new ctimes are not taken for another's change)."""

    header: dict[str, Any]
    begun: dict[int, tuple[Action, str, str, str | None]]
    pending: list[Pending]
    ended: dict[int, Ended]
    seen: list[Stamp]


def read(path: str) -> State:
    """The journal at `path`, checked record by record.  A torn last line (killed mid-write)
    is ignored: its record was never complete, so its step was never taken."""
    lines = _read_all(path).split(b"\n")
    records = list(_records(lines, path))
    if not records or not isinstance(records[0][1], dict):
        _fail(path, 1, "not a dedup-engine journal")
    header = records[0][1]
    if header.get("journal") not in READABLE_VERSIONS:
        _fail(path, 1, f"not a dedup-engine journal (version {JOURNAL_VERSION})")
    replay = _Replay()
    for number, record in records[1:]:
        index, state = _op_and_state(record, header.get("operations"), path, number)
        replay.apply(index, state, record, path, number)
    same_boot = header.get("boot") is not None and header.get("boot") == boot_id()
    begun = {
        i: (Action(r["action"]), r["path"], r["keep"], r["target"])
        for i, r in replay.begins.items()
    }
    # A failed rollback stays open: its file is still under the temporary name.
    settled_ends = {
        i: e for i, e in replay.ended.items() if e.outcome is not Outcome.ROLLBACK_FAILED
    }
    return State(header, begun, replay.pending(same_boot), settled_ends, replay.seen)


@dataclass(slots=True)
class _Replay:
    """The records after the header, in order: the last word on each operation."""

    begins: dict[int, dict[str, Any]] = field(default_factory=dict)
    starts: dict[int, dict[str, Any]] = field(default_factory=dict)
    ended: dict[int, Ended] = field(default_factory=dict)
    unstarted: set[int] = field(default_factory=set)
    seen: list[Stamp] = field(default_factory=list)

    def apply(self, index: int, state: str, record: dict[str, Any], path: str, number: int) -> None:
        if state == "begin":
            _check_begin(record, path, number)
            self.begins[index] = record
            self.starts.pop(index, None)
            self.ended.pop(index, None)
            self.unstarted.discard(index)
        elif index not in self.begins:
            _fail(path, number, f"operation {index} has no begin record")
        elif state == "start":
            _check_start(record, path, number)
            self.starts[index] = record
        elif state == "unstarted":
            self.unstarted.add(index)
            self.ended.pop(index, None)
            self.seen.extend(_stamps(record, path, number))
        else:
            self.ended[index] = _end(record, state, path, number)
            self.unstarted.discard(index)
            self.seen.extend(self.ended[index].seen)

    def pending(self, same_boot: bool) -> list[Pending]:
        """The operations begun and neither ended (but in a failed rollback) nor closed
        unstarted."""
        return [
            _pending(index, record, self.starts.get(index), same_boot)
            for index, record in sorted(self.begins.items())
            if (index not in self.ended or self.ended[index].outcome is Outcome.ROLLBACK_FAILED)
            and index not in self.unstarted
        ]


def _read_all(path: str) -> bytes:
    fd = open_private(path, os.O_RDONLY, "journal")
    try:
        with os.fdopen(fd, "rb", closefd=False) as source:
            return source.read()
    except OSError as exc:
        raise JournalError(f"cannot read journal {path!r}: {describe_error(exc)}") from None
    finally:
        os.close(fd)


def _records(lines: list[bytes], path: str) -> Iterator[tuple[int, Any]]:
    for number, line in enumerate(lines, 1):
        if not line.strip() or b"\0" in line:
            # Blank, or zeros where writeback had not reached: an end record that was never
            # synced, which resume works out from the disk.  (A begin is synced before use.)
            continue
        try:
            yield number, json.loads(line, parse_constant=_no_constant)
        except (ValueError, RecursionError):
            if number == len(lines) or not any(rest.strip() for rest in lines[number:]):
                return  # torn by the kill: the last record only
            _fail(path, number, "damaged")


def _no_constant(name: str) -> NoReturn:
    raise ValueError(name)


def _op_and_state(record: object, limit: object, path: str, number: int) -> tuple[int, str]:
    if not isinstance(record, dict):
        _fail(path, number, "not a record")
    index, state = record.get("op"), record.get("state")
    if not isinstance(index, int) or not _is_int(index) or index < 0:
        _fail(path, number, f"bad operation number {index!r}")
    if isinstance(limit, int) and index >= limit:
        _fail(path, number, f"operation {index} is beyond the run's {limit}")
    if not isinstance(state, str) or state not in _STATES:
        _fail(path, number, f"unknown state {state!r}")
    return index, state


#: The fields a begin record must hold (`FileJournal.begin`); "aside" and "target" may be null,
#: and "dir" may be absent, as in the journals of the first version 1 runs.
_BEGIN_FIELDS = frozenset(
    {"op", "state", "group", "action", "path", "victim", "aside", "keep", "kept", "target"}
)


def _check_begin(record: dict[str, Any], path: str, number: int) -> None:
    missing = sorted(_BEGIN_FIELDS - record.keys())
    if missing:
        _fail(path, number, f"a begin record without {', '.join(missing)}")
    try:
        action = Action(record.get("action"))
    except ValueError:
        _fail(path, number, f"unknown action {record.get('action')!r}")
    if not _is_int(record.get("group")) or record["group"] < 0:
        _fail(path, number, "bad group number")
    for key in ("path", "keep"):
        _check_path(record.get(key), key, path, number)
    for key in ("victim", "kept"):
        _check_identity(record.get(key), key, path, number)
    if record.get("dir") is not None:
        _check_identity(record.get("dir"), "dir", path, number)
    victim = record["path"]
    aside, target = record.get("aside"), record.get("target")
    if action in (Action.DELETE, Action.HARDLINK, Action.SYMLINK):
        # Only a name `apply` itself makes: in the victim's own directory, of our shape.
        _check_path(aside, "aside", path, number)
        assert isinstance(aside, str)
        if os.path.dirname(aside) != os.path.dirname(victim) or not _ASIDE.fullmatch(
            os.path.basename(aside)
        ):
            _fail(path, number, f"{aside!r} is not a temporary name apply makes for {victim!r}")
    elif aside is not None:
        _fail(path, number, f"a {action.value} sets nothing aside")
    if action is Action.MOVE:
        _check_path(target, "target", path, number)
    elif target is not None:
        _fail(path, number, f"a {action.value} has no target")


def _check_start(record: dict[str, Any], path: str, number: int) -> None:
    if "keep" in record:
        _check_path(record.get("keep"), "keep", path, number)
        _check_identity(record.get("kept"), "kept", path, number)


def _end(record: dict[str, Any], state: str, path: str, number: int) -> Ended:
    message = record.get("message", "")
    reclaimed = record.get("reclaimed", 0)
    if not isinstance(message, str) or not _is_int(reclaimed):
        _fail(path, number, "bad end record")
    stamps = _stamps(record, path, number)
    return Ended(Outcome(state), message, reclaimed, stamps, record.get("general") is True)


def _stamps(record: dict[str, Any], path: str, number: int) -> tuple[Stamp, ...]:
    seen = record.get("seen", [])
    if not isinstance(seen, list) or not all(
        isinstance(s, list) and len(s) == 5 and all(map(_is_int, s)) for s in seen
    ):
        _fail(path, number, "bad file stamps")
    return tuple((s[0], s[1], s[2], s[3], s[4]) for s in seen)


def _pending(
    index: int, record: dict[str, Any], start: dict[str, Any] | None, same_boot: bool
) -> Pending:
    keep, kept = record["keep"], record["kept"]
    if start is not None and "keep" in start:
        keep, kept = start["keep"], start["kept"]
    return Pending(
        index,
        Action(record["action"]),
        record["path"],
        (record["victim"][0], record["victim"][1]),
        record["aside"],
        keep,
        (kept[0], kept[1]),
        record["target"],
        (record["dir"][0], record["dir"][1]) if record.get("dir") else None,
        (start is not None) if same_boot else None,
    )


def _check_path(value: object, key: str, path: str, number: int) -> None:
    problem = path_problem(value)
    if problem:
        _fail(path, number, f"{key}: {problem}")


def _check_identity(value: object, key: str, path: str, number: int) -> None:
    if not (
        isinstance(value, list) and len(value) == 2 and all(_is_int(v) and v >= 0 for v in value)
    ):
        _fail(path, number, f"{key}: not a (dev, ino) pair")


def _is_int(value: object) -> bool:
    """An integer of a system type (int64 or uint64); a bool is not one."""
    return isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**64


def _fail(path: str, number: int, problem: str) -> NoReturn:
    raise JournalError(f"journal {path!r}, line {number}: {problem}")
