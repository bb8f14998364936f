"""The Opportunity syncs page's way into the sync states: the shared operations, under the page's names.

Everything is done by :mod:`airflow_opportunity_provider.sync_state.operations`, which the
``opportunity-sync`` command line calls too, so the page and the command line cannot disagree.
"""

from __future__ import annotations

from airflow_opportunity_provider.sync_state.operations import (
    DEFAULT_LIMIT,
    ChangedSinceConfirmedError,
    KeyNotFoundError,
    OperationError,
    ResendResult,
    StateUnavailableError,
    SyncBusyError,
    SyncNotFoundError,
    forget,
    list_syncs,
    location_of,
    resend,
    resolve,
    retry_code,
    sync_detail,
)

__all__ = [
    "DEFAULT_LIMIT",
    "ChangedSinceConfirmedError",
    "KeyNotFoundError",
    "OperationError",
    "ResendResult",
    "StateUnavailableError",
    "SyncBusyError",
    "SyncNotFoundError",
    "forget",
    "list_syncs",
    "location_of",
    "resend",
    "resolve",
    "retry_code",
    "sync_detail",
]
