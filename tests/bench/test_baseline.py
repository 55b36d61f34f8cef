"""A gate's baseline file: what is saved reads back, a file that is not a JSON object is refused
(the command says so and exits 2), and a baseline of another schema fails the work gate."""

from __future__ import annotations

from pathlib import Path

import pytest
from incli import invoke
from treebuilder import Tree, content

from dedup_engine.bench import workgate
from dedup_engine.bench.baseline import load_baseline, save_baseline, schema_mismatch


def test_saved_figures_read_back_with_sorted_keys(tmp_path: Path) -> None:
    figures = {"schema": 1, "trees": {"b": {"z": 1, "a": 2}, "a": {}}}
    save_baseline(figures, tmp_path / "base.json")
    assert load_baseline(tmp_path / "base.json") == figures
    text = (tmp_path / "base.json").read_text()
    assert text.index('"a"') < text.index('"b"') and text.endswith("}\n")


@pytest.mark.parametrize("text", ["[1, 2]", "3", "not json"])
def test_a_file_that_is_not_a_json_object_is_refused(text: str, tmp_path: Path) -> None:
    (tmp_path / "base.json").write_text(text)
    with pytest.raises(ValueError):
        load_baseline(tmp_path / "base.json")


def test_the_time_gate_refuses_a_baseline_that_is_not_an_object(tmp_path: Path) -> None:
    tree = Tree(tmp_path / "tree")
    tree.file("a", content(1000))
    (tmp_path / "base.json").write_text("[]")
    code, _, err = invoke(
        "bench", "time-gate", tree.root, "--baseline", tmp_path / "base.json", "--rounds", "1"
    )
    assert code == 2
    assert "cannot read the baseline" in err.decode()
    assert "does not hold a JSON object" in err.decode()


def test_another_schema_fails_the_work_gate_and_says_why() -> None:
    assert schema_mismatch({"schema": 1}, 1) is None
    failures, notes = workgate.compare({"schema": 2, "trees": {}}, {"schema": 1, "trees": {}})
    assert failures == ["baseline schema 2 is not 1"] and notes == []
    assert schema_mismatch({}, 1) == "baseline schema None is not 1"
