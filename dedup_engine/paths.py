"""Where a path lies among the roots: below which root, and its part below it.

Roots are canonical absolute paths (no trailing "/", except "/" itself); every rule that asks
"is this path under that root" (the walk's path globs, a report's validation, `apply`'s keep
order, glob matching and move targets) asks it here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def is_under(path: str, root: str) -> bool:
    """Whether `path` is `root` or lies below it (by whole components: /a/bc is not under /a/b)."""
    return path == root or path.startswith(_base(root))


def below(path: str, root: str) -> str | None:
    """`path`'s part below `root` ("" for the root itself), or None when it is not under it."""
    if path == root:
        return ""
    base = _base(root)
    return path[len(base) :] if path.startswith(base) else None


class RootIndex:
    """Roots by path, so that which roots hold a path costs a look at each of its ancestors,
    not one at each root (a report made from `--files-from` names up to millions of roots).
    `reference`: those of the roots given with `--reference`; `numbers`: each root's number,
    where it is not its place in `roots` (the search numbers every root it was given, and holds
    only its directories here)."""

    __slots__ = ("_index", "_reference", "roots")

    def __init__(
        self,
        roots: Sequence[str],
        reference: Iterable[str] = (),
        numbers: Sequence[int] | None = None,
    ) -> None:
        self.roots = tuple(roots)
        self._index: dict[str, int] = {}
        for root, number in zip(self.roots, numbers or range(len(self.roots)), strict=True):
            self._index.setdefault(root.rstrip("/") or "/", number)
        self._reference = frozenset(self._index[root.rstrip("/") or "/"] for root in reference)

    def is_reference(self, path: str) -> bool:
        """Whether a reference root holds `path` (whatever other root inside it does too): its
        file is never acted on."""
        return bool(self._reference) and not self._reference.isdisjoint(self.holding(path))

    def holding(self, path: str) -> list[int]:
        """The indexes of the roots that hold the normalised absolute `path` (itself or an
        ancestor), innermost first."""
        found: list[int] = []
        current = path
        while True:
            number = self._index.get(current)
            if number is not None:
                found.append(number)
            if current == "/" or not current:
                return found
            current = current.rpartition("/")[0] or "/"

    def first(self, path: str) -> int | None:
        """The index of the first root, in the order given, that holds `path`, or None."""
        return min(self.holding(path), default=None)


def _base(root: str) -> str:
    return root.rstrip("/") + "/"
