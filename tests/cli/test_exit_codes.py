"""The exit-code precedence of `dedup find` and `dedup apply`, decided by their statuses.

Each row states one rule with the facts that could make it go wrong: a rule dropped or put
after the one it wins over fails its row.  The help texts list every code a command can end
with.
"""

from __future__ import annotations

import dataclasses

import pytest

from dedup_engine.cli.exitcode import (
    APPLY_EXIT_HELP,
    EXIT_CODES_HELP,
    ApplyStatus,
    ExitCode,
    FindStatus,
)

FOUND = {"duplicates_found": True, "fail_on_duplicates": True}

FIND_RULES = {
    "nothing wrong is 0": ({}, 0),
    "unreadable files are 1": ({"unreadable": True}, 1),
    "duplicates without --fail-on-duplicates are 0": ({"duplicates_found": True}, 0),
    "--fail-on-duplicates without duplicates is 0": ({"fail_on_duplicates": True}, 0),
    "duplicates with --fail-on-duplicates are 3": (FOUND, 3),
    "3 wins over 1": ({**FOUND, "unreadable": True}, 3),
    "an unwritten report is 5": ({"report_unwritten": True}, 5),
    "5 wins over 1": ({"report_unwritten": True, "unreadable": True}, 5),
    "5 wins over 3": ({"report_unwritten": True, **FOUND}, 5),
    "5 wins over 1 and 3": ({"report_unwritten": True, "unreadable": True, **FOUND}, 5),
    "a dead worker is 4": ({"worker_died": True}, 4),
    "4 wins over every other": (
        {"worker_died": True, "report_unwritten": True, "unreadable": True, **FOUND},
        4,
    ),
}

APPLY_RULES = {
    "every operation done is 0": ({}, 0),
    "skipped or failed operations are 1": ({"incomplete": True}, 1),
    "unwritten results are 5": ({"unwritten": True}, 5),
    "5 wins over 1": ({"unwritten": True, "incomplete": True}, 5),
    "an interrupt is 130": ({"interrupted": True}, 130),
    "130 wins over 1": ({"interrupted": True, "incomplete": True}, 130),
    "130 wins over 5": ({"interrupted": True, "unwritten": True}, 130),
    "a file that needs you is 4": ({"needs_you": True}, 4),
    "4 wins over 1": ({"needs_you": True, "incomplete": True}, 4),
    "4 wins over 5": ({"needs_you": True, "unwritten": True}, 4),
    "4 wins over 130": ({"needs_you": True, "interrupted": True}, 4),
}


@pytest.mark.parametrize(("facts", "code"), FIND_RULES.values(), ids=FIND_RULES.keys())
def test_find_exit_code_precedence(facts: dict[str, bool], code: int) -> None:
    assert FindStatus(**facts).exit_code == code


@pytest.mark.parametrize(("facts", "code"), APPLY_RULES.values(), ids=APPLY_RULES.keys())
def test_apply_exit_code_precedence(facts: dict[str, bool], code: int) -> None:
    assert ApplyStatus(**facts).exit_code == code


def test_every_fact_of_a_status_has_a_rule() -> None:
    for status, rules in ((FindStatus, FIND_RULES), (ApplyStatus, APPLY_RULES)):
        named = {fact for facts, _code in rules.values() for fact in facts}
        assert named == {field.name for field in dataclasses.fields(status)}, status.__name__


def test_the_help_texts_list_each_code_a_command_ends_with() -> None:
    find_codes = {code for _facts, code in FIND_RULES.values()} | {
        ExitCode.USAGE,
        ExitCode.INTERRUPTED,
    }
    apply_codes = {code for _facts, code in APPLY_RULES.values()} | {ExitCode.USAGE}
    for text, codes in ((EXIT_CODES_HELP, find_codes), (APPLY_EXIT_HELP, apply_codes)):
        listed = {code for code in ExitCode if f" {code.value} " in text}
        assert listed == codes


def test_a_bench_check_exits_0_when_it_held_and_1_when_not() -> None:
    from dedup_engine.cli.exitcode import check_exit_code

    assert check_exit_code(held=True) == 0
    assert check_exit_code(held=False) == 1
