"""A group's part of a report, rendered as soon as the group is final: what every format's
renderer returns, and the counting of the paths the renderings leave out.

A search ends with its groups known but not yet in report order.  Rendered while the search runs
(`dedup find` keeps each block in a `report.spool.BlockSpool`), the report's end only puts the
blocks in order and numbers them, instead of rebuilding and formatting every group while the
workers stand idle.  Each format renders a group the same way for both ways of writing it: a
writer given the groups themselves renders them as it goes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from dedup_engine.model import DuplicateGroup

#: A group rendered in a format: its bytes, without the number the writer gives it in report
#: order, and how many of its paths the format had to leave out (fdupes' names with a newline).
Block = tuple[bytes, int]
#: Renders one group in a format, for one run's options.
Renderer = Callable[[DuplicateGroup], Block]


class Counted:
    """A renderer's blocks, with the paths they left out added up."""

    __slots__ = ("_render", "left_out")

    def __init__(self, render: Renderer) -> None:
        self._render = render
        self.left_out = 0

    def __call__(self, group: DuplicateGroup) -> bytes:
        block, left_out = self._render(group)
        self.left_out += left_out
        return block

    def each(self, groups: Iterable[DuplicateGroup]) -> Iterator[bytes]:
        return map(self, groups)
