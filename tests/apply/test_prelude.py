"""The `--script`'s shell functions: a real `prelude.sh`, shipped with the package, valid sh.

The script a user reviews starts with these functions, so the file must reach every install (it is
package data, not a module) and must parse in a POSIX shell.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

from dedup_engine.apply.plan import Action, Plan
from dedup_engine.apply.preview import prelude, write_script

PROJECT = Path(__file__).resolve().parents[2]
SOURCE = PROJECT / "dedup_engine" / "apply" / "prelude.sh"


def test_the_prelude_is_the_file_beside_the_module() -> None:
    assert prelude() == SOURCE.read_bytes()
    assert resources.files("dedup_engine.apply").joinpath("prelude.sh").is_file()


def test_sh_accepts_the_prelude(tmp_path: Path) -> None:
    script = tmp_path / "prelude.sh"
    script.write_bytes(prelude())
    check = subprocess.run(["sh", "-n", str(script)], capture_output=True, check=False)
    assert check.returncode == 0, check.stderr


def test_every_script_starts_with_the_prelude() -> None:
    out = io.BytesIO()
    write_script(Plan((), ()), Action.DELETE, "report.json", out)
    head, _, rest = out.getvalue().partition(prelude())
    assert head.startswith(b"#!/bin/sh\n") and rest == b'exit "$failed"\n'


def test_an_installed_package_carries_the_prelude(tmp_path: Path) -> None:
    """Built as an install builds it (setuptools' build_py, from pyproject.toml's package data),
    then imported from there alone."""
    pytest.importorskip("setuptools")
    project = tmp_path / "project"
    project.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(PROJECT / name, project / name)
    shutil.copytree(
        PROJECT / "dedup_engine",
        project / "dedup_engine",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    built = tmp_path / "lib"
    build = ["import setuptools; setuptools.setup()", "-q", "build_py", "-d", str(built)]
    subprocess.run([sys.executable, "-c", *build], cwd=project, capture_output=True, check=True)
    load = (
        "import sys, dedup_engine.apply.preview as p; "
        "sys.stdout.write(p.__file__ + '\\n'); sys.stdout.flush(); "
        "sys.stdout.buffer.write(p.prelude())"
    )
    env = {**os.environ, "PYTHONPATH": str(built)}
    run = subprocess.run(
        [sys.executable, "-c", load], cwd=tmp_path, env=env, capture_output=True, check=False
    )
    assert run.returncode == 0, run.stderr.decode()
    where, _, data = run.stdout.partition(b"\n")
    assert where.decode().startswith(str(built))
    assert data == SOURCE.read_bytes()
