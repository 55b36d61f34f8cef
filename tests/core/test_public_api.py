"""The public API: every name of `dedup_engine.__all__` is there, a whole find-report-act cycle
runs on it alone, and a search does not import the modules that act on reports."""

from __future__ import annotations

import io
import os
import subprocess
import sys

from treebuilder import Tree, content

import dedup_engine


def test_every_public_name_is_importable_and_listed() -> None:
    for name in dedup_engine.__all__:
        assert getattr(dedup_engine, name) is not None, name
    assert set(dedup_engine.__all__) <= set(dir(dedup_engine))


def test_find_write_read_plan_and_act_through_the_public_api(tmp_path: str) -> None:
    from dedup_engine import (
        WRITERS,
        Action,
        Format,
        Outcome,
        Policy,
        ScanOptions,
        apply_plan,
        find_duplicates,
        make_plan,
        read_report,
    )

    tree = Tree(tmp_path)
    tree.file("a/photo.jpg", content(5000))
    tree.file("b/photo.jpg", content(5000))
    options = ScanOptions(workers=0)
    found = find_duplicates(tree.root, options)
    out = io.BytesIO()
    WRITERS[Format.JSON](found, options, out, null=False)
    report = read_report(out.getvalue())
    plan = make_plan(report.groups, report.roots, Policy(Action.HARDLINK))
    summary = apply_plan(plan)
    assert [r.outcome for r in summary.results] == [Outcome.DONE]
    assert os.stat(tree.path("a/photo.jpg")).st_ino == os.stat(tree.path("b/photo.jpg")).st_ino


def test_importing_the_package_leaves_the_apply_side_unloaded() -> None:
    code = (
        "import sys, dedup_engine\n"
        "print(any(m.startswith('dedup_engine.apply') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
