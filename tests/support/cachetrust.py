"""Whether the digest cache trusts the filesystem a test's files are on: a test that needs cache
hits skips, with the reason, where it does not (tmpfs, or an overlay root as in a container)."""

from __future__ import annotations

import os

import pytest

from dedup_engine.find.fsidentity import filesystem_id

REASON = "the temporary directory is on a filesystem the digest cache does not trust"


def trusted(path: str | os.PathLike[str]) -> bool:
    """Whether files under `path` can be cached."""
    return filesystem_id(os.fspath(path), os.stat(path).st_dev) is not None


def need_trusted(path: str | os.PathLike[str]) -> None:
    """Skip the test where files under `path` cannot be cached."""
    if not trusted(path):
        pytest.skip(REASON)
