"""AddOrUpdateOpportunityOperator (v1) and PutOpportunityV2Operator (v2).

Both validate their payload against the JSON Schemas before anything is sent (and, when the
payload holds no template, already when the DAG is parsed), then push the ids through XCom.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import BaseOperator

from airflow_opportunity_provider.connection import DEFAULT_CONN_ID
from airflow_opportunity_provider.errors import (
    OpportunityError,
    OpportunityOutcomeUnknownError,
    PayloadValidationError,
)
from airflow_opportunity_provider.hooks.opportunity import OpportunityHook
from airflow_opportunity_provider.protocol import V1_ADD_OR_UPDATE, v2_opportunity_path
from airflow_opportunity_provider.references import DEFAULT_REFERENCE_LABEL, reference_entry, with_reference
from airflow_opportunity_provider.schemas import (
    check_add_or_update_payload,
    check_put_request,
    validate_add_or_update_payload,
    validate_put_request,
)
from airflow_opportunity_provider.serialization import dumps

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context

XCOM_OPPORTUNITY_ID = "opportunity_id"
XCOM_OPPORTUNITY = "opportunity"

_JINJA_MARKERS = ("{{", "{%", "{#")


def _is_plain(value: Any) -> bool:
    """Whether a value is fully known at parse time: no Jinja template and no XCom reference."""
    if isinstance(value, str):
        return not any(marker in value for marker in _JINJA_MARKERS)
    if isinstance(value, Mapping):
        return all(isinstance(key, str) and _is_plain(item) for key, item in value.items())
    if isinstance(value, list | tuple):
        return all(_is_plain(item) for item in value)
    # Anything else that is not a JSON-like literal (an XComArg, a Param, a template object)
    # is only resolved when the task runs.
    return value is None or isinstance(value, bool | int | float) or _is_literal(value)


def _is_literal(value: Any) -> bool:
    from datetime import date
    from decimal import Decimal

    return isinstance(value, Decimal | date)


def _payload_dict(payload: Any, task_id: str) -> dict[str, Any]:
    """The rendered payload as a dict; a JSON string (what Jinja renders an XCom to) is parsed."""
    if isinstance(payload, Mapping):
        return dict(payload)
    if isinstance(payload, str):
        try:
            parsed = json.loads(payload)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            return parsed
    raise PayloadValidationError(
        [("$", f"must be an object of opportunity fields, got {type(payload).__name__} {payload!r:.60}")],
        schema_name=f"Task {task_id!r} payload",
    )


def _dry_run_log(
    operator: BaseOperator, method: str, conn_id: str, path: str, body: Mapping[str, Any]
) -> None:
    """Log the request that would be sent: method, URL and body, never a header or secret."""
    try:
        hook = OpportunityHook(conn_id)
        settings = hook.settings
        base = settings.v1_base_url if path.startswith("/api/1.0") else settings.v2_base_url
    except Exception:  # a dry run must work without a reachable connection
        base = None
    operator.log.info(
        "Dry run: would send %s %s%s with body %s; nothing was sent.",
        method,
        base or f"<base URL of connection {conn_id!r}>",
        path,
        dumps(body),
    )


class AddOrUpdateOpportunityOperator(BaseOperator):
    """Create an opportunity (payload without ``id``) or update one (with ``id``) on the v1 platform.

    Returns the opportunity id (an ``int``) and also pushes it to XCom under ``opportunity_id``.
    A create whose outcome cannot be known is never resent; the task fails with
    :class:`~airflow_opportunity_provider.errors.OpportunityOutcomeUnknownError`, which also
    skips the task's remaining retries, since a task retry would resend the create.

    :param payload: the opportunity fields (templated, rendered as JSON in the UI). Integer
        fields may be integers or strings of digits, as a Jinja ``xcom_pull`` renders them.
        A JSON object as a string is accepted too.
    :param opportunity_conn_id: the ``opportunity_crm`` connection (templated).
    :param dry_run: validate and log the request that would be sent, and send nothing.
    :param reference: an external URL ``ref`` that names this record for good (templated; e.g.
        ``"orders:{{ params.order_id }}"``). A create carries it in ``externalUrls``; when the
        create's outcome is unknown, the record is looked up by it before the task fails: found,
        the task succeeds with its id. ``None``: no reference, an unknown outcome fails the task.
    :param reference_label: the label of the reference entry.
    """

    template_fields: Sequence[str] = ("payload", "opportunity_conn_id", "reference")
    template_fields_renderers = {"payload": "json"}
    ui_color = "#e8f4fd"

    def __init__(
        self,
        *,
        payload: Mapping[str, Any] | str,
        opportunity_conn_id: str = DEFAULT_CONN_ID,
        dry_run: bool = False,
        reference: str | None = None,
        reference_label: str | None = DEFAULT_REFERENCE_LABEL,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if reference is not None and (not isinstance(reference, str) or not reference.strip()):
            raise ValueError(f"reference must be non-empty text or None; got {reference!r}.")
        self.payload = payload
        self.opportunity_conn_id = opportunity_conn_id
        self.reference = reference
        self.reference_label = reference_label
        # Not ``self.dry_run``: BaseOperator.dry_run() is a method Airflow's CLI calls.
        self.is_dry_run = dry_run
        # A payload without templates can be checked now, so a broken DAG shows an import
        # error in the UI instead of failing when it runs.
        if isinstance(payload, Mapping) and _is_plain(payload):
            validate_add_or_update_payload(payload)

    def execute(self, context: Context) -> int | None:
        """Validate the rendered payload, send it, and push the returned id."""
        # Checked once here; the hook sends the checked payload as it is.
        payload = _payload_dict(self.payload, self.task_id)
        reference = str(self.reference).strip() if self.reference else None
        if reference:
            try:
                payload = with_reference(payload, reference_entry(reference, label=self.reference_label))
            except ValueError as error:
                raise PayloadValidationError([("$.externalUrls", str(error))]) from None
        checked = check_add_or_update_payload(payload)
        if self.is_dry_run:
            _dry_run_log(self, "POST", self.opportunity_conn_id, V1_ADD_OR_UPDATE, checked.fields)
            return None
        hook = OpportunityHook(self.opportunity_conn_id)
        sent_at = time.time()
        try:
            try:
                opportunity_id = hook.add_or_update_opportunity(checked)
            except OpportunityOutcomeUnknownError:
                if not reference or not checked.creates:
                    raise
                found = self._look_up(hook, reference, checked, sent_at)
                if found is None:
                    raise
                opportunity_id = found
        finally:
            hook.close()
        action = "Created" if checked.creates else "Updated"
        self.log.info("%s v1 opportunity %d", action, opportunity_id)
        context["ti"].xcom_push(key=XCOM_OPPORTUNITY_ID, value=opportunity_id)
        return opportunity_id

    def _look_up(self, hook: OpportunityHook, reference: str, checked: Any, sent_at: float) -> int | None:
        """The id of the record the unknown create stored, found by its reference, or ``None``."""
        fields = checked.fields
        try:
            record = hook.find_by_reference(
                reference, fields["venueId"], name=fields.get("name"), created_after=sent_at
            )
        except OpportunityError as error:
            self.log.warning("Looking the create up by its reference %r failed: %s", reference, error)
            return None
        if record is None:
            self.log.warning(
                "The create's outcome is unknown and no record carries the reference %r.", reference
            )
            return None
        self.log.info(
            "The create's answer was lost; the record carrying reference %r is %s.", reference, record["id"]
        )
        return int(record["id"])


class PutOpportunityV2Operator(BaseOperator):
    """Update a v2 (Nexus) opportunity with ``PUT /api/v2/opportunities/{Id}``.

    Returns the opportunity id (an ``int``), pushes it to XCom under ``opportunity_id`` and
    the full record the platform answered under ``opportunity``.

    :param opportunity_id: the platform's own opportunity id, >= 1 (templated; a string of
        digits, as a Jinja ``xcom_pull`` renders it, is accepted).
    :param opportunity_type: ``"Pre"`` or ``"Post"`` (templated).
    :param payload: the body fields to set, at least one (templated, rendered as JSON in the UI).
    :param language_id: the language of localized content (templated; the platform's default is 1).
    :param opportunity_conn_id: the ``opportunity_crm`` connection (templated).
    :param dry_run: validate and log the request that would be sent, and send nothing.
    """

    template_fields: Sequence[str] = (
        "opportunity_id",
        "opportunity_type",
        "language_id",
        "payload",
        "opportunity_conn_id",
    )
    template_fields_renderers = {"payload": "json"}
    ui_color = "#e8f4fd"

    def __init__(
        self,
        *,
        opportunity_id: int | str,
        opportunity_type: str,
        payload: Mapping[str, Any] | str,
        language_id: int | str | None = None,
        opportunity_conn_id: str = DEFAULT_CONN_ID,
        dry_run: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.opportunity_id = opportunity_id
        self.opportunity_type = opportunity_type
        self.payload = payload
        self.language_id = language_id
        self.opportunity_conn_id = opportunity_conn_id
        # Not ``self.dry_run``: BaseOperator.dry_run() is a method Airflow's CLI calls.
        self.is_dry_run = dry_run
        if isinstance(payload, Mapping) and _is_plain(
            [opportunity_id, opportunity_type, language_id, payload]
        ):
            validate_put_request(self._document(payload))

    def _document(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        overlap = sorted({"Id", "opportunityType", "LanguageId"} & set(payload))
        if overlap:
            raise PayloadValidationError(
                [(f"$.{key}", "belongs in the operator's own parameter, not in payload") for key in overlap],
                schema_name=f"Task {self.task_id!r} payload",
            )
        document: dict[str, Any] = {
            "Id": self.opportunity_id,
            "opportunityType": self.opportunity_type,
            **payload,
        }
        if self.language_id not in (None, ""):
            document["LanguageId"] = self.language_id
        return document

    def execute(self, context: Context) -> int | None:
        """Validate the rendered request, send it, and push the id and the returned record."""
        # Checked once here; the hook sends the checked request as it is.
        request = check_put_request(self._document(_payload_dict(self.payload, self.task_id)))
        opportunity_id = request.opportunity_id
        if self.is_dry_run:
            path = v2_opportunity_path(opportunity_id, request.opportunity_type, request.language_id)
            _dry_run_log(self, "PUT", self.opportunity_conn_id, path, request.body)
            return None
        hook = OpportunityHook(self.opportunity_conn_id)
        try:
            record = hook.put_opportunity_request(request)
        finally:
            hook.close()
        self.log.info("Updated v2 %s opportunity %d", request.opportunity_type, opportunity_id)
        context["ti"].xcom_push(key=XCOM_OPPORTUNITY_ID, value=opportunity_id)
        context["ti"].xcom_push(key=XCOM_OPPORTUNITY, value=record)
        return opportunity_id
