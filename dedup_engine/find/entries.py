"""Worker side of naming files: the paths and identities of a worker's own rows, re-checked.

The coordinator knows a file by its owner and row only; when a file must be read by another
worker (the full stage's comparison) or listed in a final group, its owner describes it here
(`describe`).  Where asked (`check`), a path is stat'ed again and a file no longer as the scan
saw it is dropped with an issue: the files a window read whole are re-checked so, once every read
of their group is done, since the worker that read such a file checked only its size.
"""

from __future__ import annotations

from array import array

from dedup_engine.find.changes import Scanned, still_as_scanned
from dedup_engine.find.changes import describe as describe_error
from dedup_engine.find.store import RowStore
from dedup_engine.find.tasks import Described, DescribeTask, Failure


def describe(task: DescribeTask, store: RowStore) -> Described:
    """The task's rows of `store`, in columns, in task order."""
    rows, count = task.rows, len(task.rows)
    paths = store.paths(rows)
    roots, devs = store.roots_devs(rows)
    ino, mtime, ctime = store.ino, store.mtime, store.ctime
    inos = array("Q", [ino[row] for row in rows])
    mtimes = array("q", [mtime[row] for row in rows])
    ctimes = array("q", [ctime[row] for row in rows])
    uids, gids = array("I", bytes(4 * count)), array("I", bytes(4 * count))
    modes = array("H", bytes(2 * count))
    nlinks = array("Q", bytes(8 * count))
    failed: list[Failure] = []
    check, sizes = task.check, task.sizes
    # Written out flat: it runs for every file of every final group.
    for position in [p for p in range(count) if check[p]]:
        path = paths[position]
        seen = Scanned(
            devs[position], inos[position], sizes[position], mtimes[position], ctimes[position]
        )
        try:
            st = still_as_scanned(path, seen, task.follow_links)
        except OSError as exc:
            failed.append((position, path, describe_error(exc)))
            continue
        uids[position] = st.st_uid
        gids[position] = st.st_gid
        modes[position] = st.st_mode & 0o7777
        nlinks[position] = st.st_nlink
    return Described(
        tuple(paths), roots, devs, inos, mtimes, ctimes, uids, gids, modes, nlinks, tuple(failed)
    )
