"""The worker's side of the pool's pipes: replies never wait on a parent that waits on them."""

from __future__ import annotations

import multiprocessing
import threading
from typing import Any

from dedup_engine.find.pool import _serve

BIG = 4 << 20  # far more than a pipe holds, widened or not


def test_a_worker_reads_tasks_while_a_big_reply_waits_for_room() -> None:
    """The parent sends every task before it reads any reply, each larger than a pipe: a worker
    that blocked on its first reply would never read the second task, and both would wait for
    ever."""
    task_r, task_w = multiprocessing.Pipe(duplex=False)
    result_r, result_w = multiprocessing.Pipe(duplex=False)
    worker = threading.Thread(
        target=_serve, args=(task_r, result_w.fileno(), lambda task: task * 2), daemon=True
    )
    worker.start()
    tasks = [bytes([n]) * BIG for n in range(3)]

    def send_all() -> None:
        for n, task in enumerate(tasks):
            task_w.send((n, task))

    sender = threading.Thread(target=send_all, daemon=True)
    sender.start()
    sender.join(timeout=30)
    assert not sender.is_alive(), "the parent could not send its tasks: the worker blocked"
    task_w.send(None)
    replies: list[Any] = [result_r.recv() for _ in tasks]
    worker.join(timeout=30)
    assert not worker.is_alive()
    assert [(key, len(value), value[:1], error) for key, value, error in replies] == [
        (n, 2 * BIG, bytes([n]), None) for n in range(3)
    ]


def test_a_task_that_raises_is_reported_and_the_worker_serves_on() -> None:
    task_r, task_w = multiprocessing.Pipe(duplex=False)
    result_r, result_w = multiprocessing.Pipe(duplex=False)

    def run(task: int) -> int:
        if task < 0:
            raise ValueError("negative")
        return task + 1

    worker = threading.Thread(target=_serve, args=(task_r, result_w.fileno(), run), daemon=True)
    worker.start()
    for key, task in enumerate([1, -1, 2]):
        task_w.send((key, task))
    task_w.send(None)
    replies = [result_r.recv() for _ in range(3)]
    worker.join(timeout=30)
    assert [(key, value) for key, value, _ in replies] == [(0, 2), (1, None), (2, 3)]
    assert "ValueError: negative" in replies[1][2]
