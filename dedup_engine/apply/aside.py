"""The temporary name a copy is set aside under: its one shape, and a fresh one.

An operation that replaces or removes a copy first gives it (or its link) a short random name in
the copy's own directory.  Only names of this shape are ever made, so `--resume` refuses a journal
that names any other.
"""

from __future__ import annotations

import os
import secrets

ASIDE_PREFIX = ".dedup-"
#: The shape of every name `aside_name` makes (its last component).
ASIDE_PATTERN = r"\.dedup-[0-9a-f]{8}\.tmp"


def aside_name(path: str) -> str:
    """A short, unused temporary name in the directory of `path` (never a long name)."""
    return os.path.join(os.path.dirname(path), f"{ASIDE_PREFIX}{secrets.token_hex(4)}.tmp")
