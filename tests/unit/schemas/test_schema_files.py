"""The schema files themselves: valid draft 2020-12, shipped as package data, loaded and cached once."""

from __future__ import annotations

from importlib import resources

import pytest
from jsonschema import Draft202012Validator

from airflow_opportunity_provider.schemas import (
    ADD_OR_UPDATE_OPPORTUNITY,
    PUT_OPPORTUNITY_V2,
    SCHEMA_NAMES,
    V1_FIELDS,
    V2_BODY_FIELDS,
    V2_ROUTE_AND_QUERY_FIELDS,
    get_validator,
    load_schema,
    validation,
)


@pytest.mark.parametrize("name", sorted(SCHEMA_NAMES))
def test_schema_is_valid_draft_2020_12(name: str) -> None:
    schema = load_schema(name)

    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


@pytest.mark.parametrize("name", sorted(SCHEMA_NAMES))
def test_schema_ships_as_package_data(name: str) -> None:
    schema_file = resources.files("airflow_opportunity_provider.schemas").joinpath(f"{name}.schema.json")

    assert schema_file.is_file()


def test_schema_names() -> None:
    assert (
        {ADD_OR_UPDATE_OPPORTUNITY, PUT_OPPORTUNITY_V2}
        == SCHEMA_NAMES
        == {
            "add_or_update_opportunity",
            "put_opportunity_v2",
        }
    )


def test_load_schema_refuses_an_unknown_name() -> None:
    with pytest.raises(ValueError, match=r"Unknown schema 'put_opportunity'; choose one of"):
        load_schema("put_opportunity")


def test_load_schema_returns_a_fresh_copy_each_time() -> None:
    first = load_schema(ADD_OR_UPDATE_OPPORTUNITY)
    first["properties"].clear()

    assert load_schema(ADD_OR_UPDATE_OPPORTUNITY)["properties"]


def test_v1_fields_are_the_schema_properties() -> None:
    assert set(load_schema(ADD_OR_UPDATE_OPPORTUNITY)["properties"]) == V1_FIELDS


def test_v2_fields_are_the_schema_properties() -> None:
    properties = set(load_schema(PUT_OPPORTUNITY_V2)["properties"])

    assert properties == V2_BODY_FIELDS | V2_ROUTE_AND_QUERY_FIELDS
    assert not V2_BODY_FIELDS & V2_ROUTE_AND_QUERY_FIELDS


def test_field_sets_are_frozen() -> None:
    assert isinstance(V1_FIELDS, frozenset)
    assert isinstance(V2_BODY_FIELDS, frozenset)


@pytest.mark.parametrize("name", sorted(SCHEMA_NAMES))
def test_validator_is_built_once_and_reused(name: str) -> None:
    assert get_validator(name) is get_validator(name)


def test_each_schema_has_its_own_validator() -> None:
    v1 = get_validator(ADD_OR_UPDATE_OPPORTUNITY)
    v2 = get_validator(PUT_OPPORTUNITY_V2)

    assert v1 is not v2
    assert v1.schema["title"] != v2.schema["title"]


@pytest.mark.parametrize("name", sorted(SCHEMA_NAMES))
def test_validator_asserts_formats(name: str) -> None:
    # Without a format checker draft 2020-12 only annotates `format`, and 2023-02-30 would pass.
    assert get_validator(name).format_checker is not None


@pytest.mark.parametrize("name", sorted(SCHEMA_NAMES))
def test_fast_check_is_compiled_and_cached(name: str) -> None:
    check = validation._fast_check(name)

    assert check is validation._fast_check(name)
    # Falling back to jsonschema's is_valid would mean the schema uses a keyword the compiler lacks.
    assert check != get_validator(name).is_valid
