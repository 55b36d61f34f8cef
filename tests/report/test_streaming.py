"""The writers stream: each group is written as it is read, and what they write is unchanged.

A report of millions of files must never be whole in memory, so every format reads the groups
once, from any iterable (a spool on disk, a generator), and writes them as they come.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import pytest
from treebuilder import Tree, content

from dedup_engine import (
    DuplicateGroup,
    FileEntry,
    FindResult,
    Issue,
    RunStats,
    ScanOptions,
    Stage,
    find_duplicates,
)
from dedup_engine.model import DirectoryGroup, Findings
from dedup_engine.report.formats import RENDERINGS, WRITERS, Format
from dedup_engine.report.formats.blocks import Counted
from dedup_engine.report.formats.json import to_json_dict, write_json
from dedup_engine.report.spool import BlockSpool, GroupSpool, SpooledResult
from dedup_engine.version import __version__

pytestmark = pytest.mark.usefixtures("deadline")

OPTIONS = ScanOptions(workers=0)
FORMATS = pytest.mark.parametrize("form", list(Format), ids=[f.value for f in Format])


@pytest.fixture
def found(tree: Tree) -> FindResult:
    """A real run: groups of two sizes, odd names (not UTF-8, a newline), and an odd issue."""
    tree.file(b"a/odd-\xff\xfe", content(300))
    tree.file(b"b/odd-\xff\xfe", content(300))
    tree.file('a/new\nline, "quoted"', content(300, seed=1))
    tree.file("b/plain", content(300, seed=1))
    tree.file("big/1", content(20000))
    tree.file("big/2", content(20000))
    result = find_duplicates(tree.root, OPTIONS)
    assert len(result.groups) == 3
    # An issue as a search records one, with a name no encoding prints as is.
    issue = Issue(tree.path(b"big/\xff\n3"), Stage.HEAD, "Input/output error (EIO)")
    return dataclasses.replace(result, issues=(issue,))


@dataclasses.dataclass(frozen=True)
class Streamed:
    """Findings whose groups are any iterable: a generator reads once, as a writer must."""

    roots: Sequence[str]
    groups: Iterable[DuplicateGroup]
    issues: tuple[Issue, ...]
    stats: RunStats
    reference_roots: tuple[str, ...] = ()
    directory_groups: tuple[DirectoryGroup, ...] = ()


def _written(form: Format, result: Findings, null: bool = False) -> bytes:
    out = io.BytesIO()
    WRITERS[form](result, OPTIONS, out, null=null)
    # The one line that may differ between two runs of the JSON writer: when it was written.
    return re.sub(rb'"created": "[^"]*"', b'"created": ""', out.getvalue())


@FORMATS
@pytest.mark.parametrize("null", [False, True], ids=["lines", "null"])
def test_a_spooled_result_is_written_byte_for_byte_as_the_result_itself(
    found: FindResult, tmp_path: Path, form: Format, null: bool
) -> None:
    with GroupSpool(str(tmp_path), max_keys=1) as spool:
        spool.extend(reversed(found.groups))
        spooled = SpooledResult(found.roots, spool, found.issues, found.stats)
        assert _written(form, spooled, null) == _written(form, found, null)


@FORMATS
@pytest.mark.parametrize("null", [False, True], ids=["lines", "null"])
def test_groups_rendered_as_they_are_final_are_written_byte_for_byte_as_the_result_itself(
    found: FindResult, tmp_path: Path, form: Format, null: bool
) -> None:
    rendering = RENDERINGS[form]
    render = rendering.renderer(OPTIONS, null)
    assert render is not None
    counted = Counted(render)
    out = io.BytesIO()
    with BlockSpool(str(tmp_path), max_keys=1) as spool:
        for group in reversed(found.groups):  # in no set order, as a search finishes them
            spool.add(group, counted(group))
        heads = SpooledResult(found.roots, (), found.issues, found.stats)
        left_out = rendering.write(heads, spool, OPTIONS, out, null=null) + counted.left_out
    expected = io.BytesIO()
    assert left_out == WRITERS[form](found, OPTIONS, expected, null=null)
    assert left_out == (1 if form is Format.FDUPES and not null else 0)  # the newline's name
    written = re.sub(rb'"created": "[^"]*"', b'"created": ""', out.getvalue())
    assert written == _written(form, found, null)


def test_text_groups_wait_for_the_search_to_be_rendered_where_files_are_marked_reference() -> None:
    # Which files lie under a reference root is known once the search has made the roots
    # canonical: the text format cannot render a group before.
    text = RENDERINGS[Format.TEXT]
    assert text.renderer(dataclasses.replace(OPTIONS, reference=("/ref",)), False) is None
    assert text.renderer(OPTIONS, False) is not None


@FORMATS
def test_an_empty_spool_is_written_as_a_search_that_found_nothing(
    found: FindResult, tmp_path: Path, form: Format
) -> None:
    nothing = dataclasses.replace(found, groups=(), issues=())
    with GroupSpool(str(tmp_path)) as spool:
        spooled = SpooledResult(found.roots, spool, (), found.stats)
        assert _written(form, spooled) == _written(form, nothing)


@pytest.mark.parametrize("empty", [False, True], ids=["found", "nothing"])
def test_streamed_json_is_what_json_dump_writes_of_the_whole_report(
    found: FindResult, empty: bool
) -> None:
    result = dataclasses.replace(found, groups=(), issues=()) if empty else found
    out = io.StringIO()
    write_json(result, OPTIONS, __version__, out)
    text = out.getvalue()
    data = json.loads(text)
    assert text == json.dumps(data, indent=1, ensure_ascii=True) + "\n"
    whole = to_json_dict(result, OPTIONS, __version__)
    whole["created"] = data["created"]
    assert list(data) == list(whole)
    assert data == whole


def _long_path_groups(
    first_path: str, seen: list[bytes], out: io.BytesIO
) -> Iterator[DuplicateGroup]:
    """Two groups; before giving the second, note what had been written by then."""
    yield DuplicateGroup(9, "a" * 64, (_entry(first_path, 1), _entry(first_path + "2", 2)))
    seen.append(out.getvalue())
    yield DuplicateGroup(8, "b" * 64, (_entry("/second", 3), _entry("/second2", 4)))


def _entry(path: str, ino: int) -> FileEntry:
    return FileEntry(path, 1, ino, 9, 0, 0, 0, 0, 0o644)


@FORMATS
def test_each_writer_writes_a_group_before_reading_the_next(
    found: FindResult, form: Format
) -> None:
    # Longer than a text wrapper's buffer, so a group written is a group in `out` at once.
    first_path = "/first-" + "x" * 100_000
    out = io.BytesIO()
    seen: list[bytes] = []
    groups = _long_path_groups(first_path, seen, out)
    streamed = Streamed(found.roots, groups, found.issues, found.stats)
    WRITERS[form](streamed, OPTIONS, out, null=False)
    assert len(seen) == 1
    assert first_path.encode() in seen[0]
    assert b"/second" not in seen[0]
    assert b"/second2" in out.getvalue()
