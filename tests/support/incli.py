"""Running the `dedup` command in the test's own process, through typer's CliRunner: for usage
errors and for failures that must be injected with monkeypatch."""

from __future__ import annotations

import os

from typer.testing import CliRunner

from dedup_engine.cli.app import app


def invoke(*args: str | os.PathLike[str]) -> tuple[int, bytes, bytes]:
    """The command in process: (exit code, stdout bytes, stderr bytes)."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout_bytes, result.stderr_bytes
