"""Showing a plan without acting on it: `--dry-run` as text or JSON, and `--script` as sh.

The dry run lists exactly the operations `apply` would carry out, in order.  The script is for
people who want to review and run the change themselves: it re-compares the bytes (cmp) before
each step, sets the victim aside, links, and only then removes it, putting it back on failure.
It cannot re-check inode identity and timestamps as `apply` does; `apply` is the safer way.  The
script's shell functions are `prelude.sh`, shipped beside this module; each operation is one
call of them.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from importlib import resources
from typing import IO, Any

from dedup_engine.apply.aside import aside_name
from dedup_engine.apply.plan import Action, Operation, Plan
from dedup_engine.report.display import human_size, printable
from dedup_engine.report.schema import TOOL

#: The version of the dry run's JSON document (a plan, not a report: `report.schema` is that).
PLAN_SCHEMA = 1


#: What the dry run adds after an operation's kept file, and the `Operation` flag that says it.
_NOTES = (("reference", "reference"), ("sampled: bytes compared first", "sampled"))


def write_text(plan: Plan, out: IO[bytes]) -> None:
    lines = []
    for op in plan.operations:
        victim, keep = printable(op.victim.path), printable(op.keep.path)
        # A kept file under a reference root says so: it is kept whatever the policy; so does
        # an operation of a sampled group, whose bytes are compared first whatever the flags.
        notes = [note for note, on in _NOTES if getattr(op, on)]
        if op.action is Action.DELETE:
            lines.append(f"delete    {victim}   (kept: {', '.join([keep, *notes])})")
        elif op.action is Action.MOVE:
            assert op.target is not None
            target = printable(op.target)
            lines.append(f"move      {victim}   -> {target}   (kept: {', '.join([keep, *notes])})")
        else:
            said = f"   ({', '.join(notes)})" if notes else ""
            lines.append(f"{op.action.value:<9} {victim}   => {keep}{said}")
    lines.extend(f"left alone: group {s.group + 1}: {s.reason}" for s in plan.left_alone)
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
        "schema": PLAN_SCHEMA,
        "tool": TOOL,
        "dry_run": True,
        "action": action.value,
        "operations": [
            {
                "group": op.group + 1,
                "action": op.action.value,
                "path": op.victim.path,
                "keep": op.keep.path,
                "keep_is_reference": op.reference,
                "sampled": op.sampled,
                "target": op.target,
                "size": op.victim.size,
            }
            for op in plan.operations
        ],
        "left_alone": [
            {"group": s.group + 1, "reason": s.reason, "kind": s.kind.value}
            for s in plan.left_alone
        ],
    }


def write_json(plan: Plan, action: Action, out: IO[str]) -> None:
    json.dump(to_json_dict(plan, action), out, indent=1, ensure_ascii=True)
    out.write("\n")


def prelude() -> bytes:
    """The shell functions every script starts with (`prelude.sh`, package data)."""
    return resources.files("dedup_engine.apply").joinpath("prelude.sh").read_bytes()


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
    out.write(prelude())
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
