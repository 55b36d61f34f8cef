"""How an OS error reads in every message the engine writes: what happened, and its errno name.

"Permission denied (EACCES)": the sentence for people, then the name to search for.  Find's
issues, apply's outcomes and the journal's refusals all say it this way.
"""

from __future__ import annotations

import errno
import os


def describe_error(exc: OSError) -> str:
    """The text of `exc`: its message, then its errno name in parentheses.

    The message is the one the error carries: for a system call that is the C library's text,
    and for an error the engine raised itself ("'x' is a symlink") it says more than the generic
    text of its errno would.
    """
    if not exc.errno:
        return str(exc.strerror or exc)
    return f"{exc.strerror or os.strerror(exc.errno)} ({errno_name(exc)})"


def errno_name(exc: OSError) -> str:
    """The errno's symbolic name ("EACCES"), or its number where it has none."""
    return errno.errorcode.get(exc.errno or 0, str(exc.errno))
