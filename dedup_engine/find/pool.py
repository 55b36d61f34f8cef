"""Carrying tasks from the parent to the worker processes and their results back.

The parent side is a `Pool` (`ProcessPool`, or `InlinePool` running every task in process for
`--workers 0`): the pipeline submits tasks with a callback, to a given worker or to the least
busy one, and calls `wait_one` to let one result come back; the pipeline, not the pool, decides
how many tasks are in flight, so memory stays bounded.  The worker side is `_worker_main`, which
keeps the worker's `RowStore` (the rows it scanned, which it alone owns) and hands each task to
the worker-side module for its kind (`run_task`).  Worker processes are forked once, before the
run has built any large structure, and serve every stage.  They live no longer than the process
that started them, hold none of its descriptors but their own two pipes and stderr, and leave
interrupts to it."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import select
import selectors
import signal
import struct
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
from typing import Any, Protocol, runtime_checkable

from dedup_engine.find.anchors import Anchors, descriptors_in_use, handle_limit
from dedup_engine.find.cache import CLOSING_BUSY_MS
from dedup_engine.find.cached import WorkerCache, compare_cached, hash_cached
from dedup_engine.find.dirtree import DirTree
from dedup_engine.find.entries import describe
from dedup_engine.find.readers import Readers
from dedup_engine.find.store import RowStore
from dedup_engine.find.tasks import (
    CompareTask,
    DescribeTask,
    Result,
    ScanTask,
    Task,
    TreeTask,
    task_kind,
)
from dedup_engine.find.walk import Filter, scan_dirs
from dedup_engine.options import ScanOptions, open_file_limit

PIPE_BYTES = 1 << 20
#: Signals the `dedup` command turns into a clean stop; a worker leaves them to its parent.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: Seconds `abort` waits for killed workers to be reaped before leaving them to the system.
REAP_S = 1.0
#: Seconds `close` gives all the workers together to finish before it kills them: a worker's
#: last digest-cache write may wait `cache.CLOSING_BUSY_MS` for the lock, then write.
CLOSE_S = CLOSING_BUSY_MS / 1000 + 3.0
_PR_SET_PDEATHSIG = 1
_SHORT, _LONG = struct.Struct("!i"), struct.Struct("!Q")
_SHORT_MAX = 0x7FFFFFFF
Callback = Callable[[Any], None]


class WorkerError(RuntimeError):
    """A worker process died or raised: a bug or a kill, never a per-file problem."""


class WorkerLost(WorkerError):
    """Workers left a cluster (killed, their host gone, silent too long) while others that can
    read their files are still there: the files they scanned are gone with them, and a run that
    can scan those again elsewhere goes on (`Recovering`); any other ends as a `WorkerError`."""

    def __init__(self, message: str, workers: Sequence[int]) -> None:
        super().__init__(message)
        self.workers = tuple(workers)


#: Tasks in flight per local worker: enough to hide a pipe's round trip and the main process's
#: waits for a CPU (on a 1M-file tree with 2 CPUs, 4-5 s of a 15 s run, in which 3 tasks a
#: worker ran dry: docs/benchmarks.md), few enough to keep memory flat.
IN_FLIGHT_PER_WORKER = 6


class Pool(Protocol):
    workers: int
    #: Tasks the pipeline keeps in flight per worker: what hides the pool's round trip.
    depth: int
    #: How many times the usual number of files a task holds (`hashstep.BATCH_FILES`): more
    #: where each task costs more to carry.
    batch_scale: int
    #: Each worker's site: the workers that may read a file are those of its owner's site.
    #: One site (0) but where a cluster's workers hold roots of their own (`--root-on`).
    sites: tuple[int, ...]
    #: The CPU time (user and system, seconds) of the tasks run on this machine, by
    #: `tasks.task_kind`; empty where the workers run elsewhere (a cluster's).
    task_cpu: dict[str, float]

    @property
    def in_flight(self) -> int: ...

    def submit(
        self,
        task: Task,
        on_done: Callback,
        worker: int | None = None,
        among: Sequence[int] | None = None,
    ) -> int:
        """Send `task` to `worker` (the owner of the rows it names), or to the least busy one
        of `among` (of all when None); returns the worker it went to."""

    def wait_one(self) -> None: ...

    def close(self) -> None:
        """Stop the workers once they are done: the end of a run."""

    def abort(self) -> None:
        """Stop the workers now, whatever they are doing: an interrupt or a failure."""


@runtime_checkable
class Recovering(Protocol):
    """A pool whose workers may be lost while the run goes on (`WorkerLost`): a cluster's."""

    #: The workers lost so far, which no task may name again.
    gone: frozenset[int]

    def forget(self, workers: Sequence[int] | None) -> None:
        """Drop the tasks in flight on these workers (on every one: None): their results, if
        any come, are not handed on, and they count no more in `in_flight`."""


def least_busy(busy: Sequence[int], among: Sequence[int] | None) -> int:
    """The worker with the fewest tasks in flight, of `among` (of all when None)."""
    if among is None:
        return busy.index(min(busy))
    return min(among, key=busy.__getitem__)


class WorkerState:
    """What a worker keeps between tasks: its filters, the rows it has scanned, the handles of
    their directories, and its readers (for which `workers` is how many share each device)."""

    def __init__(self, options: ScanOptions, roots: Mapping[int, str], workers: int) -> None:
        self.filter = Filter(options, roots)
        self.store = RowStore()
        self.tree = DirTree() if options.dirs else None
        self.anchors = Anchors(
            self.store,
            handle_limit(open_file_limit(), descriptors_in_use()),
            options.follow_links,
        )
        self.readers = Readers(options.io_depth, workers, anchors=self.anchors)
        self.cache = WorkerCache(options.cache_dir) if options.cache_dir else None

    def close(self) -> None:
        """The run is over: what the worker holds for the cache is written, and its directory
        handles closed once no reader is left to use them."""
        self.readers.close()
        self.anchors.close()
        if self.cache is not None:
            self.cache.close()


def run_task(task: Task, state: WorkerState) -> Result:
    """Worker side: run one task in this process with the worker-side module for its kind."""
    if isinstance(task, ScanTask):
        return scan_dirs(task, state.filter, state.store, state.tree)
    if isinstance(task, TreeTask):
        assert state.tree is not None, "a TreeTask without --dirs"
        return state.tree.listed(task, state.store)
    if isinstance(task, DescribeTask):
        return describe(task, state.store)
    readers, store = state.readers, state.store
    if isinstance(task, CompareTask):
        if state.cache is not None:
            return compare_cached(task, state.cache, readers.compare)
        return readers.compare(task)
    if state.cache is not None:
        return hash_cached(task, store, state.cache, lambda t: readers.hash_batch(t, store))
    return readers.hash_batch(task, store)


class InlinePool:
    """`--workers 0`: every task runs in this process when its result is waited for."""

    def __init__(self, options: ScanOptions, roots: Mapping[int, str]) -> None:
        self.workers = 0
        self.depth = IN_FLIGHT_PER_WORKER
        self.batch_scale = 1
        self.task_cpu: dict[str, float] = {}
        self.sites: tuple[int, ...] = (0,)
        self._state = WorkerState(options, roots, 1)
        self._queue: deque[tuple[Task, Callback]] = deque()

    @property
    def in_flight(self) -> int:
        return len(self._queue)

    def submit(
        self,
        task: Task,
        on_done: Callback,
        worker: int | None = None,
        among: Sequence[int] | None = None,
    ) -> int:
        self._queue.append((task, on_done))
        return 0

    def wait_one(self) -> None:
        task, on_done = self._queue.popleft()
        started = time.process_time()
        result = run_task(task, self._state)
        _add_cpu(self.task_cpu, task_kind(task), time.process_time() - started)
        on_done(result)

    def close(self) -> None:
        self._queue.clear()
        self._state.close()

    def abort(self) -> None:
        self.close()


def _worker_main(
    tasks: Connection,
    results: Connection,
    options: ScanOptions,
    roots: Mapping[int, str],
    workers: int,
    parent: int,
    inherited: frozenset[int],
) -> None:
    """A worker's life: its state made, then each task run as it comes; `workers` is how many
    the run has."""
    _detach(parent, inherited, keep={tasks.fileno(), results.fileno()})
    state = WorkerState(options, roots, workers)
    with contextlib.suppress(OSError):  # the parent is gone: nobody to tell
        _serve(tasks, results.fileno(), lambda task: run_task(task, state))
    state.close()


def _serve(tasks: Connection, results: int, run: Callable[[Task], Result]) -> None:
    """Run each task that comes and send back its reply, until the parent says stop.

    One thread: a second one draining the tasks would take the GIL from this one at every read
    it makes.  A reply is written without blocking, and while it does not fit, tasks are read
    as they come: the parent may be blocked sending a task to this worker while it waits for a
    reply, and so never waits on a worker that waits on it.
    """
    os.set_blocking(results, False)
    # poll, not select: a worker of a process with many files open has pipes numbered past
    # select's 1024.
    waiting = select.poll()
    waiting.register(results, select.POLLOUT)
    waiting.register(tasks.fileno(), select.POLLIN)
    inbox: deque[Any] = deque()
    outbox = memoryview(b"")
    stopping = False
    while True:
        if outbox:
            ready = dict(waiting.poll())
            if not stopping and ready.get(tasks.fileno()):  # a task, or the end of them
                item = _receive(tasks)
                stopping = item is None
                if stopping:
                    waiting.unregister(tasks.fileno())
                else:
                    inbox.append(item)
            if ready.get(results):  # room, or an error that the write will raise
                outbox = _write_some(results, outbox)
            continue
        if inbox:
            key, task = inbox.popleft()
            reply: Reply
            started = time.process_time()  # every thread's: readers may use several
            try:
                result = run(task)
                reply = (key, result, None, time.process_time() - started)
            except BaseException:  # report, then keep serving: the parent decides to stop
                reply = (key, None, traceback.format_exc(), time.process_time() - started)
            outbox = _write_some(results, _frame(reply))
            continue
        if stopping:
            return
        item = _receive(tasks)
        if item is None:
            return
        inbox.append(item)


#: A worker's reply: the task's key, its result or the traceback of its error, and the CPU time
#: the task took in the worker.
Reply = tuple[int, Result | None, str | None, float]


def _add_cpu(totals: dict[str, float], kind: str, seconds: float) -> None:
    """Count a task's CPU time into `Pool.task_cpu`."""
    totals[kind] = totals.get(kind, 0.0) + seconds


def _receive(tasks: Connection) -> Any:
    """The next task, or None once the parent has no more (or is gone)."""
    try:
        return tasks.recv()
    except (EOFError, OSError):
        return None


def _frame(reply: Any) -> memoryview:
    """A reply as `Connection.recv` reads it: the pickle after its length (4 bytes, big-endian,
    or -1 then 8 bytes past 2 GiB)."""
    body = ForkingPickler.dumps(reply)
    size = len(body)
    head = _SHORT.pack(size) if size <= _SHORT_MAX else _SHORT.pack(-1) + _LONG.pack(size)
    return memoryview(head + bytes(body))


def _write_some(fd: int, data: memoryview) -> memoryview:
    """Write what the pipe takes now; the rest, to write when it has room."""
    try:
        written = os.write(fd, data)
    except BlockingIOError:
        return data
    return data[written:]


def _detach(parent: int, inherited: frozenset[int], keep: set[int]) -> None:
    """Make a new worker depend on its parent and on nothing else of it.

    Runs with the stop signals blocked (see `ProcessPool._start`), so that none arrives before
    the worker has chosen what to do with it: an interrupt is the parent's to handle (a terminal
    sends Ctrl-C to the whole process group), so SIGINT is ignored here, and SIGTERM and SIGHUP
    end the worker at once (unless the parent ignores them too).  Linux kills the worker when
    its parent dies, however it dies (`PR_SET_PDEATHSIG`); a parent dead before that was asked
    is seen by the parent pid that changed.  The descriptors inherited by fork are closed: a
    copy of a task pipe's write end would keep its reader waiting for ever, and another worker's
    pipes are none of its business.  stdin and stdout point to /dev/null, so a pipeline reading
    the parent's output ends with the parent; stderr stays, for a fatal message.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for number in STOP_SIGNALS[1:]:
        if signal.getsignal(number) != signal.SIG_IGN:  # ignored by all, as under `nohup`
            signal.signal(number, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        import ctypes  # here, not in every run of the command: ~2 ms

        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(0)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    for fd in inherited - keep:
        if fd > 2:
            with contextlib.suppress(OSError):
                os.close(fd)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):
        if fd != null and fd not in keep:  # a parent without stdio may have put a pipe there
            os.dup2(null, fd)
    if null > 2:
        os.close(null)


class ProcessPool:
    """Worker processes, each fed through its own pipe; a task goes to the worker that owns its
    files, or to the least busy one.

    Pipes and no queue threads in the parent: the parent's CPU is part of the run's budget.
    """

    def __init__(self, workers: int, options: ScanOptions, roots: Mapping[int, str]) -> None:
        method = "fork" if sys.platform.startswith("linux") else "spawn"
        ctx = multiprocessing.get_context(method)
        self.workers = workers
        self.depth = IN_FLIGHT_PER_WORKER
        self.sites = (0,) * workers
        self.batch_scale = 1
        self.task_cpu: dict[str, float] = {}
        self._callbacks: dict[int, tuple[Callback, int, str]] = {}
        self._busy = [0] * workers
        self._next = 0
        self._procs: list[Any] = []
        self._send: list[Connection] = []
        self._recv: list[Connection] = []
        self._selector = selectors.DefaultSelector()
        try:
            self._start(ctx, workers, options, roots)
        except BaseException:
            self.abort()  # the workers already started
            raise
        self._owner = {conn: index for index, conn in enumerate(self._recv)}
        for conn in self._recv:
            self._selector.register(conn, selectors.EVENT_READ)

    def _start(
        self, ctx: Any, workers: int, options: ScanOptions, roots: Mapping[int, str]
    ) -> None:
        parent = os.getpid()
        # Blocked across each fork, so that a new worker meets no stop signal before it has
        # chosen to ignore it (the parent's handler would run in the worker and print a
        # traceback there); the parent gets any that arrived once the worker is started.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            for _ in range(workers):
                task_r, task_w = ctx.Pipe(duplex=False)
                result_r, result_w = ctx.Pipe(duplex=False)
                _widen(task_w)
                _widen(result_r)
                # Everything open now is the parent's, for a forked worker to close; the pipes
                # multiprocessing makes while starting it are opened after.  A spawned worker
                # inherits nothing: these numbers would name descriptors of its own.
                inherited: frozenset[int] = frozenset()
                if ctx.get_start_method() == "fork":
                    own = [c.fileno() for c in (*self._send, *self._recv, task_w, result_r)]
                    inherited = frozenset([*_open_fds(), *own])
                proc = ctx.Process(
                    target=_worker_main,
                    args=(
                        task_r,
                        result_w,
                        options,
                        dict(roots),
                        workers,
                        parent,
                        inherited,
                    ),
                    daemon=True,
                )
                proc.start()
                task_r.close()
                result_w.close()
                self._procs.append(proc)
                self._send.append(task_w)
                self._recv.append(result_r)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    @property
    def in_flight(self) -> int:
        return len(self._callbacks)

    def submit(
        self,
        task: Task,
        on_done: Callback,
        worker: int | None = None,
        among: Sequence[int] | None = None,
    ) -> int:
        key = self._next
        self._next += 1
        busy = self._busy
        if worker is None:
            worker = least_busy(busy, among)
        busy[worker] += 1
        self._callbacks[key] = (on_done, worker, task_kind(task))
        try:
            self._send[worker].send((key, task))
        except OSError as exc:  # EPIPE: the worker is gone
            code = self._procs[worker].exitcode
            raise WorkerError(f"a worker process died (exit code {code})") from exc
        return worker

    def wait_one(self) -> None:
        # One selector for the whole run: multiprocessing.connection.wait builds a new one per
        # call, a cost paid for every result.
        while True:
            ready = [key.fileobj for key, _ in self._selector.select(timeout=0.5)]
            if ready:
                break
            dead = [p for p in self._procs if not p.is_alive()]
            if dead:
                codes = ", ".join(str(p.exitcode) for p in dead)
                raise WorkerError(f"a worker process died (exit code {codes})")
        for conn in ready:
            assert isinstance(conn, Connection)
            try:
                key, result, error, cpu = conn.recv()
            except (EOFError, OSError):
                code = self._procs[self._owner[conn]].exitcode
                raise WorkerError(f"a worker process died (exit code {code})") from None
            on_done, worker, kind = self._callbacks.pop(key)
            self._busy[worker] -= 1
            _add_cpu(self.task_cpu, kind, cpu)
            if error is not None:
                raise WorkerError(f"a worker failed:\n{error}")
            on_done(result)

    def close(self) -> None:
        for conn in self._send:
            with contextlib.suppress(OSError):  # that worker is gone already
                conn.send(None)
        deadline = time.monotonic() + CLOSE_S  # one for all: they finish side by side
        for proc in self._procs:
            proc.join(timeout=max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=REAP_S)
        self._release()

    def abort(self) -> None:
        # No goodbyes: the workers' results are not wanted, and a worker reading a large file
        # would finish its task first.
        for proc in self._procs:
            with contextlib.suppress(OSError, ValueError):
                proc.kill()
        deadline = time.monotonic() + REAP_S
        for proc in self._procs:
            # Reaped, unless stuck in the kernel (a hung network mount); the system reaps it
            # when this process exits.
            proc.join(timeout=max(0.0, deadline - time.monotonic()))
        self._release()

    def _release(self) -> None:
        for proc in self._procs:
            if proc.exitcode is not None:
                proc.close()  # its sentinel pipe, now rather than at garbage collection
        self._procs = []
        self._selector.close()
        for conn in (*self._send, *self._recv):
            conn.close()
        self._send, self._recv = [], []


def _widen(conn: Connection) -> None:
    # A pipe holds 64 KiB by default: a few batches of paths.  With room for all the tasks in
    # flight, a send returns at once instead of waiting for the worker to finish its task and
    # read.  Linux only, and best effort: the pool is correct without it.
    try:
        import fcntl

        fcntl.fcntl(conn.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_BYTES)
    except (ImportError, OSError):
        pass


def _open_fds() -> list[int]:
    try:
        return [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:  # no /proc: the pool's own pipes are named by the caller anyway
        return []


def open_pool(options: ScanOptions, roots: Mapping[int, str]) -> Pool:
    if options.cluster is not None:
        from dedup_engine.find.cluster import ClusterPool  # Dask: only for a run that asks

        return ClusterPool(options.cluster, options, roots)
    workers = options.worker_count()
    if workers == 0:
        return InlinePool(options, roots)
    return ProcessPool(workers, options, roots)
