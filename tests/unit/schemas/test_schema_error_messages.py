"""How any jsonschema error becomes a ``(json_path, reason)`` pair, for schema parts without their own wording."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_opportunity_provider.schemas import ADD_OR_UPDATE_OPPORTUNITY, get_validator, validation


def problems(schema: Any, instance: Any) -> list[tuple[str, str]]:
    validator = validation._OpportunityValidator(schema, format_checker=validation._FORMAT_CHECKER)
    return validation._describe_errors(validator.iter_errors(instance))


@pytest.mark.parametrize(
    ("schema", "instance", "expected"),
    [
        ({"type": "boolean"}, 1, "must be true or false, got 1"),
        ({"type": ["array", "null"]}, "x", "must be a list or null, got 'x'"),
        (
            {"type": ["string", "integer", "object"]},
            1.5,
            "must be a string, an integer or an object, got 1.5",
        ),
        ({"enum": ["a", "b", "c"]}, "d", "must be 'a', 'b' or 'c', got 'd'"),
        ({"enum": ["only"]}, "d", "must be 'only', got 'd'"),
        ({"const": "x"}, "y", "must be 'x', got 'y'"),
        ({"format": "date"}, "2023-02-30", "must be a valid date, got '2023-02-30'"),
        ({"minimum": 3}, 2, "must be at least 3, got 2"),
        ({"maximum": 3}, 4, "must be at most 3, got 4"),
        ({"exclusiveMinimum": 3}, 3, "must be more than 3, got 3"),
        ({"exclusiveMaximum": 3}, 3, "must be less than 3, got 3"),
        ({"minLength": 1}, "", "must not be empty, got ''"),
        ({"minLength": 3}, "ab", "must be at least 3 characters long, got 'ab'"),
        ({"maxLength": 2}, "abc", "must be at most 2 characters long, got 'abc'"),
        ({"pattern": "^[a-z]+$"}, "A", "must match the pattern '^[a-z]+$', got 'A'"),
        ({"minProperties": 1}, {}, "must have at least 1 field(s)"),
        ({"multipleOf": 2}, 3, "3 is not a multiple of 2"),
    ],
)
def test_each_keyword_has_a_plain_sentence(schema: dict[str, Any], instance: Any, expected: str) -> None:
    assert problems(schema, instance) == [("$", expected)]


def test_an_error_message_annotation_wins_and_shows_the_value() -> None:
    schema = {"type": "string", "errorMessage": {"type": "must be text, not {value}"}}

    assert problems(schema, 5) == [("$", "must be text, not 5")]


def test_any_of_without_its_own_wording_reports_the_most_relevant_branch() -> None:
    schema = {"properties": {"a": {"anyOf": [{"type": "string", "minLength": 3}, {"type": "null"}]}}}

    assert problems(schema, {"a": "ab"}) == [("$.a", "must be at least 3 characters long, got 'ab'")]


def test_any_of_whose_branches_all_refuse_the_type_names_every_type() -> None:
    schema = {
        "properties": {"a": {"anyOf": [{"type": "string", "minLength": 3}, {"type": ["null", "array"]}]}}
    }

    assert problems(schema, {"a": 5}) == [("$.a", "must be a string, null or a list, got 5")]


def test_null_gets_a_hint_to_leave_the_field_out_but_not_at_the_root() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}

    assert problems(schema, {"a": None}) == [
        ("$.a", "must be a string, got None; leave the field out rather than sending null")
    ]
    assert problems(schema, None) == [("$", "must be an object, got None")]


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        ([], "$"),
        (["closedDate"], "$.closedDate"),
        (["company", "name"], "$.company.name"),
        (["items", 0, "id"], "$.items[0].id"),
        (["venue id"], "$['venue id']"),
        (["1st"], "$['1st']"),
        ([5.5], "$['5.5']"),
    ],
)
def test_json_paths(parts: list[Any], expected: str) -> None:
    assert validation._json_path(parts) == expected


def test_a_nested_problem_has_its_full_path() -> None:
    schema = {"properties": {"company": {"properties": {"tags": {"items": {"type": "string"}}}}}}

    assert problems(schema, {"company": {"tags": ["ok", 7]}}) == [
        ("$.company.tags[1]", "must be a string, got 7")
    ]


def test_the_same_problem_is_reported_once() -> None:
    validator = get_validator(ADD_OR_UPDATE_OPPORTUNITY)
    errors = list(validator.iter_errors({"id": 1, "venueId": "x"}))

    assert validation._describe_errors(errors + errors) == [
        ("$.venueId", "must be an integer or a string of digits, got 'x'")
    ]


def test_problems_are_sorted_by_path_ignoring_case() -> None:
    schema = {"properties": {name: {"type": "string"} for name in ("b", "A", "a", "C")}}

    paths = [path for path, _ in problems(schema, {"b": 1, "A": 1, "a": 1, "C": 1})]

    assert paths == ["$.A", "$.a", "$.b", "$.C"]


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("short", "'short'"),
        ("y" * 58, "'" + "y" * 58 + "'"),
        ("y" * 59, "'" + "y" * 56 + "..."),
        (list(range(100)), "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16..."),
    ],
)
def test_values_are_shown_with_repr_cut_to_sixty_characters(value: Any, shown: str) -> None:
    assert validation._show(value) == shown
    assert len(validation._show(value)) <= 60
