"""The `--script` shell script under a changing tree: it never removes a file it did not make.

The script's rollback removes nothing that stands at the victim's name (a file another program
has just written there), and a victim that has become the same file as the kept copy (a hard
link) is not taken for its copy, though the bytes compare equal.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from faultsys import leftovers
from treebuilder import Tree, content

from dedup_engine import ScanOptions, find_duplicates
from dedup_engine.apply.plan import Action, Policy, make_plan
from dedup_engine.apply.preview import write_script

DATA = content(20_000, "script")


def script_for(tree: Tree, action: Action, path: Path) -> Path:
    result = find_duplicates([tree.root], ScanOptions(workers=0))
    plan = make_plan(result.groups, result.roots, Policy(action))
    with path.open("wb") as out:
        write_script(plan, action, "report.json", out)
    return path


def sh(script: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["sh", str(script)], capture_output=True, env=env, check=False)


@pytest.mark.parametrize("action", [Action.HARDLINK, Action.SYMLINK])
def test_a_file_written_at_the_victims_name_is_never_removed(
    tmp_path: Path, action: Action
) -> None:
    tree = Tree(tmp_path / "t")
    tree.file("k", DATA)
    tree.file("sub/victim", DATA)
    script = script_for(tree, action, tmp_path / "plan.sh")
    # An `ln` that finds the name taken: another program wrote a new file there first.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    real_ln = shutil.which("ln")
    assert real_ln is not None
    wrapper = bin_dir / "ln"
    victim = tree.path("sub/victim")
    wrapper.write_text(f"#!/bin/sh\nprintf 'NEW DATA' > '{victim}'\nexec {real_ln} \"$@\"\n")
    wrapper.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    proc = sh(script, env)
    assert proc.returncode == 1
    assert b"ROLLBACK FAILED" in proc.stderr
    assert Path(victim).read_bytes() == b"NEW DATA"  # the other program's file survives
    [stranded] = leftovers(tree.root)  # and the original waits under its temporary name
    assert Path(stranded).read_bytes() == DATA
    assert stranded.encode() in proc.stderr


def test_a_victim_that_became_the_kept_file_is_not_removed(tmp_path: Path) -> None:
    tree = Tree(tmp_path / "t")
    tree.file("k", DATA)
    tree.file("sub/victim", DATA)
    script = script_for(tree, Action.DELETE, tmp_path / "plan.sh")
    os.unlink(tree.path("sub/victim"))
    os.link(tree.path("k"), tree.path("sub/victim"))  # now one file with two names
    proc = sh(script)
    assert proc.returncode == 1 and b"no longer a copy" in proc.stderr
    assert Path(tree.path("sub/victim")).read_bytes() == DATA
    assert Path(tree.path("k")).read_bytes() == DATA
    assert leftovers(tree.root) == []
