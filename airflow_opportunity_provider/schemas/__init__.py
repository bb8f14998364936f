"""The JSON Schemas (draft 2020-12) of both opportunity APIs and the one place that validates against them.

The schemas ship as package data next to this file; every payload is checked here before it is sent.
"""

from __future__ import annotations

from airflow_opportunity_provider.schemas.validation import (
    ADD_OR_UPDATE_OPPORTUNITY,
    PUT_OPPORTUNITY_V2,
    SCHEMA_NAMES,
    V1_FIELDS,
    V2_BODY_FIELDS,
    V2_ROUTE_AND_QUERY_FIELDS,
    CheckedPutRequest,
    CheckedV1Payload,
    check_add_or_update_payload,
    check_put_request,
    get_validator,
    load_schema,
    split_put_request,
    validate_add_or_update_payload,
    validate_put_request,
)

__all__ = [
    "ADD_OR_UPDATE_OPPORTUNITY",
    "PUT_OPPORTUNITY_V2",
    "SCHEMA_NAMES",
    "V1_FIELDS",
    "V2_BODY_FIELDS",
    "V2_ROUTE_AND_QUERY_FIELDS",
    "CheckedPutRequest",
    "CheckedV1Payload",
    "check_add_or_update_payload",
    "check_put_request",
    "get_validator",
    "load_schema",
    "split_put_request",
    "validate_add_or_update_payload",
    "validate_put_request",
]
