"""The worker's side of the pool's pipes: replies never wait on a parent that waits on them."""

from __future__ import annotations

import multiprocessing
import os
import resource
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import pytest

from dedup_engine.find.pool import _serve

BIG = 4 << 20  # far more than a pipe holds, widened or not
HIGH_FD = 2000  # past FD_SETSIZE (1024)


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
    assert [(key, len(value), value[:1], error) for key, value, error, _ in replies] == [
        (n, 2 * BIG, bytes([n]), None) for n in range(3)
    ]


def _served(run: Callable[[int], int], tasks: list[int]) -> list[Any]:
    """The replies of a worker (a thread here) that ran these tasks, in order."""
    task_r, task_w = multiprocessing.Pipe(duplex=False)
    result_r, result_w = multiprocessing.Pipe(duplex=False)
    worker = threading.Thread(target=_serve, args=(task_r, result_w.fileno(), run), daemon=True)
    worker.start()
    for key, task in enumerate(tasks):
        task_w.send((key, task))
    task_w.send(None)
    replies = [result_r.recv() for _ in tasks]
    worker.join(timeout=30)
    return replies


def test_a_task_that_raises_is_reported_and_the_worker_serves_on() -> None:
    def run(task: int) -> int:
        if task < 0:
            raise ValueError("negative")
        return task + 1

    replies = _served(run, [1, -1, 2])
    assert [(key, value) for key, value, _, _ in replies] == [(0, 2), (1, None), (2, 3)]
    assert "ValueError: negative" in replies[1][2]


def test_a_worker_serves_on_pipes_numbered_past_1024() -> None:
    """A process with a thousand files open gives its workers pipes past select()'s range: a
    reply too big for the pipe must still go out whole."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < HIGH_FD + 8:
        pytest.skip(f"this process may not open descriptor {HIGH_FD}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, HIGH_FD + 8), hard))
    try:
        task_r, task_w = multiprocessing.Pipe(duplex=False)
        result_r, result_w = multiprocessing.Pipe(duplex=False)
        tasks = Connection(os.dup2(task_r.fileno(), HIGH_FD), writable=False)
        results = os.dup2(result_w.fileno(), HIGH_FD + 1)
        task_r.close()
        result_w.close()
        worker = threading.Thread(
            target=_serve, args=(tasks, results, lambda task: task * 2), daemon=True
        )
        worker.start()
        task_w.send((0, b"x" * BIG))
        task_w.send(None)
        replies: list[Any] = []
        reader = threading.Thread(target=lambda: replies.append(result_r.recv()), daemon=True)
        reader.start()
        reader.join(timeout=30)
        worker.join(timeout=30)
        assert replies, "no whole reply: the worker failed partway"
        key, value, error, _ = replies[0]
        assert (key, len(value), error) == (0, 2 * BIG, None)
        tasks.close()
        os.close(results)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_reply_says_the_cpu_time_its_task_took() -> None:
    def run(task: int) -> int:
        if task < 0:
            raise ValueError("negative")
        deadline = time.process_time() + task / 1000  # this much CPU, in milliseconds
        while time.process_time() < deadline:
            pass
        return task

    cpu = [seconds for _, _, _, seconds in _served(run, [0, 50, -1])]
    assert all(isinstance(seconds, float) and seconds >= 0 for seconds in cpu)
    assert cpu[1] >= 0.05  # the task's own time, whatever else the process did meanwhile
