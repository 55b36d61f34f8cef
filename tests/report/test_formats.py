"""Every output format has its writer in the one table, and each writes the report of a search."""

from __future__ import annotations

import io
import os

import pytest
from treebuilder import Tree, content

from dedup_engine import ScanOptions, find_duplicates
from dedup_engine.report.formats import WRITERS, Format

pytestmark = pytest.mark.usefixtures("deadline")

OPTIONS = ScanOptions(workers=0)


@pytest.mark.parametrize("form", list(Format), ids=[f.value for f in Format])
def test_each_format_writes_every_path_of_a_group_from_the_table(tree: Tree, form: Format) -> None:
    tree.file("a/same", content(100))
    tree.file("b/same", content(100))
    result = find_duplicates(tree.root, OPTIONS)
    assert len(result.groups) == 1
    out = io.BytesIO()
    assert WRITERS[form](result, OPTIONS, out, null=False) == 0
    for f in result.groups[0].files:
        assert os.fsencode(f.path) in out.getvalue()
