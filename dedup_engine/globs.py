"""The one glob dialect of every pattern option: find's `--include`/`--exclude` and apply's
`--keep-path`/`--protect`.

- A pattern without a "/" matches a name (a file's, or a directory's for `--exclude`), at any
  depth: `*.jpg`, `.git`.
- A pattern with a "/" matches a path: the path below its root, where a leading "/" anchors it at
  the root as in a .gitignore (`/build/*`, `photos/2019/*`), or the whole absolute path
  (`/home/ann/photos/*`).
- A trailing "/" limits a pattern to directories (`cache/`): only `--exclude` meets directories;
  the options that choose files refuse such a pattern rather than match nothing.
- Within a pattern: `*` (which also matches "/"), `?`, `[seq]`, `[!seq]`, as `fnmatch`; case
  always matters.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence

from dedup_engine.paths import RootIndex, below


def pattern_problem(pattern: str, files_only: bool) -> str | None:
    """Why `pattern` cannot be used (None when it can); `files_only` for options that choose
    files, where a directory pattern would silently match nothing."""
    if not pattern:
        return "an empty pattern matches nothing; drop it"
    if not pattern.strip("/"):
        return f"{pattern!r} names no file or directory (a root is searched whole; drop it)"
    if files_only and pattern.endswith("/"):
        bare = pattern.rstrip("/")
        return (
            f"{pattern!r} matches directories only, and this option chooses files: "
            f"'{bare}/*' matches the files below {bare!r}"
        )
    return None


class Globs:
    """The patterns of one option, compiled once: each kind folded into one regular expression,
    since the walk asks for every directory entry."""

    __slots__ = ("_absolute", "_names", "_relative", "patterns")

    def __init__(self, patterns: Sequence[str]) -> None:
        self.patterns = tuple(patterns)
        names, relative, absolute = [], [], []
        for pattern in self.patterns:
            # A directory pattern keeps its "/" and is matched against a directory's name or path
            # with a "/" appended, which a file's never has.
            bare = pattern.rstrip("/")
            slash = "/" if bare != pattern else ""
            if "/" not in bare:
                names.append(fnmatch.translate(bare + slash))
            else:
                relative.append(fnmatch.translate(bare.lstrip("/") + slash))
                absolute.append(fnmatch.translate(bare + slash))
        self._names = _fold(names)
        self._relative = _fold(relative)
        self._absolute = _fold(absolute)

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def match(self, name: str, path: str, root: str, is_dir: bool = False) -> bool:
        """Whether the entry `name`, at absolute `path` below `root`, matches any pattern."""
        if self._names is not None and _hit(self._names, name, is_dir):
            return True
        if self._relative is None or self._absolute is None:
            return False
        relative = below(path, root)
        if relative is not None and _hit(self._relative, relative, is_dir):
            return True
        return _hit(self._absolute, path, is_dir)

    def match_file(self, path: str, roots: RootIndex) -> bool:
        """Whether the file at absolute `path` matches, below the first of `roots` holding it."""
        name = path.rsplit("/", 1)[-1]
        if self._relative is None:  # names only (or no pattern): no root to look for
            return self._names is not None and _hit(self._names, name, False)
        number = roots.first(path)
        return self.match(name, path, roots.roots[number] if number is not None else "/")


def _hit(regex: re.Pattern[str], subject: str, is_dir: bool) -> bool:
    return regex.match(subject) is not None or (is_dir and regex.match(f"{subject}/") is not None)


def _fold(kind: list[str]) -> re.Pattern[str] | None:
    return re.compile("|".join(kind)) if kind else None
