"""The v1 (iVvy venue platform) rules the mock enforces: the IWS request signature and the fields
of ``addOrUpdateOpportunity`` (its ``externalUrls`` included), each refusal in the platform's own
error shape and codes.

Signatures are recomputed with the same functions the client signs with (``auth.py``), from
the body bytes and headers exactly as received.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from airflow_opportunity_provider.auth import content_md5, hmac_sha1_hex, v1_string_to_sign

# The platform's specific codes (the same values as errors.py, kept here so the mock server
# starts without importing Airflow).
REQUEST_EMPTY = 24221
NOT_FOUND = 24222
INVALID_DETAILS = 24224
STALE_DATE = 23005
PARAMETER_INVALID = 23016
PARAMETER_MISSING = 23017

INTEGER_FIELDS = frozenset(
    {
        "id",
        "venueId",
        "qualityId",
        "companyId",
        "industryId",
        "sourceId",
        "confirmedQuoteId",
        "confirmedQuoteStatus",
        "cancelledQuoteId",
        "lostToCompetition",
        "companyLeadContactId",
        "contactId",
        "ownerUserId",
        "typeId",
        "stageId",
        "stageReasonId",
        "referralContactId",
    }
)
STRING_FIELDS = frozenset(
    {"name", "description", "closedDate", "utmSource", "utmMedium", "utmCampaign", "utmTerm", "utmContent"}
)
OBJECT_FIELDS = frozenset({"company", "contact", "referralContact"})
# channelId is a string in the seeds and an integer in the vendor's current page: both pass.
INTEGER_OR_STRING_FIELDS = frozenset({"channelId"})
CREATE_REQUIRED_FIELDS = ("name", "typeId", "stageId", "sourceId")
# Fields the server sets on every record; a client sending them is ignored, as for any unknown name.
SERVER_FIELDS = frozenset({"id", "createdDate", "modifiedDate"})
EXTERNAL_URLS = "externalUrls"
MAX_EXTERNAL_URLS = 3
# The vendor gives no length limit for an external URL's ref and label: 255 is the mock's
# assumption, the same as the package's JSON Schema.
MAX_EXTERNAL_URL_TEXT = 255
EXTERNAL_URL_KEYS = ("ref", "url", "label")

_AUTHORIZATION = re.compile(r"^\s*IWS\s+([^:\s]+):([0-9A-Fa-f]+)\s*$")
_DIGITS = re.compile(r"^[0-9]+$")
_ISO_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
_IVVY_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}$")


class V1Refusal(Exception):
    """A v1 error answer: HTTP status and the body ``{"errorCode", "message", "specificCode", ...}``.

    :param status: the HTTP status (also sent as ``errorCode``).
    :param message: the platform's message; never contains a secret or a signature.
    :param specific_code: the platform's ``specificCode``; left out of the body when ``None``.
    :param additional_messages: the ``additionalMessages`` list, when there is one.
    """

    def __init__(
        self,
        status: int,
        message: str,
        specific_code: int | None = None,
        additional_messages: list[str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.specific_code = specific_code
        self.additional_messages = additional_messages

    def body(self) -> dict[str, Any]:
        """The JSON body of the answer."""
        body: dict[str, Any] = {"errorCode": self.status, "message": self.message}
        if self.specific_code is not None:
            body["specificCode"] = self.specific_code
        if self.additional_messages:
            body["additionalMessages"] = list(self.additional_messages)
        return body


def _unauthorized(reason: str) -> V1Refusal:
    return V1Refusal(401, reason)


def _request_moment(headers: Mapping[str, str]) -> tuple[str, str | None, str]:
    """Return (date part of the string to sign, the raw date value, which header it came from)."""
    ivvy_date = None
    for name, value in headers.items():
        if name.lower().replace("-", "").replace("_", "") == "ivvydate":
            ivvy_date = value
            break
    if ivvy_date is not None:
        # With IVVY-Date the Date header takes no part in the signature, even when it is sent.
        return "", ivvy_date, "IVVY-Date"
    plain_date = headers.get("Date")
    if plain_date is not None:
        return plain_date, plain_date, "Date"
    return "", None, ""


def _parse_moment(value: str, source: str) -> datetime | None:
    try:
        if source == "IVVY-Date":
            # fromisoformat after a format check: strptime costs more than the rest of a request.
            if not _IVVY_DATE.match(value.strip()):
                return None
            return datetime.fromisoformat(value.strip()).replace(tzinfo=UTC)
        moment = parsedate_to_datetime(value)
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    except (TypeError, ValueError, IndexError):
        return None


def verify_signature(
    method: str,
    request_string: str,
    headers: Mapping[str, str],
    body: bytes,
    credentials: Mapping[str, str],
    now: datetime,
    max_clock_skew: float,
) -> str:
    """Check a v1 request's IWS signature and date; return the API key that signed it.

    :param method: the HTTP method as received.
    :param request_string: path and query exactly as received.
    :param headers: the request headers (case-insensitive lookup).
    :param body: the body bytes as received.
    :param credentials: API key -> API secret of every accepted key.
    :param now: the server's clock (UTC).
    :param max_clock_skew: seconds the request date may differ from ``now``.
    :raises V1Refusal: 401 when the signature is missing, malformed, made with an unknown key or
        the wrong secret, or the body does not match ``Content-MD5``; 401 with specificCode 23005
        when the date is missing, unreadable or more than ``max_clock_skew`` away.
    """
    match = _AUTHORIZATION.match(headers.get("X-Api-Authorization", ""))
    if match is None:
        raise _unauthorized("The X-Api-Authorization header is missing or not 'IWS {apiKey}:{signature}'")
    api_key, signature = match.group(1), match.group(2).lower()
    secret = credentials.get(api_key)
    if secret is None:
        raise _unauthorized("The API key is not known")
    sent_md5 = headers.get("Content-MD5")
    if not sent_md5:
        raise _unauthorized("The Content-MD5 header is required")
    if not hmac.compare_digest(sent_md5.strip().lower(), content_md5(body)):
        raise _unauthorized("The Content-MD5 header does not match the body received")
    api_version = headers.get("X-Api-Version")
    if not api_version:
        raise _unauthorized("The X-Api-Version header is required")
    date_part, raw_date, source = _request_moment(headers)
    if raw_date is None:
        raise V1Refusal(401, "Request is stale", STALE_DATE, ["The Date or IVVY-Date header is required"])
    to_sign = v1_string_to_sign(
        method,
        sent_md5.strip(),
        headers.get("Content-Type", ""),
        date_part,
        request_string,
        headers,
        api_version,
    )
    if not hmac.compare_digest(hmac_sha1_hex(secret, to_sign), signature):
        raise _unauthorized("The request signature does not match")
    moment = _parse_moment(raw_date, source)
    if moment is None:
        raise V1Refusal(401, "Request is stale", STALE_DATE, [f"The {source} header could not be read"])
    if abs((now - moment).total_seconds()) > max_clock_skew:
        raise V1Refusal(401, "Request is stale", STALE_DATE)
    return api_key


def is_whole_number(value: Any) -> bool:
    """Whether the platform takes ``value`` as a whole number: an ``int`` (not a ``bool``) or a
    string of digits, as the seeds send ids.

    :param value: the value as received.
    """
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, str) and _DIGITS.match(value) is not None)


def _given(value: Any) -> bool:
    return value is not None and value != ""


def invalid_parameter(name: str, why: str) -> V1Refusal:
    """The refusal of a parameter that does not validate (HTTP 400, specificCode 23016).

    :param name: the parameter, named in the message.
    :param why: the reason, sent as the one ``additionalMessages`` entry.
    """
    return V1Refusal(400, f"'{name}' does not validate", PARAMETER_INVALID, [why])


def _check_types(payload: Mapping[str, Any]) -> None:
    # The platform reports only the first invalid parameter.
    for name, value in payload.items():
        if value is None:
            continue
        if name in INTEGER_FIELDS and not is_whole_number(value):
            raise invalid_parameter(name, "Value must be a whole number")
        if name in INTEGER_OR_STRING_FIELDS and not (is_whole_number(value) or isinstance(value, str)):
            raise invalid_parameter(name, "Value must be a whole number or a string")
        if name in STRING_FIELDS and not isinstance(value, str):
            raise invalid_parameter(name, "Value must be a string")
        if name in OBJECT_FIELDS and not isinstance(value, dict):
            raise invalid_parameter(name, "Value must be an object")


def _missing_for_create(payload: Mapping[str, Any]) -> list[str]:
    missing = [name for name in CREATE_REQUIRED_FIELDS if not _given(payload.get(name))]
    if not _given(payload.get("contactId")):
        if not _given(payload.get("companyId")):
            missing.append("contactId")
            missing.append("companyId")
        elif not _given(payload.get("companyLeadContactId")):
            missing.append("companyLeadContactId")
    return missing


def _check_closed_date(payload: Mapping[str, Any]) -> None:
    value: Any = payload.get("closedDate")
    if not _given(value):
        return
    try:
        if not _ISO_DATE.match(value):
            raise ValueError(value)
        date.fromisoformat(value)
    except ValueError:
        raise V1Refusal(
            400,
            "The opportunity details are invalid",
            INVALID_DETAILS,
            [f"closedDate {value!r} is not a valid date as YYYY-MM-DD"],
        ) from None


@dataclass(frozen=True)
class OpportunityWrite:
    """One ``addOrUpdateOpportunity`` request that passed the field rules.

    :param opportunity_id: ``None`` for a create, the id to update otherwise.
    :param fields: the fields to store, as received, without ``externalUrls`` and the fields the
        server sets itself (``id``, ``createdDate``, ``modifiedDate``).
    :param external_urls_given: whether the request had ``externalUrls`` at all (left out, the
        stored entries stay as they are).
    :param external_urls: the entries as received, each checked; ``None`` removes every entry.
    """

    opportunity_id: int | None
    fields: dict[str, Any]
    external_urls_given: bool = False
    external_urls: list[dict[str, Any]] | None = None

    def merged_external_urls(self, current: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """The entries a record holds after this write, from those it held before.

        :param current: the record's stored entries (``[]`` for a create).
        :raises V1Refusal: 400, 23016 when more than :data:`MAX_EXTERNAL_URLS` would be left.
        """
        if not self.external_urls_given:
            return [dict(entry) for entry in current]
        return merge_external_urls(current, self.external_urls)


def parse_add_or_update(body: bytes, reject_names: Collection[str] = ()) -> OpportunityWrite:
    """Apply the ``addOrUpdateOpportunity`` field rules to a request body.

    The write's ``opportunity_id`` is ``None`` for a create, the integer id for an update (whose
    existence the caller checks, answering 24222). Unknown field names are ignored, as the
    platform ignores them, and kept with the record.

    :param body: the body bytes as received.
    :param reject_names: names the server is told to refuse as invalid (24224).
    :raises V1Refusal: 400 with 24221 (empty), 23017 (missing), 23016 (wrong type, or an invalid
        ``externalUrls``) or 24224.
    """
    try:
        payload = json.loads(body) if body.strip() else None
    except ValueError:
        raise V1Refusal(400, "The request is empty", REQUEST_EMPTY, ["The body is not valid JSON"]) from None
    if not payload or not isinstance(payload, dict):
        raise V1Refusal(400, "The request is empty", REQUEST_EMPTY)
    if not _given(payload.get("venueId")):
        raise V1Refusal(400, "'venueId' is required", PARAMETER_MISSING, ["'venueId' is required"])
    _check_types(payload)
    external_urls_given = EXTERNAL_URLS in payload
    external_urls = parse_external_urls(payload[EXTERNAL_URLS]) if external_urls_given else None
    raw_id: Any = payload.get("id")
    opportunity_id = int(raw_id) if _given(raw_id) else None
    if opportunity_id is None:
        missing = _missing_for_create(payload)
        if missing:
            messages = [f"'{name}' is required" for name in missing]
            if "companyId" in missing:
                messages[-2:] = ["'contactId' is required, or 'companyId' with 'companyLeadContactId'"]
            elif "companyLeadContactId" in missing:
                messages[-1] = "'companyLeadContactId' is required when the lead belongs to 'companyId'"
            raise V1Refusal(400, messages[0], PARAMETER_MISSING, messages)
    _check_closed_date(payload)
    name = payload.get("name")
    if isinstance(name, str) and name in reject_names:
        raise V1Refusal(
            400,
            "The opportunity details are invalid",
            INVALID_DETAILS,
            [f"The opportunity name {name!r} was refused"],
        )
    fields = {key: value for key, value in payload.items() if key not in SERVER_FIELDS | {EXTERNAL_URLS}}
    return OpportunityWrite(opportunity_id, fields, external_urls_given, external_urls)


def parse_external_urls(value: Any) -> list[dict[str, Any]] | None:
    """Check an ``externalUrls`` value: ``None`` (remove every entry) or at most 3 entries.

    Each entry is ``{"ref": str, "url": "https://..." or None, "label": str}`` with ``ref``
    required and unique within the request, ``ref`` and ``label`` at most
    :data:`MAX_EXTERNAL_URL_TEXT` characters, and no other key.

    :param value: the ``externalUrls`` value as received.
    :return: copies of the entries, each with only the keys it was given; ``None`` for ``null``.
    :raises V1Refusal: 400, 23016, the first problem named in ``additionalMessages``.
    """
    if value is None:
        return None
    if not isinstance(value, list):
        raise invalid_parameter(
            EXTERNAL_URLS, f"Value must be a list of at most {MAX_EXTERNAL_URLS} objects, or null"
        )
    if len(value) > MAX_EXTERNAL_URLS:
        raise invalid_parameter(
            EXTERNAL_URLS, f"At most {MAX_EXTERNAL_URLS} external URLs are allowed, got {len(value)}"
        )
    seen: set[str] = set()
    entries = []
    for index, entry in enumerate(value):
        where = f"{EXTERNAL_URLS}[{index}]"
        if not isinstance(entry, dict):
            raise invalid_parameter(EXTERNAL_URLS, f"{where} must be an object")
        unknown = sorted(str(key) for key in entry if key not in EXTERNAL_URL_KEYS)
        if unknown:
            raise invalid_parameter(
                EXTERNAL_URLS,
                f"{where} has unknown key(s) {', '.join(map(repr, unknown))}; "
                f"allowed: {', '.join(EXTERNAL_URL_KEYS)}",
            )
        ref = entry.get("ref")
        if not isinstance(ref, str) or not ref:
            raise invalid_parameter(EXTERNAL_URLS, f"{where}.ref is required: a non-empty string")
        if len(ref) > MAX_EXTERNAL_URL_TEXT:
            raise invalid_parameter(
                EXTERNAL_URLS, f"{where}.ref must be at most {MAX_EXTERNAL_URL_TEXT} characters"
            )
        if ref in seen:
            raise invalid_parameter(EXTERNAL_URLS, f"{where}.ref {ref!r} is given twice in one request")
        seen.add(ref)
        url = entry.get("url")
        if url is not None and (not isinstance(url, str) or not url.startswith("https://")):
            raise invalid_parameter(
                EXTERNAL_URLS, f"{where}.url must be an https:// URL, or null to remove the entry"
            )
        if "label" in entry:
            label = entry["label"]
            if not isinstance(label, str):
                raise invalid_parameter(EXTERNAL_URLS, f"{where}.label must be a string")
            if len(label) > MAX_EXTERNAL_URL_TEXT:
                raise invalid_parameter(
                    EXTERNAL_URLS, f"{where}.label must be at most {MAX_EXTERNAL_URL_TEXT} characters"
                )
        entries.append(dict(entry))
    return entries


def merge_external_urls(
    current: Sequence[Mapping[str, Any]], changes: Sequence[Mapping[str, Any]] | None
) -> list[dict[str, Any]]:
    """The entries after applying checked ``changes`` to ``current``, merged by ``ref``.

    ``None`` removes every entry. An entry with ``"url": None`` removes the stored one with its
    ``ref`` (and adds nothing); one with a known ``ref`` replaces the fields it gives and keeps the
    others; one with a new ``ref`` is added at the end. Stored entries always have all three keys,
    ``None`` for what was never given.

    :param current: the stored entries.
    :param changes: what :func:`parse_external_urls` returned.
    :raises V1Refusal: 400, 23016 when more than :data:`MAX_EXTERNAL_URLS` would be left.
    """
    if changes is None:
        return []
    merged = [dict(entry) for entry in current]
    for change in changes:
        position = next((i for i, entry in enumerate(merged) if entry["ref"] == change["ref"]), None)
        if "url" in change and change["url"] is None:
            if position is not None:
                del merged[position]
        elif position is not None:
            merged[position].update(change)
        else:
            merged.append({key: change.get(key) for key in EXTERNAL_URL_KEYS})
    if len(merged) > MAX_EXTERNAL_URLS:
        raise invalid_parameter(
            EXTERNAL_URLS,
            f"An opportunity holds at most {MAX_EXTERNAL_URLS} external URLs; this request would leave "
            f'{len(merged)} (remove one with "url": null)',
        )
    return merged


def not_found(opportunity_id: int) -> V1Refusal:
    """The refusal of an update whose id does not exist (HTTP 404, specificCode 24222).

    :param opportunity_id: the id the update named.
    """
    return V1Refusal(
        404, "The opportunity does not exist", NOT_FOUND, [f"No opportunity has the id {opportunity_id}"]
    )
