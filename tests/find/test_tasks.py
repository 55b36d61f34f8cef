"""The messages between the parent and the workers travel whole: each one pickled comes back equal,
of its own class, with every field."""

from __future__ import annotations

import dataclasses
import inspect
import pickle
from array import array
from typing import Any

import pytest

from dedup_engine.find import tasks
from dedup_engine.find.tasks import (
    NO_DIGEST,
    CompareResult,
    CompareTask,
    Described,
    DescribeTask,
    DirJob,
    HashResult,
    HashTask,
    ListedDir,
    ScanResult,
    ScanTask,
    TreeResult,
    TreeTask,
    Window,
)
from dedup_engine.model import Stage

_JOB = DirJob("/r/a b/\n/", 2, 3, 7, 8, 9, alias=True, counts_under=1)
_LISTED = ListedDir(
    "/r/",
    7,
    8,
    b"ab",
    array("Q", [1, 2]),
    array("Q", [7, 7]),
    array("Q", [5, 6]),
    array("q", [1, 1]),
    array("Q", [1]),
    (("d", 7, 10),),
    (("l", "link:x"),),
    False,
)
#: One message of each kind, each field off its default where it has one.
MESSAGES: list[Any] = [
    _JOB,
    ScanTask((_JOB, DirJob("/s/", 0, 0, 1, 1, 2)), (("/s/f", 1),), frozenset({"/s/f"})),
    ScanResult(
        5,
        array("q", [1, 2]),
        array("Q", [1]),
        array("Q", [7]),
        array("Q", [9]),
        array("Q", [0]),
        (_JOB,),
        array("Q", [7]),
        array("Q", [10]),
        (("/x", "gone"),),
        1,
        2,
        3,
    ),
    Window(Stage.TAIL, 4096, 8192, 65536),
    HashTask(Window(Stage.HEAD, 4096), array("Q", [3, 1]), array("q", [10, 11]), True, True, True),
    HashResult(NO_DIGEST + b"\x01" * 32, ((0, "/x", "why"),), 2, 100, 1, 1, b"\x02" * 64),
    DescribeTask(array("Q", [4]), array("q", [10]), b"\x01", True),
    Described(
        ("/a", "/b"),
        array("I", [0, 1]),
        array("Q", [7, 7]),
        array("Q", [1, 2]),
        array("q", [3, 4]),
        array("q", [5, 6]),
        array("I", [0, 1]),
        array("I", [2, 3]),
        array("H", [0o644, 0o600]),
        array("Q", [1, 2]),
        ((1, "/b", "changed"),),
    ),
    CompareTask(
        ("/a", "/b"),
        array("q", [5, 5]),
        array("I", [2]),
        array("Q", [7, 7]),
        array("Q", [1, 2]),
        array("q", [3, 4]),
        array("q", [5, 6]),
        True,
        65536,
        True,
        3,
        1 << 20,
    ),
    CompareResult(NO_DIGEST, (), 1, 5, array("I", [0]), array("I", [0]), array("H", [0o644]), 1, 2),
    _LISTED,
    TreeTask(3, 1000),
    TreeResult((_LISTED,), None),
]


def _message_classes() -> set[type]:
    return {
        cls
        for _, cls in inspect.getmembers(tasks, inspect.isclass)
        if dataclasses.is_dataclass(cls) and cls.__module__ == tasks.__name__
    }


def test_every_message_class_is_tried_and_pickles_by_its_fields() -> None:
    assert {type(message) for message in MESSAGES} == _message_classes()
    assert all(issubclass(cls, tasks._Message) for cls in _message_classes())


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_a_message_pickled_comes_back_equal(message: Any) -> None:
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        again = pickle.loads(pickle.dumps(message, protocol))
        assert type(again) is type(message)
        assert again == message
        for field in dataclasses.fields(message):  # arrays compare by value: their type too
            value = getattr(again, field.name)
            assert type(value) is type(getattr(message, field.name))
            if isinstance(value, array):
                assert value.typecode == getattr(message, field.name).typecode


@dataclasses.dataclass(frozen=True, slots=True)
class _OneField(tasks._Message):
    only: int


def test_a_message_of_one_field_gives_its_value_as_a_tuple() -> None:
    cls, values = _OneField(7).__reduce__()
    assert cls is _OneField
    assert values == (7,)
    assert cls(*values) == _OneField(7)


@pytest.mark.parametrize(
    ("task", "kind"),
    [
        (MESSAGES[1], "scan"),
        (HashTask(Window(Stage.HEAD, 4096), array("Q"), array("q"), False), "head"),
        (HashTask(Window(Stage.TAIL, 4096), array("Q"), array("q"), False), "tail"),
        (MESSAGES[6], "describe"),
        (MESSAGES[8], "full"),
        (TreeTask(0, 1), "dirs"),
    ],
    ids=lambda value: value if isinstance(value, str) else type(value).__name__,
)
def test_each_kind_of_task_has_the_name_its_cpu_time_is_told_under(task: Any, kind: str) -> None:
    assert tasks.task_kind(task) == kind
    assert kind in tasks.TASK_KINDS


def test_every_kind_of_task_has_a_name() -> None:
    kinds = {cls for cls in _message_classes() if cls.__name__.endswith("Task")}
    assert kinds == set(tasks._KIND_OF) | {HashTask}
