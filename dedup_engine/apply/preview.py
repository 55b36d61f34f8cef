"""Showing a plan without acting on it: `--dry-run` as text or JSON, and `--script` as sh.

The dry run lists exactly the operations `apply` would carry out, in order.  The script is for
people who want to review and run the change themselves: it re-compares the bytes (cmp) before
each step, sets the victim aside, links, and only then removes it, putting it back on failure.
It cannot re-check inode identity and timestamps as `apply` does; `apply` is the safer way.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from typing import IO, Any

from dedup_engine.apply.operation import aside_name
from dedup_engine.apply.plan import Action, Operation, Plan
from dedup_engine.report.display import human_size, printable

SCHEMA = 1


def write_text(plan: Plan, out: IO[bytes]) -> None:
    lines = []
    for op in plan.operations:
        victim, keep = printable(op.victim.path), printable(op.keep.path)
        if op.action is Action.DELETE:
            lines.append(f"delete    {victim}   (kept: {keep})")
        elif op.action is Action.MOVE:
            assert op.target is not None
            lines.append(f"move      {victim}   -> {printable(op.target)}   (kept: {keep})")
        else:
            lines.append(f"{op.action.value:<9} {victim}   => {keep}")
    lines.extend(f"left alone: group {s.group + 1}: {s.reason}" for s in plan.skipped)
    groups = len({op.group for op in plan.operations})
    lines.append(
        f"dry run: {len(plan.operations)} operations in {groups} groups would be done "
        f"({human_size(planned_bytes(plan))} of duplicates); nothing was changed"
    )
    out.write(("\n".join(lines) + "\n").encode("utf-8", "backslashreplace"))


def planned_bytes(plan: Plan) -> int:
    """Bytes of the victim files (each file once), before links and sparseness are counted."""
    files = {(op.victim.dev, op.victim.ino): op.victim.size for op in plan.operations}
    return sum(files.values())


def to_json_dict(plan: Plan, action: Action) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "tool": "dedup-engine",
        "dry_run": True,
        "action": action.value,
        "operations": [
            {
                "group": op.group + 1,
                "action": op.action.value,
                "path": op.victim.path,
                "keep": op.keep.path,
                "target": op.target,
                "size": op.victim.size,
            }
            for op in plan.operations
        ],
        "left_alone": [
            {"group": s.group + 1, "reason": s.reason, "kind": s.kind.value} for s in plan.skipped
        ],
    }


def write_json(plan: Plan, action: Action, out: IO[str]) -> None:
    json.dump(to_json_dict(plan, action), out, indent=1, ensure_ascii=True)
    out.write("\n")


_PRELUDE = r"""set -u
failed=0
fail() { printf 'dedup script: %s\n' "$*" >&2; failed=1; }
# No directory on the way to $1 is a symlink (one planted there would redirect the step).
plain() {
    p=
    rest=${1#/}
    while :; do
        case $rest in */*) part=${rest%%/*}; rest=${rest#*/} ;; *) return 0 ;; esac
        [ -n "$part" ] || continue
        p=$p/$part
        if [ -L "$p" ]; then fail "skipped, $p is a symlink: $1"; return 1; fi
    done
}
# Two names of two different regular files (not symlinks, not one file) with the same bytes.
same() {
    plain "$1" && plain "$2" || return 1
    [ -f "$1" ] && [ ! -L "$1" ] && [ -f "$2" ] && [ ! -L "$2" ] && ! [ "$1" -ef "$2" ] &&
        cmp -s -- "$1" "$2"
}
# Make directory $1 a component at a time where missing (mode 700: a copy moved from a private
# directory must not become readable); a symlink anywhere is refused.
make_dir() {
    p=
    rest=${1#/}/
    while [ -n "$rest" ]; do
        part=${rest%%/*}
        rest=${rest#*/}
        [ -n "$part" ] || continue
        p=$p/$part
        if [ -L "$p" ]; then fail "skipped, $p is a symlink"; return 1; fi
        [ -d "$p" ] || mkdir -m 700 -- "$p" || { fail "cannot create $p"; return 1; }
        if [ -L "$p" ] || [ ! -d "$p" ]; then fail "skipped, $p is not a directory"; return 1; fi
    done
}
aside() {  # keep victim tmp: check, then move the victim aside (never over another name)
    same "$1" "$2" || { fail "skipped, no longer a copy of $1: $2"; return 1; }
    if [ -e "$3" ] || [ -L "$3" ]; then fail "skipped, $3 exists: $2"; return 1; fi
    # -T: a directory someone makes at $3 meanwhile is not moved into.
    mv -n -T -- "$2" "$3" && [ ! -e "$2" ] && [ ! -L "$2" ] ||
        { fail "cannot set aside: $2"; return 1; }
}
back() {  # victim tmp: put the victim back, never over a file someone else put there
    if [ -e "$1" ] || [ -L "$1" ]; then
        fail "ROLLBACK FAILED: $1 now holds another file; the original is at $2"; return
    fi
    mv -n -T -- "$2" "$1" && [ ! -e "$2" ] || fail "ROLLBACK FAILED: the original of $1 is at $2"
}
do_delete() { aside "$@" || return 0; rm -f -- "$3" || fail "cannot remove $3 (a copy of $1)"; }
do_hardlink() {
    aside "$@" || return 0
    if ! ln -T -- "$1" "$2"; then fail "cannot link: $2"; back "$2" "$3"; return 0; fi
    if [ "$1" -ef "$2" ]; then rm -f -- "$3" || fail "cannot remove $3 (a copy of $1)"
    else fail "$2 is not $1; the original is at $3"; fi
}
do_symlink() {
    aside "$@" || return 0
    if ! ln -s -T -- "$1" "$2"; then fail "cannot symlink: $2"; back "$2" "$3"; return 0; fi
    if [ -L "$2" ] && [ "$1" -ef "$2" ]; then
        rm -f -- "$3" || fail "cannot remove $3 (a copy of $1)"
    else fail "$2 is not a link to $1; the original is at $3"; fi
}
do_reflink() {  # keep victim size: the kernel compares the bytes itself
    same "$1" "$2" || { fail "skipped, no longer a copy of $1: $2"; return 0; }
    case "$1" in *[[:space:]]*) fail "skipped, xfs_io cannot take the name: $1"; return 0;; esac
    xfs_io -r -c "dedupe $1 0 0 $3" -- "$2" >/dev/null || fail "reflink failed: $2"
}
do_move() {  # keep victim target target-dir
    same "$1" "$2" || { fail "skipped, no longer a copy of $1: $2"; return 0; }
    if [ -e "$3" ] || [ -L "$3" ]; then fail "skipped, $3 exists"; return 0; fi
    make_dir "$4" || return 0
    mv -n -T -- "$2" "$3" && [ ! -e "$2" ] || fail "cannot move: $2"
}
"""


def write_script(plan: Plan, action: Action, source: str, out: IO[bytes]) -> None:
    """A POSIX sh script doing the plan; names are written as their exact bytes, quoted."""
    created = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
    head = [
        "#!/bin/sh",
        f"# dedup-engine plan: {action.value}, {len(plan.operations)} operations, "
        f"from {printable(source)}, written {created}.",
        "# Review it, then run: sh THIS-FILE.  Each step re-compares the bytes with cmp and skips",
        "# a file that changed; it does not re-check inodes and timestamps as `dedup apply` does.",
        "# Exit status 1 if any step was skipped or failed.",
    ]
    out.write(("\n".join(head) + "\n").encode())
    if action is Action.REFLINK:
        out.write(b'command -v xfs_io >/dev/null || { echo "needs xfs_io" >&2; exit 2; }\n')
    out.write(_PRELUDE.encode())
    for op in plan.operations:
        out.write(b" ".join(_command(op)) + b"\n")
    out.write(b'exit "$failed"\n')


def _command(op: Operation) -> list[bytes]:
    keep, victim = _quote(op.keep.path), _quote(op.victim.path)
    if op.action is Action.MOVE:
        assert op.target is not None
        target = _quote(op.target)
        return [b"do_move", keep, victim, target, _quote(os.path.dirname(op.target))]
    if op.action is Action.REFLINK:
        return [b"do_reflink", keep, victim, str(op.victim.size).encode()]
    return [b"do_" + op.action.value.encode(), keep, victim, _quote(aside_name(op.victim.path))]


def _quote(path: str) -> bytes:
    """Single-quoted for sh: every byte literal (newlines too), a quote as '\\''."""
    return b"'" + os.fsencode(path).replace(b"'", b"'\\''") + b"'"
