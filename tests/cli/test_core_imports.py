"""What is imported where: the library never imports the CLI's libraries, and the command line
loads what only `dedup apply` acts or previews with when it does.

`import dedup_engine` and a whole search (in process and with workers, report writing included)
leave rich, typer and click out of sys.modules.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from treebuilder import Tree, content

pytestmark = pytest.mark.usefixtures("deadline")

SCRIPT = """
import io, sys
import dedup_engine
from dedup_engine import ScanOptions, find_duplicates
from dedup_engine.report.formats import WRITERS

root = sys.argv[1]
for workers in (0, 2):
    result = find_duplicates(root, ScanOptions(workers=workers))
    assert len(result.groups) == 1, result
    for write in WRITERS.values():
        write(result, ScanOptions(), io.BytesIO(), null=False)
loaded = sorted(m for m in ("rich", "typer", "click") if m in sys.modules)
print(",".join(loaded) or "none")
"""


def test_library_does_not_import_the_cli_libraries(tmp_path: Path) -> None:
    tree = Tree(tmp_path / "tree")
    tree.file("a", content(100))
    tree.file("sub/b", content(100))
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, tree.root],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert proc.stdout.decode().strip() == "none"


#: Modules that only acting, resuming or previewing (`dedup apply`) use: every other command
#: starts without them.
APPLY_ONLY = (
    "dedup_engine.apply.journal",
    "dedup_engine.apply.outcome",
    "dedup_engine.apply.preview",
    "dedup_engine.apply.resume",
    "dedup_engine.apply.runner",
)


def test_the_command_line_loads_what_apply_acts_with_only_when_it_acts() -> None:
    script = (
        "import sys, dedup_engine.cli.app\n"
        f"print(','.join(m for m in {APPLY_ONLY!r} if m in sys.modules) or 'none')"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert proc.stdout.decode().strip() == "none"
