"""The roots of one search: each made canonical, taken once, and numbered in the order given,
however many a list names.

Roots come from the command line and from `--files-from`.  Each is made absolute and
symlink-free and checked to be a directory or a regular file before any work starts (a bad root
is fatal); a repeat is passed over.  Every root goes into a private SQLite table, which SQLite
keeps in a few MiB of memory and spills to a temporary file past that, so that a list of
millions of files is never whole in memory: the scan sends the file roots to the workers from
it, and a report writes its roots from it, a block at a time.  Directory roots are kept in memory
as well, as the walk keeps every directory it has listed.

A file root under a directory root is taken as a root, whatever that directory's filters say,
and the walk of the directory passes it over (`holding_file_roots`, `file_roots_in`).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
from collections.abc import Iterable, Iterator, Sequence
from typing import overload

from dedup_engine.options import OptionsError
from dedup_engine.oserror import describe_error
from dedup_engine.paths import RootIndex

#: Memory SQLite keeps of the table before it spills to its temporary file, in KiB.
_CACHE_KIB = 4096
#: Roots written in one statement, and read back at a time.
_BLOCK = 4096
#: Parent directories `_realpath` keeps resolved, at most: a list names few directories often.
_PARENTS_KEPT = 65_536


class Roots(Sequence[str]):
    """The roots in the order given (`roots[n]` is root number n, its place in a report's
    roots), the directories among them (`directories`, by number), and the roots given with
    `--reference`, numbered after the others."""

    __slots__ = ("_count", "_db", "_searched", "directories", "directory_index", "reference")

    def __init__(self, db: sqlite3.Connection, count: int, searched: int) -> None:
        self._db = db
        self._count = count
        self._searched = searched
        #: Directory roots by number.
        self.directories: dict[int, str] = dict(self._rows("r.dir"))
        self.reference: tuple[str, ...] = tuple(self[searched:])
        #: Which directory roots hold a path (reference roots marked), innermost first.
        self.directory_index = RootIndex(
            list(self.directories.values()),
            [p for n, p in self.directories.items() if n >= searched],
            list(self.directories),
        )

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            start, stop, step = index.indices(self._count)
            if step != 1:
                return [self[i] for i in range(start, stop, step)]
            return [p for _, p in self._rows("r.rowid > ? AND r.rowid <= ?", (start, stop))]
        number = index + self._count if index < 0 else index
        if not 0 <= number < self._count:
            raise IndexError("root number out of range")
        return next(self._rows("r.rowid = ?", (number + 1,)))[1]

    def __iter__(self) -> Iterator[str]:
        return (path for _, path in self._rows("1"))

    def __repr__(self) -> str:
        return f"Roots({self._count} roots, {len(self.directories)} directories)"

    def is_reference_root(self, number: int) -> bool:
        """Whether root `number` was given with `--reference`."""
        return number >= self._searched

    @property
    def under_reference(self) -> frozenset[int]:
        """The numbers of the roots that lie under a reference root (itself included): a file
        under one is a reference file, whatever root inside it holds it too.  File roots are
        looked at by their directory: those in a reference root are few, unless a list names a
        reference root's files one by one."""
        index = self.directory_index
        under = {n for n, path in self.directories.items() if index.is_reference(path)}
        under.update(range(self._searched, self._count))
        if under:
            for parent, path in self._file_root_parents():
                if index.is_reference(path):
                    cursor = self._db.execute(
                        "SELECT rowid - 1 FROM roots WHERE parent = ? AND NOT dir", (parent,)
                    )
                    under.update(n for (n,) in cursor)
        return frozenset(under)

    def files(self, reference: bool) -> Iterator[tuple[str, int]]:
        """(path, number) of the file roots given with `--reference`, or of the others, in
        order."""
        where = "NOT r.dir AND r.rowid > ?" if reference else "NOT r.dir AND r.rowid <= ?"
        for number, path in self._rows(where, (self._searched,)):
            yield path, number

    def holding_file_roots(self) -> set[str]:
        """The directories, under a directory root, that hold a file root: their walk passes
        those files over.  One look at each directory that holds a file root, not at each."""
        index = self.directory_index
        if not self.directories:
            return set()
        return {path for _, path in self._file_root_parents() if index.holding(path)}

    def file_roots_in(self, directory: str) -> list[str]:
        """The paths of the file roots right in `directory`."""
        return [
            path
            for _, path in self._rows(
                "NOT r.dir AND r.parent = (SELECT id FROM parents WHERE path = ?)",
                (os.fsencode(directory),),
            )
        ]

    def first_under(self, directory: str) -> str | None:
        """A root that is `directory` or lies below it; None if none."""
        encoded = os.fsencode(directory)
        parent, name = os.path.split(encoded)
        base = encoded.rstrip(b"/")
        found = self._rows(
            "(p.path = ? AND r.name = ?) OR p.path = ? OR (p.path >= ? AND p.path < ?)",
            # "0" follows "/": every parent below `directory`, and no other.
            (parent, name, encoded, base + b"/", base + b"0"),
        )
        return next((path for _, path in found), None)

    def close(self) -> None:
        """Drop the table (and its temporary file) now, not when this is collected."""
        self._db.close()

    def _file_root_parents(self) -> Iterator[tuple[int, str]]:
        """(id, path) of each directory that holds a file root, once."""
        cursor = self._db.execute(
            "SELECT id, path FROM parents p"
            " WHERE EXISTS (SELECT 1 FROM roots r WHERE r.parent = p.id AND NOT r.dir)"
        )
        while block := cursor.fetchmany(_BLOCK):
            yield from ((parent, os.fsdecode(path)) for parent, path in block)

    def _rows(self, where: str, params: tuple[object, ...] = ()) -> Iterator[tuple[int, str]]:
        """(number, path) of the roots where `where` holds (`r`: the root, `p`: its parent
        directory), in order, a block at a time."""
        cursor = self._db.execute(
            "SELECT r.rowid - 1, p.path, r.name FROM roots r JOIN parents p ON p.id = r.parent"
            f" WHERE {where} ORDER BY r.rowid",
            params,
        )
        join, decode = os.path.join, os.fsdecode
        while block := cursor.fetchmany(_BLOCK):
            for number, parent, name in block:
                yield number, decode(join(parent, name))


def canonical_roots(
    given: Iterable[str | os.PathLike[str]], reference: Iterable[str | os.PathLike[str]] = ()
) -> Roots:
    """The roots, then the reference roots, each absolute, symlink-free and once, in the order
    given; a root that is missing, neither a directory nor a regular file, or given both as a
    root and as a reference root is fatal (`OptionsError`), as is no root at all.

    Nested directory roots are kept (a file under both is attributed to the innermost): the walk
    visits each directory once by (st_dev, st_ino)."""
    with _filling() as table:
        parents: dict[str, str] = {}
        cwd = os.getcwd()
        for root in given:
            table.add(*_canonical(root, parents, cwd))
        table.flush()
        searched = table.count
        if not searched:
            raise OptionsError("no root given")
        for root in reference:
            table.add_reference(*_canonical(root, parents, cwd), searched)
        table.db.execute("COMMIT")
        return Roots(table.db, table.count, searched)


def known_roots(directories: Iterable[str]) -> Roots:
    """Roots made canonical elsewhere, each a directory (`--root-on`: by the cluster's workers
    that hold them, on their own host), numbered in the order given, each once."""
    with _filling() as table:
        for path in directories:
            table.add(path, True)
        table.flush()
        if not table.count:
            raise OptionsError("no root given")
        table.db.execute("COMMIT")
        return Roots(table.db, table.count, table.count)


@contextlib.contextmanager
def _filling() -> Iterator[_Table]:
    """A new roots table to fill, closed again if filling it fails; one that cannot be written
    (its temporary file's disk full, or no place to make one) is one line."""
    table = _Table()
    try:
        yield table
    except sqlite3.Error as exc:
        table.db.close()
        raise OptionsError(
            "cannot keep the roots in a temporary file"
            f" ($SQLITE_TMPDIR, $TMPDIR or /var/tmp): {exc}"
        ) from None
    except BaseException:
        table.db.close()
        raise


class _Table:
    """The roots table as it is filled: each distinct path once, numbered by its rowid.  A path
    is its directory's number and its name: a list names few directories, each many times, and
    the walk asks for the file roots in a directory."""

    def __init__(self) -> None:
        # "": a private database, deleted when closed.  Read from the thread that writes the
        # report, which need not be the one that made it.
        self.db = sqlite3.connect("", check_same_thread=False, isolation_level=None)
        for pragma in ("journal_mode = OFF", "synchronous = OFF", f"cache_size = -{_CACHE_KIB}"):
            self.db.execute(f"PRAGMA {pragma}")
        self.db.execute("CREATE TABLE parents (id INTEGER PRIMARY KEY, path BLOB NOT NULL UNIQUE)")
        self.db.execute(
            "CREATE TABLE roots (parent INTEGER NOT NULL, name BLOB NOT NULL,"
            " dir INTEGER NOT NULL, UNIQUE (parent, name))"
        )
        # One transaction for the whole table: one per statement costs more than the insert.
        self.db.execute("BEGIN")
        self.count = 0
        self._pending: list[tuple[int, bytes, bool]] = []
        self._ids: dict[bytes, int] = {}  # the last directories' numbers

    def add(self, path: str, is_dir: bool) -> None:
        parent, _, name = os.fsencode(path).rpartition(b"/")
        self._pending.append((self._parent(parent or b"/"), name, is_dir))
        if len(self._pending) >= _BLOCK:
            self.flush()

    def flush(self) -> None:
        """Every root added so far is in the table."""
        if self._pending:
            self.count += self.db.executemany(
                "INSERT OR IGNORE INTO roots (parent, name, dir) VALUES (?, ?, ?)", self._pending
            ).rowcount
            self._pending.clear()

    def add_reference(self, path: str, is_dir: bool, searched: int) -> None:
        """A reference root: one that is also a root proper is fatal (is its copy to be kept or
        acted on?); a repeat is passed over."""
        head, name = os.path.split(os.fsencode(path))
        parent = self._parent(head)
        row = self.db.execute(
            "SELECT rowid FROM roots WHERE parent = ? AND name = ?", (parent, name)
        ).fetchone()
        if row is None:
            self.db.execute(
                "INSERT INTO roots (parent, name, dir) VALUES (?, ?, ?)", (parent, name, is_dir)
            )
            self.count += 1
        elif row[0] <= searched:
            raise OptionsError(
                f"{path!r} is given both as a root and as a reference root: give it once"
            )

    def _parent(self, path: bytes) -> int:
        """The number of the directory `path`, given it if it has none yet."""
        number = self._ids.get(path)
        if number is None:
            if len(self._ids) >= _PARENTS_KEPT:
                self._ids.clear()
            self.db.execute("INSERT OR IGNORE INTO parents (path) VALUES (?)", (path,))
            row = self.db.execute("SELECT id FROM parents WHERE path = ?", (path,)).fetchone()
            number = self._ids[path] = row[0]
        return number


def _canonical(root: str | os.PathLike[str], parents: dict[str, str], cwd: str) -> tuple[str, bool]:
    """The root's canonical path, and whether it is a directory (else a regular file)."""
    text = os.fspath(root)
    if not text:
        raise OptionsError("an empty root was given")
    if "\0" in text:
        raise OptionsError(f"root {text!r} holds a NUL")
    try:
        real, st = _realpath(text, parents, cwd)
    except OSError as exc:
        raise OptionsError(f"root {text!r}: {describe_error(exc)}") from None
    if stat.S_ISDIR(st.st_mode):
        return real, True
    if stat.S_ISREG(st.st_mode):
        return real, False
    raise OptionsError(f"root {text!r} is neither a directory nor a regular file")


def _realpath(
    text: str, parents: dict[str, str], cwd: str | None = None
) -> tuple[str, os.stat_result]:
    """`os.path.realpath(text)` and the stat of what it names, with each parent directory
    resolved once (a list of a million files names a few thousand directories, and resolving a
    path looks at each of its components), and one look at a name that is no symlink.  A path
    with a "." or ".." in it, whose meaning depends on the symlinks before it, is resolved
    whole; but a leading "./" (`find .` writes one before every path) is the working directory
    `cwd`, whatever the symlinks."""
    while text.startswith("./") and len(text) > 2:
        text = text[2:]
    if text.startswith("/") and "//" not in text and "/." not in text and text[-1] != "/":
        head, _, name = text.rpartition("/")  # already normal: the common case, made quick
        head = head or "/"
    else:
        absolute = text if text.startswith("/") else os.path.join(cwd or os.getcwd(), text)
        parts = absolute.split("/")
        head, name = os.path.split(os.path.normpath(absolute))
        if "." in parts or ".." in parts or not name or text.endswith("/"):
            # The kernel's view first: "file/", "file/." and "file/../x" name no file
            # (ENOTDIR), where the string operations would drop the part that says so.
            kernel = os.stat(text)
            if "." in parts or ".." in parts or not name:
                return os.path.realpath(text), kernel
    real_head = parents.get(head)
    if real_head is None:
        if len(parents) >= _PARENTS_KEPT:
            parents.clear()
        real_head = parents[head] = os.path.realpath(head)
    joined = real_head + "/" + name if real_head != "/" else "/" + name
    st = os.lstat(joined)
    if stat.S_ISLNK(st.st_mode):
        real = os.path.realpath(joined)
        return real, os.stat(real)
    return joined, st
