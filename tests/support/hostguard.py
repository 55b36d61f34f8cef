"""A `dask worker --preload` module that makes a worker a "host" of its own: the paths under
$DEDUP_TEST_ELSEWHERE (colon-separated: other hosts' disks) do not exist for it, and every
attempt to reach one is written to $DEDUP_TEST_GUARD_LOG, so a test can tell that no worker
read what its host does not hold."""

from __future__ import annotations

import errno
import functools
import os
from collections.abc import Callable
from typing import Any

ELSEWHERE = [p for p in os.environ.get("DEDUP_TEST_ELSEWHERE", "").split(":") if p]
LOG = os.environ.get("DEDUP_TEST_GUARD_LOG")


def _elsewhere(path: Any) -> bool:
    if isinstance(path, int) or path is None:
        return False  # a descriptor: what it names was reached by a path, and checked then
    text = os.path.normpath(os.fsdecode(os.fspath(path)))
    # A relative path is taken from a directory's descriptor (or the worker's own directory),
    # which was reached, and checked, by its absolute path.
    return os.path.isabs(text) and any(text == p or text.startswith(p + "/") for p in ELSEWHERE)


def _guarded(call: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(call)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        path = args[0] if args else kwargs.get("path")
        if _elsewhere(path):
            if LOG:
                with open(LOG, "a") as log:
                    log.write(f"{call.__name__} {path!s}\n")
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        return call(*args, **kwargs)

    return guarded


for _name in ("open", "stat", "lstat", "scandir", "listdir", "readlink"):
    setattr(os, _name, _guarded(getattr(os, _name)))
