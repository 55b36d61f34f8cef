"""Reading a JSON report back as untrusted input: every field checked before `apply` may act on it.

The JSON report is the contract between `find` and `apply` (docs/json-schema.md), and `apply`
deletes and links what it names, so nothing in it is taken on trust: it may have been edited,
crafted, or passed through other tools (`jq .` writes it back indented, in UTF-8).  The roots and
every path must be absolute, normalised and free of NUL, and every file lies under one of the
roots; numbers are integers in the range of their system types; no path appears twice and no
file (dev, ino) in two groups; nesting is bounded.  The first problem found is one
`ReportError` naming where it is; nothing is read past it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO, Any, NoReturn

from dedup_engine.model import DirectoryGroup, DuplicateGroup, FileEntry, Issue, Stage, Verified
from dedup_engine.paths import RootIndex
from dedup_engine.report.schema import READABLE, SCHEMA, TOOL

#: The report's own nesting is 5 deep (the lists in "options"); anything far deeper is not ours.
MAX_DEPTH = 32

_U32 = (0, 2**32 - 1)
_U64 = (0, 2**64 - 1)
_I64 = (-(2**63), 2**63 - 1)
_SIZE = (0, 2**63 - 1)
_MODE = (0, 0o7777)
_DIGEST = re.compile(r"[0-9a-f]{64}")


class ReportError(ValueError):
    """A report that is not a valid dedup-engine report of a schema this version reads."""


@dataclass(frozen=True, slots=True)
class Report:
    """A JSON report as read back: what `find` found, and the options it ran with."""

    version: str
    created: str
    roots: tuple[str, ...]
    options: Mapping[str, Any]
    stats: Mapping[str, Any]
    groups: tuple[DuplicateGroup, ...]
    issues: tuple[Issue, ...]
    #: Those of `roots` given with `--reference`: their files are never acted on.
    reference_roots: tuple[str, ...] = ()
    #: Groups of duplicate directories (`--dirs`): shown, never acted on as such.
    directory_groups: tuple[DirectoryGroup, ...] = ()


def read_json(source: IO[str] | IO[bytes] | str | bytes) -> Report:
    """Read a report; refuse anything else with a `ReportError` that says what and where."""
    raw = source if isinstance(source, str | bytes) else source.read()
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ReportError(f"not UTF-8 text (byte {exc.start})") from None
    try:
        data = json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise ReportError("JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and integers too long to convert
        raise ReportError(f"not a JSON report: {exc}") from None
    if not isinstance(data, dict) or data.get("tool") != TOOL:
        raise ReportError(f'not a dedup-engine report (no "tool": "{TOOL}")')
    if data.get("schema") not in READABLE or type(data.get("schema")) is not int:
        hint = "; run dedup find again" if data.get("schema") == 1 else ""
        raise ReportError(
            f"report schema {data.get('schema')!r} is not supported (want {SCHEMA} or"
            f" {', '.join(map(str, READABLE[:-1]))}){hint}"
        )
    return _Reader().report(data)


def _no_constant(name: str) -> NoReturn:
    raise ReportError(f"{name} is not a number a report holds")


class _Reader:
    """Checks a parsed report field by field; `where` names the field in every error."""

    def __init__(self) -> None:
        self.schema = 0
        self.paths: set[str] = set()
        self.files: dict[tuple[int, int], int] = {}  # (dev, ino) -> the group holding it

    def report(self, data: dict[str, Any]) -> Report:
        self.schema = data["schema"]
        roots = tuple(self.path(r, f"roots[{n}]") for n, r in enumerate(self.list(data, "roots")))
        if not roots:
            _fail("roots", "no root")
        if len(set(roots)) != len(roots):
            _fail("roots", "a root is listed twice")
        references = self.reference_roots(data, roots)
        holders = RootIndex(roots, references)
        groups = tuple(self.group(g, n, holders) for n, g in enumerate(self.list(data, "groups")))
        issues = tuple(
            self.issue(i, f"issues[{n}]") for n, i in enumerate(self.list(data, "issues"))
        )
        return Report(
            self.text(data, "version"),
            self.text(data, "created"),
            roots,
            self.mapping(data, "options"),
            self.mapping(data, "stats"),
            groups,
            issues,
            references,
            self.directory_groups(data, holders),
        )

    def reference_roots(self, data: dict[str, Any], roots: tuple[str, ...]) -> tuple[str, ...]:
        """Schema 3's reference roots: each one of `roots`, once (none in schema 2, which must
        not name any: a report that says so and is read as an older one would lose them)."""
        if data["schema"] == 2:
            for key in ("reference_roots", "directory_groups"):
                if key in data:
                    _fail(key, "not a field of schema 2: a schema-3 report has it")
            return ()
        listed = self.list(data, "reference_roots")
        references = tuple(self.path(r, f"reference_roots[{n}]") for n, r in enumerate(listed))
        known = set(roots)
        for n, root in enumerate(references):
            if root not in known:
                _fail(f"reference_roots[{n}]", f"{_show(root)} is not one of the roots")
        if len(set(references)) != len(references):
            _fail("reference_roots", "a root is listed twice")
        return references

    def directory_groups(
        self, data: dict[str, Any], roots: RootIndex
    ) -> tuple[DirectoryGroup, ...]:
        """Schema 3's groups of directories: each two paths or more, under the roots, once."""
        if data["schema"] == 2:
            return ()
        out = []
        named: set[str] = set()
        for n, item in enumerate(self.list(data, "directory_groups")):
            where = f"directory_groups[{n}]"
            group = _object(item, where)
            size = self.number(group, "bytes", _SIZE, where)
            listed = self.list(group, "paths", where)
            paths = tuple(self.path(p, f"{where}.paths[{k}]") for k, p in enumerate(listed))
            if len(paths) < 2 or len(set(paths)) != len(paths):
                _fail(f"{where}.paths", "a group holds two paths or more, each once")
            for k, path in enumerate(paths):
                if not roots.holding(path):
                    _fail(f"{where}.paths[{k}]", f"{_show(path)} is under none of the roots")
                if path in named or path in self.paths:
                    _fail(f"{where}.paths[{k}]", f"{_show(path)} is listed twice")
                named.add(path)
            out.append(DirectoryGroup(size, paths))
        return tuple(out)

    def group(self, data: object, number: int, roots: RootIndex) -> DuplicateGroup:
        where = f"groups[{number}]"
        group = _object(data, where)
        size = self.number(group, "size", _SIZE, where)
        digest = self.text(group, "digest", where)
        if not _DIGEST.fullmatch(digest):
            _fail(f"{where}.digest", "not 64 lowercase hex digits")
        members = self.list(group, "files", where)
        if len(members) < 2:
            _fail(f"{where}.files", "a group holds at least two paths")
        files = tuple(
            self.file(f, size, f"{where}.files[{n}]", number, roots) for n, f in enumerate(members)
        )
        return DuplicateGroup(size, digest, files, self.verified(group, where))

    def verified(self, group: Mapping[str, Any], where: str) -> Verified:
        """How schema 3's group was found equal (schema 2's always by its bytes; one that says
        otherwise is a schema-3 report, whose sampled groups must not be read as verified)."""
        if self.schema == 2:
            if "verified" in group:
                _fail(f"{where}.verified", "not a field of schema 2: a schema-3 report has it")
            return Verified.BYTES
        value = self.text(group, "verified", where)
        try:
            return Verified(value)
        except ValueError:
            known = ", ".join(repr(v.value) for v in Verified)
            _fail(f"{where}.verified", f"{_show(value)} is not one of {known}")

    def file(self, data: object, size: int, where: str, group: int, roots: RootIndex) -> FileEntry:
        entry = _object(data, where)
        path = self.path(entry.get("path"), f"{where}.path")
        if not roots.holding(path):
            _fail(f"{where}.path", f"{_show(path)} is under none of the report's roots")
        if path in self.paths:
            _fail(f"{where}.path", f"{_show(path)} is listed twice")
        self.paths.add(path)
        dev = self.number(entry, "dev", _U64, where)
        ino = self.number(entry, "ino", _U64, where)
        if self.files.setdefault((dev, ino), group) != group:
            _fail(where, f"file (dev {dev}, ino {ino}) is in two groups")
        return FileEntry(
            path,
            dev,
            ino,
            size,
            self.number(entry, "mtime_ns", _I64, where),
            self.number(entry, "ctime_ns", _I64, where),
            self.number(entry, "uid", _U32, where),
            self.number(entry, "gid", _U32, where),
            self.number(entry, "mode", _MODE, where),
        )

    def issue(self, data: object, where: str) -> Issue:
        entry = _object(data, where)
        path = self.text(entry, "path", where)
        if "\0" in path:
            _fail(f"{where}.path", "holds a NUL byte")
        try:
            stage = Stage(entry.get("stage"))
        except ValueError:
            _fail(f"{where}.stage", f"unknown stage {_show(entry.get('stage'))}")
        return Issue(path, stage, self.text(entry, "message", where))

    # -- fields ---------------------------------------------------------------------------

    @staticmethod
    def path(value: object, where: str) -> str:
        problem = path_problem(value)
        if problem:
            _fail(where, problem)
        assert isinstance(value, str)
        return value

    @staticmethod
    def number(data: Mapping[str, Any], key: str, bounds: tuple[int, int], where: str) -> int:
        value = data.get(key)
        # bool is an int to Python, not to a report; floats are never exact identities.
        if not isinstance(value, int) or isinstance(value, bool):
            _fail(f"{where}.{key}", f"not an integer: {_show(value)}")
        if not bounds[0] <= value <= bounds[1]:
            _fail(f"{where}.{key}", f"{value} is out of range ({bounds[0]}..{bounds[1]})")
        return value

    @staticmethod
    def text(data: Mapping[str, Any], key: str, where: str = "") -> str:
        value = data.get(key)
        if not isinstance(value, str):
            _fail(f"{where}.{key}" if where else key, "missing, or not a string")
        return value

    @staticmethod
    def list(data: Mapping[str, Any], key: str, where: str = "") -> list[Any]:
        value = data.get(key)
        if not isinstance(value, list):
            _fail(f"{where}.{key}" if where else key, "missing, or not a list")
        return value

    @staticmethod
    def mapping(data: Mapping[str, Any], key: str) -> dict[str, Any]:
        value = _object(data.get(key), key)
        if _depth(value) > MAX_DEPTH:
            _fail(key, f"nested deeper than {MAX_DEPTH}")
        return value


def path_problem(value: object) -> str | None:
    """What is wrong with `value` as a path `apply` may act on, or None."""
    if not isinstance(value, str):
        return "not a string"
    if "\0" in value:
        return "holds a NUL byte"
    try:
        raw = os.fsencode(value)
    except UnicodeEncodeError:
        return f"{_show(value)} is not a name of this system (a lone surrogate)"
    if os.fsdecode(raw) != value:
        # One name, two spellings ("\udcc3\udca9" for "é"): globs and the check for a path
        # listed twice compare strings, so only the form `find` writes is accepted.
        return f"{_show(value)} is not written as find writes it ({_show(os.fsdecode(raw))})"
    if not value.startswith("/"):
        return f"{_show(value)} is not an absolute path"
    if value.startswith("//") or os.path.normpath(value) != value:
        return f"{_show(value)} is not normalised (no '.', '..', '//' or trailing '/')"
    return None


def absolute(path: str) -> str:
    """`path` made absolute and normalised as the journal's reader wants it, its symlinks not
    resolved (a leading "//" included, which POSIX leaves alone)."""
    return "/" + os.path.abspath(path).lstrip("/")


def _object(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        _fail(where, "missing, or not an object")
    return value


def _depth(value: object) -> int:
    """How deep lists and objects nest in `value`, without recursion."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _fail(where: str, problem: str) -> NoReturn:
    raise ReportError(f"{where}: {problem}")
