"""The folders depend one way: cli on everything, bench on find and report, apply on report, and
find and report only on the top-level modules; no module of the library imports the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

import dedup_engine

PACKAGE = Path(dedup_engine.__file__).parent
FOLDERS = {"find", "report", "apply", "bench", "cli"}
#: What each folder may import besides itself and the top-level modules.
ALLOWED = {
    "find": set(),
    "report": set(),
    "apply": {"report"},
    "bench": {"find", "report"},
    "cli": {"find", "report", "apply", "bench"},
    # The top level: the public API re-exports the library; `python -m dedup_engine` is the CLI.
    "": {"find", "report", "apply"},
}
ENTRY_POINT = PACKAGE / "__main__.py"


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def _folder(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "dedup_engine":
        return None
    return parts[1] if len(parts) > 1 and parts[1] in FOLDERS else ""


def test_every_folder_imports_only_what_it_may() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == ENTRY_POINT:
            continue
        rel = path.relative_to(PACKAGE).parts
        home = rel[0] if len(rel) > 1 else ""
        for module in _imports(path):
            target = _folder(module)
            if target is not None and target not in {home, ""} | ALLOWED[home]:
                wrong.append(f"{path.relative_to(PACKAGE)} imports {module}")
    assert not wrong, "\n".join(wrong)


def test_only_the_cli_imports_typer_or_rich() -> None:
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.relative_to(PACKAGE).parts[0] == "cli":
            continue
        roots = {module.split(".")[0] for module in _imports(path)}
        assert not roots & {"typer", "rich", "click"}, path
