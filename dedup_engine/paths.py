"""Where a path lies among the roots: below which root, and its part below it.

Roots are canonical absolute paths (no trailing "/", except "/" itself); every rule that asks
"is this path under that root" (the walk's path globs, a report's validation, `apply`'s keep
order, glob matching and move targets) asks it here.
"""

from __future__ import annotations

from collections.abc import Sequence


def is_under(path: str, root: str) -> bool:
    """Whether `path` is `root` or lies below it (by whole components: /a/bc is not under /a/b)."""
    return path == root or path.startswith(_base(root))


def below(path: str, root: str) -> str | None:
    """`path`'s part below `root` ("" for the root itself), or None when it is not under it."""
    if path == root:
        return ""
    base = _base(root)
    return path[len(base) :] if path.startswith(base) else None


def root_of(path: str, roots: Sequence[str]) -> int | None:
    """The index of the first of `roots` that holds `path`, or None."""
    return next((number for number, root in enumerate(roots) if is_under(path, root)), None)


def _base(root: str) -> str:
    return root.rstrip("/") + "/"
