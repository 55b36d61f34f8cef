"""Running scan and hash tasks on worker processes, or in process, behind one small interface.

The pipeline submits tasks with a callback and calls `wait_one` to let one result come back; the
pipeline, not the pool, decides how many tasks are in flight, so memory stays bounded.  Worker
processes are forked once, before the run has built any large structure, and serve every stage.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.process
import queue
import sys
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from dedup_engine.hashing import HashResult, HashTask, hash_batch
from dedup_engine.options import ScanOptions
from dedup_engine.scanner import Filter, ScanResult, ScanTask, scan_dirs

Task = ScanTask | HashTask
Result = ScanResult | HashResult
Callback = Callable[[Any], None]


class WorkerError(RuntimeError):
    """A worker process died or raised: a bug or a kill, never a per-file problem."""


class Pool(Protocol):
    workers: int

    @property
    def in_flight(self) -> int: ...

    def submit(self, task: Task, on_done: Callback) -> None: ...

    def wait_one(self) -> None: ...

    def close(self) -> None: ...


def run_task(task: Task, flt: Filter) -> Result:
    if isinstance(task, ScanTask):
        return scan_dirs(task, flt)
    return hash_batch(task)


class InlinePool:
    """`--workers 0`: every task runs in this process when its result is waited for."""

    def __init__(self, options: ScanOptions, roots: Sequence[str]) -> None:
        self.workers = 0
        self._filter = Filter(options, roots)
        self._queue: deque[tuple[Task, Callback]] = deque()

    @property
    def in_flight(self) -> int:
        return len(self._queue)

    def submit(self, task: Task, on_done: Callback) -> None:
        self._queue.append((task, on_done))

    def wait_one(self) -> None:
        task, on_done = self._queue.popleft()
        on_done(run_task(task, self._filter))

    def close(self) -> None:
        self._queue.clear()


def _worker_main(tasks: Any, results: Any, options: ScanOptions, roots: Sequence[str]) -> None:
    flt = Filter(options, roots)
    while True:
        item = tasks.get()
        if item is None:
            return
        key, task = item
        try:
            results.put((key, run_task(task, flt), None))
        except BaseException:  # report, then keep serving: the parent decides to stop
            results.put((key, None, traceback.format_exc()))


class ProcessPool:
    """Worker processes fed through one shared task queue, so an idle worker takes the next task."""

    def __init__(self, workers: int, options: ScanOptions, roots: Sequence[str]) -> None:
        method = "fork" if sys.platform.startswith("linux") else "spawn"
        ctx = multiprocessing.get_context(method)
        self.workers = workers
        self._tasks: Any = ctx.Queue()
        self._results: Any = ctx.Queue()
        self._callbacks: dict[int, Callback] = {}
        self._next = 0
        self._procs: list[multiprocessing.process.BaseProcess] = []
        for _ in range(workers):
            proc = ctx.Process(
                target=_worker_main,
                args=(self._tasks, self._results, options, tuple(roots)),
                daemon=True,
            )
            proc.start()
            self._procs.append(proc)

    @property
    def in_flight(self) -> int:
        return len(self._callbacks)

    def submit(self, task: Task, on_done: Callback) -> None:
        key = self._next
        self._next += 1
        self._callbacks[key] = on_done
        self._tasks.put((key, task))

    def wait_one(self) -> None:
        while True:
            try:
                key, result, error = self._results.get(timeout=0.5)
                break
            except queue.Empty:
                dead = [p for p in self._procs if not p.is_alive()]
                if dead:
                    codes = ", ".join(str(p.exitcode) for p in dead)
                    raise WorkerError(f"a worker process died (exit code {codes})") from None
        on_done = self._callbacks.pop(key)
        if error is not None:
            raise WorkerError(f"a worker failed:\n{error}")
        on_done(result)

    def close(self) -> None:
        for _ in self._procs:
            self._tasks.put(None)
        for proc in self._procs:
            proc.join(timeout=2)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=2)
        # Tasks still queued are dropped on purpose: the run is over (or aborted).
        for q in (self._tasks, self._results):
            q.cancel_join_thread()
            q.close()


def open_pool(options: ScanOptions, roots: Sequence[str]) -> Pool:
    workers = options.worker_count()
    if workers == 0:
        return InlinePool(options, roots)
    return ProcessPool(workers, options, roots)
