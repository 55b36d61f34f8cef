"""A Dask cluster started with the real `dask scheduler` and `dask worker` commands on
127.0.0.1, for the cluster tests: each worker with its own name and environment."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Cluster:
    address: str
    workers: list[subprocess.Popen[bytes]]


@contextlib.contextmanager
def dask_commands(
    cwd: Path,
    workers: Sequence[Mapping[str, str]] = ({}, {}),
    names: Sequence[str | None] | None = None,
    preload: str | None = None,
) -> Iterator[Cluster]:
    """A scheduler, and a worker for each environment (added to this one's), named as given;
    every worker runs `preload` (a module's path) first where given.  Killed at the end."""
    dask = shutil.which("dask", path=os.path.dirname(sys.executable))
    if dask is None:
        pytest.skip("no dask command beside this Python")
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "cwd": cwd}
    scheduler = subprocess.Popen(
        [dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
        **quiet,  # type: ignore[call-overload]
    )
    procs = []
    for number, env in enumerate(workers):
        command = [dask, "worker", address, "--nthreads", "1", "--no-nanny", "--no-dashboard"]
        name = names[number] if names else None
        if name is not None:
            command += ["--name", name]
        if preload is not None:
            command += ["--preload", preload]
        procs.append(
            subprocess.Popen(command, env={**os.environ, **env}, **quiet)  # type: ignore[call-overload]
        )
    try:
        wait_for_workers(address, len(procs))
        yield Cluster(address, procs)
    finally:
        for proc in [*procs, scheduler]:
            proc.kill()  # nothing of theirs to keep
        for proc in [*procs, scheduler]:
            proc.wait(timeout=10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_workers(address: str, count: int) -> None:
    from distributed import Client

    deadline = time.monotonic() + 60
    while True:
        try:
            with Client(address, timeout=5) as client:  # type: ignore[no-untyped-call]
                client.wait_for_workers(count, timeout=max(1, deadline - time.monotonic()))
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


class Hung(BaseException):
    """A test ran into its deadline inside code that catches every `Exception`."""


@contextlib.contextmanager
def deadline_past_except() -> Iterator[None]:
    """The test's deadline alarm (`conftest.deadline`) raises `Hung` meanwhile: the pool's
    `except Exception` would swallow the usual `TimeoutError`, and a hang would pass."""

    def hung(signum: int, frame: object) -> None:
        raise Hung

    before = signal.signal(signal.SIGALRM, hung)
    try:
        yield
    finally:
        signal.signal(signal.SIGALRM, before)
