"""The queue of rows waiting for a hashing batch hands them out first in, first out, whatever
the mix of rows queued and batches taken."""

from __future__ import annotations

from collections import deque

from hypothesis import given
from hypothesis import strategies as st

from dedup_engine.find.hashstep import RowQueue

Step = tuple[bool, int]  # (queue `n` more rows, or take a batch of `n`)


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 40)), max_size=60))
def test_rows_come_out_in_the_order_they_went_in(steps: list[Step]) -> None:
    queue, model = RowQueue(), deque[int]()
    next_row = 0
    for add, n in steps:
        if add:
            rows = list(range(next_row, next_row + n))
            next_row += n
            queue.extend(rows)
            model.extend(rows)
        else:
            count = min(n, len(model))
            if count:
                assert queue.peek(count - 1) == model[count - 1]
            assert queue.take(count) == [model.popleft() for _ in range(count)]
        assert len(queue) == len(model)
