"""Carrying the search's tasks to the workers of a Dask cluster (`--cluster`), as `pool` carries
them to local worker processes: the same `Pool`, the same tasks, the same worker-side state.

Each Dask worker holds one `pool.WorkerState` per run (the rows it scanned, which it alone owns,
its readers and its cache connection), made by a setup task and dropped by a closing one; every
later task of the run goes to the worker that owns the rows it names (`workers=`, never
elsewhere), so only keys and the paths of files to compare travel, as with local workers.  A
worker runs the run's tasks one at a time, whatever its threads (its state is not shared), in
the order they reach it, which need not be the order they were sent: its rows are numbered as
it scans, and the coordinator gives each row of a scan result its place
(`groups.SizeIndex.add`).

With `--root-on`, the workers a name matches are a site, and the roots given to it are its
own disks: a worker of the site makes each canonical (`held_roots`), and the coordinator sends
every task on their files to that site's workers alone (`Pool.sites`, `submit(among=)`).

A worker lost mid-run (gone from the cluster, or silent for `SILENT_S`) takes its rows with it.
Where other workers can read its files (every worker on a shared filesystem, or others of its
site), the pool forgets it and says so (`WorkerLost`), and the run lists its directories again
elsewhere (`pipeline`); where none can, the run ends with a `WorkerError` naming the roots no
worker is left to read.  Dask is an optional dependency, imported only here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dedup_engine.find.pool import WorkerError, WorkerLost, WorkerState, least_busy, run_task
from dedup_engine.find.tasks import Result, Task
from dedup_engine.options import (
    OptionsError,
    ScanOptions,
    cpu_count,
    open_file_limit,
    worker_limit,
)
from dedup_engine.oserror import describe_error
from dedup_engine.version import __version__

#: Seconds between looks at whether a worker was lost, and that the run's end waits for its
#: workers to let go of its state.  Reaching the scheduler waits Dask's own
#: `distributed.comm.timeouts.connect` (30 s unless set).
POLL_S = 1.0
CLOSE_S = 30
#: Seconds a worker may go without a heartbeat reaching the scheduler before the run takes it
#: for lost (frozen, or cut off by a partition; Dask itself waits `worker-ttl`, 5 minutes).  A
#: worker busy with a long read still beats: its heartbeats run beside its tasks.  Never less
#: than `SILENT_BEATS` heartbeats: Dask spaces them out on big clusters.
SILENT_S = 60.0
SILENT_BEATS = 6
#: Seconds an interrupted or failed run waits for the workers to let go of its state; and
#: seconds without a heartbeat after which the run's end stops waiting for a worker.
ABORT_S = 5.0
CLOSE_SILENT_S = 5.0
#: A lost worker's load: never the least busy.
_NEVER = 1 << 62
#: Tasks in flight per worker: a task's trip through the scheduler takes milliseconds, which
#: three in flight (as for local workers) leave the workers waiting for (measured on the small
#: synth tree, 2 local workers: 3 in flight 11-20 s, 10 in flight 7.6 s, 16 7.1 s, 32 7.0 s).
IN_FLIGHT = 16
#: Files per task, against a local worker's: Dask costs about a millisecond a task.
BATCH_SCALE = 4
#: What installs Dask for `--cluster`.
INSTALL = "pip install 'dedup-engine[dask]'"
Callback = Callable[[Any], None]


class ClusterPool:
    """A `Pool` whose workers are a Dask cluster's: `address` is a scheduler's
    (`tcp://host:8786`), or `local:N` for a cluster of N worker processes on this machine,
    started for the run and stopped with it."""

    def __init__(
        self, address: str, options: ScanOptions, roots: Mapping[int, str] | None = None
    ) -> None:
        """Connect, and with `roots` start the run on every worker; without, `start` does once
        the roots are known (those of `--root-on` are found by the workers, `held_roots`)."""
        distributed = _dask()
        self._cluster: Any = None
        self.depth = IN_FLIGHT
        self.batch_scale = BATCH_SCALE
        self.task_cpu: dict[str, float] = {}  # the workers' time is on their machines
        self._id = uuid.uuid4().hex
        self._options = options
        self._callbacks: dict[str, tuple[Callback, int, Any]] = {}
        self._held: list[HeldRoot] = []
        self._gone: set[int] = set()  # workers lost, and forgotten by the run
        self._fetched: dict[str, float] = {}  # results fetched again (`_fetch_again`), and when
        self._heard: dict[int, tuple[float, float]] = {}  # last heartbeat seen, and when
        try:
            self._client = self._connect(distributed, address)
            _drop_abandoned_fetches(self._client.loop.asyncio_loop)
            self._done = distributed.as_completed(
                loop=self._client.loop, with_results=True, raise_errors=False
            )
            info = self._client.scheduler_info()["workers"]
            addresses = sorted(info)
            if not addresses:
                raise OptionsError(f"--cluster {address}: the cluster has no worker")
            sites = _sites(options.root_on, [info[a] | {"address": a} for a in addresses])
            if options.root_on:  # a worker that holds no root has no part in the run
                addresses = [a for a, site in zip(addresses, sites, strict=True) if site]
                sites = tuple(site for site in sites if site)
            self._addresses = addresses
            #: What tells each worker's process from one started again at its address.
            self._processes = [_process(info[a]) for a in addresses]
            self.sites = sites
            self.workers = len(addresses)
            self._busy = [0] * self.workers
            #: Each worker's machine, numbered from 1 where roots are held (`held_roots`): a
            #: (dev, ino) names one file within one.  0: every worker reads the same roots.
            self.spaces: tuple[int, ...] = (0,) * self.workers
            #: (machine, dev, ino) of the digest cache's directory where each worker keeps it.
            self.cache_dirs: set[tuple[int, int, int]] = set()
            self._started = False
            self._checked = time.monotonic()
            if roots is not None:
                self.start(roots)
        except BaseException:
            self.abort()
            raise

    def start(self, roots: Mapping[int, str]) -> ClusterPool:
        """The run's state set up on every worker, for these directory roots."""
        shared = not any(self.sites)  # else every root is held by a site (`held_roots`)
        try:
            setup = [
                self._client.submit(
                    _setup,
                    self._id,
                    __version__,
                    self._options,
                    dict(roots),
                    self._sharing(number),
                    shared,
                    **self._on(number),
                )
                for number in range(self.workers)
            ]
            here = _identities(roots) if shared else {}
            for number, future in enumerate(setup):
                there, cache = self._outcome(future, "could not start the run")
                _agree(self._addresses[number], roots, here, there)
                if cache is not None:
                    self.cache_dirs.add((self.spaces[number], *cache))
            self._started = True
        except BaseException:
            self.abort()
            raise
        return self

    def _sharing(self, worker: int) -> int:
        """How many workers share the devices `worker` reads, whose reads in flight
        (`--io-depth`, or the device's own depth) they divide: every worker on a filesystem all
        of them mount, its site's alone on the disks of its host."""
        site = self.sites[worker]
        return self.sites.count(site) if site else self.workers

    def held_roots(self) -> list[HeldRoot]:
        """Each `--root-on` directory made canonical by a worker of its site, with the
        identity it has there and the machine it is on; one missing or not a directory is a
        usage error."""
        names = _site_names(self._options.root_on)
        asked = []
        for name, path in self._options.root_on:
            site = names[name]
            worker = self.sites.index(site)
            future = self._client.submit(_held_root, path, **self._on(worker))
            asked.append((name, path, site, future))
        machines: dict[str, int] = {}
        spaces = list(self.spaces)
        for name, path, site, future in asked:
            real, dev, ino, machine, error = self._outcome(
                future, "could not look at a --root-on root"
            )
            if error:
                raise OptionsError(f"--root-on {name!r}={path!r}: {error}")
            space = machines.setdefault(machine, len(machines) + 1)
            self._held.append(HeldRoot(real, site, dev, ino, name, space))
            spaces = [
                space if s == site else old for s, old in zip(self.sites, spaces, strict=True)
            ]
        self.spaces = tuple(spaces)
        return list(self._held)

    def _connect(self, distributed: Any, address: str) -> Any:
        if address.startswith("local:"):
            count = _local_workers(address)
            self._cluster = distributed.LocalCluster(
                n_workers=count,
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",  # any free port: never a clash with another cluster
                silence_logs=50,  # logging.CRITICAL: the run's stderr is the run's own
            )
            return distributed.Client(self._cluster)
        # The connection and its handshake first, within Dask's connect timeout: a server that
        # takes the connection and never answers (not a scheduler) holds a Client for ever.
        limit = _seconds("distributed.comm.timeouts.connect")
        try:
            asyncio.run(_reach(address, limit))
            return distributed.Client(address, timeout=limit)
        except (OSError, TimeoutError) as exc:
            reason = str(exc) or f"no answer within {limit:g} s"
            raise OptionsError(
                f"--cluster {address}: cannot reach the scheduler: {reason}"
            ) from None
        except (ValueError, TypeError) as exc:  # not an address Dask can use
            raise OptionsError(f"--cluster {address}: not a scheduler's address: {exc}") from None

    def _on(self, number: int) -> dict[str, Any]:
        """Where a task for worker `number` runs: there and nowhere else."""
        return {"workers": [self._addresses[number]], "allow_other_workers": False, "pure": False}

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
        if worker is None:
            worker = least_busy(self._busy, among)
        if worker in self._gone:  # its rows went with it: no task may name them
            raise WorkerError(f"cluster worker {self._addresses[worker]} was lost")
        self._busy[worker] += 1
        future = self._client.submit(_run, self._id, task, **self._on(worker))
        self._callbacks[future.key] = (on_done, worker, future)
        self._done.add(future)
        return worker

    @property
    def gone(self) -> frozenset[int]:
        return frozenset(self._gone)

    def forget(self, workers: Sequence[int] | None) -> None:
        forgotten = []
        for key, (_, worker, future) in list(self._callbacks.items()):
            if workers is None or worker in workers:
                del self._callbacks[key]
                self._busy[worker] -= 1
                forgotten.append(future)
        if forgotten:  # not left to run, nor to wait for a worker that is gone
            with contextlib.suppress(Exception):
                self._client.cancel(forgotten)

    def wait_one(self) -> None:
        """Hand on the results that are in, at least one: each was fetched from its worker as
        its task finished (`as_completed` fetches them side by side), so none waits here for a
        round trip to its worker."""
        done = self._done
        while True:
            with done.thread_condition:  # held while looking: no wake-up is missed
                deadline = time.monotonic() + POLL_S
                while not done.has_ready() and (left := deadline - time.monotonic()) > 0:
                    done.thread_condition.wait(left)
            if done.has_ready():
                break
            self._check_workers()  # nothing in for a while: still every worker there?
        if time.monotonic() - self._checked > POLL_S:  # results coming, yet one may be lost
            self._check_workers()
        lost: WorkerLost | None = None
        for future, result in done.next_batch(block=False):
            taken = self._callbacks.pop(future.key, None)
            if taken is None:  # forgotten: its worker was lost, or the run started over
                continue
            on_done, worker, _ = taken
            self._fetched.pop(future.key, None)
            self._busy[worker] -= 1
            failure = _failure(result)
            if failure is not None:
                try:
                    if _restarted(result) and worker not in self._gone:
                        self._lose({worker: "was started again (its state for the run is gone)"})
                    self._check_workers()  # a worker lost or the scheduler gone says so first
                except WorkerLost as exc:
                    lost = exc  # said once the other results are handed on
                if worker in self._gone:
                    continue  # its task went with it
                raise WorkerError(f"a cluster worker failed: {failure}")
            future.release()
            on_done(result)
        if lost is not None:
            raise lost

    def _outcome(self, future: Any, failing: str) -> Any:
        """A task's result, fetched from its worker; a worker lost meanwhile (the result lived
        there, and Dask would wait for it to come back) or a task that raised ends the run."""
        while True:
            try:
                if future.status == "error":
                    raise WorkerError(
                        f"a cluster worker {failing}: {future.exception(timeout=POLL_S)!r}"
                    )
                return future.result(timeout=POLL_S)
            except TimeoutError:
                self._check_workers()
            except OSError as exc:  # the scheduler is gone
                raise WorkerError(f"lost the cluster's scheduler: {exc}") from None
            except WorkerError:
                raise
            except (Exception, asyncio.CancelledError) as exc:  # raised since, or cancelled
                raise WorkerError(f"a cluster worker {failing}: {exc!r}") from None

    def _check_workers(self) -> None:
        """Workers that left the cluster, or went silent, are lost: `WorkerLost` where others
        can read their files and the run has started, else a `WorkerError` that ends the run, as
        does a scheduler that no longer answers."""
        from distributed.scheduler import heartbeat_interval  # how Dask spaces them

        self._checked = time.monotonic()
        workers = self._scheduler_workers()
        silent = max(SILENT_S, SILENT_BEATS * heartbeat_interval(max(1, len(workers))))
        lost = self._unheard(workers, silent)
        if lost:
            self._lose(lost)
        if self._gone:
            self._fetch_again()

    def _scheduler_workers(self) -> dict[str, Any]:
        """What the scheduler says of each worker it has; a scheduler gone ends the run."""
        if self._client.status != "running":  # reconnecting: asking would wait for it
            raise WorkerError("lost the cluster's scheduler")
        try:
            workers: dict[str, Any] = self._client.scheduler_info().get("workers", {})
        except OSError as exc:
            raise WorkerError(f"lost the cluster's scheduler: {exc}") from None
        if self._client.status != "running":  # it went as we asked
            raise WorkerError("lost the cluster's scheduler")
        return workers

    def _unheard(self, workers: Mapping[str, Any], silent: float) -> dict[int, str]:
        """The run's workers (not lost already) that left the cluster, were started again, or
        sent no heartbeat for `silent` seconds, each with what befell it."""
        now = time.monotonic()
        lost: dict[int, str] = {}
        for number, address in enumerate(self._addresses):
            if number in self._gone:
                continue
            if address not in workers:
                lost[number] = "was lost"
                continue
            if _process(workers[address]) != self._processes[number]:
                lost[number] = "was started again (its state for the run is gone)"
                continue
            beat = float(workers[address].get("last_seen", 0.0))
            heard = self._heard.get(number)
            if heard is None or heard[0] != beat:
                self._heard[number] = (beat, now)
            elif now - heard[1] > silent:
                lost[number] = f"was silent for {now - heard[1]:.0f} s (frozen, or cut off)"
        return lost

    def _fetch_again(self) -> None:
        """Once a worker is lost, fetch again each finished result of a worker still here that
        has not come: Dask fetches results side by side in one request per moment, and one that
        held a result of the lost worker waits for it (for ever, if it is frozen), and with it
        the others'.  A result fetched twice is handed on once (`wait_one`)."""
        now = time.monotonic()
        for _, worker, future in list(self._callbacks.values()):
            if worker in self._gone or future.status != "finished":
                continue
            asked = self._fetched.setdefault(future.key, now)
            if now - asked > POLL_S:
                self._fetched[future.key] = now
                self._done.add(future)

    def _lose(self, lost: dict[int, str]) -> None:
        gone = self._gone | set(lost)
        left = [n for n in range(self.workers) if n not in gone]
        said = "; ".join(f"cluster worker {self._addresses[n]} {why}" for n, why in lost.items())
        stranded = [n for n in lost if not any(self.sites[k] == self.sites[n] for k in left)]
        if not self._started or stranded:
            raise WorkerError(self._stranded(said, stranded[0] if stranded else None, len(lost)))
        self._gone = gone
        for number in lost:
            self._busy[number] = _NEVER
        raise WorkerLost(said, list(lost))

    def _stranded(self, said: str, worker: int | None, count: int = 1) -> str:
        """Why losing `count` workers ends the run: it was still starting, or no worker is left
        that can read the files they scanned (of `worker`'s site, where roots are held)."""
        if not self._started:
            return said + " as the run started"
        they = "it" if count == 1 else "they"
        said += f": the files {they} scanned with {'it' if count == 1 else 'them'}, and no other"
        said += " worker can read them"
        held = [h for h in self._held if worker is not None and h.site == self.sites[worker]]
        if held:
            roots = ", ".join(repr(h.path) for h in held)
            said += f" (no worker is left that holds {held[0].name}: {roots})"
        return said

    def close(self) -> None:
        """Each worker still there lets go of the run's state; one lost meanwhile is not
        waited for."""
        self._close_within(CLOSE_S)
        self._release()

    def abort(self) -> None:
        if getattr(self, "_addresses", None):
            with contextlib.suppress(Exception):
                self.forget(None)  # queued tasks would hold the closing one back
                self._close_within(ABORT_S)
        self._release()

    def _close_within(self, seconds: float) -> None:
        """Each worker still there (and not forgotten) lets go of the run's state; waited for up
        to `seconds`, and never for one lost meanwhile, nor for one silent for CLOSE_SILENT_S,
        nor for a scheduler gone (a client reconnecting to it would wait Dask's connect timeout
        at each question)."""
        distributed = _dask()
        if self._client.status != "running":
            return
        there = [n for n in range(self.workers) if n not in self._gone]
        closing = {self._client.submit(_close, self._id, **self._on(n)): n for n in there}
        deadline = time.monotonic() + seconds
        with contextlib.suppress(Exception):
            while closing and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):  # some still closing: look again
                    distributed.wait(list(closing), timeout=POLL_S, return_when="ALL_COMPLETED")
                closing = {f: n for f, n in closing.items() if f.status == "pending"}
                if not closing or self._client.status != "running":
                    return
                gone = self._unheard(self._scheduler_workers(), CLOSE_SILENT_S)
                closing = {f: n for f, n in closing.items() if n not in gone}

    def _release(self) -> None:
        client = getattr(self, "_client", None)
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
        if self._cluster is not None:
            with contextlib.suppress(Exception):
                self._cluster.close()
            self._cluster = None


@dataclass(frozen=True, slots=True)
class HeldRoot:
    """A `--root-on` directory: its canonical path where its site's workers read it (`name`
    matched them), and its identity there."""

    path: str
    site: int
    dev: int
    ino: int
    name: str
    #: The machine it is on, numbered from 1: a (dev, ino) is one file within a machine,
    #: whatever the sites (two sites may be workers of one machine).
    space: int = 1


def _agree(
    address: str,
    roots: Mapping[int, str],
    here: Mapping[int, tuple[int, int] | None],
    there: Mapping[int, tuple[int, int] | None],
) -> None:
    """The worker at `address` sees every root the coordinator sees, as the same (st_dev,
    st_ino): the walk and the reads check each directory and file they are sent against the
    identity another process saw, so every host must mount the roots alike."""
    for number, identity in here.items():
        theirs = there.get(number)
        if identity is None or theirs == identity:
            continue
        root = roots[number]
        if theirs is None:
            raise OptionsError(
                f"--cluster: worker {address} cannot reach root {root!r}: mount the roots at"
                " the same paths on every host, or give each host's disks with --root-on"
            )
        raise OptionsError(
            f"--cluster: worker {address} sees root {root!r} as another file (st_dev"
            f" {_device(theirs[0])}, st_ino {theirs[1]}; here {_device(identity[0])},"
            f" {identity[1]}): mount it alike on every host, or give each host's disks with"
            " --root-on"
        )


def _failure(result: Any) -> str | None:
    """Why a task's result is none (as `as_completed` gives a task that raised: its type,
    exception and traceback; or the exception that cancelled it), shortly; None for a
    result."""
    if isinstance(result, BaseException):
        return repr(result)[:200]
    if isinstance(result, tuple) and len(result) == 3 and isinstance(result[1], BaseException):
        return repr(result[1])[:200]
    return None


def _process(worker: Mapping[str, Any]) -> str:
    """Which process a worker is, from what the scheduler says of it: its scratch directory,
    which Dask names afresh for each worker process (its address and name may be reused)."""
    return str(worker.get("local_directory"))


def _restarted(result: Any) -> bool:
    """Whether a task failed for its worker holding no state for the run: a worker started
    again at the same address, which the scheduler may never have been seen gone."""
    error = result[1] if isinstance(result, tuple) and len(result) == 3 else result
    return isinstance(error, NoRunState)


def _site_names(root_on: Sequence[tuple[str, str]]) -> dict[str, int]:
    """Each name `--root-on` gives its site number, from 1, in the order first given."""
    names: dict[str, int] = {}
    for name, _ in root_on:
        names.setdefault(name, len(names) + 1)
    return names


def _sites(
    root_on: Sequence[tuple[str, str]], workers: Sequence[Mapping[str, Any]]
) -> tuple[int, ...]:
    """Each worker's site: that of the `--root-on` name it matches (`_matching`), or 0.  A
    name that matches no worker, or a worker two names match, is a usage error: which disk is
    where must be plain."""
    sites = [0] * len(workers)
    names = _site_names(root_on)
    for name, site in names.items():
        matched = _matching(name, workers)
        if not matched:
            known = sorted({str(w.get("name")) for w in workers} | {w["address"] for w in workers})
            shown = ", ".join(map(repr, known[:8])) + (", ..." if len(known) > 8 else "")
            raise OptionsError(
                f"--root-on {name!r}: no worker of the cluster has that name, address or host"
                f" (its workers: {shown})"
            )
        for number in matched:
            if sites[number]:
                other = next(n for n, s in names.items() if s == sites[number])
                raise OptionsError(
                    f"--root-on: cluster worker {workers[number]['address']} is matched by"
                    f" {other!r} and by {name!r}: give the disks of one host under one name"
                )
            sites[number] = site
    return tuple(sites)


def _matching(name: str, workers: Sequence[Mapping[str, Any]]) -> list[int]:
    """The workers a `--root-on` name matches: by their Dask name, address or host; failing
    those, by the addresses the name resolves to as a host name (Dask gives each worker's host
    as an address)."""

    def where(hosts: set[str]) -> list[int]:
        return [
            n
            for n, worker in enumerate(workers)
            if name in (str(worker.get("name")), worker["address"]) or worker.get("host") in hosts
        ]

    matched = where({name})
    if matched:
        return matched
    try:
        _, _, addresses = socket.gethostbyname_ex(name)
    except (OSError, UnicodeError):  # no such host
        return []
    return where(set(addresses))


def _drop_abandoned_fetches(loop: asyncio.AbstractEventLoop) -> None:
    """A result fetch given up on (its worker was lost: `_outcome`'s, or `as_completed`'s for a
    task's result) stays pending inside the client until the client closes, and then ends with
    Dask's `AllExit`, which nobody is left to read: asyncio would print it as "Task exception
    was never retrieved" (on the run's stderr, at some later garbage collection).  Any other
    exception goes to the handler there before."""
    from distributed.client import AllExit

    before = loop.get_exception_handler()
    if getattr(before, "drops_abandoned_fetches", False):
        return

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if isinstance(context.get("exception"), AllExit):
            return
        if before is not None:
            before(loop, context)
        else:
            loop.default_exception_handler(context)

    handler.drops_abandoned_fetches = True  # type: ignore[attr-defined]
    loop.set_exception_handler(handler)


def _dask() -> Any:
    try:
        import distributed
    except ImportError:
        raise OptionsError(f"--cluster needs Dask distributed: {INSTALL}") from None
    return distributed


def _local_workers(address: str) -> int:
    """N of `local:N`: from 1 to as many worker processes as `--workers` may start here."""
    limit, why = worker_limit(cpu_count(), open_file_limit())
    count = address.removeprefix("local:")
    if not (count.isascii() and count.isdigit()) or not 1 <= int(count) <= limit:
        raise OptionsError(f"--cluster {address}: local:N wants N from 1 to {limit} ({why})")
    return int(count)


async def _reach(address: str, limit: float) -> None:
    """Connect to `address` and shake hands as Dask does, within `limit` seconds."""
    from distributed.comm.core import connect

    comm = await asyncio.wait_for(connect(address, timeout=limit), limit)  # type: ignore[no-untyped-call]
    await comm.close()


def _seconds(key: str) -> float:
    """A duration from Dask's configuration, in seconds."""
    from dask.config import get
    from dask.utils import parse_timedelta

    seconds: float = parse_timedelta(get(key), default="s")
    return seconds


# Worker side: the runs this worker process takes part in, by run id.


class _Held:
    """A run's state on one worker, used by one task at a time, and when it was last used."""

    def __init__(self, state: WorkerState) -> None:
        self.state = state
        self.lock = threading.Lock()
        self.used = time.monotonic()


_RUNS: dict[str, _Held] = {}
#: A run whose state no task has used for this long lost its coordinator (killed, its host
#: gone): the next run set up on the worker drops it.
ABANDONED_S = 3600.0


def _setup(
    run: str,
    version: str,
    options: ScanOptions,
    roots: dict[int, str],
    workers: int,
    shared: bool,
) -> tuple[dict[int, tuple[int, int] | None], tuple[int, int] | None]:
    """The run's state on this worker; for roots every worker reads (`shared`), each one's
    identity here, for the coordinator to compare with its own (`ClusterPool._agree`); and
    the identity of the digest cache's directory here, which no walk lists."""
    if version != __version__:  # tasks and results are this version's
        raise RuntimeError(
            f"this worker runs dedup-engine {__version__} and the run {version}: install one"
            " version on every host"
        )
    now = time.monotonic()
    for old, held in list(_RUNS.items()):
        # One with a task still running here is let go by a later run, not waited for.
        if now - held.used > ABANDONED_S and not held.lock.locked():
            _close(old)
    _RUNS[run] = _Held(WorkerState(options, roots, workers))
    cache = None
    if options.cache_dir is not None:
        with contextlib.suppress(OSError):
            st = os.stat(options.cache_dir)
            cache = (st.st_dev, st.st_ino)
    return _identities(roots) if shared else {}, cache


def _identities(roots: Mapping[int, str]) -> dict[int, tuple[int, int] | None]:
    """(st_dev, st_ino) of each directory root as this process sees it; None where it cannot."""
    seen: dict[int, tuple[int, int] | None] = {}
    for number, path in roots.items():
        try:
            st = os.stat(path)
        except OSError:
            seen[number] = None
        else:
            seen[number] = (st.st_dev, st.st_ino)
    return seen


def _device(dev: int) -> str:
    return f"{os.major(dev)}:{os.minor(dev)}"


def _held_root(path: str) -> tuple[str, int, int, str, str]:
    """A `--root-on` directory as this worker sees it: its canonical path and identity, and
    this machine's; or why it cannot be a root."""
    machine = _machine()
    try:
        real = os.path.realpath(path)
        st = os.stat(real)
    except OSError as exc:
        return path, 0, 0, machine, describe_error(exc)
    if not stat.S_ISDIR(st.st_mode):
        return real, 0, 0, machine, "not a directory on that worker"
    return real, st.st_dev, st.st_ino, machine, ""


def _machine() -> str:
    """What tells this machine from the others: its boot's id (Linux), which the workers of
    one host share whatever their names and addresses, else its name."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as boot:
            return boot.read().strip()
    except OSError:
        return socket.gethostname()


class NoRunState(RuntimeError):
    """A task reached a worker that holds no state for its run: the worker was started again
    since the run was set up (at the same address)."""


def _run(run: str, task: Task) -> Result:
    held = _RUNS.get(run)
    if held is None:
        raise NoRunState("this worker holds no state for the run: it was restarted")
    with held.lock:
        held.used = time.monotonic()
        return run_task(task, held.state)


def _close(run: str) -> None:
    """The run's end on this worker: its state written (the cache) and let go."""
    held = _RUNS.pop(run, None)
    if held is not None:
        # After any task of the run still running here: its reads use what closing lets go.
        with held.lock, contextlib.suppress(Exception):
            held.state.close()
